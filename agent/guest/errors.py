"""The guest agent's one exception tree; every error becomes a reply's ``error`` object.

Concepts: an ``AgentError`` carries an errno (its symbolic ``code`` is derived), a
message that names what was wrong, the ``source`` that produced it and optional
structured fields (``argument``, ``command``, ``index`` ...).  ``RequestError``: the host
sent something wrong.  ``DriverError``: the driver's ioctl failed with that errno.
``GuestError``: the guest could not do something itself (a file, a program).
"""

from __future__ import annotations

import errno as errno_mod

from msixlab_common.errors import MsixlabError


class AgentError(MsixlabError):
    source = "agent"

    def __init__(self, errno: int, message: str, **fields: object):
        super().__init__(message)
        self.errno = errno
        self.message = message
        self.fields = fields

    @property
    def code(self) -> str:
        return errno_mod.errorcode.get(self.errno, f"E{self.errno}")

    def to_dict(self) -> dict[str, object]:
        return {"errno": self.errno, "code": self.code, "message": self.message,
                "source": self.source, **self.fields}


class RequestError(AgentError):
    source = "request"


class DriverError(AgentError):
    source = "driver"


class GuestError(AgentError):
    source = "guest"

"""The guest agent's one exception tree; every error becomes a reply's ``error`` object.

Concepts: an ``AgentError`` carries an errno (its symbolic ``code`` is derived), a
message that names what was wrong, the ``source`` that produced it and optional
structured fields (``argument``, ``command``, ``index`` ...).  ``RequestError``: the host
sent something wrong.  ``DriverError``: the driver's ioctl failed with that errno.
``GuestError``: the guest could not do something itself (a file, a program).  A reply's
text is bounded (``MAX_TEXT``): a message quoting a megabyte the host sent is cut.
"""

from __future__ import annotations

import errno as errno_mod

from msixlab_common.errors import MsixlabError


class AgentError(MsixlabError):
    """The root of the agent's errors: an errno, a message naming what was wrong, the
    ``source`` that raised it and structured ``fields``; sent to the host as ``to_dict()``."""
    source = "agent"

    def __init__(self, errno: int, message: str, **fields: object):
        super().__init__(message)
        self.errno = errno
        self.message = message
        self.fields = fields

    @property
    def code(self) -> str:
        """The errno's symbolic name (``EINVAL``), or ``E<n>`` if it has none."""
        return errno_mod.errorcode.get(self.errno, f"E{self.errno}")

    def to_dict(self) -> dict[str, object]:
        """The error as the protocol sends it: errno, code, message, source and the fields.
        Text longer than ``MAX_TEXT`` (a message or field quoting a huge value the host
        sent) is cut there and says how long it was, so an error reply stays small."""
        fields = {name: _clip(value) for name, value in self.fields.items()}
        return {"errno": self.errno, "code": self.code, "message": _clip(self.message),
                "source": self.source, **fields}


MAX_TEXT = 1024


def _clip(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return f"{value[:MAX_TEXT]}... ({len(value)} characters)"
    return value


class RequestError(AgentError):
    """The host sent something wrong (a bad line, command or argument)."""
    source = "request"


class DriverError(AgentError):
    """The driver's ioctl failed with this errno."""
    source = "driver"


class GuestError(AgentError):
    """The guest could not do something itself (a file, a program, a wait)."""
    source = "guest"

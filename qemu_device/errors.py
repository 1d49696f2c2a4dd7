"""Exception tree of qemu_device.

Concepts: one exception tree for the device server. Every error carries an errno
(positive, as vfio-user puts it on the wire) and, where it applies, the message id and
the vector, as fields rather than only inside the text. RemoteProtocolError: the client
broke the protocol; LocalProtocolError: we would have; DeviceError: the device model
refused an operation; ControlError: a control-channel request was bad (FieldError: one
named field of it).
"""

from __future__ import annotations

import errno as _errno

from msixlab_common.errors import MsixlabError


class QemuDeviceError(MsixlabError):
    """Root of every error this package raises on purpose."""

    default_errno = _errno.EINVAL

    def __init__(self, message: str, *, errno: int | None = None,
                 msg_id: int | None = None, vector: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = self.default_errno if errno is None else errno
        self.msg_id = msg_id
        self.vector = vector

    @property
    def code(self) -> str:
        """The errno's symbolic name (``EINVAL``), or the number as text if it has none."""
        return _errno.errorcode.get(self.errno, str(self.errno))

    def __str__(self) -> str:
        extra = [f"errno={self.code}"]
        if self.msg_id is not None:
            extra.append(f"msg_id={self.msg_id}")
        if self.vector is not None:
            extra.append(f"vector={self.vector}")
        return f"{self.message} ({', '.join(extra)})"


class ProtocolError(QemuDeviceError):
    """Something about the vfio-user byte stream is wrong."""


class RemoteProtocolError(ProtocolError):
    """The client sent something the protocol does not allow.

    ``fatal`` means the stream can no longer be framed and the connection must close.
    """

    def __init__(self, message: str, *, fatal: bool = False, **kw) -> None:
        super().__init__(message, **kw)
        self.fatal = fatal


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (a bug in the server)."""


class DeviceError(QemuDeviceError):
    """The device model refused a request (bad region, offset, vector, map...)."""


class ConfigurationError(QemuDeviceError):
    """A device configuration (MSI-X layout, vector count) is invalid."""


class ControlError(QemuDeviceError):
    """A control-channel request was malformed or failed."""


class FieldError(ControlError):
    """One field of a control request has the wrong type or is out of range; ``field``
    names it."""

    def __init__(self, field: str, message: str, **kw) -> None:
        super().__init__(message, **kw)
        self.field = field


class FaultInjected(QemuDeviceError):
    """A fault hook made this request fail on purpose."""

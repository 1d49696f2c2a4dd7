"""The host agent's exceptions, under msixlab's one root.

Every error carries structured fields; ``verdict`` says what a run that ends in it means
for ``git bisect run``: INFRA (125, could not judge) unless a subclass says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from images.errors import ImageError
from msixlab_common.errors import MsixlabError, WaitTimeout

EXIT_PASS, EXIT_FAIL, EXIT_INFRA = 0, 1, 125

__all__ = ["MsixlabError", "ImageError", "HostError", "LaunchError", "WaitTimeout",
           "GuestAgentError", "DeviceControlError", "EXIT_PASS", "EXIT_FAIL", "EXIT_INFRA"]


class HostError(MsixlabError):
    """The root of the host agent's errors; a run that ends in one could not judge (125) unless
    a subclass says otherwise."""
    exit_code = EXIT_INFRA


class LaunchError(HostError):
    """A process (QEMU, the device server) failed to start or died early."""

    def __init__(self, message: str, *, argv: list[str], returncode: int | None,
                 log: Path | None = None, log_tail: str = ""):
        super().__init__(message)
        self.argv, self.returncode, self.log, self.log_tail = argv, returncode, log, log_tail

    def __str__(self) -> str:
        text = f"{super().__str__()} (exit code {self.returncode})"
        if self.log:
            text += f"; log: {self.log}"
        if self.log_tail:
            text += "\n--- last lines ---\n" + self.log_tail
        return text


class GuestAgentError(HostError):
    """The guest agent answered a request with an error."""

    def __init__(self, cmd: str, error: dict):
        self.cmd, self.error = cmd, error
        self.errno = error.get("errno")
        self.code = error.get("code")
        super().__init__(f"guest agent '{cmd}' failed: {error.get('code', '')} {error.get('message', '')}".strip())


class DeviceControlError(HostError):
    """The device server's control channel answered with an error."""

    def __init__(self, cmd: str, error: dict):
        self.cmd, self.error = cmd, error
        super().__init__(f"device control '{cmd}' failed: {error.get('type', '')}: {error.get('message', '')}")

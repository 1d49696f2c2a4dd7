"""The root of msixlab's one exception tree, and the error every bounded wait raises.

Concepts: every error msixlab raises on purpose is a ``MsixlabError``.  Each package hangs
its own subtree below it (``images.errors``, ``qemu_device.errors``, ``agent.guest.errors``,
``agent.host.errors``) with structured fields rather than formatted text alone.  For a run
of the host agent, ``exit_code`` says what ending in the error means for ``git bisect
run``: 125 (could not judge) unless a subclass says otherwise.
"""

from __future__ import annotations

EXIT_INFRA = 125


class MsixlabError(Exception):
    """Root of every error msixlab raises on purpose."""

    exit_code = EXIT_INFRA


class WaitTimeout(MsixlabError, TimeoutError):
    """A bounded wait expired.  ``what`` names what was waited for, ``timeout`` how long
    (seconds), ``detail`` what was seen meanwhile."""

    def __init__(self, what: str, timeout: float, detail: str = ""):
        super().__init__(f"timed out after {timeout:g} s waiting for {what}"
                         + (f": {detail}" if detail else ""))
        self.what, self.timeout, self.detail = what, timeout, detail

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
    """Root of every error msixlab raises on purpose.  ``outcome`` names the class of ending
    a run that ends in it has (one of the host's ``Outcome`` values; by default
    ``process_failed``: a part of the rig failed), and ``outcome_evidence()`` what shows it,
    so classifying an ending is a lookup on the error, never a list of ``isinstance``."""

    exit_code = EXIT_INFRA
    outcome = "process_failed"

    def outcome_evidence(self) -> dict:
        """The fields a verdict keeps as evidence of this error (a copy)."""
        return dict(getattr(self, "evidence", None) or {})


class WaitTimeout(MsixlabError, TimeoutError):
    """A bounded wait expired.  ``what`` names what was waited for, ``timeout`` how long
    (seconds), ``detail`` what was seen meanwhile."""

    def __init__(self, what: str, timeout: float, detail: str = ""):
        super().__init__(f"timed out after {timeout:g} s waiting for {what}"
                         + (f": {detail}" if detail else ""))
        self.what, self.timeout, self.detail = what, timeout, detail

    def outcome_evidence(self) -> dict:
        return {"waited_for": self.what, "timeout": self.timeout}

"""The kernel side of msixlab's exception tree.

Concepts: every error here says what a run that ends in it means (its ``Outcome``):
- ``KernelTreeError``: DIR is not a kernel tree, lacks a file it must have, or an option
  names something that does not exist (a bad option: nothing was started).
- ``KernelBuildFailed``: configuring or building a tree failed; it quotes the first
  compiler error and keeps the log (the run could not judge: 125, a skip for a bisect).
- ``KernelUnsupported``: the kernel lacks what the rig needs (a config option, dynamic
  MSI-X): a named could-not-judge, never a pass or a fail.
- ``SourceError``: Debian's kernel source package could not be fetched or extracted.
- ``BisectError``: ``msixlab bisect`` was asked something it cannot do (unknown or equal
  revisions, a dirty tree, ...); it names what and has left the tree as it was.
"""

from __future__ import annotations

from pathlib import Path

from agent.host.errors import HostError
from agent.host.verdict.outcome import CouldNotJudge, Outcome


class KernelError(HostError):
    """Root of the kernel-tree errors; ``outcome`` says what ending in it means."""

    outcome = Outcome.BUILD_FAILED


class KernelTreeError(KernelError):
    """A path given as a kernel tree, a bzImage or a QEMU is not usable."""

    outcome = Outcome.BAD_OPTION

    def __init__(self, message: str, *, path: Path | None = None):
        super().__init__(message)
        self.path = path
        self.evidence = {"path": str(path) if path else None}


class KernelBuildFailed(KernelError):
    """``step`` (configure, build, driver) failed in ``tree``; ``first_error`` is the
    first compiler (or linker, or make) error of ``log``."""

    outcome = Outcome.BUILD_FAILED

    def __init__(self, message: str, *, tree: Path, step: str, log: Path | None = None,
                 first_error: str = ""):
        super().__init__(message)
        self.tree, self.step, self.log, self.first_error = tree, step, log, first_error
        self.evidence = {"tree": str(tree), "step": step, "log": str(log) if log else None,
                         "first_error": first_error}

    def __str__(self) -> str:
        text = super().__str__()
        if self.first_error:
            text += f"\nfirst error:\n{self.first_error}"
        if self.log:
            text += f"\nlog: {self.log}"
        return text


class KernelUnsupported(CouldNotJudge):
    """The kernel lacks what the rig needs: exit 125, with the reason named."""

    def __init__(self, message: str, **evidence):
        super().__init__(Outcome.KERNEL_UNSUPPORTED, message, **evidence)


class SourceError(KernelError):
    """Fetching or unpacking Debian's kernel source failed (log kept)."""

    outcome = Outcome.BUILD_FAILED

    def __init__(self, message: str, *, log: Path | None = None):
        super().__init__(message + (f" (log: {log})" if log else ""))
        self.log = log
        self.evidence = {"log": str(log) if log else None}


class BisectError(KernelError):
    """A bisect that cannot start (or continue); the tree is left as it was."""

    outcome = Outcome.BAD_OPTION

    def __init__(self, message: str, *, tree: Path | None = None):
        super().__init__(message)
        self.tree = tree
        self.evidence = {"tree": str(tree) if tree else None}

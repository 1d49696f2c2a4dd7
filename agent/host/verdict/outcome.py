"""The verdict of a run: which class of outcome it is, and the exit code that class means.

Concepts owned here:
- ``Outcome``: every way a run can end, each with its exit code.  0 means every declared
  check passed.  1 means the *kernel under test* misbehaved: a check failed, the console
  shows a kernel splat (oops, panic, BUG, WARN, KASAN, KFENCE, UBSAN, lockdep, hung
  task, lockup), the guest driver returned an error where the scenario needs success, or the
  guest stopped answering after its agent had answered.  125 means the run could not
  judge: an image or build failure, QEMU or the device server failing for a reason that
  is not the guest's, the rig's own guest user space failing (its init, the guest
  agent) with no kernel report, a host resource error, a kernel without what the rig needs
  (dynamic MSI-X, a config option), a fault of the emulated device, a bad option, a
  bug in msixlab itself, or an interruption.  ``git bisect run`` trusts exactly these
  three codes: nothing else is ever returned.
- ``KernelMisbehaved`` and ``CouldNotJudge``: the two branches of errors that end a run
  early, each carrying its ``Outcome`` and structured evidence.
- ``RunVerdict``: the one record of how a run ended (outcome, exit code, one-line
  summary, the failed checks, evidence, the device faults armed on purpose); printed by
  the CLI and written into routing.json as ``verdict``.
- ``classify``: the outcome of any exception that escaped a run.
"""

from __future__ import annotations

import enum
import errno as errno_mod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from msixlab_common.errors import MsixlabError

from agent.host.errors import GuestAgentError

EXIT_PASS, EXIT_FAIL, EXIT_INFRA = 0, 1, 125


class Outcome(enum.StrEnum):
    """Every way a run can end; ``exit_code`` gives its class (0, 1 or 125)."""
    PASS = "pass"
    # the kernel under test misbehaved (exit 1)
    CHECK_FAILED = "check_failed"
    KERNEL_SPLAT = "kernel_splat"
    DRIVER_ERROR = "driver_error"
    GUEST_UNRESPONSIVE = "guest_unresponsive"
    # the run could not judge (exit 125)
    BUILD_FAILED = "build_failed"
    PROCESS_FAILED = "process_failed"
    GUEST_SETUP_FAILED = "guest_setup_failed"
    DEVICE_FAULT = "device_fault"
    HOST_RESOURCE = "host_resource"
    KERNEL_UNSUPPORTED = "kernel_unsupported"
    BAD_OPTION = "bad_option"
    INTERNAL_ERROR = "internal_error"
    INTERRUPTED = "interrupted"

    @property
    def exit_code(self) -> int:
        """0 for ``PASS``, 1 when the kernel under test misbehaved, 125 when the run could not
        judge."""
        if self is Outcome.PASS:
            return EXIT_PASS
        return EXIT_FAIL if self in KERNEL_MISBEHAVED else EXIT_INFRA

    @property
    def meaning(self) -> str:
        """One line saying what this outcome means (for the verdict's text and JSON)."""
        return MEANING[self]


KERNEL_MISBEHAVED = frozenset({Outcome.CHECK_FAILED, Outcome.KERNEL_SPLAT,
                               Outcome.DRIVER_ERROR, Outcome.GUEST_UNRESPONSIVE})

MEANING = {
    Outcome.PASS: "every declared check passed",
    Outcome.CHECK_FAILED: "a check failed",
    Outcome.KERNEL_SPLAT: "the guest kernel reported an oops, panic, BUG, WARN or similar "
                          "(on the console or in its taint flags)",
    Outcome.DRIVER_ERROR: "the guest driver returned an error where the scenario needs success",
    Outcome.GUEST_UNRESPONSIVE: "the guest stopped answering after its agent had answered",
    Outcome.BUILD_FAILED: "the image, the kernel or the guest driver could not be built",
    Outcome.PROCESS_FAILED: "QEMU or the device server failed, not because of the guest",
    Outcome.GUEST_SETUP_FAILED: "the rig's guest user space (its init, the guest driver's "
                                "load, the guest agent) failed with no kernel report",
    Outcome.DEVICE_FAULT: "the emulated device reported an error (the rig, not the kernel)",
    Outcome.HOST_RESOURCE: "a host resource failed (disk full, not writable, no memory)",
    Outcome.KERNEL_UNSUPPORTED: "the kernel lacks what the rig needs (dynamic MSI-X, a config option)",
    Outcome.BAD_OPTION: "an option was invalid; nothing was started",
    Outcome.INTERNAL_ERROR: "a bug in msixlab itself",
    Outcome.INTERRUPTED: "the run was interrupted before it could judge",
}


class KernelMisbehaved(MsixlabError):
    """The kernel under test misbehaved: the run ends with exit 1.  ``evidence`` holds
    what shows it (the console line, the call and its errno, ...)."""

    outcome = Outcome.CHECK_FAILED
    exit_code = EXIT_FAIL

    def __init__(self, message: str, **evidence: Any):
        Exception.__init__(self, message)    # not the next class in a mixed-in MRO
        self.evidence = evidence


class KernelSplat(KernelMisbehaved):
    """The console shows a kernel report; ``line`` is the first one."""

    outcome = Outcome.KERNEL_SPLAT

    def __init__(self, line: str, kind: str, console: str | None = None,
                 message: str | None = None, **evidence: Any):
        super().__init__(message or f"the guest kernel reported {kind}: {line}", line=line,
                         kind=kind, console=console, **evidence)
        self.line, self.kind = line, kind


class DriverCallFailed(KernelMisbehaved, GuestAgentError):
    """The guest driver answered a call the scenario needs with an error.  It is also a
    ``GuestAgentError`` (``cmd``, ``error``, ``errno``, ``code``) for callers that expect
    the error and catch it."""

    outcome = Outcome.DRIVER_ERROR
    exit_code = EXIT_FAIL

    def __init__(self, call: str, args: Mapping[str, Any], errno: int | None, code: str | None,
                 message: str = ""):
        KernelMisbehaved.__init__(
            self, f"the guest driver failed {call}({_args(args)}) with {code or errno}"
            + (f": {message}" if message else ""),
            call=call, args=dict(args), errno=errno, code=code)
        self.call, self.call_args, self.errno, self.code = call, dict(args), errno, code
        self.cmd = call
        self.error = {"errno": errno, "code": code, "message": message, "source": "driver"}


class GuestUnresponsive(KernelMisbehaved):
    """The guest stopped answering (or powered itself off) after its agent answered."""

    outcome = Outcome.GUEST_UNRESPONSIVE


class CouldNotJudge(MsixlabError):
    """The run cannot say anything about the kernel: exit 125, with the reason's class."""

    exit_code = EXIT_INFRA

    def __init__(self, outcome: Outcome, message: str, **evidence: Any):
        if outcome.exit_code != EXIT_INFRA:
            raise ValueError(f"{outcome} is not a could-not-judge outcome")
        super().__init__(message)
        self.outcome, self.evidence = outcome, evidence


class BootStalled(CouldNotJudge):
    """No hello from the guest agent within the boot timeout, with no kernel report and no
    process gone to explain it (``process_failed``, 125): a boot that stalls cannot be told
    from a starved host, so ``Lab.start`` boots once more before it gives up."""

    def __init__(self, message: str, **evidence: Any):
        super().__init__(Outcome.PROCESS_FAILED, message, **evidence)


def _args(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in args.items())


_HOST_RESOURCE_ERRNOS = {errno_mod.ENOSPC, errno_mod.EDQUOT, errno_mod.EROFS, errno_mod.EACCES,
                         errno_mod.EPERM, errno_mod.ENOMEM, errno_mod.EMFILE, errno_mod.ENFILE,
                         errno_mod.ENOTDIR, errno_mod.EISDIR, errno_mod.EEXIST}


def _os_error(err: OSError) -> tuple[Outcome, dict[str, Any]]:
    if err.errno in _HOST_RESOURCE_ERRNOS:
        return Outcome.HOST_RESOURCE, {"errno": errno_mod.errorcode.get(err.errno, err.errno),
                                       "path": getattr(err, "filename", None)}
    return Outcome.INTERNAL_ERROR, {"exception": type(err).__name__}


#: the endings of exceptions msixlab does not raise on purpose, by class (the nearest class
#: in an exception's MRO wins: a ConnectionError is a rig process gone, not any OSError)
FOREIGN: dict[type, Any] = {
    KeyboardInterrupt: lambda err: (Outcome.INTERRUPTED, {}),
    MemoryError: lambda err: (Outcome.HOST_RESOURCE, {"error": "out of memory"}),
    ConnectionError: lambda err: (Outcome.PROCESS_FAILED, {"error": f"{type(err).__name__}: {err}"}),
    EOFError: lambda err: (Outcome.PROCESS_FAILED, {"error": f"{type(err).__name__}: {err}"}),
    OSError: _os_error,
}


def classify(err: BaseException) -> tuple[Outcome, dict[str, Any]]:
    """The outcome of an exception that ended a run, and its evidence: an error msixlab
    raises on purpose names its own (``outcome``, ``outcome_evidence()``); any other is
    looked up by class in ``FOREIGN``; what is left is a bug in msixlab (internal_error)."""
    if isinstance(err, MsixlabError):
        return Outcome(err.outcome), err.outcome_evidence()
    for cls in type(err).__mro__:
        if cls in FOREIGN:
            return FOREIGN[cls](err)
    return Outcome.INTERNAL_ERROR, {"exception": type(err).__name__}


@dataclass(frozen=True)
class RunVerdict:
    """How a run ended.  ``failed`` names failed (or not judged) checks as
    ``step/check[index]``; ``faults`` lists device faults armed on purpose."""

    outcome: Outcome
    summary: str
    failed: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)
    faults: tuple[Mapping[str, Any], ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)   # declared, passed, failed, ...

    @property
    def exit_code(self) -> int:
        """The exit code of the verdict's outcome."""
        return self.outcome.exit_code

    def to_dict(self) -> dict[str, Any]:
        """The verdict as routing.json holds it under ``verdict``."""
        return {"outcome": str(self.outcome), "exit_code": self.exit_code,
                "meaning": self.outcome.meaning, "summary": self.summary,
                "failed": list(self.failed), "evidence": dict(self.evidence),
                "faults_armed": [dict(f) for f in self.faults], "counts": dict(self.counts)}

    @classmethod
    def from_error(cls, err: BaseException, faults: Sequence[Mapping[str, Any]] = ()) -> "RunVerdict":
        """The verdict for an exception that ended a run: its class by ``classify``, its first
        line (at most 500 characters) as summary, with the device ``faults`` armed on
        purpose."""
        outcome, evidence = classify(err)
        text = str(err) or type(err).__name__
        if outcome is Outcome.INTERRUPTED:
            text = f"interrupted by {err}" if str(err) else "interrupted (Ctrl-C)"
        return cls(outcome, text.splitlines()[0][:500], evidence=evidence, faults=tuple(faults))

"""The verdict classes: each outcome's exit code, and the class of every way a run ends."""

import errno

import pytest

from agent.host.errors import LaunchError
from agent.host.kernel.kmod import KmodBuildError
from agent.host.verdict.outcome import (
    KERNEL_MISBEHAVED,
    CouldNotJudge,
    DriverCallFailed,
    GuestUnresponsive,
    KernelSplat,
    Outcome,
    RunVerdict,
    classify,
)
from images.errors import ImageError
from msixlab_common.errors import WaitTimeout


def test_only_three_exit_codes_and_the_kernel_classes_are_1():
    for outcome in Outcome:
        assert outcome.exit_code in (0, 1, 125)
        assert outcome.meaning
        assert (outcome.exit_code == 1) == (outcome in KERNEL_MISBEHAVED)
    assert Outcome.PASS.exit_code == 0


@pytest.mark.parametrize("err,outcome", [
    (KernelSplat("Kernel panic - not syncing: sysrq", "panic"), Outcome.KERNEL_SPLAT),
    (DriverCallFailed("alloc_group", {"min": 4}, 28, "ENOSPC"), Outcome.DRIVER_ERROR),
    (GuestUnresponsive("no answer"), Outcome.GUEST_UNRESPONSIVE),
    (CouldNotJudge(Outcome.KERNEL_UNSUPPORTED, "no dynamic MSI-X"), Outcome.KERNEL_UNSUPPORTED),
    (ImageError("mmdebstrap failed", step="rootfs"), Outcome.BUILD_FAILED),
    (KmodBuildError("modpost failed"), Outcome.BUILD_FAILED),
    (LaunchError("QEMU exited", argv=["qemu"], returncode=-11), Outcome.PROCESS_FAILED),
    (WaitTimeout("the device server's ready line", 20), Outcome.PROCESS_FAILED),
    (OSError(errno.ENOSPC, "No space left on device"), Outcome.HOST_RESOURCE),
    (PermissionError(errno.EACCES, "denied"), Outcome.HOST_RESOURCE),
    (KeyboardInterrupt(), Outcome.INTERRUPTED),
    (ZeroDivisionError("bug"), Outcome.INTERNAL_ERROR),
])
def test_classify(err, outcome):
    assert classify(err)[0] is outcome
    verdict = RunVerdict.from_error(err)
    assert verdict.outcome is outcome and verdict.exit_code == outcome.exit_code
    assert verdict.to_dict()["outcome"] == str(outcome)


def test_could_not_judge_refuses_a_kernel_outcome():
    with pytest.raises(ValueError):
        CouldNotJudge(Outcome.CHECK_FAILED, "that is a verdict on the kernel")


def test_driver_error_names_call_args_and_errno():
    err = DriverCallFailed("alloc_group", {"min": 3, "start": 60}, 16, "EBUSY", "index in use")
    assert "alloc_group(min=3, start=60)" in str(err) and "EBUSY" in str(err)
    assert classify(err)[1] == {"call": "alloc_group", "args": {"min": 3, "start": 60},
                                "errno": 16, "code": "EBUSY"}


def test_a_driver_error_is_also_a_guest_agent_error_for_callers_expecting_it():
    from agent.host.errors import GuestAgentError
    err = DriverCallFailed("free_group", {"group": 9}, 2, "ENOENT", "no such group")
    assert isinstance(err, GuestAgentError) and err.code == "ENOENT" and err.errno == 2
    assert err.error["source"] == "driver" and err.cmd == "free_group"
    assert err.exit_code == 1 and classify(err)[0] is Outcome.DRIVER_ERROR


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_error_class_names_an_outcome_so_classifying_is_a_lookup():
    """Every MsixlabError subclass in the house (every module imported) names an Outcome;
    one that named none, or a value that is no Outcome, fails here."""
    import importlib
    import pkgutil

    import agent
    import images
    import msixlab_common
    import qemu_device
    from msixlab_common.errors import MsixlabError
    for package in (agent, images, msixlab_common, qemu_device):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    classes = list(_subclasses(MsixlabError))
    assert len(classes) > 30
    valid = {str(o) for o in Outcome}
    wrong = [f"{c.__module__}.{c.__qualname__}: {c.outcome!r}" for c in classes
             if not isinstance(c.outcome, property) and str(c.outcome) not in valid]
    assert wrong == []


def test_a_foreign_exception_is_looked_up_by_its_nearest_class():
    from agent.host.verdict.outcome import classify
    import errno
    assert classify(ConnectionRefusedError(errno.ECONNREFUSED, "x"))[0] is Outcome.PROCESS_FAILED
    assert classify(OSError(errno.ENOSPC, "full", "/r"))[0] is Outcome.HOST_RESOURCE
    assert classify(OSError(errno.EIO, "io"))[0] is Outcome.INTERNAL_ERROR
    assert classify(TimeoutError())[0] is Outcome.INTERNAL_ERROR     # not ours: a bug
    assert classify(ValueError("bug")) == (Outcome.INTERNAL_ERROR, {"exception": "ValueError"})

    class Planted(MemoryError):
        pass
    assert classify(Planted())[0] is Outcome.HOST_RESOURCE

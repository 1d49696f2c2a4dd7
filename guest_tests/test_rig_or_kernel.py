"""Who failed, the rig or the kernel, with real guests (agent/host/lab/blame.py, docs/verdict.md).

- The rig's initramfs init failing (``MSIXLAB-INIT-FAILED: mount 9p kmod``: the guest
  asked to load a driver from a share the boot does not have) is ``guest_setup_failed``
  (125) with the marker's reason, at once; before, it powered off and was judged
  ``guest_unresponsive`` (1).
- A truncated python3 (the rig's init runs the agent with a copy of the image's python3
  cut short: ``msixlab.test_python``) never says hello: ``guest_setup_failed`` (125)
  naming the init's marker, at once, not ``guest_unresponsive`` (1) after the boot
  timeout.
- A kernel WARN the console patterns do not see (the sentinel told to ignore the
  console, as it would a headline no pattern knows) still fails the run: the kernel
  gained taint W, read by the guest agent's ``kernel_health`` at the end (``run_in_lab``).
- An oops in the guest agent's own process kills it: the rig's init reports the agent's
  exit with the taint it gained, and that is the kernel's doing (1), not "the agent's
  channel broke" (125), whatever the console says.
"""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from agent.host.jobs.job import run_in_lab
from agent.host.lab.lab import Lab
from agent.host.rundirs import RunDirs
from agent.host.verdict.outcome import Outcome, RunVerdict

FAST_S = 60.0     # well before the 180 s boot timeout (and its second boot)


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_a_truncated_python3_is_the_rigs_failure(image, tmp_path):
    started = time.monotonic()
    with RunDirs.create(tmp_path) as dirs:
        lab = Lab(image, "default", dirs, append=("msixlab.test_python=truncate:4096",))
        try:
            with pytest.raises(BaseException) as err:
                lab.start()
        finally:
            lab.stop()
    verdict = RunVerdict.from_error(err.value)
    assert verdict.outcome is Outcome.GUEST_SETUP_FAILED and verdict.exit_code == 125, verdict
    assert verdict.evidence["marker"] == "MSIXLAB-AGENT-EXIT", verdict
    assert "before the guest agent's hello" in verdict.summary
    assert not lab.boot_stalls and time.monotonic() - started < FAST_S + 120  # kmod, boot


def test_a_warn_the_console_patterns_miss_is_the_kernels(image, tmp_path):
    with RunDirs.create(tmp_path) as dirs:
        lab = Lab(image, "default", dirs, end_on_splat=False)
        try:
            verdict = run_in_lab(lab, quiet(), [], lambda: lab.agent("crash", kind="warn"),
                                 lambda faults: RunVerdict(Outcome.PASS, "no check failed"))
        finally:
            lab.stop()
    assert verdict.outcome is Outcome.KERNEL_SPLAT and verdict.exit_code == 1, verdict
    assert verdict.evidence["kind"] == "taint" and verdict.evidence["taints"] == "W"
    health = verdict.evidence["kernel_health"]
    assert health["tainted_after"] & ~health["tainted_before"] == 1 << 9
    assert any("msixlab_crash_warn" in line or "WARNING" in line
               for line in health["messages"]), health


def test_an_oops_that_kills_the_agent_is_the_kernels(image, tmp_path):
    with RunDirs.create(tmp_path) as dirs:
        lab = Lab(image, "default", dirs, end_on_splat=False)
        try:
            lab.start()
            started = time.monotonic()
            with pytest.raises(BaseException) as err:
                lab.agent("crash", kind="oops", in_agent=True)
                lab.agent("info", timeout=30)
            seconds = time.monotonic() - started
        finally:
            lab.stop()
    verdict = RunVerdict.from_error(err.value)
    assert verdict.outcome is Outcome.KERNEL_SPLAT and verdict.exit_code == 1, verdict
    assert verdict.evidence["kind"] == "taint" and "D" in verdict.evidence["taints"]
    assert "MSIXLAB-AGENT-EXIT" in verdict.evidence["line"]
    assert seconds < FAST_S


def test_the_rigs_init_failing_is_the_rigs_failure(image, tmp_path):
    """One boot (``Lab._boot``) without the driver's share but with its path on the
    command line: the initramfs init cannot mount it and says so."""
    started = time.monotonic()
    with RunDirs.create(tmp_path) as dirs:
        lab = Lab(image, "default", dirs, append=("msixlab.kmod=/opt/kmod/msixlab.ko",))
        try:
            with pytest.raises(BaseException) as err:
                lab._boot(None, boot_timeout=FAST_S + 60)
        finally:
            lab.stop()
    verdict = RunVerdict.from_error(err.value)
    assert verdict.outcome is Outcome.GUEST_SETUP_FAILED and verdict.exit_code == 125, verdict
    assert verdict.evidence["marker"] == "MSIXLAB-INIT-FAILED"
    assert verdict.evidence["reason"] == "mount 9p kmod", verdict
    assert time.monotonic() - started < FAST_S

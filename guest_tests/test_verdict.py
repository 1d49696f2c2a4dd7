"""Every verdict class, produced by a real guest and classified by the real host agent.

The kernel misbehaving (exit 1): a panic, an oops or a WARN on the console, a driver error
where the scenario needs success, a guest that stops answering.  The run not able to
judge (exit 125): the device server or QEMU dying, the device answering QEMU with an
error.  Each ending is noticed by the sentinel and ends the run at once, not after the
scenario's timeouts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from agent.host.lab.lab import Lab
from agent.host.rundirs import PROJECT_DIR, RunDirs
from agent.host.scenarios.default import Scenario
from agent.host.verdict.outcome import BootStalled, Outcome, RunVerdict

FAST_S = 20.0     # an ending must be classified well before the scenario's own waits add up


@pytest.fixture
def lab(image, tmp_path):
    with RunDirs.create(tmp_path) as dirs, Lab(image, "default", dirs) as lab:
        yield lab


def ending(lab: Lab, trigger) -> tuple[RunVerdict, float]:
    """Run ``trigger`` then the default scenario; return how the run ended, and when."""
    started = time.monotonic()
    try:
        trigger()
        Scenario(lab).run()
        lab.guard()
    except BaseException as err:      # noqa: BLE001 - what main_job does
        return RunVerdict.from_error(err), time.monotonic() - started
    pytest.fail("the run ended normally")


@pytest.mark.parametrize("kind,splat,line", [
    ("panic", "panic", "Kernel panic - not syncing"),
    ("oops", None, None),
    ("warn", "WARN", "WARNING: "),
])
def test_a_kernel_report_is_the_kernels_failure(lab, kind, splat, line):
    def crash():
        args = {"delay_ms": 300} if kind == "panic" else {}
        lab.agent("crash", kind=kind, **args)
    verdict, seconds = ending(lab, crash)
    assert verdict.outcome is Outcome.KERNEL_SPLAT and verdict.exit_code == 1, verdict
    if splat is not None:
        assert verdict.evidence["kind"] == splat and line in verdict.evidence["line"]
    else:                                   # an oops reads "Oops:" or "BUG: ..." first
        assert verdict.evidence["kind"] in ("oops", "BUG")
    assert seconds < FAST_S
    assert verdict.evidence["line"] in lab.sentinel.console.path.read_text(errors="replace")


def test_a_driver_error_where_success_is_needed(lab):
    def fill_the_table():
        lab.agent("alloc_group", min=1, max=lab.vectors)
    verdict, _ = ending(lab, fill_the_table)
    assert verdict.outcome is Outcome.DRIVER_ERROR and verdict.exit_code == 1
    assert verdict.evidence["call"] == "alloc_group" and verdict.evidence["code"] == "ENOSPC"
    assert verdict.evidence["args"] == {"min": 4, "max": 4}


def test_a_guest_that_stops_answering(lab):
    def freeze():
        lab.machine.qmp("stop")            # every vCPU stops: the guest answers nothing
    started = time.monotonic()
    freeze()
    with pytest.raises(BaseException) as err:
        lab.agent("info", timeout=3)
    verdict = RunVerdict.from_error(err.value)
    assert verdict.outcome is Outcome.GUEST_UNRESPONSIVE and verdict.exit_code == 1
    assert time.monotonic() - started < FAST_S


def test_a_guest_the_host_stopped_is_not_the_kernels_doing(lab):
    # QEMU stopped by SIGSTOP past an agent timeout (36 s against `msixlab run`'s 30 s)
    # ended as guest_unresponsive, exit 1: a bisect would call a good commit bad.
    lab.machine._proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(BaseException) as err:
            lab.agent("info", timeout=3)
    finally:
        lab.machine._proc.send_signal(signal.SIGCONT)
    verdict = RunVerdict.from_error(err.value)
    assert verdict.outcome is Outcome.PROCESS_FAILED and verdict.exit_code == 125, verdict
    assert "QEMU was stopped (SIGSTOP)" in verdict.summary
    assert lab.agent("info", timeout=30)          # the guest lives on once QEMU runs again


@pytest.mark.parametrize("victim,who", [("device", "device server"), ("qemu", "QEMU")])
def test_a_dead_process_cannot_judge(lab, victim, who):
    def kill():
        proc = lab.device._proc if victim == "device" else lab.machine._proc
        proc.send_signal(signal.SIGKILL)
    verdict, seconds = ending(lab, kill)
    assert verdict.outcome is Outcome.PROCESS_FAILED and verdict.exit_code == 125, verdict
    assert who in verdict.summary and "SIGKILL" in verdict.summary
    assert seconds < FAST_S


def test_a_device_error_reply_cannot_judge(lab):
    def arm():
        lab.device_command("fault", kind="errno_reply", command="DEVICE_SET_IRQS", errno="EIO")
    verdict, seconds = ending(lab, arm)
    assert verdict.outcome is Outcome.DEVICE_FAULT and verdict.exit_code == 125, verdict
    assert "SET_IRQS" in verdict.summary
    assert seconds < FAST_S


def test_a_device_error_reply_of_another_nic_cannot_judge(image, tmp_path):
    """Every NIC's device server is watched, not only the first one's."""
    from agent.host.scenarios.nics import PerNic
    with RunDirs.create(tmp_path) as dirs, Lab(image, "default", dirs, nics=2) as lab:
        def arm():
            lab.device_command_on(lab.devices[1], "fault", kind="errno_reply",
                                  command="DEVICE_SET_IRQS", errno="EIO")
        started = time.monotonic()
        try:
            arm()
            PerNic(lab, Scenario, 2).run()
            lab.guard()
        except BaseException as err:      # noqa: BLE001 - what main_job does
            verdict, seconds = RunVerdict.from_error(err), time.monotonic() - started
        else:
            pytest.fail("the run ended normally")
    assert verdict.outcome is Outcome.DEVICE_FAULT and verdict.exit_code == 125, verdict
    assert "NIC 1" in verdict.summary and "SET_IRQS" in verdict.summary
    assert seconds < 2 * FAST_S


def _run(tmp_path, *options):
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--results",
                           str(tmp_path), *options], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=600)
    (run_dir,) = tmp_path.iterdir()
    return done, json.loads((run_dir / "routing.json").read_text())["verdict"]


def test_msixlab_run_reports_a_fault_armed_on_purpose(image, tmp_path):
    done, verdict = _run(tmp_path, "--device-fault", "drop_raise:vector=1")
    assert done.returncode == 1, done.stderr[-3000:]
    assert verdict["outcome"] == "check_failed"
    assert verdict["faults_armed"][0]["kind"] == "drop_raise"
    assert "raise-device/counts_match_raises[1]" in verdict["failed"]
    assert "device fault armed on purpose" in done.stderr


def test_msixlab_run_unwritable_results_cannot_judge(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the results directory should go\n")
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--results",
                           str(blocked)], cwd=PROJECT_DIR, capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    assert done.returncode == 125 and "host_resource" in done.stderr, done.stderr[-2000:]


class PauseBoots:
    """Pause the vCPUs (QMP ``stop``) of each of a lab's first ``boots`` boots as soon as
    its QEMU answers QMP: those boots stall with no kernel report and nothing gone, as a
    TCG guest on a starved host does."""

    def __init__(self, lab: Lab, boots: int):
        self.lab, self.boots, self.paused = lab, boots, []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.02) and len(self.paused) < self.boots:
            machine, sentinel = self.lab.machine, self.lab.sentinel
            if machine is not None and sentinel is not None and machine not in self.paused:
                machine.qmp("stop")
                self.paused.append(machine)

    def __enter__(self) -> "PauseBoots":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(10)


def test_a_boot_that_stalls_is_booted_again_and_kept(image, tmp_path):
    with RunDirs.create(tmp_path) as dirs:
        lab = Lab(image, "default", dirs)
        try:
            with PauseBoots(lab, boots=1) as paused:
                lab.start(boot_timeout=45)     # the second boot, on a loaded host too
            assert len(paused.paused) == 1 and lab.machine is not paused.paused[0]
            assert lab.agent("info")["table_size"] == lab.vectors     # the second boot answers
            Scenario(lab).run()
        finally:
            lab.stop()
    assert [(s["attempt"], s["logs"]) for s in lab.boot_stalls] == [(1, "boot-attempt-1")]
    assert "did not finish booting within 45 s" in lab.boot_stalls[0]["reason"]
    aside = dirs.results / "boot-attempt-1"
    registers = (aside / "cpus.txt").read_text()                # where each vCPU was
    assert all(re.search(rf"CPU#{cpu}\n(.*\n)*?[ER]IP=[0-9a-f]+", registers)
               for cpu in range(lab.cpus)), registers
    for name in ("console.log", "qemu.log", "device-events.jsonl", "device-server.log"):
        assert (aside / name).is_file() and (dirs.results / name).is_file(), name
    assert "MSIXLAB-READY" not in (aside / "console.log").read_text(errors="replace")
    assert "MSIXLAB-READY" in (dirs.results / "console.log").read_text(errors="replace")


def test_a_boot_that_stalls_every_time_cannot_judge(image, tmp_path):
    with RunDirs.create(tmp_path) as dirs:
        lab = Lab(image, "default", dirs)
        try:
            with PauseBoots(lab, boots=2), pytest.raises(BootStalled) as err:
                lab.start(boot_timeout=8, boot_attempts=2)
        finally:
            lab.stop()
    verdict = RunVerdict.from_error(err.value)
    assert verdict.outcome is Outcome.PROCESS_FAILED and verdict.exit_code == 125
    assert "did not finish booting within 8 s" in verdict.summary
    assert len(lab.boot_stalls) == 1                 # the first set aside, the last raised
    assert (dirs.results / "boot-attempt-1" / "console.log").is_file()
    assert (dirs.results / "console.log").is_file()
    assert lab.machine.poll() is not None and all(d.poll() is not None for d in lab.devices)


def test_a_boot_that_panics_over_the_rigs_init_is_the_rigs_and_never_booted_again(
        image, tmp_path):
    # an init that is not there: the kernel finds no root either and panics at boot.  That
    # panic names user space (the rig's initramfs), not kernel code, before the agent's
    # hello: the rig's (issue 22: a bisect told "bad" here would blame a good commit)
    with RunDirs.create(tmp_path) as dirs:
        lab = Lab(image, "default", dirs, append=("rdinit=/no/such/init",))
        started = time.monotonic()
        try:
            with pytest.raises(BaseException) as err:
                lab.start(boot_timeout=60)
        finally:
            lab.stop()
    verdict = RunVerdict.from_error(err.value)
    assert verdict.outcome is Outcome.GUEST_SETUP_FAILED and verdict.exit_code == 125, verdict
    assert "Kernel panic" in verdict.evidence["line"]
    assert "Unable to mount root fs" in verdict.summary
    assert lab.boot_stalls == [] and not (dirs.results / "boot-attempt-1").exists()
    assert time.monotonic() - started < 60

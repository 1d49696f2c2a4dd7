"""The sentinel (agent/host/lab/sentinel.py): every ending it must notice, on real files and
real exited processes, and the classification each one gets."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.host.lab.sentinel import Sentinel
from agent.host.verdict.outcome import CouldNotJudge, GuestUnresponsive, KernelSplat, Outcome


class Server:
    """A device server as the sentinel sees it (the attributes DeviceServer has)."""

    def __init__(self, tmp: Path, name: str, exit_code: int | None = None):
        self.name = name
        slug = name.replace(" ", "-")
        self.event_log = tmp / f"{slug}.jsonl"
        self.stderr_log = tmp / f"{slug}.log"
        self.stderr_log.write_text("serving\nlast words of the server\n")
        self.proc = None
        if exit_code is not None:        # a real process that really exited so
            self.proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({exit_code})"])
            self.proc.wait(timeout=30)

    def poll(self):
        return None if self.proc is None else self.proc.poll()

    def log_reply(self, cmd: str, error: int, msg_id: int = 7) -> None:
        with open(self.event_log, "a") as events:
            events.write(json.dumps({"event": "tx", "cmd": cmd, "id": msg_id,
                                     "error": error}) + "\n")


@pytest.fixture
def lab(tmp_path):
    console = tmp_path / "console.log"
    console.write_text("[    0.000000] Linux version 7.3.4\n")
    qemu_log = tmp_path / "qemu.log"
    qemu_log.write_text("qemu says goodbye\n")
    state = {"qemu": None, "devices": [Server(tmp_path, "the device server"),
                                       Server(tmp_path, "the device server of NIC 1")]}

    def sentinel(**kw):
        return Sentinel(console, qemu=lambda: state["qemu"], qemu_log=qemu_log,
                        devices=lambda: state["devices"], **kw)
    return tmp_path, console, state, sentinel


def test_nothing_wrong_is_no_ending(lab):
    _, _, state, sentinel = lab
    state["devices"][0].log_reply("DEVICE_SET_IRQS", 0)      # a good reply
    assert sentinel().check() is None


def test_console_splat_is_the_kernels(lab):
    _, console, _, sentinel = lab
    watch = sentinel()
    with open(console, "a") as out:
        out.write("[    3.100000] Oops: general protection fault, probably for non-canonical\n")
    ending = watch.check()
    assert isinstance(ending, KernelSplat) and ending.exit_code == 1
    assert "general protection fault" in str(ending)


def test_splats_off_ignores_the_console(lab):
    _, console, _, sentinel = lab
    watch = sentinel(splats=False)
    console.write_text("[    3.1] Kernel panic - not syncing: test\n")
    assert watch.check() is None


@pytest.mark.parametrize("nic", [0, 1])
def test_a_dead_device_server_is_named_with_its_status_and_log(lab, nic):
    tmp, _, state, sentinel = lab
    state["devices"][nic] = Server(tmp, state["devices"][nic].name, exit_code=3)
    ending = sentinel().check()
    assert isinstance(ending, CouldNotJudge) and ending.outcome is Outcome.PROCESS_FAILED
    assert ending.evidence["process"] == state["devices"][nic].name
    assert ending.evidence["exit"] == "exit status 3"
    assert "last words of the server" in ending.evidence["last_lines"]


@pytest.mark.parametrize("nic", [0, 1])
def test_an_error_reply_of_any_nic_is_a_device_fault(lab, nic):
    _, _, state, sentinel = lab
    watch = sentinel()
    assert watch.check() is None
    state["devices"][nic].log_reply("DEVICE_SET_IRQS", 22, msg_id=41)
    ending = watch.check()
    assert isinstance(ending, CouldNotJudge) and ending.outcome is Outcome.DEVICE_FAULT
    assert ending.evidence["process"] == state["devices"][nic].name
    assert "DEVICE_SET_IRQS" in str(ending) and "errno 22" in str(ending)


def test_a_replaced_server_reads_its_log_on_from_where_it_was(lab):
    """The hotplug scenario restarts NIC 0's server on the same event log: errors logged
    before the replacement and already seen are not reported twice, new ones are."""
    tmp, _, state, sentinel = lab
    watch = sentinel()
    state["devices"][0].log_reply("DEVICE_SET_IRQS", 0)
    assert watch.check() is None
    old = state["devices"][0]
    state["devices"][0] = Server(tmp, old.name)           # same paths, a new process
    assert watch.check() is None
    state["devices"][0].log_reply("DMA_MAP", 14)
    assert watch.check().evidence["replies"][0]["cmd"] == "DMA_MAP"


def test_qemu_exit_0_after_the_agents_hello_is_the_kernels(lab):
    _, _, state, sentinel = lab
    state["qemu"] = 0
    watch = sentinel()
    watch.agent_answered()
    ending = watch.check()
    assert isinstance(ending, GuestUnresponsive) and ending.exit_code == 1


def test_qemu_exit_0_before_the_agents_hello_is_the_rigs(lab):
    """The rig's user space has not proven it works until the hello (blame.py)."""
    _, _, state, sentinel = lab
    state["qemu"] = 0
    ending = sentinel().check()
    assert isinstance(ending, CouldNotJudge) and ending.outcome is Outcome.GUEST_SETUP_FAILED


def test_qemu_killed_is_the_rigs(lab):
    _, _, state, sentinel = lab
    state["qemu"] = -9
    ending = sentinel().check()
    assert isinstance(ending, CouldNotJudge) and ending.outcome is Outcome.PROCESS_FAILED
    assert ending.evidence["exit"] == "killed by SIGKILL"
    assert "qemu says goodbye" in ending.evidence["last_lines"]


def test_qemu_exit_before_the_kernel_started_is_the_rigs(lab):
    _, console, state, sentinel = lab
    console.write_text("")
    state["qemu"] = 0
    ending = sentinel().check()
    assert isinstance(ending, CouldNotJudge) and ending.exit_code == 125


def test_the_first_ending_is_kept_and_reported_once(lab):
    _, console, state, sentinel = lab
    watch = sentinel()
    ended = []
    done = threading.Event()
    watch.start(lambda ending: (ended.append(ending), done.set()), interval=0.01)
    try:
        state["devices"][1].log_reply("DEVICE_SET_IRQS", 5)
        assert done.wait(10), "the sentinel never called on_end"
        state["qemu"] = -9                                 # later endings change nothing
        assert watch.check() is ended[0]
    finally:
        watch.stop()
    assert len(ended) == 1 and ended[0].outcome is Outcome.DEVICE_FAULT


def test_a_rig_process_seen_stopped_is_named(lab):
    # A stopped QEMU or device server cannot run the guest: a guest that did not answer
    # meanwhile is the rig's doing (lab._no_answer asks stopped_since).
    import signal
    import time
    _, _, state, sentinel = lab
    qemu = subprocess.Popen(["sleep", "60"])
    server = subprocess.Popen(["sleep", "60"])
    state["devices"][1].pid = server.pid
    try:
        watch = sentinel(qemu_pid=lambda: qemu.pid)
        before = time.monotonic()
        assert watch.check() is None and watch.stopped_since(before) is None
        for proc, name in ((qemu, "QEMU"), (server, "the device server of NIC 1")):
            proc.send_signal(signal.SIGSTOP)
            wait_until_stopped(proc.pid)
            assert watch.check() is None                 # being stopped ends nothing
            proc.send_signal(signal.SIGCONT)
            assert watch.stopped_since(before) == name   # seen by that look, now running
            before = time.monotonic()
            assert watch.stopped_since(before) is None
    finally:
        for proc in (qemu, server):
            proc.kill()
            proc.wait(timeout=10)


def wait_until_stopped(pid: int) -> None:
    from msixlab_common.deadline import wait_until
    from msixlab_common.lifetime import process_stopped
    wait_until(lambda: process_stopped(pid), 10, f"pid {pid} to stop")


def test_a_failure_judged_while_the_host_stopped_qemu_cannot_judge(lab):
    # A step whose raises were not counted in time because QEMU was stopped (SIGSTOP)
    # says nothing about the kernel: Lab.check_not_stopped makes it 125, and the
    # scenario asks it whenever a step failed, from that step's start.
    import signal
    import time

    from agent.host.lab.lab import Lab
    from agent.host.verdict.routing import CheckResult, Verdict
    from agent.host.scenarios.default import Scenario
    _, _, _, sentinel = lab
    qemu = subprocess.Popen(["sleep", "60"])
    try:
        host = Lab.__new__(Lab)
        host.machine, host.sentinel = None, sentinel(qemu_pid=lambda: qemu.pid)
        before = time.monotonic()
        host.check_not_stopped(before, "step x failed")          # nothing stopped: no raise

        class OneStep(Scenario):
            PLAN = [("boom", ["counted"])]

            def step_boom(self):
                qemu.send_signal(signal.SIGSTOP)
                wait_until_stopped(qemu.pid)
                host.sentinel.check()                             # a look sees it stopped
                qemu.send_signal(signal.SIGCONT)
                self._add(CheckResult("counted", 1, Verdict.FAIL, "raise not counted"))
                return None

        host.device_command = lambda cmd, **kw: {"msix": {"table_size": 64}}
        host.cpus = 2
        with pytest.raises(CouldNotJudge) as err:
            OneStep(host).run()
        assert err.value.outcome is Outcome.PROCESS_FAILED
        assert "step boom failed, and QEMU was stopped (SIGSTOP)" in str(err.value)
    finally:
        qemu.kill()
        qemu.wait(timeout=10)

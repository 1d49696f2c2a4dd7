"""Who failed, the rig or the kernel (agent/host/lab/blame.py through the real Sentinel):
recorded consoles of the guest, each ending judged 125 with a named reason when the rig
failed, and 1 when the kernel reported anything, never the other way round."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.host.lab import blame
from agent.host.lab.console import (
    ConsoleWatch,
    find_splat,
    panic_blames_userspace,
    report_taints,
)
from agent.host.lab.sentinel import Sentinel
from agent.host.verdict.outcome import CouldNotJudge, GuestUnresponsive, KernelSplat, Outcome

BOOT = """\
SeaBIOS (version 1.16.3-debian-1.16.3-2)
[    0.000000] Linux version 7.3.4+deb13-amd64 (debian-kernel@lists.debian.org)
msixlab init: 7.3.4+deb13-amd64
"""
READY = "MSIXLAB-READY kernel=7.3.4+deb13-amd64 mode=agent uptime=4.73\n"

# the rig's init could not exec stage 2 (QEMU's 9p out of fds): PID 1 exits
KILL_INIT = BOOT + """\
switch_root: can't execute '/opt/msixlab/images/guest/stage2': Too many open files
[    2.345678] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100
[    2.345999] CPU: 0 UID: 0 PID: 1 Comm: switch_root Not tainted 7.3.4+deb13-amd64 #1
[    2.346100] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3 04/01/2014
[    2.346200] Call Trace:
[    2.346300]  <TASK>
[    2.346400]  dump_stack_lvl+0x5d/0x80
[    2.346500]  panic+0x118/0x2f0
[    2.346600]  do_exit.cold+0x15/0x15
[    2.346800]  __x64_sys_exit_group+0x14/0x20
[    2.347000]  entry_SYSCALL_64_after_hwframe+0x76/0x7e
[    2.347100] RIP: 0033:0x4b2f1d
[    2.347200]  </TASK>
[    2.347300] Kernel Offset: 0x2a000000 from 0xffffffff81000000
"""

# a truncated cached initramfs: the kernel finds no init and no root
NO_ROOT = """\
[    0.000000] Linux version 7.3.4+deb13-amd64 (debian-kernel@lists.debian.org)
[    0.812345] Initramfs unpacking failed: read error
[    1.500000] VFS: Cannot open root device "" or unknown-block(0,0): error -6
[    1.500100] Please append a correct "root=" boot option; here are the available partitions:
[    1.500200] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)
[    1.500300] CPU: 0 UID: 0 PID: 1 Comm: swapper/0 Not tainted 7.3.4+deb13-amd64 #1
[    1.500400] Call Trace:
"""

# init killed after the kernel oopsed in it, the oops in a form no headline knows
OOPSED_INIT = BOOT + """\
[    2.100000] msixlab: something unheard of happened in init's context
[    2.100100] RIP: 0010:msixlab_probe+0x42/0x90 [msixlab]
[    2.200000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009
[    2.200100] CPU: 0 UID: 0 PID: 1 Comm: sh Tainted: G      D    O       7.3.4+deb13-amd64 #1
"""

# the same panic, the earlier report unseen, its dump header the only evidence
TAINTED_INIT = BOOT + """\
[    2.200000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009
[    2.200100] CPU: 0 UID: 0 PID: 1 Comm: sh Tainted: G      D W  O       7.3.4+deb13-amd64 #1
[    2.200200] Call Trace:
"""

INIT_FAILED = BOOT + "MSIXLAB-INIT-FAILED: insmod kernel/fs/overlayfs/overlay.ko.xz\n"
KMOD_FAILED = BOOT + READY + "MSIXLAB-KMOD-FAILED: insmod /opt/kmod/msixlab.ko\n"
# a truncated python3: the shell cannot run it; taint and the kernel log unchanged
TRUNCATED_PYTHON = BOOT + READY + ("/opt/msixlab/images/guest/stage2: 61: /tmp/python3: "
                                   "Exec format error\n"
                                   "MSIXLAB-AGENT-EXIT: status=126 tainted=12288->12288 kmsg=0\n"
                                   "MSIXLAB-POWEROFF status=126\n")
# the agent killed by an oops whose console line no pattern knows: taint D gained
AGENT_OOPSED = BOOT + READY + ("[   15.000000] msixlab: an unheard-of report\n"
                               "MSIXLAB-AGENT-EXIT: status=137 tainted=12288->12416 kmsg=31\n")
# ... or only kernel warnings logged while it ran (the taint mask unreadable)
AGENT_WARNED = BOOT + READY + "MSIXLAB-AGENT-EXIT: status=139 tainted=->12288 kmsg=2\n"


class Server:
    name, event_log, stderr_log, pid = "the device server", "/nonexistent.jsonl", "/dev/null", None

    def poll(self):
        return None


def sentinel_on(tmp_path, text: str, qemu: int | None = None, answered: bool = False,
                splats: bool = True) -> Sentinel:
    console = tmp_path / "console.log"
    console.write_text(text)
    (tmp_path / "qemu.log").write_text("")
    watch = Sentinel(console, qemu=lambda: qemu, qemu_log=tmp_path / "qemu.log",
                     devices=lambda: [Server()], splats=splats)
    if answered:
        watch.agent_answered()
    return watch


@pytest.mark.parametrize("text,reason", [
    (KILL_INIT, "Attempted to kill init"),
    (NO_ROOT, "VFS: Unable to mount root fs"),
])
def test_a_panic_over_the_rigs_user_space_before_the_hello_is_the_rigs(tmp_path, text, reason):
    ending = sentinel_on(tmp_path, text, qemu=0).check()        # -no-reboot: QEMU exits
    assert isinstance(ending, CouldNotJudge), ending
    assert ending.outcome is Outcome.GUEST_SETUP_FAILED and ending.exit_code == 125
    assert reason in str(ending) and reason in ending.evidence["line"]


def test_that_panic_waits_for_its_dump_while_qemu_runs(tmp_path, monkeypatch):
    """Seen before QEMU exits, the panic is judged once its dump had time to show."""
    monkeypatch.setattr(blame, "PANIC_DUMP_WAIT_S", 0.0)
    assert sentinel_on(tmp_path, KILL_INIT).check().outcome is Outcome.GUEST_SETUP_FAILED
    monkeypatch.setattr(blame, "PANIC_DUMP_WAIT_S", 60.0)
    assert sentinel_on(tmp_path, KILL_INIT).check() is None


@pytest.mark.parametrize("text,kind", [(OOPSED_INIT, "register dump"), (TAINTED_INIT, "panic")])
def test_init_killed_after_a_kernel_report_is_the_kernels(tmp_path, text, kind):
    ending = sentinel_on(tmp_path, text, qemu=0).check()
    assert isinstance(ending, KernelSplat) and ending.exit_code == 1, ending
    assert ending.kind == kind


def test_a_panic_after_the_hello_stays_the_kernels(tmp_path):
    ending = sentinel_on(tmp_path, KILL_INIT, qemu=0, answered=True).check()
    assert isinstance(ending, KernelSplat) and ending.kind == "panic"


@pytest.mark.parametrize("text,marker,reason", [
    (INIT_FAILED, "MSIXLAB-INIT-FAILED", "insmod kernel/fs/overlayfs/overlay.ko.xz"),
    (KMOD_FAILED, "MSIXLAB-KMOD-FAILED", "insmod /opt/kmod/msixlab.ko"),
    (TRUNCATED_PYTHON, "MSIXLAB-AGENT-EXIT", "status=126"),
])
@pytest.mark.parametrize("qemu", [None, 0])      # seen while QEMU runs, and once it exited
def test_a_rig_marker_is_the_rigs_with_its_reason(tmp_path, text, marker, reason, qemu):
    ending = sentinel_on(tmp_path, text, qemu=qemu).check()
    assert isinstance(ending, CouldNotJudge), ending
    assert ending.outcome is Outcome.GUEST_SETUP_FAILED and ending.exit_code == 125
    assert ending.evidence["marker"] == marker and reason in ending.evidence["reason"]
    assert reason in str(ending)


def test_an_agent_that_exits_after_the_hello_with_no_kernel_report_is_the_rigs(tmp_path):
    ending = sentinel_on(tmp_path, TRUNCATED_PYTHON, answered=True).check()
    assert isinstance(ending, CouldNotJudge) and ending.exit_code == 125
    assert "after the guest agent's hello" in str(ending)


@pytest.mark.parametrize("answered", [False, True])
@pytest.mark.parametrize("splats", [True, False])   # the console patterns know nothing
def test_an_agent_killed_while_the_kernel_gained_taint_is_the_kernels(tmp_path, answered,
                                                                     splats):
    ending = sentinel_on(tmp_path, AGENT_OOPSED, answered=answered, splats=splats).check()
    assert isinstance(ending, KernelSplat) and ending.exit_code == 1, ending
    assert ending.evidence["taints"] == "D" and "status 137" in str(ending)


def test_an_agent_killed_while_the_kernel_warned_is_the_kernels(tmp_path):
    ending = sentinel_on(tmp_path, AGENT_WARNED, answered=True).check()
    assert isinstance(ending, KernelSplat) and ending.kind == "kernel warning"
    assert ending.evidence["kernel_warnings"] == 2


@pytest.mark.parametrize("answered,expected", [(False, CouldNotJudge),
                                               (True, GuestUnresponsive)])
def test_a_guest_that_powers_off_is_the_rigs_before_the_hello(tmp_path, answered, expected):
    ending = sentinel_on(tmp_path, BOOT + READY, qemu=0, answered=answered).check()
    assert isinstance(ending, expected), ending
    if not answered:
        assert ending.outcome is Outcome.GUEST_SETUP_FAILED


def test_ready_and_taint_letters_are_read_from_the_console(tmp_path):
    path = tmp_path / "console.log"
    path.write_text(TAINTED_INIT + READY)
    watch = ConsoleWatch(path)
    watch.finish()
    assert watch.ready and watch.report_taints == "DW"


def test_taint_letters_of_a_user_space_line_are_not_the_kernels(tmp_path):
    path = tmp_path / "console.log"
    path.write_text(BOOT + "echo Comm: sh Tainted: G D W 7.3\n")
    watch = ConsoleWatch(path)
    watch.finish()
    assert watch.report_taints == ""


@pytest.mark.parametrize("line,rig", [
    ("[ 2.3] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100", True),
    ("[ 1.5] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
     True),
    ("[ 1.5] Kernel panic - not syncing: No working init found.  Try passing init= option",
     True),
    ("[ 9.1] Kernel panic - not syncing: Fatal exception", False),
    ("[ 9.1] Kernel panic - not syncing: msixlab0: panic requested through MSIXLAB_IOC_CRASH",
     False),
])
def test_which_panics_name_user_space(line, rig):
    assert panic_blames_userspace(line) is rig


def test_report_taint_letters():
    assert report_taints((1 << 12) | (1 << 13)) == ""            # O, E: a module loaded
    assert report_taints((1 << 7) | (1 << 9) | (1 << 12)) == "DW"


RECORDED = Path(__file__).parent / "data" / "consoles"


def test_recorded_emfile_boot_is_the_rigs(tmp_path):
    """The real console of `prlimit --nofile=32 msixlab run` without the up-front fd check
    (QEMU's 9p out of fds: stage 2's shell cannot load libc, PID 1 exits, the kernel
    panics): judged kernel_splat (1) before blame.py, now guest_setup_failed (125)."""
    text = (RECORDED / "emfile-kill-init.log").read_text()
    ending = sentinel_on(tmp_path, text, qemu=0).check()
    assert isinstance(ending, CouldNotJudge) and ending.exit_code == 125, ending
    assert "Attempted to kill init" in str(ending)
    assert "Error 24" in ending.evidence["before"]      # what the shell said


def test_recorded_truncated_python3_is_the_rigs(tmp_path):
    """The real console of a guest whose python3 was cut to 4096 bytes
    (guest_tests/test_rig_or_kernel.py): the agent segfaults before its hello."""
    text = (RECORDED / "truncated-python3.log").read_text()
    ending = sentinel_on(tmp_path, text).check()
    assert isinstance(ending, CouldNotJudge), ending
    assert ending.outcome is Outcome.GUEST_SETUP_FAILED and "status=139" in str(ending)


@pytest.mark.parametrize("answered", [False, True])
def test_recorded_oops_that_killed_the_agent_unknown_to_the_patterns_is_the_kernels(
        tmp_path, answered):
    """The real console of an oops in the agent's own process, every line a console
    pattern knows (BUG:, Oops:, RIP: 0010:) replaced by one none knows: the agent's exit
    with taint D gained is the kernel's."""
    lines = (RECORDED / "oops-kills-agent.log").read_text().splitlines()
    assert any(find_splat(line) for line in lines)
    hidden = "\n".join("[   12.3] msixlab: an unheard-of report" if find_splat(line) else line
                       for line in lines) + "\n"
    ending = sentinel_on(tmp_path, hidden, answered=answered).check()
    assert isinstance(ending, KernelSplat) and ending.exit_code == 1, ending
    assert ending.evidence["taints"] == "D" and ending.evidence["kernel_warnings"] > 0


def health(tainted, *messages):
    return {"tainted": tainted, "warnings": {
        "count": len(messages), "lost": 0, "readable": True,
        "messages": [{"level": level, "text": text} for level, text in messages]}}


def test_kernel_health_unchanged_is_evidence_only():
    answer = health(12288, (4, "msixlab: loading out-of-tree module taints kernel."),
                    (3, "some driver: an error that is no report"))
    evidence = blame.health_evidence(12288, answer)
    blame.judge_kernel_health(evidence, answer)                      # no ending
    assert evidence["kernel_warnings"] == 2 and evidence["messages"][1].startswith("<3> ")


@pytest.mark.parametrize("after,gained", [(12288 | 1 << 9, "W"), (12288 | 1 << 7 | 1 << 14, "DL")])
def test_kernel_health_taint_gained_is_the_kernels(after, gained):
    answer = health(after, (4, "a report in a form no console pattern knows"))
    evidence = blame.health_evidence(12288, answer)
    with pytest.raises(KernelSplat) as err:
        blame.judge_kernel_health(evidence, answer)
    assert err.value.kind == "taint" and err.value.evidence["taints"] == gained
    assert err.value.evidence["tainted_before"] == 12288
    assert "a report in a form" in err.value.evidence["messages"][0]


def test_kernel_health_a_module_load_is_no_report():
    answer = health(12288 | 1 << 12 | 1 << 13)                    # O, E: msixlab.ko reloaded
    blame.judge_kernel_health(blame.health_evidence(0, answer), answer)


def test_kernel_health_a_critical_message_is_the_kernels():
    answer = health(12288, (2, "unheard-of: something critical"))
    with pytest.raises(KernelSplat) as err:
        blame.judge_kernel_health(blame.health_evidence(12288, answer), answer)
    assert err.value.kind == "kernel message" and "something critical" in str(err.value)

"""The console watcher: every kind of kernel report is seen (with and without the printk
caller id), user-space text is not, and the file is read incrementally across partial
lines."""

import pytest

from agent.host.lab.console import ConsoleWatch, find_splat

REPORTS = [
    ("[   12.345678] Kernel panic - not syncing: sysrq triggered crash", "panic"),
    ("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009", "panic"),
    ("[    3.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008", "BUG"),
    ("[    3.100000] kernel BUG at drivers/pci/msi/msi.c:123!", "BUG"),
    ("[    3.100001] Oops: general protection fault, probably for non-canonical address", "oops"),
    ("[    3.100001] Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops"),
    ("[    5.000000] WARNING: CPU: 1 PID: 230 at drivers/misc/x.c:10 x_ioctl+0x1/0x2 [msixlab]",
     "WARN"),
    ("[    5.000000] [    T230] WARNING: CPU: 1 PID: 230 at kernel/irq/msi.c:9 f+0x1/0x2", "WARN"),
    # the real lines of the driver's crash warn (guest_tests/test_kmod_controls.py), 7.3.4
    # and 6.12.117
    ("[   15.149643] WARNING: msixlab_fault.c:38 at msixlab_crash_warn+0xc/0x20 [msixlab], "
     "CPU#0: python3/138", "WARN"),
    ("[   37.475754] WARNING: CPU: 1 PID: 180 at /mnt/msixlab_fault.c:38 "
     "msixlab_crash_warn+0x15/0x20 [msixlab]", "WARN"),
    ("[    7.000000] BUG: KASAN: slab-use-after-free in msi_domain_free_irqs+0x10/0x20", "KASAN"),
    ("[    7.000000] UBSAN: array-index-out-of-bounds in drivers/pci/msi/msi.c:700:9", "UBSAN"),
    ("[    8.000000] WARNING: possible circular locking dependency detected", "lockdep"),
    ("[    8.000000] WARNING: inconsistent lock state", "lockdep"),
    ("[  130.000000] INFO: task python3:231 blocked for more than 120 seconds.", "hung task"),
    ("[   30.000000] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [python3:231]",
     "soft lockup"),
    ("[   30.000000] NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", "hard lockup"),
    # the registers of kernel code (CS 0x10): only an oops, BUG or WARN prints them, so a
    # report whose headline no pattern knows is still seen
    ("[   15.149700] RIP: 0010:msixlab_crash_warn+0xc/0x20 [msixlab]", "register dump"),
]

NOT_REPORTS = [
    "[    1.219211] mtrr: your CPUs had inconsistent fixed MTRR settings",
    "[    1.657682] ACPI: IRQ 4 override to edge(!), high(!)",
    "WARNING: CPU: 1 PID: 2 at something printed by a program, no timestamp",
    "BUG: a user-space program's message",
    "MSIXLAB-READY kernel=7.3.4+deb13-amd64 mode=agent uptime=4.73",
    "[    4.848912] reboot: Power down",
    "[    2.347100] RIP: 0033:0x4b2f1d",          # user space's registers in a panic's dump
    "RIP: 0010:printed by a program",
]


@pytest.mark.parametrize("line,kind", REPORTS)
def test_every_kind_of_report_is_seen(line, kind):
    assert find_splat(line) == kind


@pytest.mark.parametrize("line", NOT_REPORTS)
def test_ordinary_lines_are_not_reports(line):
    assert find_splat(line) is None


def test_incremental_reads_across_partial_lines(tmp_path):
    path = tmp_path / "console.log"
    watch = ConsoleWatch(path)
    assert watch.poll() is None                      # no file yet
    path.write_bytes(b"msixlab init: 7.3\n[    1.0] ok\n[   12.3] Kernel pan")
    assert watch.poll() is None and watch.kernel_started
    with open(path, "ab") as f:
        f.write(b"ic - not syncing: Fatal exception\n[   12.4] WARNING: CPU: 0 PID: 1 at x\n")
    splat = watch.poll()
    assert (splat.kind, splat.lineno) == ("panic", 3)
    assert splat.line == "[   12.3] Kernel panic - not syncing: Fatal exception"
    assert watch.poll() is splat                     # the first one is kept


def test_a_last_line_without_newline_is_judged_at_finish(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"[    2.0] BUG: unable to handle page fault for address: 8")
    watch = ConsoleWatch(path)
    assert watch.poll() is None
    assert watch.finish().kind == "BUG"


def test_kernel_not_started_without_kernel_output(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"SeaBIOS (version 1.16)\n")
    watch = ConsoleWatch(path)
    watch.finish()
    assert not watch.kernel_started

"""The driver's ABI edges in a real guest: how a raise waits, and malformed requests.

Runs guest_tests/guest_side/kmod_abi.py once through ``msixlab shell`` (it needs two
threads on the device at once and raw, malformed ioctls, which the agent never sends)
and judges the numbers it prints.  The guest sees the script through the tests' extra
share (``$MSIXLAB_GUEST_EXTRA``, at /opt/msixlab-extra): msixlab stages only its own guest
files for the guest.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from pathlib import Path

from agent.host.lab.console import find_splat
from agent.host.lab.guest_spec import EXTRA_ENV
from test_shell import at_prompt

GUEST_SIDE = Path(__file__).resolve().parent / "guest_side"

WAIT_S = 5.0          # the raises' timeout in the script
HOLD_S = 0.5          # how long the script lets a raise wait before acting


@pytest.fixture(scope="module")
def got(tmp_path_factory):
    results = tmp_path_factory.mktemp("kmod-abi")
    term = at_prompt([sys.executable, "-m", "agent.host", "shell", "--results", str(results)],
                     env={EXTRA_ENV: str(GUEST_SIDE)})
    try:
        term.type("python3 /opt/msixlab-extra/kmod_abi.py; exit")
        term.expect(b"MSIXLAB-POWEROFF", 120)
        match = re.search(rb"MSIXLAB-KMOD-ABI (\{.*\})", term.seen)
        assert match, term.seen[-3000:]
        assert term.proc.wait(timeout=60) == 0
        measured = json.loads(match.group(1))
        text = term.seen.decode(errors="replace")
        measured["splats"] = [line for line in text.splitlines() if find_splat(line)]
        return measured
    finally:
        term.kill()


def test_raise_wait_does_not_hold_the_device_lock(got):
    """Other ioctls (and an allocation) run while a raise is waiting."""
    assert got["info_during_wait_s"] < 1.0 and got["alloc_during_wait_s"] < 1.0, got


def test_raise_wait_is_interruptible(got):
    """A signal ends the wait at once, with EINTR (never restarted: it would ring twice)."""
    assert got["signalled"]["errno"] == "EINTR", got
    assert got["signalled"]["seconds"] < WAIT_S - 1, got


def test_raise_wait_ends_when_its_vector_goes(got):
    """Freeing the vector, or unbinding the device, wakes the waiter with the reason, and
    the unbind is not held up by the waiting raise."""
    assert got["freed"]["errno"] == "ENOENT" and got["freed"]["seconds"] < WAIT_S - 1, got
    assert got["unbound"]["errno"] == "ENODEV" and got["unbound"]["seconds"] < WAIT_S - 1, got
    assert got["unbind_during_wait_s"] < WAIT_S - HOLD_S - 1, got
    assert got["rebound_mask"] == 0, got


def test_undelivered_raise_times_out_on_time(got):
    assert got["timed_out"]["errno"] == "ETIMEDOUT", got
    assert 0.25 <= got["timed_out"]["seconds"] < 2.0, got


@pytest.mark.parametrize("case,code", [
    ("alloc_pad", "EINVAL"),
    ("get_group_pad", "EINVAL"),
    ("vector_pad", "EINVAL"),
    ("entry_pad", "EINVAL"),
    ("function_mask_pad", "EINVAL"),
    ("function_mask_2", "EINVAL"),
    ("vector_short_buffer", "EOVERFLOW"),
    ("vector_len_without_buffer", "EINVAL"),
    ("vector_no_buffer", None),
    ("vector_exact_buffer", None),
    ("crash_kind_0", "EINVAL"),
    ("crash_warn_delay", "EINVAL"),
    ("irq_fault_pad", "EINVAL"),
    ("irq_fault_past_max", "EINVAL"),
    ("irq_fault_disarm", None),
    ("version_1_magic", "ENOTTY"),
])
def test_malformed_requests_are_refused(got, case, code):
    assert got["abi"][case] == code, got["abi"]


@pytest.mark.parametrize("case,code", [
    ("alloc_min_0", "EINVAL"),
    ("alloc_min_gt_max", "EINVAL"),
    ("alloc_min_gt_table", "EINVAL"),
    ("alloc_start_table", "EINVAL"),
    ("alloc_start_top", "EINVAL"),
    ("alloc_start_wraps", "EINVAL"),
    ("alloc_cpu_nr_cpu_ids", "EINVAL"),
    ("alloc_cpu_top", "EINVAL"),
    ("alloc_unknown_flag", "EINVAL"),
    ("alloc_managed_no_cpu", "EINVAL"),
    ("free_0", "EPERM"),
    ("free_never", "ENOENT"),
    ("free_no_group", "ENOENT"),
    ("get_group_top", "ENOENT"),
    ("vector_top", "EINVAL"),
    ("vector_table", "EINVAL"),
    ("vector_bad_buffer", "EFAULT"),
    ("vector_kernel_buffer", "EFAULT"),
    ("raise_top", "EINVAL"),
    ("raise_unallocated", "ENOENT"),
    ("raise_timeout_over", "EINVAL"),
    ("raise_timeout_top", "EINVAL"),
    ("entry_top", "EINVAL"),
    ("entry_table", "EINVAL"),
    ("totals_count_0", "EOVERFLOW"),
    ("totals_count_short", "EOVERFLOW"),
    ("totals_count_over", "EINVAL"),
    ("totals_count_top", "EINVAL"),
    ("totals_no_buffer", "EINVAL"),
    ("totals_bad_buffer", "EFAULT"),
    ("totals_bad_want", "EFAULT"),
    ("totals_timeout_over", "EINVAL"),
    ("totals_pad", "EINVAL"),
    ("totals_max", None),
    ("crash_kind_4", "EINVAL"),
    ("crash_panic_delay_over", "EINVAL"),
    ("info_wrong_size", "ENOTTY"),
    ("info_null", "EFAULT"),
    ("alloc_null", "EFAULT"),
])
def test_hostile_requests_get_their_errno(got, case, code):
    assert got["hostile"][case] == code, got["hostile"]


def test_hostile_requests_leave_the_device_as_it_was(got):
    assert got["hostile_left"] == {"rows": True, "allocated": [0]}, got["hostile_left"]


def test_group_edges(got):
    """A group freed twice is ENOENT the second time; max = 0xffffffff takes every free
    entry (the lab's 64-entry table less index 0); a group outlives the file that
    allocated it (groups belong to the device; unbind frees them)."""
    assert got["groups"] == {"free_twice": "ENOENT", "max_top_count": 63,
                             "kept_after_close": True}, got["groups"]


def test_two_threads_on_two_files_leave_nothing_behind(got):
    hammer = got["hammer"]
    assert hammer["errors"] == [] and all(hammer["rounds"]), hammer
    assert got["hammer_left"] == {"rows": True, "groups": [0], "allocated": [0]}, got


def test_no_kernel_report_on_the_console(got):
    """None of the above made the kernel WARN, oops or report anything (the console
    watcher's patterns, over everything the shell showed)."""
    assert got["splats"] == [] and got["dmesg_reports"] == [], got

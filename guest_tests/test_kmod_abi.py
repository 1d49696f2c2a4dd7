"""The driver's ABI edges in a real guest: how a raise waits, and malformed requests.

Runs guest_tests/guest_side/kmod_abi.py once through ``msixlab shell`` (it needs two
threads on the device at once and raw, malformed ioctls, which the agent never sends)
and judges the numbers it prints.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from test_shell import Terminal

WAIT_S = 5.0          # the raises' timeout in the script
HOLD_S = 0.5          # how long the script lets a raise wait before acting


@pytest.fixture(scope="module")
def got(tmp_path_factory):
    results = tmp_path_factory.mktemp("kmod-abi")
    term = Terminal([sys.executable, "-m", "agent.host", "shell", "--results", str(results)])
    try:
        term.expect(b"msixlab-guest:", 180)
        term.type("python3 /opt/msixlab/guest_tests/guest_side/kmod_abi.py; exit")
        term.expect(b"MSIXLAB-POWEROFF", 120)
        match = re.search(rb"MSIXLAB-KMOD-ABI (\{.*\})", term.seen)
        assert match, term.seen[-3000:]
        assert term.proc.wait(timeout=60) == 0
        return json.loads(match.group(1))
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()


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
    ("version_1_magic", "ENOTTY"),
])
def test_malformed_requests_are_refused(got, case, code):
    assert got["abi"][case] == code, got["abi"]

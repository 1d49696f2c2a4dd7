"""A raise waits without the device lock, interruptibly, and ends when its vector goes.

Runs guest_tests/guest_side/raise_wait.py in a real guest through ``msixlab shell`` (it
needs two threads on the device at once, which the one-request-at-a-time agent cannot
give) and judges the numbers it prints.
"""

from __future__ import annotations

import json
import re
import sys

from test_shell import Terminal

WAIT_S = 5.0          # the raises' timeout in the script
HOLD_S = 0.5          # how long the script lets a raise wait before acting


def test_raise_wait_is_unlocked_interruptible_and_ends_with_its_vector(tmp_path):
    term = Terminal([sys.executable, "-m", "agent.host", "shell", "--results", str(tmp_path)])
    try:
        term.expect(b"msixlab-guest:", 180)
        term.type("python3 /opt/msixlab/guest_tests/guest_side/raise_wait.py; exit")
        term.expect(b"MSIXLAB-POWEROFF", 120)
        match = re.search(rb"MSIXLAB-RAISE-WAIT (\{.*\})", term.seen)
        assert match, term.seen[-3000:]
        got = json.loads(match.group(1))
        assert term.proc.wait(timeout=60) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()
    # other ioctls (and an allocation) ran while a raise was waiting: no lock held
    assert got["info_during_wait_s"] < 1.0 and got["alloc_during_wait_s"] < 1.0, got
    # a signal ends the wait at once, with EINTR (never restarted: it would ring twice)
    assert got["signalled"]["errno"] == "EINTR", got
    assert got["signalled"]["seconds"] < WAIT_S - 1, got
    # freeing the vector, or unbinding the device, wakes the waiter with a reason
    assert got["freed"]["errno"] == "ENOENT" and got["freed"]["seconds"] < WAIT_S - 1, got
    assert got["unbound"]["errno"] == "ENODEV" and got["unbound"]["seconds"] < WAIT_S - 1, got
    assert got["unbind_during_wait_s"] < WAIT_S - HOLD_S - 1, got
    # an undelivered raise times out after its own timeout
    assert got["timed_out"]["errno"] == "ETIMEDOUT", got
    assert 0.25 <= got["timed_out"]["seconds"] < 2.0, got
    assert got["rebound_mask"] == 0, got

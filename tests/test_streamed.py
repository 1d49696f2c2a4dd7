"""msixlab_common.streamed: the one way a build or a bisect step's child is run, streamed
and stopped (a watchdog, one stop policy for the whole process group)."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.host.kernel import build
from agent.host.kernel.errors import KernelBuildFailed
from msixlab_common import streamed
from msixlab_common.lifetime import process_alive


def _gone(pid: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_lines_reach_the_log_and_the_callback_in_order():
    log, seen = io.StringIO(), []
    done = streamed.stream(["sh", "-c", "echo one; echo two >&2; echo three"], timeout=30,
                           log=log, on_line=seen.append)
    assert (done.returncode, done.timed_out) == (0, False)
    assert seen == ["one", "two", "three"]
    assert log.getvalue() == "one\ntwo\nthree\n"


def test_exit_status_is_kept():
    assert streamed.stream(["sh", "-c", "exit 7"], timeout=30).returncode == 7


def test_a_child_that_prints_nothing_and_hangs_is_stopped_at_its_timeout(tmp_path):
    """The watchdog fires without a line from the child; its background job (same
    group) is stopped with it."""
    pid_file = tmp_path / "job.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    done = streamed.stream(["sh", "-c", script], timeout=1.0, grace=2.0)
    took = time.monotonic() - started
    assert done.timed_out
    assert done.returncode < 0 or done.returncode > 128
    assert took < 10, f"stopped after {took:.1f} s, timeout was 1 s"
    assert _gone(int(pid_file.read_text())), "the child's background job outlived it"


def test_a_child_that_ignores_the_stop_signal_is_killed_after_the_grace(tmp_path):
    done = streamed.stream(["sh", "-c", "trap '' TERM; sleep 300"], timeout=0.5, grace=0.5)
    assert done.timed_out and done.returncode == -signal.SIGKILL


def test_the_stop_signal_is_the_callers(tmp_path):
    """msixlab run tears its lab down on SIGINT: the bisect stops its step with it."""
    mark = tmp_path / "got"
    script = f"trap 'echo INT > {mark}; exit 3' INT; while :; do sleep 0.1; done"
    done = streamed.stream(["sh", "-c", script], timeout=0.5, stop_sig=signal.SIGINT,
                           grace=5)
    assert done.timed_out and done.returncode == 3
    assert mark.read_text().strip() == "INT"


def test_an_error_in_the_callback_stops_the_child_and_propagates(tmp_path):
    pid_file = tmp_path / "pid"

    def boom(line: str) -> None:
        raise RuntimeError(f"callback failed on {line!r}")
    with pytest.raises(RuntimeError, match="first"):
        streamed.stream(["sh", "-c", f"echo $$ > {pid_file}; echo first; sleep 300"],
                        timeout=60, on_line=boom, grace=2)
    assert _gone(int(pid_file.read_text()))


def test_a_child_that_cannot_start_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        streamed.stream([str(tmp_path / "no-such-program")], timeout=5)


def test_a_silent_hanging_make_is_stopped_at_the_build_timeout(tmp_path):
    """The bug: the kernel build checked its deadline only when make printed a line, so
    a make or compiler that hung silently was never stopped."""
    (tmp_path / "Makefile").write_text("all:\n\t@exec sleep 300\n")
    log_path = tmp_path / "log"
    started = time.monotonic()
    with open(log_path, "w") as log, pytest.raises(KernelBuildFailed, match="longer than"):
        build._make(SimpleNamespace(path=tmp_path), ["all"], log, None, 1.0, 0, "build",
                    log_path)
    assert time.monotonic() - started < 20


def test_one_streamed_child_policy_in_the_house():
    """The image build, the kernel build and bisect all stream through msixlab_common/
    streamed.py: no other module arms a watchdog timer over a child of its own."""
    root = Path(__file__).resolve().parents[1]
    armed = [str(p.relative_to(root)) for package in ("agent/host", "images", "msixlab_common")
             for p in (root / package).rglob("*.py")
             if p.name != "streamed.py" and "threading.Timer(" in p.read_text()]
    assert armed == []

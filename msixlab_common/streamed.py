"""A child process streamed line by line under a watchdog, with one stop policy.

Concepts: ``stream(argv, timeout=...)`` starts the child in a process group of its own with
a parent-death signal (``lifetime.die_with_parent``), copies every line it prints to a log
file and to an ``on_line`` callback, and waits for it.  A *watchdog* thread fires at the
deadline whether the child prints or not (a ``make`` or a compiler that hangs silently is
stopped all the same), and whenever the child must stop (the watchdog, Ctrl-C, an error in
the caller's callback) the *stop policy* is the same: ``stop_sig`` to the whole group (make
passes SIGTERM to its jobs; msixlab's own run tears its lab down on SIGINT), ``grace``
seconds, then SIGKILL to what is left of the group.  ``Streamed`` says how it ended.
Standard library only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, TextIO

from .lifetime import die_with_parent

GRACE = 10.0          # seconds between the stop signal and SIGKILL


@dataclass(frozen=True)
class Streamed:
    """How a streamed child ended: its exit status (negative: the signal that killed
    it) and whether the watchdog had to stop it."""
    argv: tuple[str, ...]
    returncode: int
    timed_out: bool
    timeout: float


def stop_group(proc: subprocess.Popen, stop_sig: int = signal.SIGTERM,
               grace: float = GRACE) -> None:
    """The one stop policy: ``stop_sig`` to ``proc``'s group, up to ``grace`` seconds for
    it to go, then SIGKILL to what is left of the group; ``proc`` is reaped."""
    for sig, wait in ((stop_sig, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:                                    # the leader may be gone, its jobs not
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _preexec(death_sig: int, niceness: int) -> Callable[[], None]:
    die = die_with_parent(death_sig)

    def preexec() -> None:
        die()
        if niceness:
            os.nice(niceness)
    return preexec


def stream(argv: list[str], *, timeout: float, log: TextIO | None = None,
           on_line: Callable[[str], None] | None = None, cwd: str | os.PathLike | None = None,
           env: Mapping[str, str] | None = None, stop_sig: int = signal.SIGTERM,
           death_sig: int = signal.SIGTERM, niceness: int = 0,
           grace: float = GRACE) -> Streamed:
    """Run ``argv`` to its end or for at most ``timeout`` seconds, streaming its output
    (stdout and stderr merged) to ``log`` and, line by line, to ``on_line``.  A child that
    outlives ``timeout`` is stopped (``stop_group``) and ``timed_out`` is true; an
    exception here (Ctrl-C included) stops it the same way and propagates.  Raises
    ``OSError`` when the child cannot be started."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                            cwd=cwd, env=None if env is None else dict(env),
                            start_new_session=True, preexec_fn=_preexec(death_sig, niceness))
    fired = threading.Event()

    def watchdog() -> None:
        fired.set()
        stop_group(proc, stop_sig, grace)

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.start()
    try:
        for line in proc.stdout:
            if log is not None:
                log.write(line)
                log.flush()             # the log can be followed while the child runs
            if on_line is not None:
                on_line(line.rstrip("\n"))
        proc.wait()
    except BaseException:
        timer.cancel()
        stop_group(proc, stop_sig, grace)
        raise
    finally:
        timer.cancel()
        timer.join()
        proc.stdout.close()
    return Streamed(tuple(argv), proc.returncode, fired.is_set(), timeout)

"""Process lifetime: children that die with msixlab, and SIGTERM/SIGHUP handled as Ctrl-C.

Concepts: every long-running child (QEMU, the device server, the image build, the driver
builds, a kernel tree's ``make``, a bisect step's ``msixlab run``) is started with
``preexec_fn=die_with_parent(sig)``: in the child, between fork and exec, it asks the
kernel for a *parent-death signal* (``prctl(PR_SET_PDEATHSIG)``), so the child
gets ``sig`` the moment msixlab dies, however it dies (SIGKILL included).  If msixlab
died before the request took effect, the child is already an orphan: it checks that its
parent is still the process that forked it and, if not, sends itself ``sig``.  The kernel
sends the signal when the *thread* that forked the child exits, so children are started
from the main thread (as everywhere in msixlab).

``interrupt_on(SIGTERM, SIGHUP)`` makes those signals raise ``Terminated``, a
``KeyboardInterrupt``: every ``finally``, context manager and ``except KeyboardInterrupt``
that tears a run down for Ctrl-C does the same for them.  ``process_alive(pid, start_time)``
tells a live process from an exited one (zombies included) or a reused pid.
Standard library only.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
from typing import Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                   ctypes.c_ulong]
_prctl.restype = ctypes.c_int


class Terminated(KeyboardInterrupt):
    """msixlab got a termination signal (``signum``); torn down as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when this process dies."""
    parent = os.getpid()

    def preexec() -> None:                  # runs in the child, between fork and exec
        if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
        if os.getppid() != parent:          # the parent died before prctl took effect
            signal.signal(sig, signal.SIG_DFL)      # not the handler inherited from it
            os.kill(os.getpid(), sig)
    return preexec


def run_in_group(argv: list[str], timeout: float, sig: int = signal.SIGTERM,
                 **popen: object) -> subprocess.CompletedProcess:
    """``argv`` run to its end, at most ``timeout`` seconds (then ``TimeoutExpired``), in
    a process group of its own with a parent-death ``sig``; however it ends (done, timed
    out, Ctrl-C), what is left of its group is killed before this returns or raises, so a
    build's jobs or a wrapper's children never outlive it (one that keeps a captured
    output pipe open is waited for up to ``timeout``, as the output is).  ``popen``:
    Popen's keywords (``stdout``, ``stderr``, ``text``, ``env``, ``cwd``...)."""
    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent(sig),
                            **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of ``proc``'s process group (it leads one) and reap ``proc``;
    its pipes are closed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:                  # the group is empty: everything in it has exited
        pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def interrupt_on(*signums: int) -> None:
    """Make each of ``signums`` raise ``Terminated`` in the main thread."""
    def handler(signum, frame):
        log.warning("got %s: stopping the run as for Ctrl-C", signal.Signals(signum).name)
        raise Terminated(signum)
    for signum in signums:
        signal.signal(signum, handler)


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    return stat[stat.rfind(b")") + 2:].split()


def process_status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status (``VmRSS`` -> ``"18180 kB"``, ...), empty if there
    is no such process or it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            return {key: value.strip() for key, _, value in
                    (line.partition(":") for line in f)}
    except OSError:
        return {}


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone (a
    zombie counts as gone: it has exited, only nobody has reaped it)."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    try:
        return int(fields[19])              # field 22 overall
    except (IndexError, ValueError):
        return None


def process_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped now (state T, SIGSTOP or SIGTSTP; or t, by a tracer)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] in (b"T", b"t")


def process_alive(pid: int, start_time: int | None = None) -> bool:
    """``pid`` runs (not a zombie) and, if ``start_time`` is given, is the process that
    started then rather than a later one that reused the pid."""
    started = process_start_time(pid)
    return started is not None and (start_time is None or started == start_time)

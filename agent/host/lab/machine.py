"""One QEMU guest's life: launch, wait for it, talk QMP, shut it down.

Concepts: a ``Machine`` moves through one ``State`` enum (CREATED -> RUNNING -> STOPPED,
or FAILED) guarded by a transition table.  QEMU's stdout/stderr go to ``qemu.log``, the
serial console to ``console.log``.  Every wait is bounded and names what it waited for;
a QEMU that dies early raises ``LaunchError`` with its exit code, argv and log tail.
Shutdown is graceful first (the guest powers off, else QMP ``quit``), then SIGKILL, each
with a timeout, and always runs in ``finally`` through the context manager.  QEMU dies
with msixlab whatever kills msixlab: it is started with a parent-death signal (SIGKILL,
``msixlab_common.lifetime``).
"""

from __future__ import annotations

import enum
import logging
import re
import signal
import subprocess
import time
from pathlib import Path

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from msixlab_common.lifetime import die_with_parent

from msixlab_common.artifacts import create_artifact
from msixlab_common.deadline import Deadline

from agent.host.errors import HostError, LaunchError, WaitTimeout
from agent.host.lab.qemu_argv import GuestSpec, build_argv

log = logging.getLogger(__name__)
QMP_TIMEOUT = 30.0   # seconds for any one QMP command


class State(enum.Enum):
    """A machine's life: created, running (QEMU started), stopped, or failed."""
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


TRANSITIONS = {
    State.CREATED: {State.RUNNING, State.FAILED},
    State.RUNNING: {State.STOPPED, State.FAILED},
    State.STOPPED: set(),
    State.FAILED: {State.STOPPED},
}


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of ``path``, or ``""`` if it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Machine:
    """One QEMU process built from a ``GuestSpec``: its argv, QMP connection, logs
    (``qemu_log``, the spec's console log) and ``State``.  ``launch()`` starts it;
    ``shutdown()`` (or leaving the ``with`` block) always stops it."""
    def __init__(self, spec: GuestSpec, qemu_log: Path, name: str = "vm0"):
        self.spec = spec
        self.qemu_log = qemu_log
        self.argv = build_argv(spec)
        self.state = State.CREATED
        self.log = log.getChild(name)
        self._proc: subprocess.Popen | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self.launched_at = 0.0
        self.exitcode: int | None = None

    def _to(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"machine cannot go from {self.state.value} to {new.value}")
        self.log.debug("state %s -> %s", self.state.value, new.value)
        self.state = new

    # --- launch -------------------------------------------------------------------------
    def launch(self, qmp_timeout: float = 20.0) -> None:
        """Start QEMU (output to ``qemu_log``) and connect to its QMP socket, waiting at most
        ``qmp_timeout`` seconds.  Raises ``LaunchError`` if QEMU cannot start or exits before
        QMP answers, ``WaitTimeout`` if QMP does not answer in time."""
        self.log.info("launching: %s", " ".join(self.argv))
        create_artifact(self.spec.console_log).close()     # QEMU then opens our regular file
        with create_artifact(self.qemu_log) as out:
            try:
                self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                              stdout=out, stderr=subprocess.STDOUT,
                                              preexec_fn=die_with_parent(signal.SIGKILL))
            except OSError as err:
                self._to(State.FAILED)
                raise LaunchError(f"cannot start QEMU: {err}", argv=self.argv,
                                  returncode=None) from err
        self.launched_at = time.monotonic()
        self._to(State.RUNNING)
        self._connect_qmp(qmp_timeout)

    def died(self, what: str) -> LaunchError:
        """The ``LaunchError`` for a QEMU found dead while doing ``what`` (to raise): exit code,
        argv and the tail of its log (or the console's).  Moves the machine to ``FAILED``."""
        self.exitcode = self._proc.poll() if self._proc else None
        self._to(State.FAILED)
        return LaunchError(f"QEMU exited while {what}", argv=self.argv,
                           returncode=self.exitcode, log=self.qemu_log,
                           log_tail=tail(self.qemu_log) or tail(self.spec.console_log))

    def _connect_qmp(self, timeout: float) -> None:
        deadline = Deadline(timeout, "QEMU's QMP socket")
        while True:
            if self._proc.poll() is not None:
                raise self.died("waiting for its QMP socket")
            if self.spec.qmp_socket.exists():
                qmp = QEMUMonitorProtocol(str(self.spec.qmp_socket))
                try:
                    qmp.connect(negotiate=True)
                    qmp.settimeout(QMP_TIMEOUT)
                    self._qmp = qmp
                    return
                except Exception as err:  # qemu.qmp raises several kinds while QEMU starts
                    self.log.debug("QMP not ready yet: %s", err)
                    qmp.close()
            deadline.check(str(self.spec.qmp_socket))
            time.sleep(0.05)

    # --- while running ------------------------------------------------------------------
    def qmp(self, command: str, **args):
        """Run one QMP command; bounded by QMP_TIMEOUT, failures keep their cause."""
        if self._qmp is None:
            raise RuntimeError("QMP is not connected")
        self.log.debug("--> %s %s", command, args)
        try:
            reply = self._qmp.cmd(command, **args)
        except TimeoutError as err:
            raise WaitTimeout(f"QEMU's reply to QMP {command!r}", QMP_TIMEOUT) from err
        except QMPError as err:
            raise HostError(f"QMP {command!r} failed: {err}") from err
        self.log.debug("<-- %s", reply)
        return reply

    def hmp(self, command_line: str) -> str:
        """Run an HMP ``command_line`` through QMP; return its text output."""
        return self.qmp("human-monitor-command", **{"command-line": command_line})

    def elapsed(self) -> float:
        """Seconds since QEMU was launched."""
        return time.monotonic() - self.launched_at

    def pid(self) -> int | None:
        """QEMU's process id, None before ``launch``."""
        return None if self._proc is None else self._proc.pid

    def poll(self) -> int | None:
        """QEMU's exit code (negative: the signal that killed it), None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        """Whether the QEMU process has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def wait_console(self, pattern: str, timeout: float, what: str) -> re.Match:
        """Wait until the serial console shows ``pattern``; returns the match."""
        regex = re.compile(pattern)
        deadline = Deadline(timeout, what)
        while True:
            match = regex.search(self.spec.console_log.read_text(errors="replace"))
            if match:
                return match
            failed = re.search(r"MSIXLAB-INIT-FAILED: .*|Kernel panic.*",
                               self.spec.console_log.read_text(errors="replace"))
            if failed:
                raise LaunchError(f"guest failed while waiting for {what}: {failed.group(0)}",
                                  argv=self.argv, returncode=None, log=self.spec.console_log,
                                  log_tail=tail(self.spec.console_log))
            if not self.is_running():
                raise self.died(f"waiting for {what}")
            if "internal error" in tail(self.qemu_log, 200):   # e.g. KVM emulation failure
                raise LaunchError(f"QEMU reported an internal error while waiting for {what}",
                                  argv=self.argv, returncode=None, log=self.qemu_log,
                                  log_tail=tail(self.qemu_log))
            deadline.check(lambda: f"console {self.spec.console_log}:\n"
                           + tail(self.spec.console_log, 10))
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait at most ``timeout`` seconds for QEMU to exit; its exit code, or ``None`` if
        still running."""
        try:
            self.exitcode = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.exitcode

    # --- shutdown -----------------------------------------------------------------------
    def shutdown(self, grace: float = 10.0, quit_timeout: float = 5.0) -> None:
        """Let the guest power off within ``grace``; else QMP quit; else kill."""
        if self._proc is None or self.state is State.STOPPED:
            return
        if self.wait_exit(grace) is None:
            self.log.log(logging.WARNING if grace else logging.INFO,   # 0 s: no wait meant
                         "guest did not power off within %g s: sending QMP quit", grace)
            try:
                self.qmp("quit")
            except Exception as err:
                self.log.warning("QMP quit failed: %s", err)
            if self.wait_exit(quit_timeout) is None:
                self.log.warning("QEMU ignored quit for %g s: killing it", quit_timeout)
                self._proc.kill()
                self.exitcode = self._proc.wait(timeout=10)
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:
                pass
            self._qmp = None
        if self.state is State.RUNNING or self.state is State.FAILED:
            self._to(State.STOPPED)

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(grace=0.5 if exc[0] else 10.0)

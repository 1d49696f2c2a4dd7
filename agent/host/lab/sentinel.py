"""The sentinel: what ends a run early, noticed as soon as it happens.

Concepts owned here:
- An *ending* is an event after which the run cannot go on: a kernel report on the
  console, QEMU exiting, the device server exiting, or the device answering QEMU with an
  error.  ``Sentinel.check()`` looks once and returns the ending as the exception that
  classifies it (verdict/outcome.py), or None; the first ending found is kept for good.
- Classification: what the guest's console shows is judged by blame.py: a kernel report
  is the kernel's (``KernelSplat``, exit 1), except a panic naming user space before the
  guest agent's hello; the rig's init markers (``MSIXLAB-INIT-FAILED``, ``-AGENT-EXIT``,
  ...) are the rig's (``guest_setup_failed``, 125) unless the kernel reported something.
  QEMU exiting with status 0 after the agent's hello (``agent_answered()``) means the
  guest powered off or reset itself (``-no-reboot``): the kernel's (``GuestUnresponsive``);
  before the hello, the rig's.  QEMU killed by a signal or exiting non-zero, or before the
  kernel started, and the device server exiting or answering with an error, are the
  rig's (``CouldNotJudge``, 125), each naming the process, its exit status or signal and
  its last log lines.
- ``Sentinel.start(on_end)`` runs ``check()`` every ``interval`` seconds in a daemon thread
  and calls ``on_end`` once with the ending, so callers blocked on the guest can be
  released at once.  ``check()`` is thread-safe.
- A rig process seen *stopped* (SIGSTOP: QEMU or a device server in state T) is noted at
  every look; ``stopped_since`` tells a guest that could not answer because the host
  stopped it from one that stopped answering by itself.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from msixlab_common.lifetime import process_stopped

from agent.host.lab import blame
from agent.host.lab.console import ConsoleWatch, panic_blames_userspace
from agent.host.lab.machine import tail
from agent.host.verdict.outcome import CouldNotJudge, Outcome

log = logging.getLogger(__name__)


def describe_exit(code: int) -> str:
    """'exit status 3' or 'killed by SIGSEGV'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class EventLogTail:
    """Reads the device's event log (JSON lines) incrementally for error replies."""

    def __init__(self, path: Path):
        self.path, self._offset, self._partial = path, 0, b""

    def errors(self) -> list[dict]:
        """The error replies (``tx`` events with a non-zero errno) logged since last time."""
        try:
            with open(self.path, "rb") as events:
                events.seek(self._offset)
                data = events.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        found = []
        for line in lines:
            if b'"tx"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "tx" and event.get("error"):
                found.append(event)
        return found


class Sentinel:
    """Watches one lab: the ``console`` path, QEMU (``qemu``: a callable returning its
    exit code, None while it runs, and its log) and every device server of the run.

    ``devices``: a callable returning the run's device servers now (one per NIC; the
    hotplug scenario replaces one by a new process), each with ``name`` (said in the
    verdict), ``poll()`` (its exit code, None while it runs or before it starts),
    ``event_log`` (its JSON-lines event log, read for error replies; a restarted server
    appends to its predecessor's, which is read on from where it was) and ``stderr_log``
    (quoted when it dies).  ``agent.host.lab.device_server.DeviceServer`` is one."""

    def __init__(self, console: Path, *, qemu: Callable[[], int | None], qemu_log: Path,
                 devices: Callable[[], list], splats: bool = True,
                 qemu_pid: Callable[[], int | None] = lambda: None):
        self.console = ConsoleWatch(console)
        self._qemu_pid = qemu_pid
        self._stopped: dict[str, float] = {}     # rig process -> last time seen stopped
        self.splats = splats          # False: a kernel report does not end the run
        self._devices = devices
        self._tails: dict[Path, EventLogTail] = {}
        self._qemu, self._qemu_log = qemu, qemu_log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ending: Exception | None = None
        self.answered = False         # the guest agent said hello (agent_answered)
        self._panic_seen: float | None = None   # when a panic naming user space was seen

    def agent_answered(self) -> None:
        """The guest agent said hello: from now on the guest's failures are judged as the
        kernel's unless the rig's own evidence says otherwise (blame.py)."""
        with self._lock:
            self.answered = True

    @property
    def kernel_started(self) -> bool:
        """Whether the console shows the guest kernel has started."""
        return self.console.kernel_started

    def check(self) -> Exception | None:
        """The run's ending, if it has one (found now or before)."""
        with self._lock:
            if self.ending is None:
                self.ending = self._look()
                if self.ending is not None:
                    log.warning("run ends: %s", self.ending)
            return self.ending

    def _rig_pids(self) -> list[tuple[str, int | None]]:
        return [("QEMU", self._qemu_pid()),
                *((device.name, getattr(device, "pid", None)) for device in self._devices())]

    def _note_stopped(self) -> None:
        for name, pid in self._rig_pids():
            if pid is not None and process_stopped(pid):
                self._stopped[name] = time.monotonic()

    def stopped_since(self, since: float) -> str | None:
        """The rig process (QEMU or a device server) seen stopped (SIGSTOP) at or after
        monotonic time ``since``, looked at every poll and now; None if none was: a guest
        that did not answer meanwhile could not run, which is not the kernel's doing."""
        with self._lock:
            self._note_stopped()
            return next((name for name, when in self._stopped.items() if when >= since),
                        None)

    def _look(self) -> Exception | None:
        self._note_stopped()
        splat = self.console.poll()
        if splat is not None and self.splats and not self._await_panic_dump(splat):
            return blame.judge_splat(self.console, splat, self.answered)
        if self.console.marker is not None:
            return blame.judge_marker(self.console, self.console.marker, self.answered)
        devices = self._devices()
        for device in devices:
            code = device.poll()
            if code is not None:
                return CouldNotJudge(Outcome.PROCESS_FAILED,
                                     f"{device.name} died ({describe_exit(code)})",
                                     process=device.name, exit=describe_exit(code),
                                     log=str(device.stderr_log),
                                     last_lines=tail(device.stderr_log, 8))
        for device in devices:
            events = self._tails.setdefault(Path(device.event_log),
                                            EventLogTail(Path(device.event_log)))
            errors = events.errors()
            if errors:
                first = errors[0]
                return CouldNotJudge(Outcome.DEVICE_FAULT,
                                     f"{device.name} answered QEMU's {first.get('cmd')} "
                                     f"(message {first.get('id')}) with errno "
                                     f"{first.get('error')}",
                                     process=device.name, replies=errors[:5])
        qemu = self._qemu()
        if qemu is not None:
            return self._qemu_ended(qemu)
        return None

    def _await_panic_dump(self, splat) -> bool:
        """Whether to judge a panic naming user space later: its stack dump, whose header
        shows the taint flags, follows it; QEMU exits at once (then it is judged), and
        ``blame.PANIC_DUMP_WAIT_S`` bounds the wait."""
        if self.answered or splat.kind != "panic" or not panic_blames_userspace(splat.line):
            return False
        now = time.monotonic()
        if self._panic_seen is None:
            self._panic_seen = now
        return now - self._panic_seen < blame.PANIC_DUMP_WAIT_S

    def _qemu_ended(self, code: int) -> Exception:
        splat = self.console.finish()
        if splat is not None:             # QEMU gone: the report explains why, always
            return blame.judge_splat(self.console, splat, self.answered)
        if self.console.marker is not None:
            return blame.judge_marker(self.console, self.console.marker, self.answered)
        how = describe_exit(code)
        if code == 0 and self.console.kernel_started:
            return blame.judge_qemu_exit_0(self.console, self.answered)
        return CouldNotJudge(Outcome.PROCESS_FAILED, f"QEMU exited ({how})", process="QEMU",
                             exit=how, log=str(self._qemu_log),
                             last_lines=tail(self._qemu_log, 8))

    def start(self, on_end: Callable[[Exception], None], interval: float = 0.1) -> None:
        """Run ``check()`` every ``interval`` seconds in a daemon thread; call ``on_end`` once,
        from that thread, with the first ending found, then stop watching."""
        def run() -> None:
            while not self._stop.wait(interval):
                ending = self.check()
                if ending is not None:
                    on_end(ending)
                    return
        self._thread = threading.Thread(target=run, name="msixlab-sentinel", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watching thread and wait for it, at most 5 s (not when called from it)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

"""The emulated NIC's server process, seen from the host agent.

Concepts: the host agent owns the server's lifetime: it starts ``qemu-device serve``
before QEMU (QEMU connects at realize and never reconnects), waits for the server's
``ready`` line, then talks to it only through the control socket.  Stopping is SIGTERM,
then SIGKILL, each bounded.  The server gets SIGTERM by itself if msixlab dies (a
parent-death signal, ``msixlab_common.lifetime``), so it never outlives the run.
"""

from __future__ import annotations

import logging
import select
import signal
import subprocess
import sys
from pathlib import Path

from msixlab_common import jsonlines
from msixlab_common.lifetime import die_with_parent

from msixlab_common.artifacts import create_artifact
from msixlab_common.deadline import Deadline

from agent.host.errors import DeviceControlError, LaunchError
from agent.host.lab.agent_client import JsonLinesClient

log = logging.getLogger(__name__)


class DeviceServer:
    """One ``qemu-device serve`` process for a run: its vfio-user socket (``socket_path``,
    given to QEMU), its control socket, event log and stderr log, and the ``vectors`` and
    ``extra`` options it serves with.  ``start()`` before QEMU, ``stop()`` always; in
    between every request goes through ``command()``."""
    def __init__(self, socket_path: Path, control_path: Path, event_log: Path,
                 stderr_log: Path, vectors: int = 64, extra: tuple[str, ...] = ()):
        self.socket_path, self.control_path = socket_path, control_path
        self.event_log, self.stderr_log = event_log, stderr_log
        self.name = "the device server"
        self.argv = [sys.executable, "-m", "qemu_device", "serve", "--socket", str(socket_path),
                     "--control", str(control_path), "--vectors", str(vectors),
                     "--log", str(event_log), *extra]
        self._proc: subprocess.Popen | None = None
        self.control = JsonLinesClient(control_path, "device-control")

    @classmethod
    def for_run(cls, dirs, vectors: int = 64, *, msix_maskable: bool = False,
                msix_noresize: bool = False, nic: int = 0, pm: bool = False) -> "DeviceServer":
        """The NIC of a run: sockets in its runtime dir, logs in its results dir.
        ``msix_maskable``/``msix_noresize`` make the server advertise MASKABLE/NORESIZE
        on MSI-X, which chooses the path QEMU's client takes (docs/device.md).  ``nic``
        numbers the NICs of ``msixlab run --nics N``; ``pm`` gives the NIC its PCI PM
        capability (``--pm``)."""
        extra = (("--msix-maskable",) if msix_maskable else ()) + (
            ("--msix-noresize",) if msix_noresize else ()) + (("--pm",) if pm else ())
        suffix = f"-nic{nic}" if nic else ""      # NIC 0 keeps the historical names
        server = cls(dirs.runtime / f"nic{nic}.sock", dirs.runtime / f"nic{nic}.ctl",
                     dirs.results / f"device-events{suffix}.jsonl",
                     dirs.results / f"device-server{suffix}.log", vectors=vectors, extra=extra)
        if nic:
            server.name = f"the device server of NIC {nic}"
        return server

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait at most ``timeout`` seconds for its JSON ready line, then
        connect to its control socket (5 s).  Raises ``LaunchError`` (with argv, exit code
        and stderr tail) if it exits first or writes something else, ``WaitTimeout`` (after
        stopping it) if it is not ready in time."""
        log.info("starting the device server: %s", " ".join(self.argv))
        with create_artifact(self.stderr_log) as err:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=err,
                                          preexec_fn=die_with_parent(signal.SIGTERM))
        deadline = Deadline(timeout, "the device server's ready line")
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline.remaining()
            if self._proc.poll() is not None:
                raise LaunchError("the device server exited before it was ready", argv=self.argv,
                                  returncode=self._proc.returncode, log=self.stderr_log,
                                  log_tail=self.stderr_log.read_text(errors="replace")[-2000:])
            if deadline.expired():
                self.stop()
                raise deadline.timeout()
            ready, _, _ = select.select([self._proc.stdout], [], [], min(remaining, 0.2))
            if ready:
                line += self._proc.stdout.read1(4096)
        try:
            event = jsonlines.loads_object(line.splitlines()[0])
        except jsonlines.JsonLinesError:
            event = {}
        if event.get("event") != "ready":
            raise LaunchError(f"unexpected first line from the device server: {line!r}",
                              argv=self.argv, returncode=None)
        self.control.connect(timeout=5)

    @property
    def pid(self) -> int | None:
        """The server's process id, or ``None`` before ``start``."""
        return None if self._proc is None else self._proc.pid

    def poll(self) -> int | None:
        """The server's exit code (negative: the signal), None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def command(self, cmd: str, timeout: float = 10.0, **fields) -> dict:
        """Send control command ``cmd`` with ``fields`` and return its ``result``, waiting at
        most ``timeout`` seconds.  An error reply raises ``DeviceControlError`` carrying the
        server's error; no reply in time raises ``WaitTimeout``."""
        reply = self.control.request({"cmd": cmd, **fields}, timeout)
        if not reply.get("ok"):
            raise DeviceControlError(cmd, reply.get("error", {}))
        return reply["result"]

    def second_client(self, name: str) -> JsonLinesClient:
        """A control client of its own (not connected yet), for a thread that talks to the
        device while the run's own client is busy: the server takes several at once."""
        return JsonLinesClient(self.control_path, name)

    def state(self) -> dict:
        """The control channel's ``state``: the device's whole view (docs/device.md)."""
        return self.command("state")

    def raise_vectors(self, vectors: list[int]) -> dict:
        """Raise each of ``vectors`` on the device; the reply tells each raise's outcome."""
        return self.command("raise", vectors=list(vectors))

    def stop(self, timeout: float = 5.0) -> int | None:
        """Close the control connection and stop the server: SIGTERM, then SIGKILL after
        ``timeout`` seconds.  Returns its exit code, ``None`` if it was never started.  Safe
        to call twice."""
        self.control.close()
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("device server ignored SIGTERM for %g s: killing it", timeout)
                self._proc.kill()
                self._proc.wait(timeout)
        if self._proc.stdout:
            self._proc.stdout.close()
        return self._proc.returncode

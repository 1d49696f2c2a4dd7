"""A lab that many tests share: three clients, a known state between tests, and the
guest's console watched for kernel reports.  The pytest plugin (testkit/plugin.py) is a
thin layer over this module; nothing here imports pytest.

Concepts owned here:
- ``CommandError``: the one error a test sees when the guest agent or the device's
  control channel answers a command with an error.  It carries ``peer`` ("guest" or
  "device"), ``cmd``, ``errno`` (a number or None), ``code`` (``"ENOSPC"``, ...) and
  ``message``.
- ``GuestClient``, ``DeviceClient`` and ``QemuClient``: ``request(cmd, **args)``
  returns the command's ``result``; ``timeout=`` (seconds, keyword only) bounds the
  wait.  The QEMU client gives QMP, HMP and QEMU's own view of the MSI-X table.
- ``LabOptions``: what kind of lab to boot (kernel flavor, or a kernel tree or image, a
  QEMU binary, vectors, CPUs, ...): the one description ``msixlab run`` uses too
  (agent/host/lab/options.py), checked before anything starts.
- ``SharedLab``: boots a ``Lab`` on first use and brings it back to the *known state*
  before every test, the state of a fresh boot: only the driver's group 0 allocated (a
  fresh probe: unbind and bind when anything else was wired), only vector 0 with an
  eventfd, no fault armed, no interrupt pending in the device or held by QEMU behind a
  mask, every device counter zero, MSI-X enabled and unmasked.  When that cannot be
  reached in place (the guest is gone, the kernel reported a splat, the driver was
  unloaded, ...) it reboots: a fresh lab, same options.
- Kernel reports (``agent.host.lab.console``): a ``ConsoleWatch`` per boot; a splat that
  appears while a test runs is that test's, with the console lines that follow it.
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import logging
import os
import time
from pathlib import Path
from typing import Any

from images.image import Image
from msixlab_common.deadline import wait_until

from agent.host.errors import HostError, MsixlabError
from agent.host.lab.console import ConsoleWatch, Splat
from agent.host.lab.lab import Lab
from agent.host.lab.options import LabOptions
from agent.host.rundirs import RunDirs
from agent.host.verdict.outcome import CouldNotJudge, Outcome

log = logging.getLogger(__name__)

__all__ = ["CommandError", "GuestClient", "DeviceClient", "QemuClient", "LabOptions",
           "SharedLab", "wait_until"]

CONSOLE_EXCERPT_LINES = 80


class CommandError(HostError):
    """A guest agent or device control command failed; see the module docstring."""

    def __init__(self, peer: str, cmd: str, errno: int | None, code: str | None,
                 message: str, error: dict[str, Any] | None = None):
        self.peer, self.cmd, self.errno, self.code = peer, cmd, errno, code
        self.message, self.error = message, dict(error or {})
        super().__init__(f"{peer} command {cmd!r} failed: {code or errno}: {message}")


class GuestClient:
    """The guest agent (docs/guest-agent.md) of one booted lab."""

    def __init__(self, lab: Lab):
        self._lab = lab

    def request(self, cmd: str, /, *, timeout: float = 30.0, **args: Any) -> Any:
        """Send agent command ``cmd`` with ``args`` and return its result, waiting at most
        ``timeout`` seconds (``WaitTimeout``).  An error reply raises ``CommandError`` (peer
        ``guest``) with the errno, code and message."""
        reply = self._lab.agent_client.request({"cmd": cmd, "args": args}, timeout)
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        number = error.get("errno") if isinstance(error.get("errno"), int) else None
        raise CommandError("guest", cmd, number, error.get("code"),
                           str(error.get("message", "")), error)


class DeviceClient:
    """The emulated NIC's control channel (docs/device.md, "Control channel")."""

    def __init__(self, lab: Lab):
        self._lab = lab

    def request(self, cmd: str, /, *, timeout: float = 10.0, **fields: Any) -> Any:
        """Send control command ``cmd`` with ``fields`` to NIC 0's device server and return its
        result, waiting at most ``timeout`` seconds (``WaitTimeout``).  An error reply raises
        ``CommandError`` (peer ``device``)."""
        reply = self._lab.device.control.request({"cmd": cmd, **fields}, timeout)
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        number = error.get("errno") if isinstance(error.get("errno"), int) else None
        code = errno_mod.errorcode.get(number) if number is not None else None
        raise CommandError("device", cmd, number, code or error.get("type"),
                           str(error.get("message", "")), error)


class QemuClient:
    """QEMU of one booted lab: QMP, HMP, and its view of the NIC's MSI-X table."""

    def __init__(self, lab: Lab):
        self._lab = lab

    def qmp(self, command: str, **args: Any) -> Any:
        """Run one QMP command; its return value (``HostError`` if it fails, ``WaitTimeout`` if
        QEMU does not answer)."""
        return self._lab.machine.qmp(command, **args)

    def hmp(self, command_line: str) -> str:
        """Run an HMP command line; its text output."""
        return self._lab.machine.hmp(command_line)

    def table(self) -> dict[int, dict]:
        """Every entry ``{address_lo, address_hi, data, ctrl}`` by index, as QEMU holds it."""
        return self._lab.qemu_table()

    def entry(self, index: int) -> dict:
        """MSI-X table entry ``index`` as QEMU holds it (``KeyError`` outside the table)."""
        return self.table()[index]


class SharedLab:
    """One lab at a time, booted on first use, restored (or rebooted) between tests."""

    def __init__(self, options: LabOptions, image: Image, results_root: Path | None = None,
                 name: str = "lab"):
        """``options`` checked (``OptionsError``: a bad option) and its accelerator chosen
        once (kvm and auto prove themselves with a probe boot); ``results_root`` defaults
        to the options' ``results``."""
        options = options.check()
        options = dataclasses.replace(options, accel=options.choose_accel(image).accel)
        self.options, self.image, self.name = options, image, name
        self.results_root = Path(results_root if results_root is not None else options.results)
        self.lab: Lab | None = None
        self.dirs: RunDirs | None = None
        self.watch: ConsoleWatch | None = None
        self.boots = self.restores = 0
        self.reboot_reasons: list[str] = []
        self._needs_reboot: str | None = None
        self._start_error: str | None = None

    # --- lifetime -----------------------------------------------------------------------
    def start(self) -> None:
        """Boot a lab.  When a boot fails, later calls fail at once with the same error
        instead of spending another boot timeout on every remaining test."""
        if self._start_error is not None:
            raise CouldNotJudge(Outcome.PROCESS_FAILED, f"{self.name} could not boot earlier in "
                                f"this session: {self._start_error}")
        try:
            self._start()
        except BaseException as err:
            self._start_error = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise

    def _start(self) -> None:
        self.results_root.mkdir(parents=True, exist_ok=True)
        dirs = RunDirs.create(self.results_root, prefix=self.name)
        lab = self.options.lab(self.image, self.options.kernel_under_test(self.image), dirs,
                               accel=self.options.accel, qemu=self.options.qemu_argv())
        try:
            lab.start()
        except BaseException:
            lab.stop()
            dirs.cleanup()
            raise
        self.lab, self.dirs = lab, dirs
        self.watch = ConsoleWatch(lab.machine.spec.console_log)
        self.boots += 1
        self._needs_reboot = None
        log.info("%s booted (boot %d) in %.1f s; artifacts in %s", self.name, self.boots,
                 lab.timings.get("boot_to_agent_s", 0.0), dirs.results)

    def stop(self) -> None:
        """Stop the lab, if booted, and remove its directories; the next use boots a fresh one."""
        lab, dirs, self.lab, self.dirs, self.watch = self.lab, self.dirs, None, None, None
        try:
            if lab is not None:
                lab.stop()
        finally:
            if dirs is not None:
                dirs.cleanup()

    def reboot(self, reason: str) -> None:
        """Stop the lab and boot a fresh one with the same options, recording ``reason``."""
        log.warning("%s: rebooting the lab: %s", self.name, reason)
        self.reboot_reasons.append(reason)
        self.stop()
        self.start()

    # --- the clients ------------------------------------------------------------------
    def _booted(self) -> Lab:
        if self.lab is None:
            self.start()
        return self.lab

    @property
    def guest(self) -> GuestClient:
        """The guest agent's client (boots the lab on first use)."""
        return GuestClient(self._booted())

    @property
    def device(self) -> DeviceClient:
        """NIC 0's device control client (boots the lab on first use)."""
        return DeviceClient(self._booted())

    @property
    def qemu(self) -> QemuClient:
        """QEMU's client (boots the lab on first use)."""
        return QemuClient(self._booted())

    @property
    def results(self) -> Path | None:
        """The current boot's artifact directory (console.log, qemu.log, ...)."""
        return self.dirs.results if self.dirs else None

    # --- known state ------------------------------------------------------------------
    def prepare(self, fresh: bool = False) -> str | None:
        """Bring the lab to the known state before a test; return why it rebooted (None
        when it was restored in place or just booted)."""
        if self.lab is None:
            self.start()
            return None
        reason = "a fresh lab was asked for" if fresh else self._why_not_reusable()
        if reason is None:
            try:
                self._reset_in_place()
                reason = self._state_problem()
            except MsixlabError as err:
                reason = f"resetting it failed: {err}"
        if reason is not None:
            self.reboot(reason)
        else:
            self.restores += 1
        return reason

    def _why_not_reusable(self) -> str | None:
        if self._needs_reboot:
            return self._needs_reboot
        if not self.lab.machine.is_running():
            return "QEMU is no longer running"
        splat = self.watch.poll()
        if splat is not None:
            return f"the guest kernel reported {splat.kind}: {splat.line}"
        return None

    def _reset_in_place(self) -> None:
        guest, device = GuestClient(self.lab), DeviceClient(self.lab)
        for cpu in self._offline_cpus(guest):
            guest.request("cpu_online", cpu=cpu, online=True, timeout=30)
        for group in guest.request("list_groups", timeout=10):
            if group["group"] != 0:
                guest.request("free_group", group=group["group"], timeout=10)
        device.request("clear_faults")            # also cancels delayed raises waiting
        state = device.request("state")
        if any(v["raised"] or v["pending"] for v in state["vectors"]):
            self._flush(guest, state["msix"]["table_size"])
            state = device.request("state")
        if any(v["eventfd"] for v in state["vectors"] if v["index"] != 0):
            guest.request("unbind", timeout=30)    # MSI-X off: QEMU drops every eventfd
            guest.request("bind", timeout=30)      # a fresh probe: group 0 only
        device.request("reset_counters")

    def _offline_cpus(self, guest: GuestClient) -> list[int]:
        """The guest CPUs a test left offline.  Asking the last CPU to be online (a no-op
        when it is) answers with every online CPU; CPU 0 cannot go offline on x86."""
        last = self.options.cpus - 1
        if last < 1:
            return []
        online = guest.request("cpu_online", cpu=last, online=True, timeout=30)["online_cpus"]
        return [cpu for cpu in range(1, last) if cpu not in online]

    @staticmethod
    def _flush(guest: GuestClient, table_size: int) -> None:
        """Allocate every free entry once and free it again: an interrupt left pending in
        the device, or held by QEMU behind a freed entry's mask, is delivered now and
        thrown away with the group instead of reaching the next test's vectors."""
        if table_size < 2:
            return
        group = guest.request("alloc_group", min=1, max=table_size - 1, timeout=60)
        guest.request("free_group", group=group["group"], timeout=60)

    def _state_problem(self) -> str | None:
        groups = [g["group"] for g in GuestClient(self.lab).request("list_groups", timeout=10)]
        if groups != [0]:
            return f"the guest still has groups {groups}"
        state = DeviceClient(self.lab).request("state")
        busy = [v["index"] for v in state["vectors"]
                if v["raised"] or v["delivered"] or v["pending"] or v.get("dropped")]
        if busy:
            return f"device vectors {busy} still show raises or pending interrupts"
        if state.get("faults"):
            return f"device faults still armed: {state['faults']}"
        if state.get("delayed"):
            return f"delayed raises still waiting in the device: {state['delayed']}"
        offline = self._offline_cpus(GuestClient(self.lab))
        if offline:
            return f"guest CPUs {offline} are still offline"
        wired = [v["index"] for v in state["vectors"] if v["eventfd"] and v["index"] != 0]
        if wired:
            return f"device vectors {wired} still have an eventfd (only 0 should)"
        msix = state["msix"]
        if not msix.get("enabled") or msix.get("function_mask"):
            return f"MSI-X is not enabled and unmasked: {msix}"
        return None

    # --- kernel reports ---------------------------------------------------------------
    def note_splat_before(self) -> Splat | None:
        """Read the console up to now (called before a test); the splat seen so far."""
        return self.watch.poll() if self.watch else None

    def splat_during(self, before: Splat | None) -> tuple[Splat, str] | None:
        """A splat that appeared since ``note_splat_before`` returned ``before``, with the
        console lines from it on (after the console went quiet, bounded)."""
        if self.watch is None:
            return None
        splat = self.watch.poll()
        if splat is None or splat is before:
            return None
        self._needs_reboot = f"the guest kernel reported {splat.kind} during a test"
        path = self.watch.path
        _wait_quiet(path)
        lines = path.read_text(errors="replace").splitlines()
        excerpt = "\n".join(lines[splat.lineno - 1:splat.lineno - 1 + CONSOLE_EXCERPT_LINES])
        return splat, excerpt


def _wait_quiet(path: Path, quiet: float = 0.5, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``path`` stopped growing for ``quiet`` seconds: the rest of a
    kernel report is still being printed when its first line is seen."""
    state = {"size": -1, "since": time.monotonic()}

    def settled() -> bool:
        size = os.path.getsize(path)
        if size != state["size"]:
            state["size"], state["since"] = size, time.monotonic()
        return time.monotonic() - state["since"] >= quiet

    try:
        wait_until(settled, timeout, f"the console {path} to go quiet", interval=0.1)
    except MsixlabError:
        log.info("the console kept growing for %g s; taking what is there", timeout)

"""A lab: one emulated NIC, one booted guest with the driver loaded, the agent connected.

Concepts: ``Lab`` starts the pieces in the order they depend on each other (device
server, driver build, QEMU in agent mode, the guest agent's hello) and stops them in
reverse, each bounded, always.  It offers the three views of every vector (guest driver,
QEMU's table, device counters) as one ``routing.Snapshot``; with ``iommu`` (intel-iommu,
interrupt remapping) each remappable message's destination is read from its IRTE.

A ``Sentinel`` thread watches the run while it goes on: the console for kernel reports
(console.py), QEMU and the device server for an exit, the device's event log for an
error reply the device sent QEMU.  The first such *ending* is kept, and the sockets a
caller may be blocked on are shut down, so every wait returns at once; ``Lab.guard()``
then raises the ending, classified (verdict/outcome.py): a splat, or the guest powering itself
off, is the kernel's doing (exit 1); a dead device server, a QEMU that crashed, or an
error reply of the device means the run could not judge (125).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from images.image import Image
from msixlab_common.artifacts import write_artifact
from msixlab_common.deadline import Deadline, wait_until

from agent.host.errors import DeviceControlError, GuestAgentError, HostError, WaitTimeout
from agent.host.kernel.kmod import ensure_kmod
from agent.host.kernel.under_test import KernelUnderTest, as_kernel
from agent.host.lab import blame, qemu_view
from agent.host.lab.agent_client import JsonLinesClient
from agent.host.lab.device_server import DeviceServer
from agent.host.lab.guest_spec import guest_spec
from agent.host.lab.hostlimits import ensure_fd_limit
from agent.host.lab.machine import Machine, tail
from agent.host.lab.qemu_argv import Share
from agent.host.lab.sentinel import Sentinel
from agent.host.rundirs import RunDirs
from agent.host.verdict import routing
from agent.host.verdict.outcome import (
    BootStalled,
    CouldNotJudge,
    DriverCallFailed,
    GuestUnresponsive,
    Outcome,
)

log = logging.getLogger(__name__)


#: how many times in all a guest whose boot stalls silently is booted before the run gives up
BOOT_ATTEMPTS = 2

#: how much longer than the guest-side wait a request asks for the host waits for its answer
AGENT_MARGIN_S = 30.0

#: how long a broken agent channel waits for the ending that explains it (QEMU gone, or
#: the rig's init reporting the agent's exit with the kernel's taint, blame.py)
AGENT_EXIT_GRACE_S = 10.0


def answer_timeout(timeout: float, args: dict) -> float:
    """How long to await the answer to a guest agent request with ``args``: ``timeout``,
    or the guest-side wait the request asks for (``timeout_ms``, ``timeout_s``; a value
    that is not a finite non-negative number is the agent's to refuse and counts as 0)
    plus ``AGENT_MARGIN_S`` when that is longer."""
    asked = 0.0
    for key, scale in (("timeout_ms", 1e-3), ("timeout_s", 1.0)):
        value = args.get(key)
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0 <= value < float("inf")):
            asked = max(asked, value * scale)
    return max(timeout, asked + AGENT_MARGIN_S) if asked else timeout


def check_hello(hello: dict) -> None:
    """Refuse, as a named could-not-judge, a guest whose agent found no device or whose
    kernel cannot allocate MSI-X vectors after enable on it (the hello's ``dyn_alloc``,
    ``pci_msix_can_alloc_dyn()``: it depends on the MSI parent domain, e.g. with or
    without interrupt remapping)."""
    if hello.get("device") is None:
        raise CouldNotJudge(Outcome.PROCESS_FAILED, "the guest agent found no msixlab "
                            "device: " + str(hello.get("device_error")),
                            device_error=hello.get("device_error"))
    if hello.get("dyn_alloc", hello["device"].get("dyn_alloc")) is False:
        raise CouldNotJudge(Outcome.KERNEL_UNSUPPORTED,
                            f"kernel {hello.get('kernel')} cannot allocate MSI-X "
                            "vectors dynamically on this device (pci_msix_can_alloc_dyn() "
                            "is false)", kernel=hello.get("kernel"))



def agent_result(cmd: str, args: dict, reply: dict):
    """The result of the guest agent's ``reply`` to ``cmd`` with ``args``; an error reply
    raises ``DriverCallFailed`` when the driver refused (the kernel's say), else
    ``GuestAgentError`` (the agent's)."""
    if not reply.get("ok"):
        error = reply.get("error", {})
        if error.get("source") == "driver":
            raise DriverCallFailed(cmd, args, error.get("errno"), error.get("code"),
                                   error.get("message", ""))
        raise GuestAgentError(cmd, error)
    return reply["result"]

class Lab:
    """One guest and its NICs, for one run or one test module.  Built from the image, the
    kernel under test (a ``KernelUnderTest`` or a flavor name) and the run's directories;
    nothing runs until ``start()``.  Options: ``accel``, ``vectors`` per NIC, ``cpus``,
    QEMU ``trace`` patterns, another ``qemu`` argv, the MSI-X modes the device advertises
    (``msix_maskable``, ``msix_noresize``), ``iommu`` (intel-iommu with interrupt remapping),
    ``nics`` device servers, ``end_on_splat`` (False for tests that provoke kernel
    reports), ``append``: more guest kernel parameters, after the rig's, and
    ``power_management``: the NIC offers D3hot (its PM capability) and the virtio devices
    are placed to survive system sleep (qemu_argv.py's ``sleep_safe``).  Use as a
    context manager, or call ``stop()`` in ``finally``.  Every call that talks to the
    guest, QEMU or a device first ``guard()``s: once the sentinel has seen the run end, it
    raises that ending (``KernelMisbehaved`` or ``CouldNotJudge``)."""
    def __init__(self, image: Image, kernel: KernelUnderTest | str, dirs: RunDirs, *,
                 accel: str = "tcg", vectors: int = 64, cpus: int = 2,
                 trace: tuple[str, ...] = (), qemu: list[str] | None = None,
                 msix_maskable: bool = False, msix_noresize: bool = False,
                 iommu: bool = False, nics: int = 1, end_on_splat: bool = True,
                 append: tuple[str, ...] = (), power_management: bool = False):
        self.image, self.dirs = image, dirs
        self.kernel = as_kernel(image, kernel)
        self.flavor = self.kernel.flavor or self.kernel.label
        self.qemu = qemu
        self.accel, self.vectors, self.cpus, self.trace = accel, vectors, cpus, trace
        self.msix_modes = {"maskable": msix_maskable, "noresize": msix_noresize}
        self.iommu = iommu
        self.sleep_safe = power_management
        self.append = tuple(append)
        self.device = DeviceServer.for_run(dirs, vectors, msix_maskable=msix_maskable,
                                           msix_noresize=msix_noresize, pm=power_management)
        self.machine: Machine | None = None
        self.agent_client = JsonLinesClient(dirs.runtime / "agent.sock", "guest-agent")
        self.hello: dict = {}
        self.apic_map = routing.ApicMap.identity()
        self._bars: dict[int, int] | None = None
        # --nics N: NICs 1..N-1, each with its own device server (NIC 0 is self.device)
        self.extra_devices = [DeviceServer.for_run(dirs, vectors, msix_maskable=msix_maskable,
                                                   msix_noresize=msix_noresize, nic=i)
                              for i in range(1, nics)]
        self._nic_bars: dict[int, dict[int, int]] = {}
        # the agent opens the first /dev/msixlab<N> at start; with several NICs the
        # first select_nic names one by its address instead of assuming which that is
        self.selected_nic: int | None = 0 if nics == 1 else None
        self.timings: dict[str, float] = {}
        self.boot_stalls: list[dict] = []   # each stalled boot set aside (see start())
        self.sentinel: Sentinel | None = None
        self.end_on_splat = end_on_splat   # False: tests that provoke kernel reports on purpose
        self.kernel_health: dict | None = None   # check_kernel_health's evidence
        # what a scenario needs made before the guest boots (e.g. the VFIO selftests'
        # build, which it shares with the guest): each called with the lab by start()
        self.before_boot: list = []
        self.extra_shares: list[Share] = []      # more 9p shares (add_share)
        # how long stop() lets the guest power itself off (0: it cannot, e.g. after an S3
        # wake-up of QEMU 11.1.3, which leaves the ACPI PM registers unmapped)
        self.poweroff_grace = 10.0

    def add_share(self, tag: str, path: Path) -> None:
        """Share ``path`` with the guest read-only over 9p under ``tag`` from the next boot
        on (the guest mounts it itself: the init scripts mount only their own tags)."""
        self.extra_shares.append(Share(tag, Path(path)))

    # --- bring-up and tear-down ---------------------------------------------------------
    def start(self, boot_timeout: float = 180.0, boot_attempts: int = BOOT_ATTEMPTS) -> None:
        """Bring the lab up, in order: check the kernel has what the rig needs, build (or find)
        the guest driver, run the scenario's ``before_boot`` steps, then boot: stage the
        guest's files with their bytecode for the image's Python (images/staging.py,
        through ``guest_spec``), start the device
        servers, launch QEMU, start the sentinel, connect to the guest agent and wait at
        most ``boot_timeout`` seconds for its hello (then check it).  A boot that stalls
        (no hello, no kernel report, no process gone) is set aside (``_set_aside``) and
        the guest booted afresh, ``boot_attempts`` boots in all; each stall is listed in
        ``boot_stalls``.  Raises ``CouldNotJudge`` (no dynamic MSI-X or a missing option,
        a build or launch failure, ``BootStalled`` on the last boot), or
        ``KernelMisbehaved`` when the console shows why the guest never answered.
        The open-file limit is raised (or refused) first (hostlimits.py).
        Records ``kmod_build_s`` and ``boot_to_agent_s`` (of the boot that answered) in
        ``timings``.  On failure the caller still calls ``stop()``."""
        t0 = time.monotonic()
        ensure_fd_limit()
        self.kernel.check_supported()
        kmod_dir = ensure_kmod(self.image, self.kernel, run_dir=self.dirs.results)
        self.timings["kmod_build_s"] = time.monotonic() - t0
        for prepare in self.before_boot:
            prepare(self)
        for attempt in range(1, max(1, boot_attempts) + 1):
            try:
                self._boot(kmod_dir, boot_timeout)
                break
            except BootStalled as stall:
                if attempt >= boot_attempts:
                    raise
                self._set_aside(attempt, stall)
        self.timings["boot_to_agent_s"] = self.machine.elapsed()
        check_hello(self.hello)

    def _boot(self, kmod_dir: Path, boot_timeout: float) -> None:
        """One boot: device servers, QEMU, sentinel, the agent's hello within
        ``boot_timeout`` seconds (``BootStalled`` without one and nothing to explain it)."""
        self.device.start()
        for device in self.extra_devices:
            device.start()
        spec = guest_spec(self.image, self.kernel, self.dirs, mode="agent", accel=self.accel,
                          qemu=self.qemu, cpus=self.cpus,
                          nic_sockets=tuple(d.socket_path for d in self.devices),
                          kmod_dir=kmod_dir, agent=True, trace=self.trace, iommu=self.iommu,
                          append=self.append, extra_shares=tuple(self.extra_shares),
                          sleep_safe=self.sleep_safe)
        self.machine = Machine(spec, self.dirs.results / "qemu.log")
        self.machine.launch()
        self.sentinel = Sentinel(spec.console_log, qemu=self.machine.poll,
                                 qemu_log=self.machine.qemu_log, devices=lambda: self.devices,
                                 splats=self.end_on_splat, qemu_pid=self.machine.pid)
        self.sentinel.start(self._ended)
        self.agent_client.connect(timeout=10)
        deadline = Deadline(boot_timeout, "the guest agent's hello")
        while True:
            try:
                self.hello = self.agent_client.wait_event("hello", timeout=1)
                self.sentinel.agent_answered()
                return
            except (WaitTimeout, HostError, OSError):
                self.guard()
                if deadline.expired():
                    self._never_booted(boot_timeout)

    def _set_aside(self, attempt: int, stall: BootStalled) -> None:
        """Keep the evidence of stalled boot ``attempt`` and clear the way for the next:
        the vCPUs' registers (HMP ``info registers -a``, where each vCPU was) go to
        ``boot-attempt-<attempt>/cpus.txt``, the lab is stopped without asking the guest
        (its agent never spoke), and the boot's logs (console, QEMU, device servers) move
        into that directory."""
        aside = self.dirs.results / f"boot-attempt-{attempt}"
        aside.mkdir(exist_ok=True)
        log.warning("boot %d stalled (%s): booting the guest again; its logs are in %s",
                    attempt, stall, aside)
        self.boot_stalls.append({"attempt": attempt, "reason": str(stall),
                                 "logs": aside.name})
        try:
            (aside / "cpus.txt").write_text(self.machine.hmp("info registers -a"))
        except (HostError, OSError) as err:
            log.info("vCPU registers of the stalled boot: %s", err)
        self.stop(ask_guest=False)
        for path in self._boot_logs():
            if path.exists():
                path.rename(aside / path.name)
        self.machine, self.sentinel, self.hello = None, None, {}
        self._bars, self._nic_bars = None, {}
        self.selected_nic = 0 if len(self.devices) == 1 else None

    def _boot_logs(self) -> list[Path]:
        """The files one boot writes in the results directory."""
        spec = self.machine.spec if self.machine is not None else None
        paths = [self.dirs.results / "qemu.log"]
        if spec is not None:
            paths += [spec.console_log] + ([spec.trace_log] if spec.trace_log else [])
        for device in self.devices:
            paths += [device.event_log, device.stderr_log]
        return paths

    # --- what ends a run early ----------------------------------------------------------
    def _ended(self, ending: Exception) -> None:
        """The sentinel found an ending: release whoever waits on the guest or device."""
        self.agent_client.abort()
        for device in self.devices:
            device.control.abort()

    def guard(self, grace: float = 0.0) -> None:
        """Raise the run's ending (a splat, a dead process, a device error), if any.
        ``grace``: after a socket broke, give the ending that many seconds to show (a
        killed QEMU resets its sockets before it can be reaped)."""
        if self.sentinel is None:
            return
        ending = self.sentinel.check()
        if ending is None and grace:
            try:
                ending = wait_until(self.sentinel.check, grace, "the run's ending",
                                    interval=0.05)
            except WaitTimeout:
                ending = None
        if ending is not None:
            raise ending

    def _never_booted(self, boot_timeout: float) -> None:
        """No hello within the boot timeout and no kernel report to explain it: a boot
        that stalls cannot be told from a starved host (seen: TCG guests silent after
        APIC calibration on a host with load 10+), and calling it bad would mislead a
        bisect, so the run could not judge."""
        self.guard()
        console = tail(self.machine.spec.console_log, 10) if self.machine else ""
        started = self.sentinel is not None and self.sentinel.kernel_started
        raise BootStalled(f"the guest did not finish booting within {boot_timeout:g} s "
                          f"(kernel {'started' if started else 'printed nothing'}, "
                          f"no hello from the agent, no kernel report on the console)",
                          console_tail=console)

    def check_kernel_health(self) -> dict:
        """Judge the kernel's own record of what it reported since the agent's hello
        (``blame.judge_kernel_health``: report taint gained or a message at KERN_CRIT or
        worse is ``KernelSplat``), so a report in a form the console patterns do not know
        is still seen.  Returns (and keeps in ``kernel_health``) the evidence."""
        health = self.agent("kernel_health", timeout=10)
        self.kernel_health = blame.health_evidence(self.hello.get("tainted"), health)
        blame.judge_kernel_health(self.kernel_health, health)
        return self.kernel_health

    def check_not_stopped(self, since: float, what: str) -> None:
        """Raise ``CouldNotJudge`` (process_failed, 125) when QEMU or a device server was
        seen stopped (SIGSTOP) at or after monotonic time ``since``: ``what`` went wrong
        meanwhile (no answer, a raise not counted in time) while the guest could not run,
        so it says nothing about the kernel."""
        stopped = self.sentinel.stopped_since(since) if self.sentinel is not None else None
        if stopped is not None:
            console = tail(self.machine.spec.console_log, 10) if self.machine else ""
            raise CouldNotJudge(Outcome.PROCESS_FAILED, f"{what}, and {stopped} was stopped "
                                "(SIGSTOP) meanwhile: the guest could not run",
                                process=stopped, console_tail=console)

    def _no_answer(self, what: str, since: float | None = None) -> None:
        """The guest did not answer: the kernel's failure once it started, else the rig's;
        also the rig's when QEMU or a device server was seen stopped (SIGSTOP) since
        ``since``: the guest could not run, so nothing is known about the kernel."""
        self.guard()
        console = tail(self.machine.spec.console_log, 10) if self.machine else ""
        if since is not None:
            self.check_not_stopped(since, f"no {what}")
        if self.sentinel is not None and self.sentinel.kernel_started:
            raise GuestUnresponsive(f"the guest stopped answering: no {what}",
                                    console_tail=console)
        raise CouldNotJudge(Outcome.PROCESS_FAILED, f"the guest never started: no {what}",
                            console_tail=console)

    def stop(self, ask_guest: bool = True) -> None:
        """Tear down in reverse, each step bounded, whatever state the lab is in: stop the
        sentinel, ask the agent to shut down (5 s; not without ``ask_guest``), then
        ``Machine.shutdown``: the guest gets ``poweroff_grace`` (10 s) to power off (none if the agent was not
        asked or did not answer), then QMP quit, then SIGKILL; then close the agent socket
        and stop every device server.  Safe to call more than once and after a failed
        ``start``."""
        if self.sentinel is not None:
            self.sentinel.stop()
        try:
            if self.machine is not None and self.machine.is_running() and ask_guest:
                grace = self.poweroff_grace
                try:
                    self.agent("shutdown", timeout=5)
                except Exception as err:   # the guest is gone or wedged: do not wait for it
                    log.info("agent shutdown: %s", err)
                    grace = 0.0
                self.machine.shutdown(grace=grace)
            elif self.machine is not None:
                self.machine.shutdown(grace=0)
        finally:
            self.agent_client.close()
            for device in self.devices:
                device.stop()

    def __enter__(self) -> "Lab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- talking to the guest -----------------------------------------------------------
    def agent(self, cmd: str, timeout: float = 30.0, **args):
        """One guest agent request; returns its result.  A driver error is the kernel's
        (``DriverCallFailed``, catch it where the scenario expects one); no answer is
        classified by ``_no_answer``; an ending found meanwhile is raised instead.  The
        answer is awaited ``timeout`` seconds, and never less than the wait the request
        itself asks of the guest (``timeout_ms``, ``timeout_s``) plus ``AGENT_MARGIN_S``:
        a guest that is still inside a wait it was asked for is not unresponsive."""
        timeout = answer_timeout(timeout, args)
        self.guard()
        asked = time.monotonic()
        try:
            reply = self.agent_client.request({"cmd": cmd, "args": args}, timeout)
        except (WaitTimeout, HostError, OSError) as err:
            # a broken channel: the agent may have died, and the rig's init then says why
            # (MSIXLAB-AGENT-EXIT with the kernel's taint) before it powers off
            self.guard(grace=0 if isinstance(err, WaitTimeout) else AGENT_EXIT_GRACE_S)
            if isinstance(err, WaitTimeout):
                self._no_answer(f"answer to {cmd!r} within {timeout:g} s", since=asked)
            raise CouldNotJudge(Outcome.PROCESS_FAILED, f"the guest agent's channel broke "
                                f"on {cmd!r}: {err}") from err
        return agent_result(cmd, args, reply)

    def device_command(self, cmd: str, **fields):
        """A device control request, guarded like ``agent``."""
        return self.device_command_on(self.device, cmd, **fields)

    def device_command_on(self, device: DeviceServer, cmd: str, **fields):
        """A control request to one NIC's device server, guarded like ``agent``."""
        self.guard()
        try:
            return device.command(cmd, **fields)
        except (WaitTimeout, HostError, OSError) as err:
            if isinstance(err, DeviceControlError):
                raise
            self.guard(grace=2.0)
            raise CouldNotJudge(Outcome.PROCESS_FAILED, f"the device server's control "
                                f"channel failed on {cmd!r}: {err}") from err

    def wait_until(self, condition, timeout: float, what: str, detail=None):
        """``msixlab_common.deadline.wait_until``, guarded: an ending raises at once."""
        def guarded():
            self.guard()
            return condition()
        return wait_until(guarded, timeout, what, detail=detail)

    # --- several NICs (--nics N) ---------------------------------------------------------
    @property
    def devices(self) -> list[DeviceServer]:
        """Every NIC's device server, NIC 0 first."""
        return [self.device, *self.extra_devices]

    def select_nic(self, nic: int) -> None:
        """Make NIC ``nic`` the one the guest agent's commands use (by its address)."""
        if nic == self.selected_nic:
            return
        bdf = qemu_view.nic_bdf(self.qmp("query-pci"), f"nic{nic}")
        self.agent("select_nic", bdf=bdf)
        self.selected_nic = nic

    # --- hot-plug -------------------------------------------------------------------------
    def restart_device_server(self) -> tuple[int | None, int | None]:
        """Stop the device server and start a new process on the same sockets and logs
        (the event log is appended to); returns (old pid, new pid).  The sentinel follows
        ``self.device``, so the old process's exit is no ending."""
        old = self.device
        old_pid = old.pid
        self.device = DeviceServer.for_run(self.dirs, self.vectors,
                                           msix_maskable=self.msix_modes["maskable"],
                                           msix_noresize=self.msix_modes["noresize"])
        old.stop()
        self.device.start()
        self._bars = None
        return old_pid, self.device.pid

    def nic_present(self) -> bool:
        """Whether QEMU's PCI tree (``query-pci``) still holds the rig's NIC."""
        try:
            qemu_view.find_nic_bars(self.qmp("query-pci"))
        except HostError:
            return False
        return True

    # --- the three views ----------------------------------------------------------------
    def qmp(self, command: str, **args):
        """One QMP command, guarded: QEMU failing under it ends the run, classified."""
        self.guard()
        try:
            return self.machine.qmp(command, **args)
        except Exception as err:          # qemu.qmp raises several kinds as QEMU dies
            self.guard(grace=2.0)
            raise CouldNotJudge(Outcome.PROCESS_FAILED,
                                f"QMP {command!r} failed: {type(err).__name__}: {err}") from err

    def hmp(self, command_line: str) -> str:
        """One HMP command through QMP, guarded like ``qmp``."""
        return self.qmp("human-monitor-command", **{"command-line": command_line})

    def qemu_table(self, nic: int = 0, msix: dict | None = None) -> dict[int, dict]:
        """QEMU's copy of NIC ``nic``'s MSI-X table, {index: entry}, read with HMP ``xp``."""
        msix = msix or self.device_command("state")["msix"]
        if nic == 0 and self._bars is None:
            self._bars = qemu_view.find_nic_bars(self.qmp("query-pci"))
        if nic and nic not in self._nic_bars:
            self._nic_bars[nic] = qemu_view.find_nic_bars(self.qmp("query-pci"),
                                                          qdev_id=f"nic{nic}")
        bars = self._bars if nic == 0 else self._nic_bars[nic]
        base = bars[msix["table_bar"]] + msix["table_offset"]
        return qemu_view.read_table(self, base, msix["table_size"])

    def snapshot(self, nic: int = 0) -> routing.Snapshot:
        """The three views of every vector of NIC ``nic`` (the guest agent's commands go
        to the NIC selected with ``select_nic``)."""
        guest = self.agent("routing")
        state = self.device_command_on(self.devices[nic], "state")
        snap = routing.build_snapshot(guest=guest, qemu=self.qemu_table(nic, state["msix"]),
                                      device=state["vectors"], apic_map=self.apic_map)
        return self._resolve_irtes(snap) if self.iommu else snap

    def _resolve_irtes(self, snap: routing.Snapshot) -> routing.Snapshot:
        """With interrupt remapping: each remappable message's destination from the IRTE
        its handle names, as QEMU's IOMMU reads it from guest memory."""
        handles = {r.decoded.remap_handle for r in snap.records if r.decoded is not None
                   and r.decoded.format is routing.MsiFormat.REMAPPABLE}
        if not handles:
            return snap
        irta = qemu_view.read_irta(self)
        irtes = {handle: qemu_view.read_irte(self, irta, handle) for handle in handles}
        return routing.resolve_remapped(snap, irtes, self.apic_map, irta["x2apic"])

    def save(self, name: str, content: str) -> Path:
        """Write ``content`` to ``name`` in the run's results directory; return its path."""
        return write_artifact(self.dirs.results / name, content)

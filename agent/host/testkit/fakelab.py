"""A host-only fake lab: every scenario step in milliseconds, before any guest boots.

Concepts owned here:
- ``FakeLab`` offers what a scenario uses of ``agent.host.lab.lab.Lab`` (``agent``,
  ``device_command``/``device_command_on``, ``devices``, ``snapshot``, ``qemu_table``,
  ``select_nic``, ``wait_until``, ``guard``, ``check_not_stopped``, ``cpus``) over a
  simulated machine, all in this process: per NIC the real device model and control
  session of ``qemu_device`` (``FakeDevice``) behind QEMU's MSI-X emulation
  (simqemu.py), one simulated guest kernel (simkernel.py) and msixlab.ko (simdriver.py)
  under the real guest agent (simagent.py).  Requests and replies go through the real JSON-lines
  codecs on both channels, so a scenario sees exactly the shapes a booted lab gives it.
  The guest tests remain the proof on the real thing: this is a model of QEMU 11.1.3 and
  Linux 7.3 as msixlab observed them (docs/device.md, docs/kmod.md), not the real ones.
- *Virtual time* (``SimClock``): nothing in the simulation happens by itself except the
  device's timers (a ``delay_raise`` fault), so a wait advances the clock instead of
  sleeping: to the next timer, or to its deadline.  ``virtual_time(lab)`` puts the
  scenario modules on that clock for a run (their ``time`` and ``Deadline`` names): a
  quiet period or a wait that runs out costs no wall time, and every wait still has its
  bound and names what it waited for.
- Several NICs (``nics``) share the guest's CPUs and vectors, each with its own device
  model, QEMU device, driver and address (``bdf(nic)``), as with ``msixlab run --nics``.
- A second control client (``FakeDevice.second_client``, the remove-rescan scenario's
  raiser thread) raises through its own control session; the guest's teardown gives it
  a bounded window to do so (``teardown_window``), as the real teardown races the raises.
- ``run_scenario`` runs a scenario class (or ``PerNic``) on a fresh fake lab under
  virtual time and returns it.
What is not simulated (interrupt remapping, hot-plug through QMP, vfio-pci, kernel
reports) is refused with a clear error.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import logging
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from msixlab_common import jsonlines
from msixlab_common.deadline import Deadline, wait_until

from agent.guest.protocol import Session
from qemu_device.control import ControlContext, ControlSession
from qemu_device.eventlog import EventBus

from agent.host.errors import DeviceControlError, HostError
from agent.host.lab.lab import agent_result
from agent.host.scenarios import cpu_hotplug, default, irq_fault, nics, remove_rescan, reset_step
from agent.host.scenarios.default import Scenario
from agent.host.scenarios.nics import PerNic
from agent.host.testkit.simagent import SimAgent
from agent.host.testkit.simdriver import SimGuest, Waits
from agent.host.testkit.simkernel import SimKernel
from agent.host.testkit.simqemu import SimQemu
from agent.host.verdict import routing

log = logging.getLogger(__name__)

MAX_VECTORS, MAX_CPUS, MAX_NICS = 2048, 64, 8
#: the scenarios the fake lab runs, and why not the others
SIMULATED = ("default", "cpu-hotplug", "remove-rescan")
NOT_SIMULATED = {"hotplug": "QMP device_del and device_add are not simulated (QEMU 11.1.3 "
                            "aborts on device_del; a fixed QEMU was never observed here)",
                 "vfio-pci": "vfio-pci and the guest's VFIO client are not simulated"}
#: the modules whose ``time`` and ``Deadline`` ``virtual_time`` replaces for a run
SCENARIO_MODULES = (default, cpu_hotplug, reset_step, irq_fault, nics, remove_rescan)
TEARDOWN_WINDOW_S = 2.0      # the longest a teardown waits for a raiser's raise (wall time)


def bdf(nic: int) -> str:
    """The PCI address of NIC ``nic``: each sits behind its own root port, on its own bus."""
    return f"0000:{nic + 1:02x}:00.0"


class SimClock:
    """Virtual seconds: ``now()``; ``call_later(delay, fn)`` (the device's timers);
    ``sleep(s)`` runs every timer due within ``s`` seconds, in order, each followed by
    ``after()``, both under ``lock`` (the lab's: a timer touches the device)."""

    def __init__(self, lock=None) -> None:
        self.t = 0.0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.after: Callable[[], None] = lambda: None
        self.lock = lock or threading.RLock()

    def now(self) -> float:
        """The virtual time, in seconds."""
        return self.t

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` ``delay`` seconds from now (the device model's ``Scheduler``)."""
        heapq.heappush(self._timers, (self.t + max(0.0, delay), next(self._seq), fn))

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass: the timers due meanwhile run, in order."""
        end = self.t + max(0.0, seconds)
        while self._timers and self._timers[0][0] <= end:
            due, _, fn = heapq.heappop(self._timers)
            self.t = max(self.t, due)
            with self.lock:
                fn()
                self.after()
        self.t = end

    def wait(self, condition: Callable[[], object], seconds: float) -> bool:
        """Whether ``condition`` holds now or becomes true within ``seconds`` (only a timer
        can make it so: the clock jumps from one to the next)."""
        end = self.t + max(0.0, seconds)
        while not condition():
            if not self._timers or self._timers[0][0] > end:
                self.t = end
                return bool(condition())
            self.sleep(self._timers[0][0] - self.t)
        return True


class _TimeShim(types.SimpleNamespace):
    """What a scenario module uses of ``time``, on the lab's clock."""


class FakeControlClient:
    """A second control client of one NIC (``JsonLinesClient``'s ``connect``, ``request``
    and ``close``), with a control session of its own."""

    def __init__(self, device: "FakeDevice", name: str):
        self.device, self.name, self.session = device, name, None
        self.open = True
        with device.lab.turn:
            device.lab.clients += 1

    def connect(self, timeout: float = 5.0) -> None:
        """Open the session."""
        self.session = self.device.new_session()

    def request(self, message: dict, timeout: float = 10.0) -> dict:
        """One request, its reply (HostError when not connected)."""
        if self.session is None:
            raise HostError(f"{self.name}: not connected")
        reply = self.device.exchange(self.session, message)
        with self.device.lab.turn:
            self.device.lab.raised_by_clients += message.get("cmd") == "raise"
            self.device.lab.turn.notify_all()
        return reply

    def close(self) -> None:
        """Close the session (twice is fine)."""
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.open:
            self.open = False
            with self.device.lab.turn:
                self.device.lab.clients -= 1
                self.device.lab.turn.notify_all()


class FakeDevice:
    """One NIC's device server, in this process: the real ``Device`` (inside its
    ``SimQemu``) and control sessions over it; ``command`` as ``DeviceServer.command``."""

    def __init__(self, lab: "FakeLab", nic: int, qemu: SimQemu, event_log: str | None):
        self.lab, self.nic, self.qemu = lab, nic, qemu
        self.event_log = event_log
        self.pid = None
        self.bus = EventBus(event_log)
        qemu.device.msix.scheduler = lab.clock.call_later
        self.bus.on_change = self._sinks
        self._sinks()
        self.ctx = ControlContext(qemu.device, self.bus,
                                  lambda: {"client_connected": True, "pid": None})
        self._keys = itertools.count(1)
        self._ids = itertools.count(1)
        self.control = self.new_session()

    def _sinks(self) -> None:
        """The device and its endpoint emit events while anyone listens (as the server)."""
        self.qemu.device.msix.sink = self.qemu.endpoint.sink = self.bus.sink()

    def new_session(self) -> ControlSession:
        """A control session of its own (a client's connection)."""
        return ControlSession(self.ctx, next(self._keys), lambda data: None)

    def exchange(self, session: ControlSession, message: dict) -> dict:
        """``message`` as one JSON line through ``session``; the reply object.  QEMU's main
        loop then reads what the command made the device signal."""
        with self.lab.lock:
            out = session.feed(jsonlines.dumps({"id": next(self._ids), **message}))
            self.qemu.pump()
        return json.loads(out)

    def command(self, cmd: str, timeout: float = 10.0, **fields) -> dict:
        """Control command ``cmd``; its result, or ``DeviceControlError``."""
        reply = self.exchange(self.control, {"cmd": cmd, **fields})
        if not reply.get("ok"):
            raise DeviceControlError(cmd, reply.get("error", {}))
        return reply["result"]

    def second_client(self, name: str) -> FakeControlClient:
        """A control client of its own, not connected yet."""
        return FakeControlClient(self, name)


class FakeLab:
    """The simulated lab (see the module): ``vectors`` per NIC, ``cpus``, ``nics``, the
    MSI-X modes the device advertises, and where each NIC's device event log goes
    (``event_logs``: a directory, or None for none).  Bad options are a ``HostError``
    naming them; so is what it does not simulate (``iommu``)."""

    def __init__(self, *, vectors: int = 64, cpus: int = 2, nics: int = 1,
                 msix_maskable: bool = False, msix_noresize: bool = False,
                 iommu: bool = False, event_logs: str | None = None):
        for name, value, top in (("vectors", vectors, MAX_VECTORS), ("cpus", cpus, MAX_CPUS),
                                 ("nics", nics, MAX_NICS)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise HostError(f"fake lab: {name} must be an integer 1..{top}, not {value!r}")
        if iommu:
            raise HostError("fake lab: interrupt remapping (--iommu) is not simulated")
        self.vectors, self.cpus = vectors, cpus
        self.lock = threading.RLock()
        self.turn = threading.Condition()
        self.raised_by_clients = 0     # raises made through second control clients
        self.clients = 0               # second control clients handed out, not closed
        self.clock = SimClock(self.lock)
        self.kernel = SimKernel(cpus)
        self.devices: list[FakeDevice] = []
        for nic in range(nics):
            qemu = SimQemu(vectors, self.kernel.deliver_msi, maskable=msix_maskable,
                           noresize=msix_noresize)
            log = f"{event_logs}/nic{nic}-events.jsonl" if event_logs else None
            self.devices.append(FakeDevice(self, nic, qemu, log))
        self.clock.after = self._pump
        functions = [self.kernel.add_function(bdf(d.nic), d.qemu) for d in self.devices]
        self.guest = SimGuest(self.kernel, functions,
                              Waits(self._wait, self.clock.now, self.teardown_window))
        self.agent_handler = SimAgent(self.guest)
        self.session = Session(self.agent_handler.commands())
        self.hello = self.agent_handler.hello()
        self.selected_nic: int | None = 0 if nics == 1 else None
        self._ids = itertools.count(1)
        self.iommu = False
        self.apic_map = routing.ApicMap.identity()

    @property
    def device(self) -> FakeDevice:
        """NIC 0's device server."""
        return self.devices[0]

    def _pump(self) -> None:
        for device in self.devices:
            device.qemu.pump()

    def _wait(self, condition: Callable[[], object], seconds: float) -> bool:
        return self.clock.wait(condition, seconds)

    # --- the two channels ----------------------------------------------------------------
    def agent(self, cmd: str, timeout: float = 30.0, **args):
        """One guest agent request through the agent's own session; its result, or the
        error ``Lab.agent`` raises (``DriverCallFailed`` for the driver's, else
        ``GuestAgentError``)."""
        line = jsonlines.dumps({"id": next(self._ids), "cmd": cmd, "args": args})
        with self.lock:
            reply = json.loads(self.session.receive_data(line))
        return agent_result(cmd, args, reply)

    def device_command(self, cmd: str, **fields):
        """A control request to NIC 0's device."""
        return self.device.command(cmd, **fields)

    def device_command_on(self, device: FakeDevice, cmd: str, **fields):
        """A control request to one NIC's device."""
        return device.command(cmd, **fields)

    # --- several NICs ------------------------------------------------------------------
    def select_nic(self, nic: int) -> None:
        """Make NIC ``nic`` the one the guest agent's commands use (by its address)."""
        if nic != self.selected_nic:
            self.agent("select_nic", bdf=bdf(nic))
            self.selected_nic = nic

    # --- the views ---------------------------------------------------------------------
    def qemu_table(self, nic: int = 0, msix: dict | None = None) -> dict[int, dict]:
        """QEMU's copy of NIC ``nic``'s MSI-X table, {index: entry}."""
        return self.devices[nic].qemu.view()

    def snapshot(self, nic: int = 0) -> routing.Snapshot:
        """The three views of every vector of NIC ``nic``, as ``Lab.snapshot``."""
        guest = self.agent("routing")
        state = self.device_command_on(self.devices[nic], "state")
        return routing.build_snapshot(guest=guest, qemu=self.qemu_table(nic),
                                      device=state["vectors"], apic_map=self.apic_map)

    # --- waits and endings --------------------------------------------------------------
    def wait_until(self, condition, timeout: float, what: str, detail=None):
        """``msixlab_common.deadline.wait_until`` on the virtual clock."""
        return wait_until(condition, Deadline(timeout, what, clock=self.clock.now), what,
                          detail=detail, sleep=self.clock.sleep)

    def guard(self, grace: float = 0.0) -> None:
        """Nothing ends a fake run early: the simulated kernel reports nothing."""

    def check_not_stopped(self, since: float, what: str) -> None:
        """Nothing is ever stopped (SIGSTOP) here."""

    def teardown_window(self) -> None:
        """A teardown has begun: while a second control client is out (a raiser thread,
        which may still be connecting), give it the lock until it has made one more raise
        (or is closed), at most ``TEARDOWN_WINDOW_S`` of wall time, so that raises land
        inside the teardown."""
        with self.turn:
            started = self.raised_by_clients
        depth = 0
        while self.lock._is_owned():      # noqa: SLF001 - this thread's holds on the RLock
            self.lock.release()
            depth += 1
        try:
            with self.turn:
                if not self.turn.wait_for(lambda: self.raised_by_clients > started
                                          or not self.clients, TEARDOWN_WINDOW_S):
                    log.warning("teardown: no raise from the %d control client(s) out within "
                                "%g s; the teardown goes on", self.clients, TEARDOWN_WINDOW_S)
        finally:
            for _ in range(depth):
                self.lock.acquire()


@contextmanager
def virtual_time(lab: FakeLab, modules=SCENARIO_MODULES) -> Iterator[None]:
    """Within: the scenario modules' ``time.sleep``/``time.monotonic`` and ``Deadline``
    run on ``lab.clock`` (see the module); restored after, whatever happened."""
    shim = _TimeShim(sleep=lab.clock.sleep, monotonic=lab.clock.now)
    clocked = functools.partial(Deadline, clock=lab.clock.now)
    saved = []
    for module in modules:
        for name, value in (("time", shim), ("Deadline", clocked)):
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def run_scenario(cls: type[Scenario], *, nics: int = 1, say=lambda text: None,
                 lab: FakeLab | None = None, **options) -> Scenario:
    """Run scenario ``cls`` (on every NIC in turn with ``nics`` > 1, as ``PerNic``) on
    ``lab`` or a fresh ``FakeLab(nics=nics, **options)``, under virtual time; return the
    scenario (its ``results``, ``stopped_at``, ``ledger``, ``lab``...) with the snapshot
    its run returned as ``final``.  Errors of the run (a driver error the scenario did
    not expect) propagate, as in a real run."""
    if cls.NAME not in SIMULATED:
        raise HostError(f"the fake lab does not run scenario {cls.NAME!r}: "
                        + NOT_SIMULATED.get(cls.NAME, f"it simulates {', '.join(SIMULATED)}"))
    lab = lab or FakeLab(nics=nics, **options)
    scenario = PerNic(lab, cls, nics, say=say) if nics > 1 else cls(lab, say=say)
    with virtual_time(lab):
        scenario.final = scenario.run()
    return scenario

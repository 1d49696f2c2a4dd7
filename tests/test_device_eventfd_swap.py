"""The eventfd swap path: per-vector SET_IRQS TRIGGER replacing a live vector's eventfd.

Under KVM, QEMU answers a guest's mask of an MSI-X vector with ``SET_IRQS TRIGGER n,1``
carrying its own userspace eventfd, and the unmask with another that swaps the KVM irqfd
back (hw/vfio/pci.c; the shared reference notes, "QEMU's client under KVM"); the rig
runs under TCG, so no run ever does it.  Here the sans-I/O endpoint gets those requests as bytes with (fake)
fds, between raises from the control channel and the ICS doorbell, with raises held
pending (function mask, no eventfd) and in flight (a delayed raise scheduled but not yet
delivered).  The device is checked against a model after every request: every raise is
delivered exactly once (nothing lost, nothing doubled), a held raise lands on the eventfd
the vector has when it can be delivered, and once the SET_IRQS reply is out no signal
ever goes to the eventfd it replaced (the fake port records a signal of a closed fd as a
problem, and every retired eventfd's count is frozen at the reply)."""

from __future__ import annotations

import json
import struct

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fuzzing import load_profile
from qemu_device.device import registers as R
from qemu_device.device.msix import MsixLayout
from qemu_device.device.nic import Device
from qemu_device.handlers import Endpoint
from qemu_device.protocol import Command as C, IrqIndex, IrqSet, IrqSetFlags, pack_message
from qemu_device.testing import QEMU_CAPS, FakeFdPort

load_profile()

VECTORS = 12            # two PBA bytes and a half: bits that share a byte and ones that don't
TRIGGER_FD = int(IrqSetFlags.VFIO_IRQ_SET_DATA_EVENTFD | IrqSetFlags.VFIO_IRQ_SET_ACTION_TRIGGER)
MSIX = int(IrqIndex.VFIO_PCI_MSIX_IRQ_INDEX)
vector = st.integers(0, VECTORS - 1)


class Swaps:
    """One device behind a sans-I/O endpoint, its fake fds, a manual scheduler and the
    model: per vector the current eventfd, its retired ones (count frozen at the swap's
    reply), what should have been signalled in all, and whether one raise is held."""

    def __init__(self) -> None:
        self.port = FakeFdPort()
        self.device = Device(MsixLayout(VECTORS), fds=self.port)
        self.ep = Endpoint(self.device)
        caps = json.dumps(QEMU_CAPS).encode() + b"\0"
        self.ep.receive_data(pack_message(0, C.VFIO_USER_VERSION, b"\0" * 4 + caps))
        self.timers: list = []
        self.device.msix.scheduler = lambda delay, call: self.timers.append(call)
        self.device.msix.set_control(True, False)
        self.current: list[int | None] = [None] * VECTORS
        self.retired: dict[int, int] = {}          # old eventfd -> its count at the reply
        self.delivered = [0] * VECTORS             # signals the model expects, every fd
        self.held = [False] * VECTORS
        self.in_flight = [0] * VECTORS
        self.fmask = False
        self.msg_id = 1
        self.owned: list[set[int]] = [set() for _ in range(VECTORS)]   # each vector's fds

    # -- requests QEMU would send ---------------------------------------------------------
    def set_trigger(self, v: int, fd: int | None) -> None:
        """SET_IRQS DATA_EVENTFD|ACTION_TRIGGER of vector ``v`` with eventfd ``fd`` (None:
        no fd, the vector's eventfd dropped) as one message; the reply must be a success."""
        self.msg_id += 1
        payload = IrqSet(20, TRIGGER_FD, MSIX, v, 1).pack()
        replies = self.ep.receive_data(pack_message(self.msg_id, C.VFIO_USER_DEVICE_SET_IRQS,
                                                    payload), [] if fd is None else [fd])
        assert len(replies) == 1
        error = struct.unpack_from("<HHIII", replies[0])[4]
        assert error == 0, f"SET_IRQS {v} refused: errno {error}"
        old = self.current[v]
        if old is not None and old != fd:
            self.retired[old] = self.port.signals[old]      # frozen from the reply on
        self.current[v] = fd
        if fd is not None and self.held[v] and not self.fmask:
            self.held[v] = False
            self.delivered[v] += 1

    # -- the model's expectations of a raise ------------------------------------------------
    def raised(self, v: int) -> None:
        if self.current[v] is not None and not self.fmask:
            self.delivered[v] += 1
        else:
            self.held[v] = True

    def check(self) -> None:
        """The device against the model: every vector's signals over all its eventfds,
        its held raise, and not one signal on a retired eventfd since its reply."""
        assert self.port.problems == [], self.port.problems
        for fd, count in self.retired.items():
            assert self.port.signals[fd] == count, f"eventfd {fd} signalled after its swap"
        for v in range(VECTORS):
            got = sum(self.port.signals[fd] for fd in self.owned[v])
            assert got == self.delivered[v], (v, got, self.delivered[v])
            assert self.device.msix.is_pending(v) == self.held[v], (v, self.held[v])
            assert self.device.msix.delivered[v] == self.delivered[v]
        pending = sum(self.held)
        assert self.device.regs.read32(R.REG_PENDING_COUNT) == pending


class SwapMachine(RuleBasedStateMachine):
    """Random swaps, drops, raises (control, doorbell, delayed), function mask toggles."""

    @initialize()
    def start(self) -> None:
        self.s = Swaps()

    @rule(v=vector)
    def swap(self, v) -> None:
        fd = self.s.port.eventfd()
        self.s.owned[v].add(fd)
        self.s.set_trigger(v, fd)

    @rule(v=vector)
    def drop(self, v) -> None:
        self.s.set_trigger(v, None)

    @rule(v=vector)
    def raise_from_control(self, v) -> None:
        self.s.device.msix.raise_vector(v)
        self.s.raised(v)

    @rule(v=vector)
    def raise_from_doorbell(self, v) -> None:
        self.s.device.region_write(0, R.REG_ICS, v.to_bytes(4, "little"))
        self.s.raised(v)

    @rule(v=vector)
    def raise_in_flight(self, v) -> None:
        self.s.device.faults.add({"kind": "delay_raise", "vector": v, "delay_ms": 5})
        self.s.device.msix.raise_vector(v)
        self.s.in_flight[v] += 1

    @precondition(lambda self: self.s.timers)
    @rule()
    def in_flight_lands(self) -> None:
        for call in self.s.timers:
            call()
        self.s.timers.clear()
        for v in range(VECTORS):
            for _ in range(self.s.in_flight[v]):
                self.s.raised(v)
            self.s.in_flight[v] = 0

    @rule(masked=st.booleans())
    def function_mask(self, masked) -> None:
        self.s.device.msix.set_control(True, masked)
        self.s.fmask = masked
        if not masked:
            for v in range(VECTORS):
                if self.s.held[v] and self.s.current[v] is not None:
                    self.s.held[v] = False
                    self.s.delivered[v] += 1

    @invariant()
    def agrees_with_the_model(self) -> None:
        if hasattr(self, "s"):
            self.s.check()


TestSwapMachine = SwapMachine.TestCase


# -- the cases the issue names, each on its own ---------------------------------------------

def fresh() -> Swaps:
    return Swaps()


def give(s: Swaps, v: int) -> int:
    fd = s.port.eventfd()
    s.owned[v].add(fd)
    s.set_trigger(v, fd)
    return fd


def test_a_swap_while_raises_are_held_delivers_each_once_to_the_new_eventfd():
    """KVM's mask: vectors 1 and 2 (one PBA byte) and 9 held behind the function mask get
    QEMU's userspace eventfd; at the unmask each lands once, on the new eventfd only."""
    s = fresh()
    old = {v: give(s, v) for v in (1, 2, 9)}
    s.device.msix.set_control(True, True)
    s.fmask = True
    for v in (1, 2, 9):
        s.device.msix.raise_vector(v)
        s.raised(v)
    new = {v: give(s, v) for v in (1, 2, 9)}
    s.check()
    s.device.msix.set_control(True, False)
    assert {v: s.port.signals[new[v]] for v in new} == {1: 1, 2: 1, 9: 1}
    assert {v: s.port.signals[old[v]] for v in old} == {1: 0, 2: 0, 9: 0}
    assert set(old.values()) <= set(s.port.closed)


def test_a_swap_while_no_eventfd_delivers_the_held_raise_at_the_reply():
    """A vector whose eventfd was dropped (fd -1) holds its raises; the next TRIGGER
    delivers one, to the eventfd it carries, before the reply."""
    s = fresh()
    first = give(s, 3)
    s.set_trigger(3, None)
    for _ in range(2):                      # two raises held: they coalesce into one
        s.device.msix.raise_vector(3)
        s.raised(3)
    second = give(s, 3)
    assert (s.port.signals[first], s.port.signals[second]) == (0, 1)
    s.check()


def test_a_raise_in_flight_across_a_swap_lands_on_the_new_eventfd_once():
    """A raise scheduled (delayed) before the swap and delivered after its reply goes to
    the eventfd the vector has then, exactly once; the old one stays silent."""
    s = fresh()
    old = give(s, 7)
    s.device.faults.add({"kind": "delay_raise", "vector": 7, "delay_ms": 5})
    s.device.msix.raise_vector(7)
    new = give(s, 7)
    for call in s.timers:
        call()
    assert (s.port.signals[old], s.port.signals[new]) == (0, 1)
    assert s.port.problems == []


def test_a_swap_to_the_same_eventfd_keeps_it_open_and_delivers_once():
    """QEMU re-sending the eventfd the vector already has (same fd number): nothing
    closed, a held raise delivered once."""
    s = fresh()
    fd = give(s, 5)
    s.device.msix.set_control(True, True)
    s.fmask = True
    s.device.msix.raise_vector(5)
    s.raised(5)
    s.set_trigger(5, fd)
    s.device.msix.set_control(True, False)
    assert s.port.signals[fd] == 1 and fd not in s.port.closed
    assert s.port.problems == []


def test_real_eventfds_a_held_raise_reaches_the_new_one_and_the_old_stays_silent():
    """The real port (``OsFdPort``) and real eventfds, through the endpoint: vector 4's
    raise held behind the function mask, its eventfd swapped for another: at the unmask
    the new eventfd reads 1, the old one nothing, and the device closed its copy of the old
    one at the swap."""
    import os
    from qemu_device.fdio import OsFdPort
    device = Device(MsixLayout(VECTORS), fds=OsFdPort())
    ep = Endpoint(device)
    caps = json.dumps(QEMU_CAPS).encode() + b"\0"
    ep.receive_data(pack_message(0, C.VFIO_USER_VERSION, b"\0" * 4 + caps))
    old, new = (os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2))
    try:
        payload = IrqSet(20, TRIGGER_FD, MSIX, 4, 1).pack()
        for msg_id, fd in ((1, old), (2, new)):
            if msg_id == 2:
                device.msix.set_control(True, True)
                device.msix.raise_vector(4)
            (reply,) = ep.receive_data(pack_message(msg_id, C.VFIO_USER_DEVICE_SET_IRQS,
                                                    payload), [os.dup(fd)])
            assert struct.unpack_from("<HHIII", reply)[4] == 0
        device.msix.set_control(True, False)
        assert os.eventfd_read(new) == 1
        try:
            got_old = os.eventfd_read(old)
        except BlockingIOError:
            got_old = 0
        assert got_old == 0
        assert not device.msix.is_pending(4)
    finally:
        device.msix.deassign_all()
        os.close(old)
        os.close(new)

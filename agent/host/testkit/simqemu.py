"""QEMU 11.1.3's side of one vfio-user NIC, simulated for the fake lab (fakelab.py).

Concepts owned here:
- *The client*: ``SimQemu`` speaks vfio-user to the real device server core, the sans-I/O
  ``qemu_device.handlers.Endpoint`` over the real ``Device``, as bytes and fd numbers
  without a socket: VERSION at realize, then SET_IRQS, REGION_READ/WRITE (config space,
  BAR registers, the PBA) and DEVICE_RESET, each answered (or refused) by the server's
  own code.  A refused request is a device error: the run could not judge.
- *Eventfds*: QEMU's own eventfd per vector in use (``Eventfd``).  Each SET_IRQS hands the
  server a new fd number for it (``ServerFds``, the ``FdPort`` the device model is built
  with: the dup a real server receives over SCM_RIGHTS).  A signal makes the eventfd
  readable; ``pump`` reads each readable eventfd once (signals that came in between
  coalesce, as an eventfd counter read does) and notifies its vector.
- *MSI-X emulation* (hw/pci/msix.c): the table (address, data, vector control), QEMU's
  own pending bits, the enable and function-mask bits.  A vector is masked while MSI-X is
  off, the function is masked or its entry is; a notify of a masked vector sets QEMU's
  pending bit and the unmask delivers it once, with the message the entry holds then.
  A message goes to the guest (``deliver``, the APIC) unless bus mastering is off: then
  the write goes nowhere (``dropped``).  Guest PBA reads are forwarded to the device.
- *vfio-pci glue* (hw/vfio/pci.c under TCG): an unmask is a vector *use*, one SET_IRQS
  with the vector's eventfd (with NORESIZE, a use past the highest vector used so far is
  a disable and a re-enable over every vector in runs); a mask sends nothing; MSI-X
  enabled with nothing unmasked sends the no-vector SET_IRQS, disabled sends SET_IRQS
  count 0 and closes the eventfds (QEMU's pending bits go with them).  A config write
  goes to the device first, then to QEMU's emulation.
- *Resets*: the guest's FLR is its config write, passed through; a secondary bus reset
  disables MSI-X, clears bus mastering, sends DEVICE_RESET and resets the table (every
  entry masked and zero), QEMU's pending bits and its MSI-X bits (docs/device.md).
Every guest access ends with ``pump``: QEMU's main loop reads the eventfds between the
vCPU's exits, so a raise made inside a reset window is seen while bus mastering is off.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable

from qemu_device.device.config_space import (MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE,
                                             PCI_MSIX_FLAGS_MASKALL)
from qemu_device.device.msix import MsixLayout
from qemu_device.device.nic import Device
from qemu_device.errors import DeviceError
from qemu_device.handlers import Endpoint
from qemu_device.protocol import (HEADER_SIZE, Command, Header, HeaderFlags, IrqInfo,
                                  IrqInfoFlags, IrqSet, RegionAccess, pack_message)

from agent.host.verdict.outcome import CouldNotJudge, Outcome

CONFIG = 7                       # VFIO_PCI_CONFIG_REGION_INDEX
MSIX = 2                         # VFIO_PCI_MSIX_IRQ_INDEX
MAX_MSG_FDS = 16                 # the server's max_msg_fds: QEMU cuts its runs there
SET_TRIGGER_EVENTFD = 0x24       # DATA_EVENTFD | ACTION_TRIGGER
SET_TRIGGER_NONE = 0x21          # DATA_NONE | ACTION_TRIGGER (count 0: disable all)
PCI_COMMAND = 0x04
PCI_COMMAND_MASTER = 0x4
WORDS = ("address_lo", "address_hi", "data", "ctrl")
MASKBIT = 1
_VERSION = b"\0\0\0\0" + json.dumps({"capabilities": {"max_msg_fds": MAX_MSG_FDS}}).encode() + b"\0"


class Eventfd:
    """One of QEMU's eventfds: the interrupt notifier of MSI-X ``vector``; ``count`` holds
    the signals not read yet; a closed one is never read again."""

    __slots__ = ("vector", "count", "closed")

    def __init__(self, vector: int):
        self.vector, self.count, self.closed = vector, 0, False


class ServerFds:
    """The device model's ``FdPort``: the fd numbers the server holds, each a dup of one of
    QEMU's eventfds.  ``problems`` records a close or signal of an fd that is not open (a
    bug in the device model); such a signal also fails with EBADF, as the OS would."""

    def __init__(self) -> None:
        self.files: dict[int, Eventfd] = {}
        self.problems: list[str] = []
        self.readable: Callable[[Eventfd], None] = lambda ev: None
        self._next = 100

    def receive(self, ev: Eventfd) -> int:
        """The server's new fd number for QEMU's eventfd ``ev`` (one SCM_RIGHTS transfer)."""
        fd, self._next = self._next, self._next + 1
        self.files[fd] = ev
        return fd

    def close(self, fd: int) -> None:
        """``FdPort.close``."""
        if self.files.pop(fd, None) is None:
            self.problems.append(f"close of fd {fd}, which is not open")

    def is_eventfd(self, fd: int) -> bool:
        """``FdPort.is_eventfd``: every fd QEMU sends is one."""
        return fd in self.files

    def signal(self, fd: int) -> None:
        """``FdPort.signal``: one more on the eventfd's counter; it is readable now."""
        ev = self.files.get(fd)
        if ev is None:
            self.problems.append(f"signal of fd {fd}, which is not open")
            raise OSError(errno.EBADF, "Bad file descriptor")
        ev.count += 1
        self.readable(ev)

    def map_memory(self, fd, offset, size, readable, writable):
        """``FdPort.map_memory``: the fake lab maps no guest memory (QEMU sends no DMA_MAP)."""
        raise DeviceError("the fake lab maps no DMA memory", errno=errno.EINVAL)


class SimQemu:
    """QEMU's vfio-user-pci device for one NIC (see the module): owns the device model
    (``device``), its endpoint and QEMU's MSI-X emulation; ``deliver(address_lo,
    address_hi, data)`` is the guest's side of an MSI write."""

    def __init__(self, vectors: int, deliver: Callable[[int, int, int], None], *,
                 maskable: bool = False, noresize: bool = False):
        self.fds = ServerFds()
        self.fds.readable = self._readable
        self.device = Device(MsixLayout(vectors), fds=self.fds, maskable=maskable,
                             noresize=noresize)
        self.endpoint = Endpoint(self.device)
        self.deliver = deliver
        self.n = vectors
        self.table = [[0, 0, 0, MASKBIT] for _ in range(vectors)]
        self.pending: set[int] = set()          # QEMU's own pending bits (masked entries)
        self.enabled = self.maskall = self.bus_master = False
        self.notifiers = False                  # vfio set its vector notifiers (MSI-X on)
        self.vectors: dict[int, Eventfd] = {}   # vfio's msi_vectors in use
        self.nr_vectors = 0
        self.dropped = 0                        # messages lost with bus mastering off
        self._ready: dict[Eventfd, None] = {}
        self._pumping = False
        self._id = 0
        self._request(Command.VFIO_USER_VERSION, _VERSION)
        info = IrqInfo.unpack(self._request(Command.VFIO_USER_DEVICE_GET_IRQ_INFO,
                                            IrqInfo(16, 0, MSIX, 0).pack()))
        self.noresize = bool(info.flags & IrqInfoFlags.VFIO_IRQ_INFO_NORESIZE)

    # --- vfio-user to the real endpoint ----------------------------------------------------
    def _request(self, command: Command, payload: bytes = b"", fds=(),
                 posted: bool = False) -> bytes:
        """One message to the server; its reply's payload.  An error reply is the device's
        refusal: ``CouldNotJudge`` (device_fault), as the real lab judges it."""
        self._id = self._id % 0xFFFF + 1
        flags = HeaderFlags.VFIO_USER_F_NO_REPLY if posted else 0
        errors = self.endpoint.counts["errors"]
        replies = self.endpoint.receive_data(pack_message(self._id, command, payload,
                                                          flags=flags), list(fds))
        if posted:
            if replies or self.endpoint.counts["errors"] != errors:
                raise CouldNotJudge(Outcome.DEVICE_FAULT, f"the device refused a posted "
                                    f"{command.name}")
            return b""
        header = Header.unpack(replies[0])
        if header.flags & HeaderFlags.VFIO_USER_F_ERROR:
            raise CouldNotJudge(Outcome.DEVICE_FAULT, f"the device answered {command.name} "
                                f"with {errno.errorcode.get(header.error, header.error)}",
                                errno=header.error)
        return replies[0][HEADER_SIZE:]

    def _set_irqs(self, flags: int, start: int, count: int, fds=()) -> None:
        self._request(Command.VFIO_USER_DEVICE_SET_IRQS,
                      IrqSet(20, flags, MSIX, start, count).pack(), fds)

    def _send_eventfds(self, start: int, events: list[Eventfd]) -> None:
        self._set_irqs(SET_TRIGGER_EVENTFD, start, len(events),
                       [self.fds.receive(ev) for ev in events])

    def _region_write(self, region: int, offset: int, data: bytes, posted: bool) -> None:
        self._request(Command.VFIO_USER_REGION_WRITE,
                      RegionAccess(offset, region, len(data)).pack() + data, posted=posted)

    def _region_read(self, region: int, offset: int, count: int) -> bytes:
        reply = self._request(Command.VFIO_USER_REGION_READ,
                              RegionAccess(offset, region, count).pack())
        return reply[RegionAccess.STRUCT.size:]

    # --- what the guest does ------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        """A config space read: MSI-X Message Control from QEMU's emulation (its enable and
        mask bits), the rest from the device."""
        if offset == MSIX_FLAGS and size == 2:
            return ((PCI_MSIX_FLAGS_ENABLE if self.enabled else 0)
                    | (PCI_MSIX_FLAGS_MASKALL if self.maskall else 0) | (self.n - 1))
        return int.from_bytes(self._region_read(CONFIG, offset, size), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A config space write: to the device first, then QEMU's emulation of the Command
        register's bus mastering and of MSI-X Message Control (vfio's enable or disable,
        the function mask's notifiers and held messages)."""
        self._region_write(CONFIG, offset, value.to_bytes(size, "little"), posted=False)
        if offset == PCI_COMMAND:
            self.bus_master = bool(value & PCI_COMMAND_MASTER)
        elif offset == MSIX_FLAGS:
            self._msix_control(bool(value & PCI_MSIX_FLAGS_ENABLE),
                               bool(value & PCI_MSIX_FLAGS_MASKALL))
        self.pump()

    def _msix_control(self, enabled: bool, maskall: bool) -> None:
        was_enabled = self.enabled
        before = [self.masked(v) for v in range(self.n)]
        self.enabled, self.maskall = enabled, maskall
        if was_enabled and enabled:
            for v in range(self.n):
                self._mask_update(v, before[v])
        if enabled and not was_enabled:
            self._vfio_enable()
        elif was_enabled and not enabled:
            self._vfio_disable()

    def table_read(self, index: int) -> tuple[int, int, int, int]:
        """Entry ``index`` of QEMU's table: address low, high, data, vector control."""
        return tuple(self.table[index])

    def table_write(self, index: int, word: int, value: int) -> None:
        """A 32-bit guest write to entry ``index`` (``word`` 0..3 of ``WORDS``); a write of
        vector control updates the mask (a use, a held message delivered)."""
        was = self.masked(index)
        self.table[index][word] = value & 0xFFFFFFFF
        if word == 3:
            self._mask_update(index, was)
        self.pump()

    def mmio_read(self, bar: int, offset: int, size: int) -> bytes:
        """A guest read of a BAR (registers, PBA): forwarded to the device."""
        return self._region_read(bar, offset, size)

    def mmio_write(self, bar: int, offset: int, value: int, size: int = 4) -> None:
        """A guest write to a BAR (a doorbell): posted to the device, as QEMU posts them."""
        self._region_write(bar, offset, value.to_bytes(size, "little"), posted=True)
        self.pump()

    def bus_reset(self) -> None:
        """A secondary bus reset reaching the NIC: vfio's pre-reset (MSI-X disabled,
        bus mastering off), DEVICE_RESET, then QEMU's own reset of the function."""
        if self.notifiers:
            self._vfio_disable()
        self.bus_master = False
        self._request(Command.VFIO_USER_DEVICE_RESET)
        self.table = [[0, 0, 0, MASKBIT] for _ in range(self.n)]
        self.pending.clear()
        self.enabled = self.maskall = False
        self.pump()

    # --- MSI-X emulation --------------------------------------------------------------
    def masked(self, vector: int) -> bool:
        """Whether a notify of ``vector`` is held now (MSI-X off, function or entry masked)."""
        return not self.enabled or self.maskall or bool(self.table[vector][3] & MASKBIT)

    def _mask_update(self, vector: int, was_masked: bool) -> None:
        now = self.masked(vector)
        if now == was_masked or now:
            return                      # a mask sends nothing under TCG
        if self.notifiers:
            self._use(vector)
        if vector in self.pending:
            self.pending.discard(vector)
            self._notify(vector)

    def _notify(self, vector: int) -> None:
        if vector not in self.vectors:
            return                      # not in use: vfio reads no eventfd of it
        if self.masked(vector):
            self.pending.add(vector)
            return
        if not self.bus_master:
            self.dropped += 1
            return
        lo, hi, data, _ = self.table[vector]
        self.deliver(lo, hi, data)

    # --- vfio-pci ----------------------------------------------------------------------
    def _use(self, vector: int) -> None:
        ev = self.vectors.get(vector)
        if ev is None:
            ev = self.vectors[vector] = Eventfd(vector)
        if self.nr_vectors < vector + 1:
            self.nr_vectors = vector + 1
            if self.noresize:
                self._set_irqs(SET_TRIGGER_NONE, 0, 0)
                self._enable_vectors()
                return
        self._send_eventfds(vector, [ev])

    def _enable_vectors(self) -> None:
        """Vectors 0 .. nr_vectors-1 in runs: a run in use carries its eventfds, a run not in
        use none; at most ``MAX_MSG_FDS`` vectors a message."""
        v = 0
        while v < self.nr_vectors:
            used = v in self.vectors
            end = v
            while end < self.nr_vectors and (end in self.vectors) == used \
                    and end - v < MAX_MSG_FDS:
                end += 1
            if used:
                self._send_eventfds(v, [self.vectors[i] for i in range(v, end)])
            else:
                self._set_irqs(SET_TRIGGER_EVENTFD, v, end - v)
            v = end

    def _vfio_enable(self) -> None:
        self.notifiers, self.vectors, self.nr_vectors = True, {}, 0
        unmasked = [v for v in range(self.n) if not self.masked(v)]
        for v in unmasked:
            self.vectors[v] = Eventfd(v)
        if unmasked:
            self.nr_vectors = max(unmasked) + 1
            self._enable_vectors()
        else:
            self._set_irqs(SET_TRIGGER_EVENTFD, 0, 1)     # no vector: vector 0, no fd

    def _vfio_disable(self) -> None:
        self.notifiers = False
        self._set_irqs(SET_TRIGGER_NONE, 0, 0)
        for ev in self.vectors.values():
            ev.closed = True
        self.vectors, self.nr_vectors = {}, 0
        self.pending.clear()

    # --- QEMU's main loop -----------------------------------------------------------------
    def _readable(self, ev: Eventfd) -> None:
        self._ready[ev] = None

    def pump(self) -> None:
        """Read every readable eventfd once and notify its vector (a nested call, from a
        delivery that made the guest touch the device, leaves the work to the outer one)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._ready:
                ev = next(iter(self._ready))
                del self._ready[ev]
                if ev.closed or not ev.count:
                    continue
                ev.count = 0
                self._notify(ev.vector)
        finally:
            self._pumping = False

    # --- the host's view ----------------------------------------------------------------
    def view(self) -> dict[int, dict[str, int]]:
        """QEMU's table as ``qemu_view.read_table`` gives it: {index: {address_lo,
        address_hi, data, ctrl}}."""
        return {i: dict(zip(WORDS, entry)) for i, entry in enumerate(self.table)}

"""MSI-X table, PBA and interrupt state.

Concepts: MSI-X on the device side.  ``MsixLayout`` says where the table and the PBA live
(BAR index and offset) and checks QEMU's rules (8-byte aligned offsets, no overlap,
inside the BAR).  ``MsixState`` holds, per vector: the eventfd QEMU gave us (or none),
the client's mask bit, the raised/delivered/dropped counters and the pending bit (the
PBA).  A raise is delivered (one ``signal`` of the eventfd through the injected
``FdPort``) only when the vector has an eventfd, MSI-X is enabled, the function is not
masked, the vector is not masked and the function is in D0 (``low_power`` is false: a
function in D3hot sends no message); otherwise the PBA bit is set, and the pending
interrupt is delivered exactly once when all of that holds again (eventfd assigned,
enable, function unmask, vector unmask; the way out of D3hot is a reset, which clears
the PBA).

Per-vector mask bits exist only when the device advertises ``VFIO_IRQ_INFO_MASKABLE``
and the client sends ``SET_IRQS`` MASK/UNMASK; they start clear and survive eventfd
changes and the disable-all of ``SET_IRQS`` count 0 (QEMU's NORESIZE re-enable), and a
device reset clears them.  QEMU 11.1.3 never sends them for MSI-X (docs/device.md): it
keeps the per-vector mask and its own pending bits in its emulated table, which it never
forwards, so the server's table copy is informational and is not consulted.  No I/O
here: eventfd writes and closes go through the port.
"""

from __future__ import annotations

import enum
import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import ConfigurationError, DeviceError
from ..faults import FaultKind, FaultTable

if TYPE_CHECKING:   # pragma: no cover
    from ..fdport import FdPort

log = logging.getLogger(__name__)

MAX_VECTORS = 2048
ENTRY_SIZE = 16
PCI_MSIX_ENTRY_CTRL_MASKBIT = 1


def pba_size(vectors: int) -> int:
    """Bytes of PBA QEMU expects: ALIGN_UP(N, 64) / 8."""
    return (vectors + 63) // 64 * 8


@dataclass(frozen=True)
class MsixLayout:
    """Where the MSI-X table and PBA live: ``vectors`` entries, the table at
    ``table_offset`` in BAR ``table_bar``, the PBA at ``pba_offset`` in BAR ``pba_bar``
    (offsets in bytes)."""
    vectors: int = 64
    table_bar: int = 2
    table_offset: int = 0
    pba_bar: int = 4
    pba_offset: int = 0

    @property
    def table_size(self) -> int:
        """Bytes of the MSI-X table (16 per vector)."""
        return self.vectors * ENTRY_SIZE

    @property
    def pba_size(self) -> int:
        """Bytes of the PBA (one bit per vector, in whole 64-bit words)."""
        return pba_size(self.vectors)

    def extents(self) -> list[tuple[int, int, int, str]]:
        """(bar, start, end, what) of the table and the PBA."""
        return [(self.table_bar, self.table_offset, self.table_offset + self.table_size,
                 "table"),
                (self.pba_bar, self.pba_offset, self.pba_offset + self.pba_size, "pba")]

    def validate(self, reserved: dict[int, int] | None = None) -> None:
        """Check the rules QEMU enforces; `reserved` maps a BAR to bytes used at its start
        by other contents (the register block of BAR0)."""
        if not 1 <= self.vectors <= MAX_VECTORS:
            raise ConfigurationError(f"vectors must be 1..{MAX_VECTORS}, not {self.vectors}")
        for bar, start, end, what in self.extents():
            if not 0 <= bar <= 5:
                raise ConfigurationError(f"MSI-X {what} BIR {bar} is not a BAR (0..5)")
            if start % 8 or start < 0:
                raise ConfigurationError(f"MSI-X {what} offset {start:#x} not 8-byte aligned")
            if end > 1 << 28:
                raise ConfigurationError(f"MSI-X {what} ends at {end:#x}, too far")
            used = (reserved or {}).get(bar, 0)
            if start < used:
                raise ConfigurationError(
                    f"MSI-X {what} at BAR{bar}+{start:#x} overlaps the registers "
                    f"(BAR{bar}+0..{used:#x})")
        (tb, ts, te, _), (pb, ps, pe, _) = self.extents()
        if tb == pb and ts < pe and ps < te:
            raise ConfigurationError("MSI-X table and PBA overlap")


class Outcome(enum.Enum):
    """What became of one raise: delivered (eventfd signalled), pending (PBA bit set),
    dropped or delayed (by an armed fault), or out of range (no such vector)."""
    DELIVERED = "delivered"
    PENDING = "pending"
    DROPPED = "dropped"
    DELAYED = "delayed"
    OUT_OF_RANGE = "out_of_range"


EventSink = Callable[[dict], None]
Scheduler = Callable[[float, Callable[[], None]], None]


class MsixState:
    """Per-vector eventfds, mask bits, counters and pending bits; function enable/mask."""

    def __init__(self, layout: MsixLayout, fds: "FdPort",
                 faults: FaultTable | None = None) -> None:
        self.layout = layout
        self.fds = fds
        n = layout.vectors
        self.n = n
        self.eventfds: list[int | None] = [None] * n
        self.masked = bytearray(n)                  # 1: the client masked the vector
        self.raised = [0] * n
        self.delivered = [0] * n
        self.dropped = [0] * n
        self.pending = bytearray(layout.pba_size)   # the PBA, bit i = vector i
        self.table = bytearray(layout.table_size)
        self.enabled = False
        self.function_mask = False
        self.low_power = False                      # D3hot: nothing is delivered
        self.errors = {"raise_out_of_range": 0, "eventfd_write_failed": 0}
        self.requests = {"mask": 0, "unmask": 0, "disable_all": 0}
        self.faults = faults or FaultTable()
        self.sink: EventSink | None = None
        self.scheduler: Scheduler | None = None
        #: delayed raises waiting for their timer: token -> vector, fault id, delay, source
        self.delayed: dict[int, dict] = {}
        self._delay_tokens = 0
        self.reset_table()

    # -- events -------------------------------------------------------------------------
    def _emit(self, kind: str, vector: int, **extra) -> None:
        if self.sink is not None:
            self.sink({"event": kind, "vector": vector, **extra})

    emit = _emit     # for the device's own events (a reset) through the same sink

    # -- raising ------------------------------------------------------------------------
    def raise_vector(self, v: int, source: str = "control") -> Outcome:
        """A device interrupt on vector v."""
        if not 0 <= v < self.n:
            self.errors["raise_out_of_range"] += 1
            self._emit("raise_out_of_range", v, source=source)
            return Outcome.OUT_OF_RANGE
        self.raised[v] += 1
        if self.faults.any_raise:
            fault = self.faults.on_raise(v)
            if fault is not None:
                return self._apply_fault(v, fault, source)
        return self._deliver_or_pend(v, source)

    def _apply_fault(self, v: int, fault, source: str) -> Outcome:
        if fault.kind is FaultKind.DROP_RAISE or self.scheduler is None:
            self.dropped[v] += 1
            self._emit("raise_dropped", v, source=source, fault=fault.id)
            return Outcome.DROPPED
        self._emit("raise_delayed", v, source=source, fault=fault.id,
                   delay_ms=fault.delay_ms)
        self._delay_tokens += 1
        token = self._delay_tokens
        self.delayed[token] = {"vector": v, "fault": fault.id, "delay_ms": fault.delay_ms,
                               "source": source}
        self.scheduler(fault.delay_ms / 1000.0, lambda: self._delayed_due(token))
        return Outcome.DELAYED

    def _delayed_due(self, token: int) -> None:
        """A delayed raise's timer: delivered (or made pending) unless it was cancelled."""
        entry = self.delayed.pop(token, None)
        if entry is not None:
            self._deliver_or_pend(entry["vector"], entry["source"] + "+delay")

    def cancel_delayed(self, fault_id: int | None = None) -> int:
        """Forget the delayed raises still waiting (those of fault ``fault_id``, or all):
        their timers then do nothing.  Returns how many were cancelled."""
        gone = [t for t, e in self.delayed.items() if fault_id is None or e["fault"] == fault_id]
        for token in gone:
            entry = self.delayed.pop(token)
            self._emit("raise_delay_cancelled", entry["vector"], fault=entry["fault"])
        return len(gone)

    def delayed_state(self) -> list[dict]:
        """The delayed raises waiting, oldest first: vector, fault id, delay_ms."""
        return [{"vector": e["vector"], "fault": e["fault"], "delay_ms": e["delay_ms"]}
                for _, e in sorted(self.delayed.items())]

    def deliverable(self, v: int) -> bool:
        """A raise of v would be delivered now."""
        return (self.enabled and not self.function_mask and not self.masked[v]
                and self.eventfds[v] is not None and not self.low_power)

    def _deliver_or_pend(self, v: int, source: str) -> Outcome:
        fd = self.eventfds[v]
        if (fd is not None and self.enabled and not self.function_mask
                and not self.masked[v] and not self.low_power):
            if self._signal(v, fd):
                self._emit("deliver", v, source=source)
                return Outcome.DELIVERED
        self.pending[v >> 3] |= 1 << (v & 7)
        self._emit("pend", v, source=source)
        return Outcome.PENDING

    def _signal(self, v: int, fd: int) -> bool:
        try:
            self.fds.signal(fd)
        except OSError as err:
            self.errors["eventfd_write_failed"] += 1
            log.warning("eventfd write for vector %d (fd %d): %s", v, fd, err)
            return False
        self.delivered[v] += 1
        return True

    def is_pending(self, v: int) -> bool:
        """Whether vector ``v``'s PBA bit is set."""
        return bool(self.pending[v >> 3] & (1 << (v & 7)))

    def flush_pending(self, vectors: Iterable[int] | None = None) -> list[int]:
        """Deliver every pending vector (of ``vectors``, default all) that can be
        delivered now, each exactly once; return them."""
        if (not (self.enabled and not self.function_mask) or self.low_power
                or not any(self.pending)):
            return []
        done = []
        for v in range(self.n) if vectors is None else vectors:
            fd = self.eventfds[v]
            if self.is_pending(v) and fd is not None and not self.masked[v]:
                if self._signal(v, fd):
                    self.pending[v >> 3] &= ~(1 << (v & 7))
                    self._emit("deliver_pending", v)
                    done.append(v)
        return done

    # -- eventfds (SET_IRQS ACTION_TRIGGER) ----------------------------------------------
    def check_range(self, start: int, count: int) -> None:
        """Raise ``DeviceError`` (EINVAL) unless vectors ``start`` .. ``start+count-1`` exist."""
        if start + count > self.n or count < 0 or start < 0:
            raise DeviceError(f"MSI-X vectors {start}+{count} beyond {self.n}",
                              errno=errno.EINVAL)

    def assign(self, start: int, fds: list[int]) -> None:
        """Give vectors start.. the eventfds fds (ownership moves here); old ones close."""
        self.check_range(start, len(fds))
        for i, fd in enumerate(fds):
            old = self.eventfds[start + i]
            self.eventfds[start + i] = fd
            if old is not None and old != fd:
                self.fds.close(old)
            self._emit("eventfd_assign", start + i)
        self.flush_pending(range(start, start + len(fds)))

    def deassign(self, start: int, count: int) -> None:
        """Drop the eventfds of vectors ``start`` .. ``start+count-1``, closing each through
        the port; vectors without one are left alone.  Out of range raises ``DeviceError``
        (EINVAL).  Mask bits and pending bits are kept."""
        self.check_range(start, count)
        for v in range(start, start + count):
            old = self.eventfds[v]
            if old is not None:
                self.eventfds[v] = None
                self.fds.close(old)
                self._emit("eventfd_deassign", v)

    def deassign_all(self) -> None:
        """Drop every vector's eventfd (see ``deassign``)."""
        self.deassign(0, self.n)

    def disable_all(self) -> None:
        """SET_IRQS NONE|TRIGGER count 0: the client drops every MSI-X eventfd (MSI-X
        disable, or the first half of QEMU's NORESIZE re-enable).  Raises from now until
        a vector gets its eventfd back are held pending and delivered at that moment."""
        self.requests["disable_all"] += 1
        self.deassign_all()
        self._emit("irq_disable_all", -1)
        for v in self.faults.on_irq_disable():
            self.raise_vector(v, source="fault")

    def trigger(self, start: int, count: int, which: bytes | None = None) -> None:
        """Client-side trigger (SET_IRQS DATA_NONE/BOOL|TRIGGER): raise those vectors."""
        self.check_range(start, count)
        for i in range(count):
            if which is None or which[i]:
                self.raise_vector(start + i, source="set_irqs")

    # -- per-vector mask (SET_IRQS ACTION_MASK / ACTION_UNMASK) ---------------------------
    def set_masked(self, start: int, count: int, masked: bool,
                   which: bytes | None = None) -> list[int]:
        """Mask (or unmask) vectors start..start+count-1, or, with DATA_BOOL ``which``,
        only those whose byte is non-zero.  An unmask delivers what was held pending
        behind the mask, once.  Returns the vectors whose bit changed."""
        self.check_range(start, count)
        self.requests["mask" if masked else "unmask"] += 1
        changed = []
        for i in range(count):
            v = start + i
            if (which is None or which[i]) and bool(self.masked[v]) != masked:
                self.masked[v] = masked
                changed.append(v)
                self._emit("vector_mask" if masked else "vector_unmask", v)
        if not masked and changed:
            self.flush_pending(changed)
        return changed

    # -- function enable / mask (config writes) ---------------------------------------
    def set_control(self, enabled: bool, function_mask: bool) -> None:
        """Take the MSI-X enable and function-mask bits from Message Control; on a change,
        emit ``msix_control`` and deliver whatever pending interrupts may now go."""
        changed = (enabled, function_mask) != (self.enabled, self.function_mask)
        self.enabled, self.function_mask = enabled, function_mask
        if changed:
            self._emit("msix_control", -1, enabled=enabled, function_mask=function_mask)
            self.flush_pending()

    # -- power state (PMCSR writes) ----------------------------------------------------
    def set_low_power(self, low: bool) -> None:
        """The function entered D3hot (``low``) or left it: in D3hot every raise is held
        pending.  Leaving D3hot delivers nothing by itself (the device resets on the way
        out: ``nic.Device``)."""
        self.low_power = low

    # -- table and PBA as BAR contents --------------------------------------------------
    def reset_table(self) -> None:
        """Zero the table copy with every entry's mask bit set (the reset value)."""
        self.table[:] = bytes(len(self.table))
        for v in range(self.n):
            self.table[v * ENTRY_SIZE + 12] = PCI_MSIX_ENTRY_CTRL_MASKBIT

    def read_table(self, offset: int, count: int) -> bytes:
        """``count`` bytes of the table copy at ``offset`` (informational; never consulted)."""
        return bytes(self.table[offset:offset + count])

    def write_table(self, offset: int, data: bytes) -> None:
        """Store ``data`` in the table copy at ``offset`` (informational; never consulted)."""
        self.table[offset:offset + len(data)] = data

    def read_pba(self, offset: int, count: int) -> bytes:
        """``count`` bytes of the PBA at ``offset``."""
        return bytes(self.pending[offset:offset + count])

    # -- lifecycle ----------------------------------------------------------------------
    def reset(self) -> None:
        """Device reset: MSI-X off, function mask clear, D0, nothing pending (the PBA is
        clear), no per-vector client mask, every table entry masked.  Eventfds and the
        observation counters stay (QEMU owns the IRQ setup: it is not the function's)."""
        self.pending[:] = bytes(len(self.pending))
        self.masked[:] = bytes(self.n)
        self.enabled = self.function_mask = False
        self.low_power = False
        self.reset_table()

    def reset_counters(self) -> None:
        """Zero the raised, delivered and dropped counters and the error counts, and
        cancel the delayed raises still waiting (each was counted in ``raised``; delivered
        after the reset it would be a delivery without a raise)."""
        self.cancel_delayed()
        self.raised = [0] * self.n
        self.delivered = [0] * self.n
        self.dropped = [0] * self.n
        for k in self.errors:
            self.errors[k] = 0

    def vector_state(self, v: int) -> dict:
        """Vector ``v`` for the control channel's state: index, whether it has an eventfd,
        masked, raised, delivered, pending, dropped."""
        return {"index": v, "eventfd": self.eventfds[v] is not None,
                "masked": bool(self.masked[v]), "raised": self.raised[v],
                "delivered": self.delivered[v], "pending": self.is_pending(v),
                "dropped": self.dropped[v]}

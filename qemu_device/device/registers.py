"""BAR0 register map of the emulated NIC.

Concepts: the NIC's BAR0 register block (REG_BLOCK_SIZE bytes), laid out like a small
real NIC: identification, control/status, an ICS doorbell that raises a vector, an
IVAR table mapping queues to vectors with per-queue kick doorbells, and per-vector
raise/deliver counters. Registers are 32 bits; any access of 1..8 bytes is split into
dword pieces. A read returns the containing dwords' bytes; a write to a RW register
merges the written bytes; doorbells act only on a whole-dword write (a partial write is
counted as a bad access). Unknown offsets read 0 and ignore writes. docs/device.md holds
the table of every register.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # pragma: no cover
    from .msix import MsixState

log = logging.getLogger(__name__)

REG_ID = 0x000           # RO  (device id << 16) | vendor id
REG_VERSION = 0x004      # RO  register map version, major << 16 | minor
REG_CTRL = 0x008         # RW  bit 0 RST: registers to defaults; bit 1 CNT_CLR: counters
                         #     to 0 (both self-clearing; PCI/MSI-X state untouched)
REG_STATUS = 0x00C       # RO  bit 0 LINK_UP, 1 MSIX_EN, 2 MSIX_MASKALL, 3 BUS_MASTER
REG_NUM_VECTORS = 0x010  # RO  MSI-X table size N
REG_ERRORS = 0x014       # RO  doorbell errors (vector >= N, bad IVAR, partial writes)
REG_SCRATCH = 0x018      # RW  scratch register, no side effect
REG_LAST_VECTOR = 0x01C  # RO  last vector written to ICS or kicked via IVAR
REG_ICS = 0x020          # WO  Interrupt Cause Set: writing v raises MSI-X vector v
REG_IRQ_TOTAL = 0x024    # RO  raises accepted since the last counter clear
REG_PENDING_COUNT = 0x028  # RO  vectors whose PBA bit is set
REG_NUM_QUEUES = 0x02C   # RO  number of queues (IVAR entries)
REG_IVAR = 0x400         # RW  IVAR[q] at 0x400 + 4q: bit 31 VALID, bits 10:0 vector
REG_QKICK = 0x800        # WO  writing anything to 0x800 + 4q raises IVAR[q]'s vector
REG_RAISED = 0x2000      # RO  raised[v] at 0x2000 + 4v
REG_DELIVERED = 0x4000   # RO  delivered[v] at 0x4000 + 4v
REG_BLOCK_SIZE = 0x6000

ID_VALUE = (0x11E9 << 16) | 0x1234
VERSION_VALUE = 0x00010000
CTRL_RST = 1 << 0
CTRL_CNT_CLR = 1 << 1
STATUS_LINK_UP = 1 << 0
STATUS_MSIX_EN = 1 << 1
STATUS_MSIX_MASKALL = 1 << 2
STATUS_BUS_MASTER = 1 << 3
IVAR_VALID = 1 << 31
IVAR_VECTOR_MASK = 0x7FF
NUM_QUEUES = 256
_U32 = 0xFFFFFFFF


class NicRegisters:
    """BAR0 registers; raising goes through the MsixState."""

    def __init__(self, msix: "MsixState", bus_master=lambda: False) -> None:
        self.msix = msix
        self.bus_master = bus_master
        self.scratch = 0
        self.errors = 0
        self.last_vector = 0
        self.irq_total = 0
        self.ivar = [0] * NUM_QUEUES
        self._simple = self._simple_table()

    def reset(self) -> None:
        """The device-reset values: scratch, error count, last vector and the IVAR table
        cleared."""
        self.scratch = 0
        self.errors = 0
        self.last_vector = 0
        self.ivar = [0] * NUM_QUEUES

    def observed(self) -> dict[str, int]:
        """The bookkeeping registers exactly as the guest reads them (the control
        channel's ``state``): ERRORS, LAST_VECTOR, IRQ_TOTAL and PENDING_COUNT."""
        return {"errors": self.read32(REG_ERRORS), "last_vector": self.read32(REG_LAST_VECTOR),
                "irq_total": self.read32(REG_IRQ_TOTAL),
                "pending_count": self.read32(REG_PENDING_COUNT)}

    # -- dword level ------------------------------------------------------------------
    def read32(self, off: int) -> int:
        """The dword register at ``off`` (a multiple of 4); unknown offsets read 0."""
        if off < 0x30:
            fn = self._simple.get(off)
            return fn() if fn is not None else 0
        msix = self.msix
        if REG_IVAR <= off < REG_IVAR + 4 * NUM_QUEUES:
            return self.ivar[(off - REG_IVAR) >> 2]
        if REG_RAISED <= off < REG_RAISED + 4 * msix.n:
            return msix.raised[(off - REG_RAISED) >> 2] & _U32
        if REG_DELIVERED <= off < REG_DELIVERED + 4 * msix.n:
            return msix.delivered[(off - REG_DELIVERED) >> 2] & _U32
        return 0

    def _simple_table(self) -> dict:
        """Offset -> reader for the registers below 0x30 (CTRL reads 0: its bits
        self-clear; ICS is write-only)."""
        msix = self.msix
        return {
            REG_ID: lambda: ID_VALUE,
            REG_VERSION: lambda: VERSION_VALUE,
            REG_STATUS: lambda: (STATUS_LINK_UP | (STATUS_MSIX_EN if msix.enabled else 0)
                                 | (STATUS_MSIX_MASKALL if msix.function_mask else 0)
                                 | (STATUS_BUS_MASTER if self.bus_master() else 0)),
            REG_NUM_VECTORS: lambda: msix.n,
            REG_ERRORS: lambda: self.errors & _U32,
            REG_SCRATCH: lambda: self.scratch,
            REG_LAST_VECTOR: lambda: self.last_vector,
            REG_IRQ_TOTAL: lambda: self.irq_total & _U32,
            REG_PENDING_COUNT: lambda: sum(bin(b).count("1") for b in msix.pending),
            REG_NUM_QUEUES: lambda: NUM_QUEUES,
        }

    def write32(self, off: int, value: int, full: bool) -> None:
        """value is the merged dword; full: all four bytes were written."""
        if off == REG_ICS or REG_QKICK <= off < REG_QKICK + 4 * NUM_QUEUES:
            if not full:
                self.errors += 1
                return
            if off == REG_ICS:
                self.doorbell(value, "ics")
            else:
                self.kick_queue((off - REG_QKICK) >> 2)
        elif off == REG_SCRATCH:
            self.scratch = value
        elif off == REG_CTRL:
            if value & CTRL_CNT_CLR:
                self.irq_total = 0
                self.msix.reset_counters()
            if value & CTRL_RST:
                self.reset()
        elif REG_IVAR <= off < REG_IVAR + 4 * NUM_QUEUES:
            self.ivar[(off - REG_IVAR) >> 2] = value & (IVAR_VALID | IVAR_VECTOR_MASK)

    def doorbell(self, vector: int, source: str) -> None:
        """Raise ``vector`` on behalf of ``source`` (``ics`` or ``queueN``) and remember it as
        the last vector.  A vector in the table counts in IRQ_TOTAL; one beyond it counts as
        a register error (the raise is still passed on and counted out of range by the MSI-X
        state)."""
        self.last_vector = vector
        if vector >= self.msix.n:
            self.errors += 1
        else:
            self.irq_total += 1
        self.msix.raise_vector(vector, source)

    def kick_queue(self, q: int) -> None:
        """Queue ``q``'s kick doorbell: raise the vector its IVAR entry names, or count a
        register error when the entry is not valid."""
        entry = self.ivar[q]
        if not entry & IVAR_VALID:
            self.errors += 1
            return
        self.doorbell(entry & IVAR_VECTOR_MASK, f"queue{q}")

    # -- byte level ---------------------------------------------------------------------
    def read(self, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset``, from the dwords that contain them."""
        first = offset & ~3
        last = (offset + count + 3) & ~3
        if count == 4 and first == offset:
            return self.read32(offset).to_bytes(4, "little")
        raw = b"".join(self.read32(o).to_bytes(4, "little") for o in range(first, last, 4))
        return raw[offset - first:offset - first + count]

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``, dword by dword: a partly written dword is merged
        with its current value; doorbells act only on whole-dword writes (a partial one is
        counted as an error)."""
        end = offset + len(data)
        o = offset & ~3
        while o < end:
            lo, hi = max(o, offset), min(o + 4, end)
            if lo == o and hi == o + 4:
                self.write32(o, int.from_bytes(data[o - offset:o - offset + 4], "little"),
                             True)
            else:
                cur = bytearray(self.read32(o).to_bytes(4, "little"))
                cur[lo - o:hi - o] = data[lo - offset:hi - offset]
                self.write32(o, int.from_bytes(cur, "little"), False)
            o += 4

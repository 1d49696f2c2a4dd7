"""The emulated NIC: regions, IRQ indexes, reset, disconnect.

Concepts: the whole emulated NIC as vfio-user sees it: nine VFIO PCI regions (BAR0..5,
ROM, config, VGA) with their sizes and access functions, five IRQ indexes of which only
MSI-X has vectors (with the MASKABLE and NORESIZE flags the server was told to
advertise), device reset, power states (D0 and D3hot through the PM capability's PMCSR:
in D3hot the function holds its raises, and D3hot -> D0 resets it, No_Soft_Reset being
clear), and what happens when a client goes away.  Each memory BAR is a
list of areas (register block, MSI-X table, PBA); BAR sizes are the smallest power of two
(>= 4 KiB) that holds the areas.  A region access the device refuses (bad count, a region
that is absent, beyond the region) counts in ``errors["bad_region_access"]``.  The parts
live in sibling modules: config_space, registers, msix, dma.  The device does no I/O:
every fd operation goes through the ``FdPort`` given at construction.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import ConfigurationError, DeviceError
from ..faults import FaultTable
from ..protocol import (MAX_DATA_XFER_SIZE, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
                        IrqIndex, IrqInfoFlags, RegionIndex, RegionInfoFlags)
from .config_space import CONFIG_SIZE, PCI_D0, PCI_D3HOT, ConfigSpace
from .dma import DmaMap
from .msix import MsixLayout, MsixState
from .registers import REG_BLOCK_SIZE, NicRegisters

if TYPE_CHECKING:   # pragma: no cover
    from ..fdport import FdPort

log = logging.getLogger(__name__)

MIN_BAR_SIZE = 4096
_POWER_NAMES = {PCI_D0: "D0", PCI_D3HOT: "D3hot"}
_RW = int(RegionInfoFlags.VFIO_REGION_INFO_FLAG_READ | RegionInfoFlags.VFIO_REGION_INFO_FLAG_WRITE)
_CONFIG = int(RegionIndex.VFIO_PCI_CONFIG_REGION_INDEX)


@dataclass
class Area:
    """One guest-visible region of a BAR (registers, MSI-X table or PBA): where it is and
    who reads and writes it."""
    start: int
    end: int
    what: str
    read: Callable[[int, int], bytes]
    write: Callable[[int, bytes], None]


def _pow2_at_least(n: int) -> int:
    size = MIN_BAR_SIZE
    while size < n:
        size <<= 1
    return size


def shared_layout(vectors: int) -> MsixLayout:
    """Table and PBA in BAR0 after the register block."""
    table_off = REG_BLOCK_SIZE
    pba_off = table_off + (vectors * 16 + 4095) // 4096 * 4096
    return MsixLayout(vectors, 0, table_off, 0, pba_off)


class Device:
    """The NIC. Owns config space, registers, MSI-X state and the DMA map.

    ``fds`` is the port every fd operation goes through (``fdio.OsFdPort`` in the
    server, a fake in unit tests).  ``maskable``/``noresize`` choose the flags MSI-X's
    GET_IRQ_INFO reports, and with them the path QEMU's client takes; ``pm`` gives the
    function its PCI Power Management capability (config_space.py)."""

    def __init__(self, layout: MsixLayout | None = None, *, fds: "FdPort",
                 maskable: bool = False, noresize: bool = False, pm: bool = False) -> None:
        self.layout = layout or MsixLayout()
        self.pm = pm
        self.maskable, self.noresize = maskable, noresize
        self.layout.validate({0: REG_BLOCK_SIZE})
        self.fds = fds
        self.faults = FaultTable()
        self.msix = MsixState(self.layout, fds, self.faults)
        self.dma = DmaMap(fds)
        self.bars: list[list[Area]] = [[] for _ in range(6)]
        self.bar_sizes = [0] * 6
        self.config: ConfigSpace  # set in _build_bars
        self.regs = NicRegisters(self.msix)
        self._read32 = self.regs.read32
        #: register_dword(offset): the 32-bit register at an aligned ``offset`` below
        #: ``REG_BLOCK_SIZE`` in BAR0, exactly what region_read(0, offset, 4) returns (as
        #: an int): the endpoint's REGION_READ fast path uses it
        self.register_dword = self.regs.read32
        #: set_register_dword(offset, value, True): exactly region_write(0, offset, value
        #: as 4 little-endian bytes) for the same registers (the REGION_WRITE fast path)
        self.set_register_dword = self.regs.write32
        self._build_bars()
        self.regs.bus_master = lambda: self.config.bus_master
        self.config.msix_listener = self.msix.set_control
        self.config.flr_listener = lambda: self.reset(source="flr")
        self.config.power_listener = self._power_changed
        self.resets = 0
        self.d3hot_entries = 0
        self.errors = {"bad_region_access": 0}

    def _build_bars(self) -> None:
        lay, msix = self.layout, self.msix
        self.bars[0].append(Area(0, REG_BLOCK_SIZE, "registers", self.regs.read,
                                 self.regs.write))
        tb, ts, te, _ = lay.extents()[0]
        pb, ps, pe, _ = lay.extents()[1]
        self.bars[tb].append(Area(ts, te, "msix_table",
                                  lambda o, n: msix.read_table(o - ts, n),
                                  lambda o, d: msix.write_table(o - ts, d)))
        self.bars[pb].append(Area(ps, pe, "msix_pba",
                                  lambda o, n: msix.read_pba(o - ps, n),
                                  lambda o, d: None))          # PBA is read-only
        for i, areas in enumerate(self.bars):
            areas.sort(key=lambda a: a.start)
            if areas:
                self.bar_sizes[i] = _pow2_at_least(max(a.end for a in areas))
        if max(self.bar_sizes) > 1 << 28:
            raise ConfigurationError("BAR larger than 256 MiB")
        self.config = ConfigSpace(self.bar_sizes, lay.vectors, tb, ts, pb, ps, pm=self.pm)

    # -- vfio-user device queries -----------------------------------------------------
    @staticmethod
    def info() -> tuple[int, int, int]:
        """(flags, num_regions, num_irqs) for DEVICE_GET_INFO."""
        return 3, VFIO_PCI_NUM_REGIONS, VFIO_PCI_NUM_IRQS

    def region_info(self, index: int) -> tuple[int, int]:
        """(flags, size) of a region; absent regions have size 0 and flags 0."""
        if not 0 <= index < VFIO_PCI_NUM_REGIONS:
            raise DeviceError(f"no region {index}", errno=errno.EINVAL)
        if index == _CONFIG:
            return _RW, CONFIG_SIZE
        if index < 6 and self.bar_sizes[index]:
            return _RW, self.bar_sizes[index]
        return 0, 0

    def irq_info(self, index: int) -> tuple[int, int]:
        """(flags, count) of an IRQ index: only MSI-X has vectors."""
        if not 0 <= index < VFIO_PCI_NUM_IRQS:
            raise DeviceError(f"no IRQ index {index}", errno=errno.EINVAL)
        if index == IrqIndex.VFIO_PCI_MSIX_IRQ_INDEX:
            flags = IrqInfoFlags.VFIO_IRQ_INFO_EVENTFD
            if self.maskable:
                flags |= IrqInfoFlags.VFIO_IRQ_INFO_MASKABLE
            if self.noresize:
                flags |= IrqInfoFlags.VFIO_IRQ_INFO_NORESIZE
            return int(flags), self.msix.n
        return int(IrqInfoFlags.VFIO_IRQ_INFO_EVENTFD), 0

    # -- region access ----------------------------------------------------------------
    def _check_access(self, region: int, offset: int, count: int) -> int:
        """The region's size, or DeviceError (counted in bad_region_access)."""
        size = CONFIG_SIZE if region == _CONFIG else (
            self.bar_sizes[region] if 0 <= region < 6 else 0)
        if count == 0 or count > MAX_DATA_XFER_SIZE:
            why = f"bad access count {count}"
        elif not size:
            why = f"region {region} not accessible"
        elif offset >= size or offset + count > size:
            why = f"access {offset:#x}+{count} beyond region {region} ({size:#x})"
        else:
            return size
        self.errors["bad_region_access"] += 1
        raise DeviceError(why, errno=errno.EINVAL)

    def region_read(self, region: int, offset: int, count: int) -> bytes:
        """``count`` bytes of vfio-user region ``region`` at ``offset`` (config space or a
        BAR), as the guest would read them; a bad access raises DeviceError (EINVAL) and
        counts ``bad_region_access``."""
        if region == 0 and count == 4 and not offset & 3 and offset < REG_BLOCK_SIZE:
            return self._read32(offset).to_bytes(4, "little")   # a register: the hot path
        end = offset + count
        if 0 <= region < 6 and 0 < count and end <= self.bar_sizes[region]:
            areas = self.bars[region]          # fast path: inside one BAR
            for a in areas:
                if a.start <= offset and end <= a.end:
                    return a.read(offset, count)
        else:
            self._check_access(region, offset, count)
            if region == _CONFIG:
                return self.config.read(offset, count)
            areas = self.bars[region]
        out = bytearray(count)          # straddles areas or gaps: piece by piece
        for a in areas:
            lo, hi = max(a.start, offset), min(a.end, end)
            if lo < hi:
                out[lo - offset:hi - offset] = a.read(lo, hi - lo)
        return bytes(out)

    def region_write(self, region: int, offset: int, data: bytes) -> None:
        """Write ``data`` to region ``region`` at ``offset`` with the side effects a guest
        write has (doorbells, MSI-X control, masks); a bad access raises DeviceError."""
        self._check_access(region, offset, len(data))
        if region == _CONFIG:
            self.config.write(offset, data)
            return
        end = offset + len(data)
        for a in self.bars[region]:
            lo, hi = max(a.start, offset), min(a.end, end)
            if lo < hi:
                a.write(lo, data[lo - offset:hi - offset])

    # -- lifecycle ----------------------------------------------------------------------
    def reset(self, source: str = "device_reset") -> None:
        """A function reset (vfio-user DEVICE_RESET, the guest's FLR, or its D3hot -> D0:
        ``source``): registers, config space (D0), MSI-X state back to power-on (every
        table entry masked, MSI-X disabled, function mask clear, PBA clear); DMA maps,
        eventfds and observation counters stay.  Emits ``device_reset``; then an armed
        ``raise_on_reset`` fault raises its vector inside the reset window (held pending:
        MSI-X is off until the guest restores it)."""
        self.resets += 1
        self.regs.reset()
        self.config.reset()
        self.msix.reset()
        self.msix.emit("device_reset", -1, source=source, resets=self.resets)
        for v in self.faults.on_reset():
            self.msix.raise_vector(v, source="fault")

    def _power_changed(self, before: int, after: int) -> None:
        """PMCSR moved the function between D0 and D3hot: it holds its raises in D3hot
        (``power_state`` event); D3hot -> D0 with No_Soft_Reset clear is a reset
        (``source`` ``d3hot``), as the PCI PM spec's D0uninitialized."""
        self.msix.set_low_power(after == PCI_D3HOT)
        self.d3hot_entries += after == PCI_D3HOT
        self.msix.emit("power_state", -1, state=_POWER_NAMES[after],
                       before=_POWER_NAMES[before])
        if before == PCI_D3HOT and after == PCI_D0:
            self.reset(source="d3hot")

    def client_gone(self) -> tuple[int, int]:
        """The client disconnected: drop its DMA maps and eventfds; keep device state.
        Returns (maps dropped, eventfds closed)."""
        n = sum(fd is not None for fd in self.msix.eventfds)
        self.msix.deassign_all()
        return self.dma.clear(), n

    # -- observation --------------------------------------------------------------------
    def state(self) -> dict:
        """The control channel's ``state``: identity, MSI-X function state and the
        flags advertised, every vector (eventfd, masked, counters, pending), BARs, DMA
        maps, error counters, IRQ_TOTAL, the guest-readable bookkeeping registers, resets,
        the power state (and how often it entered D3hot), armed faults and the delayed
        raises waiting (docs/device.md)."""
        lay, m = self.layout, self.msix
        return {
            "identity": {"vendor": 0x1234, "device": 0x11E9, "class": 0x020000},
            "msix": {"table_size": lay.vectors, "enabled": m.enabled,
                     "function_mask": m.function_mask, "table_bar": lay.table_bar,
                     "table_offset": lay.table_offset, "pba_bar": lay.pba_bar,
                     "pba_offset": lay.pba_offset, "maskable": self.maskable,
                     "noresize": self.noresize, "irq_info_flags": self.irq_info(
                         int(IrqIndex.VFIO_PCI_MSIX_IRQ_INDEX))[0],
                     "requests": dict(m.requests)},
            "vectors": [m.vector_state(v) for v in range(m.n)],
            "bars": [{"index": i, "size": s} for i, s in enumerate(self.bar_sizes) if s],
            "bus_master": self.config.bus_master,
            "dma_maps": [r.to_json() for r in self.dma.regions()],
            "errors": {**m.errors, **self.errors, "nic_doorbell": self.regs.errors},
            "irq_total": self.regs.irq_total,
            "registers": self.regs.observed(),
            "resets": self.resets,
            "power": {"pm_capability": self.pm,
                      "state": _POWER_NAMES[self.config.power_state],
                      "d3hot_entries": self.d3hot_entries},
            "faults": self.faults.list(),
            "delayed": m.delayed_state(),
        }

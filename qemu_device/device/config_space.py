"""PCI configuration space with RO/RW/RW1C masks.

Concepts: the 4 KiB PCIe configuration space of the NIC. Three parallel byte arrays:
the current values, a read-write mask and a write-1-to-clear mask; a write changes only
RW bits and clears RW1C bits where it writes 1s; everything else is read-only. BAR
registers are RW only in the bits above their size (so sizing with all-ones works).
Layout: type-0 header, PCIe Endpoint capability at 0x40, MSI-X capability at 0x80, with
``pm`` a PCI Power Management capability at 0x90 (last), no extended capabilities. Writes touching
MSI-X Message Control notify a listener, since that is how the server learns enable and
function mask (QEMU emulates the rest).  The PCIe capability advertises Function Level
Reset (DevCap bit 28): a write of Initiate FLR (DevCtl bit 15, which always reads 0)
notifies the FLR listener, which resets the device (QEMU passes the guest's config write
through; it does not turn it into DEVICE_RESET).  The PM capability (PM 1.2) offers D0 and
D3hot only (no D1, D2, PME) with No_Soft_Reset clear (off by default: with it the kernel
waits, after a secondary bus reset, for a Data Link Layer Link Active that QEMU 11.1.3's
root port never reports for the vfio-user NIC, and the bus reset fails): a write of PMCSR PowerState that
changes the state notifies the power listener with the old and new state (the device
holds its raises in D3hot, and D3hot -> D0 resets the function: "D0uninitialized"); a
write of D1 or D2 keeps the current state, as the spec asks of an unsupported state.
"""

from __future__ import annotations

import errno
from typing import Callable

from ..errors import DeviceError

CONFIG_SIZE = 4096

VENDOR_ID = 0x1234
DEVICE_ID = 0x11E9
CLASS_CODE = 0x020000          # network controller, Ethernet
REVISION = 0x01
SUBSYS_VENDOR_ID = 0x1234
SUBSYS_ID = 0x0001

PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_BASE_ADDRESS_0 = 0x10
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_COMMAND_RW = 0x0547        # IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE
PCI_COMMAND_MASTER = 0x4
PCI_STATUS_CAP_LIST = 0x0010
PCI_STATUS_RW1C = 0xF900

PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCIE_CAP = 0x40
MSIX_CAP = 0x80
MSIX_FLAGS = MSIX_CAP + 2
MSIX_TABLE = MSIX_CAP + 4
MSIX_PBA = MSIX_CAP + 8
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_EXP_DEVCAP = PCIE_CAP + 0x04
PCI_EXP_DEVCAP_FLR = 0x10000000
PCI_EXP_DEVCTL = PCIE_CAP + 0x08
PCI_EXP_DEVCTL_BCR_FLR = 0x8000
PCI_CAP_ID_PM = 0x01
PM_CAP = 0x90
PCI_PM_PMC = PM_CAP + 2
PCI_PM_CTRL = PM_CAP + 4
PCI_PM_PMC_VALUE = 0x0003          # version 3 (PM 1.2); no D1, D2, PME, aux current, DSI
PCI_PM_CTRL_STATE_MASK = 0x0003
PCI_PM_CTRL_NO_SOFT_RESET = 0x0008  # clear here: D3hot -> D0 resets the function
PCI_D0, PCI_D3HOT = 0, 3

# (offset, width, initial value, RW mask, RW1C mask) of the PCIe capability body.
_PCIE_REGS = (
    (PCIE_CAP + 0x00, 1, PCI_CAP_ID_EXP, 0, 0),
    (PCIE_CAP + 0x01, 1, MSIX_CAP, 0, 0),              # next capability
    (PCIE_CAP + 0x02, 2, 0x0002, 0, 0),                # version 2, Endpoint
    (PCIE_CAP + 0x04, 4, 0x10008000, 0, 0),            # DevCap: FLR, RBER, MPS 128
    (PCIE_CAP + 0x08, 2, 0x2810, 0x7FFF, 0),           # DevCtl (bit 15 FLR reads 0)
    (PCIE_CAP + 0x0A, 2, 0x0000, 0, 0x000F),           # DevSta error bits RW1C
    (PCIE_CAP + 0x0C, 4, 0x00000011, 0, 0),            # LnkCap: x1, 2.5 GT/s
    (PCIE_CAP + 0x10, 2, 0x0000, 0x03CB, 0),           # LnkCtl
    (PCIE_CAP + 0x12, 2, 0x0011, 0, 0),                # LnkSta: x1, 2.5 GT/s
    (PCIE_CAP + 0x24, 4, 0x00000000, 0, 0),            # DevCap2
    (PCIE_CAP + 0x28, 2, 0x0000, 0, 0),                # DevCtl2
    (PCIE_CAP + 0x2C, 4, 0x00000002, 0, 0),            # LnkCap2: 2.5 GT/s
    (PCIE_CAP + 0x30, 2, 0x0001, 0x000F, 0),           # LnkCtl2: target speed
)

MsixControlListener = Callable[[bool, bool], None]
FlrListener = Callable[[], None]
PowerListener = Callable[[int, int], None]


class ConfigSpace:
    """The device's config space; `bar_sizes[i]` is 0 for an absent BAR; ``pm`` adds the
    PM capability."""

    def __init__(self, bar_sizes: list[int], msix_vectors: int, table_bir: int,
                 table_offset: int, pba_bir: int, pba_offset: int, pm: bool = False) -> None:
        self.bar_sizes = list(bar_sizes)
        self.pm = pm
        self._msix = (msix_vectors, table_bir, table_offset, pba_bir, pba_offset)
        self.msix_listener: MsixControlListener | None = None
        self.flr_listener: FlrListener | None = None
        self.power_listener: PowerListener | None = None
        self.data = bytearray(CONFIG_SIZE)
        self.rw = bytearray(CONFIG_SIZE)
        self.rw1c = bytearray(CONFIG_SIZE)
        self.reset()

    # -- construction -------------------------------------------------------------------
    def _set(self, off: int, width: int, value: int, rw: int = 0, rw1c: int = 0) -> None:
        self.data[off:off + width] = value.to_bytes(width, "little")
        self.rw[off:off + width] = rw.to_bytes(width, "little")
        self.rw1c[off:off + width] = rw1c.to_bytes(width, "little")

    def reset(self) -> None:
        """Back to power-on values (a device reset)."""
        self.data[:] = bytes(CONFIG_SIZE)
        self.rw[:] = bytes(CONFIG_SIZE)
        self.rw1c[:] = bytes(CONFIG_SIZE)
        s = self._set
        s(0x00, 2, VENDOR_ID)
        s(0x02, 2, DEVICE_ID)
        s(PCI_COMMAND, 2, 0, PCI_COMMAND_RW)
        s(PCI_STATUS, 2, PCI_STATUS_CAP_LIST, 0, PCI_STATUS_RW1C)
        s(0x08, 4, (CLASS_CODE << 8) | REVISION)
        s(0x0C, 1, 0, 0xFF)                               # cache line size
        for i, size in enumerate(self.bar_sizes):
            mask = (~(size - 1) & 0xFFFFFFF0) if size else 0   # 32-bit memory BAR
            s(PCI_BASE_ADDRESS_0 + 4 * i, 4, 0, mask)
        s(0x2C, 2, SUBSYS_VENDOR_ID)
        s(0x2E, 2, SUBSYS_ID)
        s(PCI_ROM_ADDRESS, 4, 0)                          # no ROM: sizing reads 0
        s(PCI_CAPABILITY_LIST, 1, PCIE_CAP)
        s(PCI_INTERRUPT_LINE, 1, 0xFF, 0xFF)
        s(PCI_INTERRUPT_PIN, 1, 0)                        # no INTx
        for off, width, value, rw, rw1c in _PCIE_REGS:
            s(off, width, value, rw, rw1c)
        n, tbir, toff, pbir, poff = self._msix
        s(MSIX_CAP, 1, PCI_CAP_ID_MSIX)
        s(MSIX_CAP + 1, 1, PM_CAP if self.pm else 0)
        s(MSIX_FLAGS, 2, n - 1, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
        s(MSIX_TABLE, 4, toff | tbir)
        s(MSIX_PBA, 4, poff | pbir)
        if self.pm:
            self._pm_capability()

    def _pm_capability(self) -> None:
        s = self._set
        s(PM_CAP, 1, PCI_CAP_ID_PM)
        s(PM_CAP + 1, 1, 0)                               # the last capability
        s(PCI_PM_PMC, 2, PCI_PM_PMC_VALUE)
        s(PCI_PM_CTRL, 2, PCI_D0, PCI_PM_CTRL_STATE_MASK)  # PME_En, PME_Status: no PME
        s(PCI_PM_CTRL + 2, 2, 0)                          # PMCSR_BSE, Data

    # -- access -----------------------------------------------------------------------
    @staticmethod
    def check(offset: int, count: int) -> None:
        """Raise ``DeviceError`` (EINVAL) unless ``count`` > 0 bytes at ``offset`` lie inside
        the 4 KiB space."""
        if count == 0 or offset >= CONFIG_SIZE or offset + count > CONFIG_SIZE:
            raise DeviceError(f"config access {offset:#x}+{count} out of range",
                              errno=errno.EINVAL)

    def read(self, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset``; a range outside the space raises ``DeviceError``
        (EINVAL)."""
        self.check(offset, count)
        return bytes(self.data[offset:offset + count])

    def write(self, offset: int, value: bytes) -> None:
        """Write ``value`` at ``offset`` through the masks: only RW bits change, RW1C bits
        where ``value`` has 1s are cleared, the rest stays.  A write touching MSI-X Message
        Control calls the MSI-X listener with the new enable and function-mask bits; one
        that sets Initiate FLR calls the FLR listener after it is stored (the reset then
        overwrites it all); one that changes PMCSR PowerState to D0 or D3hot calls the
        power listener with the old and the new state (D1 and D2 are not supported: such
        a write keeps the state).  Out of range raises ``DeviceError`` (EINVAL)."""
        count = len(value)
        self.check(offset, count)
        end = offset + count
        power_before = self.power_state
        old = int.from_bytes(self.data[offset:end], "little")
        new = int.from_bytes(value, "little")
        rw = int.from_bytes(self.rw[offset:end], "little")
        rw1c = int.from_bytes(self.rw1c[offset:end], "little")
        result = ((old & ~rw) | (new & rw)) & ~(new & rw1c)
        self.data[offset:end] = result.to_bytes(count, "little")
        if offset < MSIX_FLAGS + 2 and end > MSIX_FLAGS and self.msix_listener:
            self.msix_listener(*self.msix_control())
        if self.flr_listener and self._initiates_flr(offset, value):
            self.flr_listener()
        elif self.pm and offset <= PCI_PM_CTRL < end:
            self._power_written(power_before)

    def _power_written(self, before: int) -> None:
        """PMCSR PowerState was written: an unsupported state (D1, D2) is discarded, a
        change to D0 or D3hot goes to the power listener."""
        after = self.power_state
        if after not in (PCI_D0, PCI_D3HOT):
            self.data[PCI_PM_CTRL] = (self.data[PCI_PM_CTRL] & ~PCI_PM_CTRL_STATE_MASK) | before
        elif after != before and self.power_listener:
            self.power_listener(before, after)

    @property
    def power_state(self) -> int:
        """PMCSR PowerState: 0 (D0) or 3 (D3hot)."""
        return self.data[PCI_PM_CTRL] & PCI_PM_CTRL_STATE_MASK

    @staticmethod
    def _initiates_flr(offset: int, value: bytes) -> bool:
        """Whether a write of ``value`` at ``offset`` sets DevCtl's Initiate FLR bit."""
        flr_byte = PCI_EXP_DEVCTL + 1                  # bit 15 is bit 7 of the high byte
        if not offset <= flr_byte < offset + len(value):
            return False
        return bool(value[flr_byte - offset] & (PCI_EXP_DEVCTL_BCR_FLR >> 8))

    def word(self, offset: int) -> int:
        """The little-endian 16-bit value at ``offset`` (no range check)."""
        return int.from_bytes(self.data[offset:offset + 2], "little")

    def msix_control(self) -> tuple[bool, bool]:
        """(enabled, function masked) from Message Control."""
        flags = self.word(MSIX_FLAGS)
        return bool(flags & PCI_MSIX_FLAGS_ENABLE), bool(flags & PCI_MSIX_FLAGS_MASKALL)

    @property
    def bus_master(self) -> bool:
        """Whether the Command register's Bus Master Enable bit is set."""
        return bool(self.word(PCI_COMMAND) & PCI_COMMAND_MASTER)

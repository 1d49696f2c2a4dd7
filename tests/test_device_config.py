"""Config space: identity, capabilities, RO/RW/RW1C masks, BAR sizing, MSI-X control."""

import pytest

from qemu_device.device.config_space import MSIX_CAP, PCIE_CAP, PM_CAP
from qemu_device.device.nic import Device
from qemu_device.errors import DeviceError
from qemu_device.testing import FakeFdPort


@pytest.fixture
def cfg():
    return Device(fds=FakeFdPort()).config


def rd(cfg, off, n):
    return int.from_bytes(cfg.read(off, n), "little")


def wr(cfg, off, n, v):
    cfg.write(off, v.to_bytes(n, "little"))


def test_identity_and_capability_chain(cfg):
    assert (rd(cfg, 0, 2), rd(cfg, 2, 2)) == (0x1234, 0x11E9)
    assert rd(cfg, 8, 4) >> 8 == 0x020000
    assert rd(cfg, 0x06, 2) & 0x10                   # capability list
    assert rd(cfg, 0x34, 1) == PCIE_CAP
    assert (rd(cfg, PCIE_CAP, 1), rd(cfg, PCIE_CAP + 1, 1)) == (0x10, MSIX_CAP)
    assert (rd(cfg, PCIE_CAP + 2, 2) >> 4) & 0xF == 0  # Endpoint
    assert rd(cfg, PCIE_CAP + 4, 4) & (1 << 28)      # FLR (tests/test_device_reset.py)
    assert (rd(cfg, MSIX_CAP, 1), rd(cfg, MSIX_CAP + 1, 1)) == (0x11, 0)   # no PM
    assert rd(cfg, PM_CAP, 4) == 0
    assert rd(cfg, 0x3D, 1) == 0                     # no INTx
    assert rd(cfg, 0x100, 4) == 0                    # no extended caps
    ids = {rd(cfg, p, 1) for p in (PCIE_CAP, MSIX_CAP)}
    assert 0x05 not in ids                           # no MSI


def test_with_pm_the_pm_capability_comes_last():
    cfg = Device(fds=FakeFdPort(), pm=True).config
    assert (rd(cfg, MSIX_CAP, 1), rd(cfg, MSIX_CAP + 1, 1)) == (0x11, PM_CAP)
    assert (rd(cfg, PM_CAP, 1), rd(cfg, PM_CAP + 1, 1)) == (0x01, 0)


@pytest.mark.parametrize("off,n,write,expect", [
    (0x00, 2, 0xFFFF, 0x1234),            # vendor RO
    (0x04, 2, 0xFFFF, 0x0547),            # command RW bits only
    (0x08, 4, 0xFFFFFFFF, 0x02000001),    # class/revision RO
    (0x0C, 1, 0x40, 0x40),                # cache line RW
    (0x30, 4, 0xFFFFF800, 0),             # ROM: sizing reads 0
    (0x3C, 1, 0x0B, 0x0B),                # interrupt line RW
    (0x3D, 1, 0x01, 0x00),                # pin RO
    (0x10, 4, 0xFFFFFFFF, 0xFFFF8000),    # BAR0 32 KiB sizing
    (0x14, 4, 0xFFFFFFFF, 0),             # BAR1 absent
    (0x18, 4, 0xFFFFFFFF, 0xFFFFF000),    # BAR2 4 KiB
    (PCIE_CAP + 4, 4, 0, 0x10008000),         # DevCap RO
    (PCIE_CAP + 8, 2, 0x7FFF, 0x7FFF),     # DevCtl RW but bit 15 (Initiate FLR resets)
    (MSIX_CAP + 2, 2, 0xFFFF, 0xC03F),    # MSI-X flags: only enable/mask RW
    (MSIX_CAP + 4, 4, 0, 0x2),            # table offset/BIR RO
    (0x200, 4, 0xFFFFFFFF, 0),            # unused space RO 0
])
def test_write_masks(cfg, off, n, write, expect):
    wr(cfg, off, n, write)
    assert rd(cfg, off, n) == expect


def test_rw1c_status_and_devsta(cfg):
    cfg.data[0x07] |= 0x81                  # pretend the device set error bits
    cfg.data[PCIE_CAP + 0x0A] |= 0x05
    wr(cfg, 0x06, 2, 0x0100)                # clear only bit 8
    assert rd(cfg, 0x06, 2) == 0x8010
    wr(cfg, PCIE_CAP + 0x0A, 2, 0x0004)
    assert rd(cfg, PCIE_CAP + 0x0A, 2) == 0x0001


def test_msix_control_writes_reach_the_irq_state():
    dev = Device(fds=FakeFdPort())
    wr(dev.config, MSIX_CAP + 2, 2, 0xC000)
    assert (dev.msix.enabled, dev.msix.function_mask) == (True, True)
    wr(dev.config, MSIX_CAP + 3, 1, 0x80)   # byte write clearing MASKALL
    assert (dev.msix.enabled, dev.msix.function_mask) == (True, False)


def test_reset_restores_power_on_values():
    dev = Device(fds=FakeFdPort())
    wr(dev.config, 0x04, 2, 0x0006)
    wr(dev.config, MSIX_CAP + 2, 2, 0x8000)
    dev.reset()
    assert rd(dev.config, 0x04, 2) == 0 and not dev.msix.enabled


@pytest.mark.parametrize("off,n", [(4096, 1), (4095, 2), (0, 0), (0, 4097)])
def test_out_of_range(cfg, off, n):
    with pytest.raises(DeviceError):
        cfg.read(off, n)

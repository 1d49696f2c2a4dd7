"""QEMU's realize and boot sequence (reference §4/§5) replayed with bytes and real fds."""

import os

import pytest

from qemu_device.device.nic import Device
from qemu_device.fdio import OsFdPort
from qemu_device.device.registers import REG_DELIVERED, REG_ICS, REG_RAISED
from qemu_device.handlers import Endpoint
from qemu_device.testing import MSIX, EndpointHarness, FakeQemu, FdWatch

RAM = 1 << 20


@pytest.fixture
def rig():
    fds = FdWatch()
    device = Device(fds=OsFdPort())
    h = EndpointHarness(Endpoint(device))
    ram = os.memfd_create("guest-ram")
    os.ftruncate(ram, RAM)
    yield device, h, FakeQemu(h.client_sock, h.pump), ram
    os.close(ram)
    h.endpoint.close()
    h.close()
    assert fds.opened() == {}, "fd leak"


def test_realize_answers_like_a_pcie_nic(rig):
    device, h, q, ram = rig
    f = q.realize(ram, RAM)
    assert f["caps"]["capabilities"]["max_msg_fds"] == 16
    assert (f["info"].flags, f["info"].num_regions, f["info"].num_irqs) == (3, 9, 5)
    sizes = {i: r.size for i, r in f["regions"].items()}
    assert sizes == {0: 0x8000, 1: 0, 2: 0x1000, 3: 0, 4: 0x1000, 5: 0, 7: 4096}
    assert all(r.flags == 3 for i, r in f["regions"].items() if r.size)
    assert f["err_irq"].count == 0
    cfg = f["config"]
    assert cfg[0:4] == bytes.fromhex("3412e911")
    assert cfg[0x09:0x0C] == bytes([0, 0, 2])            # class 0x020000
    assert f["rom_sized"] == 0                           # no ROM
    assert f["bar_types"] == {0: 0, 2: 0, 4: 0}          # 32-bit memory BARs
    assert f["msix_flags"] & 0x7FF == 63
    assert f["msix_table"] == 0x2 and f["msix_pba"] == 0x4   # BIR 2 @0, BIR 4 @0
    assert (f["msix_irq"].flags, f["msix_irq"].count) == (1, 64)   # EVENTFD, no NORESIZE
    assert f["pin"] == 0
    assert device.resets == 1
    assert [(r.iova, r.mem is not None) for r in device.dma.regions()] == [
        (0, True), (0xC0000, True), (0xFFFC0000, False)]


def test_boot_msix_vectors_and_doorbells(rig):
    device, h, q, ram = rig
    f = q.realize(ram, RAM)
    q.enable_msix(f["msix_cap"])
    assert device.msix.enabled and not device.msix.function_mask
    efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3)]
    for nr, fd in zip((0, 1, 9), efds):
        q.use_vector(nr, fd)
    for fd in efds:
        os.close(fd)                     # the server holds its own copies
    mine = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
    q.use_vector(5, mine[0])
    q.use_vector(6, mine[1])
    q.write32(0, REG_ICS, 5, posted=True)
    q.write32(0, REG_ICS, 5, posted=True)
    q.write32(0, REG_ICS, 6, posted=True)
    assert os.eventfd_read(mine[0]) == 2
    assert os.eventfd_read(mine[1]) == 1
    assert q.read32(0, REG_RAISED + 4 * 5) == 2
    assert q.read32(0, REG_DELIVERED + 4 * 6) == 1
    # unplug: disable all MSI-X, unmap
    q.set_irqs(MSIX, 0x21, 0, 0)
    assert all(fd is None for fd in device.msix.eventfds)
    q.dma_unmap(0, 0xA0000)
    assert len(device.dma) == 2
    for fd in mine:
        os.close(fd)


def test_replaced_eventfd_gets_the_next_interrupt(rig):
    device, h, q, ram = rig
    f = q.realize(ram, RAM)
    q.enable_msix(f["msix_cap"])
    a, b = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    q.use_vector(3, a)
    q.use_vector(3, b)                   # affinity change: QEMU swaps the fd
    q.write32(0, REG_ICS, 3, posted=True)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(a)
    assert os.eventfd_read(b) == 1
    os.close(a)
    os.close(b)


def test_fds_in_chunks_and_zero_fd_runs(rig):
    """NORESIZE-style bulk setup: runs of 16 fds, and a zero-fd run de-assigns."""
    device, h, q, ram = rig
    f = q.realize(ram, RAM)
    q.enable_msix(f["msix_cap"])
    fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(20)]
    q.set_irqs(MSIX, 0x24, 0, 16, fds[:16])
    q.set_irqs(MSIX, 0x24, 16, 4, fds[16:])
    assert sum(fd is not None for fd in device.msix.eventfds) == 20
    q.set_irqs(MSIX, 0x24, 4, 8)         # zero fds: de-assign 4..11
    assert [device.msix.eventfds[v] is None for v in (3, 4, 11, 12)] == [False, True, True, False]
    for fd in fds:
        os.close(fd)

"""DMA map: windows onto memory files, bounds, permissions, overlap, unmap, fds closed.

Driven through the fd seam with ``FakeFdPort``; the first test maps a real memfd with
``OsFdPort`` (mmap shared: a write through the map is seen in the file)."""

import errno
import os

import pytest

from qemu_device.device.dma import DmaMap
from qemu_device.errors import DeviceError
from qemu_device.fdio import OsFdPort
from qemu_device.testing import FdWatch

RAM = 64 * 1024


@pytest.fixture
def ram(port):
    """A fake guest-RAM file; each map gets its own fd for it, as QEMU sends one per
    DMA_MAP, so it returns a factory."""
    data = bytearray(RAM)
    data[0x1000:0x1005] = b"hello"

    def new_fd():
        fd = port.memfd(0)
        port.files[fd] = data                     # every fd shares the same file
        return fd
    new_fd.data = data
    return new_fd


def test_map_read_write_spanning_adjacent_maps_real_memfd():
    ram = os.memfd_create("ram")
    os.ftruncate(ram, RAM)
    os.pwrite(ram, b"hello", 0x1000)
    fds = FdWatch()
    m = DmaMap(OsFdPort())
    try:
        m.add(0x10000, 0x2000, 3, 0, os.dup(ram))
        m.add(0x12000, 0x2000, 3, 0x2000, os.dup(ram))
        # the received fds are closed; Python's mmap keeps one dup per mapping
        assert len(fds.opened()) == 2
        assert m.read(0x11000, 5) == b"hello"
        m.write(0x11FFE, b"ABCD")                       # crosses into the second map
        assert os.pread(ram, 4, 0x1FFE) == b"ABCD"
    finally:
        m.clear()
        os.close(ram)
    assert fds.opened() == {}


def test_map_fd_is_closed_and_the_window_released(port, ram):
    m = DmaMap(port)
    fd = ram()
    m.add(0x10000, 0x2000, 3, 0, fd)
    assert port.closed == [fd] and port.live_windows() == 1
    m.write(0x11FFE, b"AB")
    assert bytes(ram.data[0x1FFE:0x2000]) == b"AB"
    assert m.read(0x11000, 5) == b"hello"
    assert m.clear() == 1 and port.live_windows() == 0


def test_permissions(port, ram):
    m = DmaMap(port)
    m.add(0, 0x1000, 1, 0, ram())                   # read only
    with pytest.raises(DeviceError) as e:
        m.write(0, b"x")
    assert e.value.errno == errno.EPERM
    assert port.windows[0].writable is False        # mapped without PROT_WRITE
    m.add(0x1000, 0x1000, 3, 0, None)               # no fd: message access only
    with pytest.raises(DeviceError) as e:
        m.read(0x1000, 1)
    assert e.value.errno == errno.EFAULT
    with pytest.raises(DeviceError) as e:
        m.read(0x5000, 1)
    assert e.value.errno == errno.EFAULT
    m.clear()


@pytest.mark.parametrize("iova,size,off,code", [
    (0x800, 0x1000, 0, errno.EEXIST), (0x1000, 0x1000, 0, errno.EEXIST),
    (0x1800, 0x1000, 0, errno.EEXIST), (0, 0x1000, 0x1000, None), (0x2000, 0x1000, 0x100, errno.EINVAL),
    (0x2000, 0x100000, 0, errno.EINVAL)])
def test_bad_maps_refused_and_fd_closed(port, ram, iova, size, off, code):
    m = DmaMap(port)
    m.add(0x1000, 0x1000, 3, 0, ram())
    fd = ram()
    if code is None:                                # adjacent is fine
        m.add(iova, size, 3, off, fd)
        assert len(m) == 2
    else:
        with pytest.raises(DeviceError) as e:
            m.add(iova, size, 3, off, fd)
        assert e.value.errno == code
        assert port.live_windows() == 1
    assert fd in port.closed                        # closed whatever happened
    m.clear()


def test_fd_that_is_not_a_memory_file_is_refused_and_closed(port):
    m = DmaMap(port)
    fd = port.eventfd()
    with pytest.raises(DeviceError) as e:
        m.add(0, 0x1000, 3, 0, fd)
    assert e.value.errno == errno.EINVAL and port.open == set()


def test_unmap_must_match(port, ram):
    m = DmaMap(port)
    m.add(0x1000, 0x2000, 3, 0, ram())
    with pytest.raises(DeviceError):
        m.remove(0x1000, 0x1000)
    m.remove(0x1000, 0x2000)
    assert len(m) == 0 and port.live_windows() == 0


def test_unmap_range_takes_whole_maps_and_never_splits(port, ram):
    """QEMU's vIOMMU invalidates whole ranges (DMA_UNMAP 0xf8000000+0x4000000 with nothing
    mapped there, seen binding the NIC to vfio-pci in the guest): like the kernel's type1
    IOMMU, the maps inside go, an empty range is no error, a split is."""
    m = DmaMap(port)
    m.add(0x1000, 0x1000, 3, 0, ram())
    m.add(0x3000, 0x1000, 3, 0, ram())
    assert m.remove_range(0x100000, 0x100000) == [] and len(m) == 2
    with pytest.raises(DeviceError) as err:
        m.remove_range(0x1800, 0x2000)
    assert err.value.errno == errno.ENOENT and len(m) == 2
    assert [r.iova for r in m.remove_range(0, 0x10000)] == [0x1000, 0x3000]
    assert len(m) == 0 and port.live_windows() == 0

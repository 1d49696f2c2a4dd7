"""DMA map: mmap of memfd fds, bounds, permissions, overlap, unmap, fds closed."""

import errno
import os

import pytest

from qemu_device.device.dma import DmaMap
from qemu_device.errors import DeviceError
from qemu_device.testing import FdWatch


@pytest.fixture
def ram():
    fd = os.memfd_create("ram")
    os.ftruncate(fd, 64 * 1024)
    os.pwrite(fd, b"hello", 0x1000)
    yield fd
    os.close(fd)


def dup(fd):
    return os.dup(fd)


def test_map_read_write_spanning_adjacent_maps(ram):
    fds = FdWatch()
    m = DmaMap()
    m.add(0x10000, 0x2000, 3, 0, dup(ram))
    m.add(0x12000, 0x2000, 3, 0x2000, dup(ram))
    # the received fds are closed; Python's mmap keeps one dup per mapping
    assert len(fds.opened()) == 2
    assert m.read(0x11000, 5) == b"hello"
    m.write(0x11FFE, b"ABCD")                       # crosses into the second map
    assert os.pread(ram, 4, 0x1FFE) == b"ABCD"
    m.clear()
    assert fds.opened() == {}


def test_permissions(ram):
    m = DmaMap()
    m.add(0, 0x1000, 1, 0, dup(ram))                # read only
    with pytest.raises(DeviceError) as e:
        m.write(0, b"x")
    assert e.value.errno == errno.EPERM
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
def test_bad_maps_refused_and_fd_closed(ram, iova, size, off, code):
    m = DmaMap()
    m.add(0x1000, 0x1000, 3, 0, dup(ram))
    fds = FdWatch()
    if code is None:                                # adjacent is fine
        m.add(iova, size, 3, off, dup(ram))
        assert len(m) == 2
    else:
        with pytest.raises(DeviceError) as e:
            m.add(iova, size, 3, off, dup(ram))
        assert e.value.errno == code
        assert fds.opened() == {}
    m.clear()


def test_unmap_must_match(ram):
    m = DmaMap()
    m.add(0x1000, 0x2000, 3, 0, dup(ram))
    with pytest.raises(DeviceError):
        m.remove(0x1000, 0x1000)
    m.remove(0x1000, 0x2000)
    assert len(m) == 0

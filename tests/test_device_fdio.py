"""OsFdPort, the real side of the fd seam, with real fds: each operation once, and its
refusals."""

import errno
import os

import pytest

from qemu_device.errors import DeviceError
from qemu_device.fdio import OsFdPort, close_fds

port = OsFdPort()


def test_is_eventfd_tells_eventfds_from_other_fds():
    e, m = os.eventfd(0), os.memfd_create("m")
    r, w = os.pipe()
    try:
        assert port.is_eventfd(e)
        assert not any(port.is_eventfd(fd) for fd in (m, r, w))
    finally:
        close_fds([e, m, r, w])
    assert not port.is_eventfd(e)                      # closed


def test_signal_adds_one_and_fails_loudly_on_a_bad_fd():
    e = os.eventfd(0, os.EFD_NONBLOCK)
    port.signal(e)
    port.signal(e)
    assert os.eventfd_read(e) == 2
    port.close(e)
    with pytest.raises(OSError):
        port.signal(e)


def test_close_never_raises(caplog):
    r, w = os.pipe()
    port.close(r)
    port.close(r)                                      # already closed: logged only
    os.close(w)
    assert "closing fd" in caplog.text


def test_map_memory_is_shared_and_bounded():
    m = os.memfd_create("ram")
    os.ftruncate(m, 0x3000)
    try:
        w = port.map_memory(m, 0x1000, 0x1000, True, True)
        w[0:4] = b"abcd"
        assert os.pread(m, 4, 0x1000) == b"abcd"
        w.close()
        with pytest.raises(DeviceError) as e:
            port.map_memory(m, 0x2000, 0x2000, True, False)
        assert e.value.errno == errno.EINVAL and "beyond the file" in e.value.message
        r, wfd = os.pipe()
        try:
            with pytest.raises(DeviceError, match="not a memory file"):
                port.map_memory(r, 0, 0x1000, True, False)
        finally:
            close_fds([r, wfd])
    finally:
        os.close(m)
    with pytest.raises(DeviceError) as e:
        port.map_memory(m, 0, 0x1000, True, False)    # closed fd
    assert e.value.errno == errno.EBADF

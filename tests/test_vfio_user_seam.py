"""The endpoint at the fd seam: bytes and fd numbers in, reply bytes out, no sockets.

``FakeFdPort`` stands in for the OS: these tests show that every fd the endpoint is
handed is kept or closed through the port, that SET_IRQS asks the port whether an fd is
an eventfd, that interrupts are port signals and DMA maps port windows, and that a
refused region access is counted once in ``bad_region_access`` on every path."""

import errno

import pytest

from qemu_device.device.nic import Device
from qemu_device.handlers import Endpoint
from qemu_device.protocol import (Command as C, DmaMap, Header, IrqSet, RegionAccess,
                                  pack_message)

_ids = iter(range(1, 1 << 16))


@pytest.fixture
def ep(port):
    e = Endpoint(Device(fds=port, maskable=True))
    assert reply(e, C.VFIO_USER_VERSION, b"\0\0\0\0{}\0").error == 0
    yield e
    e.close()
    assert port.open - set(port.files) == set(), "fd leak through the seam"


class _Reply:
    def __init__(self, data: bytes):
        self.header = Header.unpack(data)
        self.payload = data[16:]
        self.error = self.header.error if self.header.flags & 0x20 else 0


def reply(ep, cmd, payload=b"", fds=(), flags=0):
    out = ep.receive_data(pack_message(next(_ids), cmd, payload, flags=flags), list(fds))
    assert len(out) <= 1
    return _Reply(out[0]) if out else None


def set_irqs(ep, flags, start, count, fds=(), data=b""):
    return reply(ep, C.VFIO_USER_DEVICE_SET_IRQS,
                 IrqSet(20 + len(data), flags, 2, start, count).pack() + data, fds)


def enable(ep):
    ep.device.msix.set_control(True, False)


def test_eventfds_are_kept_signalled_replaced_and_closed_through_the_port(ep, port):
    enable(ep)
    a, b = port.eventfd(), port.eventfd()
    assert set_irqs(ep, 0x24, 3, 2, [a, b]).error == 0
    assert port.closed == []                         # kept by the device
    ep.device.msix.raise_vector(4)
    assert (port.take(a), port.take(b)) == (0, 1)
    c = port.eventfd()
    set_irqs(ep, 0x24, 3, 1, [c])                    # replaces a
    assert port.closed == [a]
    set_irqs(ep, 0x21, 0, 0)                          # disable all
    assert sorted(port.closed) == sorted([a, b, c])
    assert ep.device.msix.requests["disable_all"] == 1


def test_a_non_eventfd_is_refused_and_closed(ep, port):
    sock = port.other()
    r = set_irqs(ep, 0x24, 0, 1, [sock])
    assert r.error == errno.EINVAL
    assert port.closed == [sock] and ep.device.msix.eventfds[0] is None


def test_fds_on_a_command_that_takes_none_are_closed(ep, port):
    fd = port.eventfd()
    r = reply(ep, C.VFIO_USER_REGION_READ, RegionAccess(0, 0, 4).pack(), [fd])
    assert r.error == errno.EINVAL and port.closed == [fd]


def test_dma_map_goes_through_a_port_window(ep, port):
    ram = port.memfd(0x4000, b"guest")
    r = reply(ep, C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 0, 0x10000, 0x4000).pack(), [ram])
    assert r.error == 0 and port.closed == [ram] and port.live_windows() == 1
    assert ep.device.dma.read(0x10000, 5) == b"guest"
    bad = port.memfd(0x1000)
    r = reply(ep, C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 0, 0x20000, 0x2000).pack(), [bad])
    assert r.error == errno.EINVAL and bad in port.closed    # beyond the file
    ep.close()
    assert port.live_windows() == 0


def test_fds_of_an_unfinished_message_are_closed_when_the_peer_goes(port):
    e = Endpoint(Device(fds=port))
    e.receive_data(pack_message(1, C.VFIO_USER_VERSION, b"\0\0\0\0{}\0"))
    fd = port.eventfd()
    whole = pack_message(2, C.VFIO_USER_DEVICE_SET_IRQS, IrqSet(20, 0x24, 2, 0, 1).pack())
    assert e.receive_data(whole[:20], [fd]) == []
    e.close()
    assert port.closed == [fd]


def test_mask_and_unmask_bytes(ep, port):
    enable(ep)
    fd = port.eventfd()
    set_irqs(ep, 0x24, 7, 1, [fd])
    assert set_irqs(ep, 0x09, 7, 1).error == 0       # NONE|MASK
    ep.device.msix.raise_vector(7)
    assert port.take(fd) == 0 and ep.device.msix.is_pending(7)
    assert set_irqs(ep, 0x11, 7, 1).error == 0       # NONE|UNMASK
    assert port.take(fd) == 1 and not ep.device.msix.is_pending(7)
    assert set_irqs(ep, 0x0A, 6, 2, data=b"\0\1").error == 0   # BOOL|MASK: only 7
    assert list(ep.device.msix.masked[6:8]) == [0, 1]


@pytest.mark.parametrize("flags,start,count,data,nfds", [
    (0x0C, 0, 1, b"", 1),        # EVENTFD|MASK: no mask eventfds for MSI-X
    (0x14, 0, 1, b"", 1),        # EVENTFD|UNMASK (INTx resample form)
    (0x09, 60, 8, b"", 0),       # beyond the table
    (0x0A, 0, 2, b"\1", 0),      # BOOL length
    (0x09, 0, 0, b"", 0),        # count 0 is only NONE|TRIGGER
])
def test_bad_mask_requests_are_refused(ep, port, flags, start, count, data, nfds):
    fds = [port.eventfd() for _ in range(nfds)]
    assert set_irqs(ep, flags, start, count, fds, data).error == errno.EINVAL
    assert not any(ep.device.msix.masked)
    assert all(fd in port.closed for fd in fds)


def test_mask_refused_unless_maskable(port):
    e = Endpoint(Device(fds=port))
    e.receive_data(pack_message(1, C.VFIO_USER_VERSION, b"\0\0\0\0{}\0"))
    assert set_irqs(e, 0x09, 0, 1).error == errno.EINVAL
    r = reply(e, C.VFIO_USER_DEVICE_SET_IRQS, IrqSet(20, 0x09, 0, 0, 1).pack())
    assert r.error == errno.EINVAL                   # INTx has no vectors here


@pytest.mark.parametrize("sink", [None, "events"], ids=["fast path", "general path"])
@pytest.mark.parametrize("cmd,payload", [
    (C.VFIO_USER_REGION_READ, RegionAccess(0x8000, 0, 4).pack()),      # beyond BAR0
    (C.VFIO_USER_REGION_READ, RegionAccess(0, 1, 4).pack()),           # absent BAR1
    (C.VFIO_USER_REGION_READ, RegionAccess(4095, 7, 2).pack()),        # config end
    (C.VFIO_USER_REGION_WRITE, RegionAccess(0x7FFE, 0, 4).pack() + b"\0" * 4),
], ids=["read beyond", "read absent", "read config end", "write straddles"])
def test_bad_region_access_is_counted_once(ep, sink, cmd, payload):
    events = []
    ep.sink = events.append if sink else None
    assert reply(ep, cmd, payload).error == errno.EINVAL
    assert ep.device.errors["bad_region_access"] == 1
    assert ep.device.state()["errors"]["bad_region_access"] == 1
    assert reply(ep, C.VFIO_USER_REGION_READ, RegionAccess(0, 0, 4).pack()).error == 0
    assert ep.device.errors["bad_region_access"] == 1          # good accesses: no count
    assert ep.counts["errors"] == 1 and ep.counts["messages"] == 3


def test_posted_bad_write_is_counted_and_unanswered(ep):
    out = ep.receive_data(pack_message(9, C.VFIO_USER_REGION_WRITE,
                                       RegionAccess(0x9000, 0, 4).pack() + b"\0" * 4,
                                       flags=0x10))
    assert out == [] and ep.device.errors["bad_region_access"] == 1

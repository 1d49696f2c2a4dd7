"""Every malformed message gets an errno reply (or a clean disconnect), leaks no fd, and
the connection keeps working."""

import errno
import os
import socket
import struct

import pytest

from qemu_device.device.nic import Device
from qemu_device.fdio import OsFdPort
from qemu_device.handlers import Endpoint
from qemu_device.protocol import (Command as C, DmaMap, DmaUnmap, IrqInfo, IrqSet,
                                  RegionAccess, RegionInfo, pack_message)
from qemu_device.testing import EndpointHarness, FakeQemu, FdWatch

E = errno


@pytest.fixture
def rig():
    fds = FdWatch()
    h = EndpointHarness(Endpoint(Device(fds=OsFdPort())))
    q = FakeQemu(h.client_sock, h.pump)
    q.version()
    yield h, q
    h.endpoint.close()
    h.close()
    assert fds.opened() == {}, "fd leak"


def memfd(size=8192):
    fd = os.memfd_create("m")
    os.ftruncate(fd, size)
    return fd


def efd():
    return os.eventfd(0)


def ra(offset, region, count):
    return RegionAccess(offset, region, count).pack()


def irqset(flags, index, start, count, argsz=20):
    return IrqSet(argsz, flags, index, start, count).pack()


# (name, command, payload, fd makers, errno)
CASES = [
    ("unknown command", 99, b"", [], E.ENOSYS),
    ("command zero", 0, b"", [], E.ENOSYS),
    ("DMA_READ from client", C.VFIO_USER_DMA_READ, b"\0" * 16, [], E.ENOTSUP),
    ("REGION_IO_FDS", C.VFIO_USER_DEVICE_GET_REGION_IO_FDS, b"\0" * 16, [], E.ENOTSUP),
    ("GET_INFO short", C.VFIO_USER_DEVICE_GET_INFO, b"\0" * 8, [], E.EINVAL),
    ("GET_INFO argsz", C.VFIO_USER_DEVICE_GET_INFO, struct.pack("<IIII", 4, 0, 0, 0), [], E.EINVAL),
    ("REGION_INFO index 9", C.VFIO_USER_DEVICE_GET_REGION_INFO,
     RegionInfo(32, 0, 9, 0, 0, 0).pack(), [], E.EINVAL),
    ("REGION_INFO index huge", C.VFIO_USER_DEVICE_GET_REGION_INFO,
     RegionInfo(32, 0, 0xFFFFFFFF, 0, 0, 0).pack(), [], E.EINVAL),
    ("REGION_INFO argsz", C.VFIO_USER_DEVICE_GET_REGION_INFO,
     RegionInfo(16, 0, 0, 0, 0, 0).pack(), [], E.EINVAL),
    ("IRQ_INFO index 5", C.VFIO_USER_DEVICE_GET_IRQ_INFO, IrqInfo(16, 0, 5, 0).pack(), [], E.EINVAL),
    ("READ region 9", C.VFIO_USER_REGION_READ, ra(0, 9, 4), [], E.EINVAL),
    ("READ absent BAR1", C.VFIO_USER_REGION_READ, ra(0, 1, 4), [], E.EINVAL),
    ("READ ROM", C.VFIO_USER_REGION_READ, ra(0, 6, 4), [], E.EINVAL),
    ("READ beyond BAR0", C.VFIO_USER_REGION_READ, ra(0x8000, 0, 4), [], E.EINVAL),
    ("READ straddles end", C.VFIO_USER_REGION_READ, ra(0x7FFE, 0, 4), [], E.EINVAL),
    ("READ offset 2^64-1", C.VFIO_USER_REGION_READ, ra(2**64 - 1, 0, 4), [], E.EINVAL),
    ("READ count 0", C.VFIO_USER_REGION_READ, ra(0, 0, 0), [], E.EINVAL),
    ("READ count huge", C.VFIO_USER_REGION_READ, ra(0, 7, 1 << 21), [], E.E2BIG),
    ("READ config end", C.VFIO_USER_REGION_READ, ra(4095, 7, 2), [], E.EINVAL),
    ("READ short payload", C.VFIO_USER_REGION_READ, b"\0" * 12, [], E.EINVAL),
    ("READ with fd", C.VFIO_USER_REGION_READ, ra(0, 0, 4), [efd], E.EINVAL),
    ("WRITE count mismatch", C.VFIO_USER_REGION_WRITE, ra(0x18, 0, 4) + b"\0\0", [], E.EINVAL),
    ("WRITE beyond config", C.VFIO_USER_REGION_WRITE, ra(4094, 7, 4) + b"\0" * 4, [], E.EINVAL),
    ("WRITE short", C.VFIO_USER_REGION_WRITE, b"\0" * 8, [], E.EINVAL),
    ("DMA_MAP two fds", C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 0, 0, 4096).pack(), [memfd, memfd], E.EINVAL),
    ("DMA_MAP size 0", C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 0, 0, 0).pack(), [memfd], E.EINVAL),
    ("DMA_MAP flags 0", C.VFIO_USER_DMA_MAP, DmaMap(32, 0, 0, 0, 4096).pack(), [memfd], E.EINVAL),
    ("DMA_MAP bad flags", C.VFIO_USER_DMA_MAP, DmaMap(32, 7, 0, 0, 4096).pack(), [], E.EINVAL),
    ("DMA_MAP unaligned", C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 100, 0, 4096).pack(), [memfd], E.EINVAL),
    ("DMA_MAP beyond file", C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 4096, 0, 8192).pack(), [memfd], E.EINVAL),
    ("DMA_MAP eventfd", C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 0, 0, 4096).pack(), [efd], E.EINVAL),
    ("DMA_MAP wraps", C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 0, 2**64 - 4096, 8192).pack(), [], E.EINVAL),
    ("DMA_MAP short", C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 0, 0, 4096).pack()[:24], [], E.EINVAL),
    ("DMA_MAP argsz", C.VFIO_USER_DMA_MAP, DmaMap(8, 3, 0, 0, 4096).pack(), [], E.EINVAL),
    ("DMA_UNMAP dirty", C.VFIO_USER_DMA_UNMAP, DmaUnmap(24, 1, 0, 0x1000).pack(), [], E.ENOTSUP),
    ("DMA_UNMAP all+range", C.VFIO_USER_DMA_UNMAP, DmaUnmap(24, 2, 0, 0x1000).pack(), [], E.EINVAL),
    ("SET_IRQS index 5", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x24, 5, 0, 1), [], E.EINVAL),
    ("SET_IRQS beyond N", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x24, 2, 63, 2), [efd, efd], E.EINVAL),
    ("SET_IRQS huge start", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x24, 2, 0xFFFFFFFF, 1), [efd], E.EINVAL),
    ("SET_IRQS fds with NONE", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x21, 2, 0, 1), [efd], E.EINVAL),
    ("SET_IRQS fd count", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x24, 2, 0, 3), [efd, efd], E.EINVAL),
    ("SET_IRQS count 0 eventfd", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x24, 2, 0, 0), [], E.EINVAL),
    ("SET_IRQS two data types", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x25, 2, 0, 1), [], E.EINVAL),
    ("SET_IRQS two actions", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x31, 2, 0, 1), [], E.EINVAL),
    ("SET_IRQS mask MSI-X", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x09, 2, 0, 1), [], E.EINVAL),
    ("SET_IRQS INTx unmask", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x11, 0, 0, 1), [], E.EINVAL),
    ("SET_IRQS not eventfd", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x24, 2, 0, 1), [memfd], E.EINVAL),
    ("SET_IRQS 17 fds", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x24, 2, 0, 17), [efd] * 17, E.EINVAL),
    ("SET_IRQS bool length", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x22, 2, 0, 2) + b"\1", [], E.EINVAL),
    ("SET_IRQS argsz", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x21, 2, 0, 0, argsz=8), [], E.EINVAL),
    ("SET_IRQS short", C.VFIO_USER_DEVICE_SET_IRQS, b"\0" * 12, [], E.EINVAL),
    ("SET_IRQS trailing", C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x21, 2, 0, 0) + b"xx", [], E.EINVAL),
    ("RESET payload", C.VFIO_USER_DEVICE_RESET, b"\0" * 4, [], E.EINVAL),
    ("RESET with fd", C.VFIO_USER_DEVICE_RESET, b"", [efd], E.EINVAL),
    ("WRITE_MULTI zero", C.VFIO_USER_REGION_WRITE_MULTI, struct.pack("<Q", 0), [], E.EINVAL),
    ("WRITE_MULTI short", C.VFIO_USER_REGION_WRITE_MULTI, struct.pack("<Q", 2) + b"\0" * 24, [], E.EINVAL),
    ("VERSION twice", C.VFIO_USER_VERSION, b"\0\0\0\0{}\0", [], E.EINVAL),
]


@pytest.mark.parametrize("name,cmd,payload,fdmakers,err", CASES, ids=[c[0] for c in CASES])
def test_malformed_gets_errno_and_connection_survives(rig, name, cmd, payload, fdmakers, err):
    h, q = rig
    fds = [make() for make in fdmakers]
    try:
        r = q.request(cmd, payload, fds, expect_error=err)
    finally:
        for fd in fds:
            os.close(fd)
    assert r.header.size == 16 and r.header.flags == 0x21
    assert q.get_info().num_regions == 9          # still in sync
    assert not h.endpoint.closed
    assert all(fd is None for fd in h.endpoint.device.msix.eventfds)
    assert len(h.endpoint.device.dma) == 0


@pytest.mark.parametrize("name,cmd,payload,fdmakers,err", CASES[:12], ids=[c[0] for c in CASES[:12]])
def test_malformed_no_reply_is_never_answered(rig, name, cmd, payload, fdmakers, err):
    h, q = rig
    fds = [make() for make in fdmakers]
    q.send(cmd, payload, fds, flags=0x10)
    for fd in fds:
        os.close(fd)
    q.pump()
    assert q.no_data()
    assert h.endpoint.counts["errors"] == 1
    assert q.get_info().num_regions == 9


def test_message_before_version_is_refused_then_version_works():
    h = EndpointHarness(Endpoint(Device(fds=OsFdPort())))
    q = FakeQemu(h.client_sock, h.pump)
    q.request(C.VFIO_USER_DEVICE_GET_INFO, b"\0" * 16, expect_error=E.EINVAL)
    assert q.version()["capabilities"]["max_data_xfer_size"] == 1 << 20
    assert q.get_info().num_irqs == 5
    h.endpoint.close()
    h.close()


@pytest.mark.parametrize("major,caps,err", [(1, b"{}\0", E.ENOTSUP), (0, b"nope\0", E.EINVAL),
                                            (0, b"[1]\0", E.EINVAL), (0, b"", E.EINVAL)])
def test_bad_version(major, caps, err):
    h = EndpointHarness(Endpoint(Device(fds=OsFdPort())))
    q = FakeQemu(h.client_sock, h.pump)
    q.request(C.VFIO_USER_VERSION, struct.pack("<HH", major, 0) + caps, expect_error=err)
    q.version()
    h.endpoint.close()
    h.close()


def test_reply_from_client_is_dropped_silently(rig):
    h, q = rig
    q.send_raw(pack_message(7, C.VFIO_USER_DEVICE_GET_INFO, b"\0" * 16, flags=1))
    q.pump()
    assert q.no_data()
    assert q.get_info().num_regions == 9


def test_unknown_message_type_gets_einval(rig):
    h, q = rig
    q.send_raw(pack_message(7, C.VFIO_USER_DEVICE_GET_INFO, b"\0" * 16, flags=2))
    q.pump()
    r = q.recv_reply()
    assert (r.header.msg_id, r.error) == (7, E.EINVAL)


def test_oversize_message_is_drained_and_refused(rig):
    h, q = rig
    big = ra(0, 0, 4) + b"\0" * (2 << 20)
    q.sock.setblocking(False)
    msg = pack_message(42, C.VFIO_USER_REGION_WRITE, big)
    sent = 0
    while sent < len(msg):                # interleave: the socket buffer is smaller
        try:
            sent += q.sock.send(msg[sent:])
        except BlockingIOError:
            pass
        q.pump()
    q.sock.settimeout(5)
    r = q.recv_reply()
    assert (r.header.msg_id, r.error) == (42, E.E2BIG)
    assert q.read32(0, 0) == 0x11E91234


def test_header_size_below_16_is_fatal_and_clean():
    fds = FdWatch()
    h = EndpointHarness(Endpoint(Device(fds=OsFdPort())))
    q = FakeQemu(h.client_sock, h.pump)
    q.version()
    fd = efd()
    q.send_raw(struct.pack("<HHIII", 9, 4, 8, 0, 0), [fd])
    os.close(fd)
    q.pump()
    r = q.recv_reply()
    assert (r.header.msg_id, r.error) == (9, E.EINVAL)
    assert h.endpoint.closed
    assert q.sock.recv(16) == b""          # server shut the stream down
    h.endpoint.close()
    h.close()
    assert fds.opened() == {}


def test_peer_closing_mid_message_leaks_no_fd():
    fds = FdWatch()
    device = Device(fds=OsFdPort())
    h = EndpointHarness(Endpoint(device))
    q = FakeQemu(h.client_sock, h.pump)
    q.version()
    fd = efd()
    whole = pack_message(3, C.VFIO_USER_DEVICE_SET_IRQS, irqset(0x24, 2, 0, 1))
    q.send_raw(whole[:20], [fd])           # half a message with its fd
    os.close(fd)
    q.pump()
    q.sock.shutdown(socket.SHUT_WR)
    q.pump()
    assert h.eof
    h.endpoint.close()
    h.close()
    assert fds.opened() == {}


def test_the_event_log_records_the_errno_of_every_error_reply():
    """The host's sentinel classifies a run whose device answered QEMU with an error as
    'could not judge': the logged reply must carry the real errno, and 0 only on success."""
    events = []
    h = EndpointHarness(Endpoint(Device(fds=OsFdPort()), sink=events.append))
    q = FakeQemu(h.client_sock, h.pump)
    q.version()
    q.read32(0, 0)
    q.request(C.VFIO_USER_REGION_READ, ra(0, 9, 4), expect_error=E.EINVAL)
    h.endpoint.device.faults.add({"kind": "errno_reply", "command": "DEVICE_RESET",
                                  "errno": "EIO"})
    q.request(C.VFIO_USER_DEVICE_RESET, b"", expect_error=E.EIO)
    sent = [(e["cmd"], e["error"]) for e in events if e["event"] == "tx"]
    assert sent[:2] == [("VERSION", 0), ("REGION_READ", 0)]
    assert sent[2:] == [("REGION_READ", E.EINVAL), ("DEVICE_RESET", E.EIO)]
    h.endpoint.close()
    h.close()

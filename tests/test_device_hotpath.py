"""The REGION_READ hot path keeps every rule of the general one: the kept-buffer reader
(fds with their read, truncation, EOF, no aliasing), the BAR0 register fast path (same
bytes as the general handler for every register), ``Connection.partial`` (the attribute
the server and the fast path read instead of recomputing), and the server's one read
per readiness event with the fd rule across reads."""

import array
import json
import os
import socket

import pytest

from qemu_device.connection import Connection, Request
from qemu_device.device.nic import Device
from qemu_device.device.registers import REG_BLOCK_SIZE, REG_SCRATCH
from qemu_device.fdio import OsFdPort
from qemu_device.handlers import Endpoint
from qemu_device.protocol import (MAX_MESSAGE_SIZE, Command, DmaMap, RegionAccess,
                                  pack_message)
from qemu_device.server import Server
from qemu_device.testing import QEMU_CAPS, FakeQemu, FdWatch
from qemu_device.transport import MAX_RECV_FDS, ChunkReader

C = Command


def _sendmsg(sock, data: bytes, fds=()) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    assert sock.sendmsg([data], anc) == len(data)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_chunk_reader_gives_each_read_its_fds_and_owned_bytes(pair):
    a, b = pair
    reader = ChunkReader()
    efds = [os.eventfd(0), os.eventfd(0)]
    try:
        _sendmsg(a, b"first", efds)
        _sendmsg(a, b"second")
        data1, fds1, trunc1 = reader.read(b)
        data2, fds2, trunc2 = reader.read(b)
        assert (data1, len(fds1), trunc1) == (b"first", 2, False)
        assert (data2, list(fds2), trunc2) == (b"second", [], False)
        for fd in fds1:                 # received: new fds for the same eventfds
            assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
            os.close(fd)
        with pytest.raises(BlockingIOError):
            reader.read(b)
        a.close()
        assert reader.read(b) == (b"", (), False)        # EOF
    finally:
        for fd in efds:
            os.close(fd)


def test_chunk_reader_reports_fds_the_kernel_dropped(pair):
    a, b = pair
    efd = os.eventfd(0)
    try:
        _sendmsg(a, b"x", [efd] * (MAX_RECV_FDS + 4))
        data, fds, truncated = ChunkReader().read(b)
        assert data == b"x" and truncated
        for fd in fds:
            os.close(fd)
    finally:
        os.close(efd)


def _ready_endpoint(port) -> Endpoint:
    ep = Endpoint(Device(fds=port))
    caps = json.dumps(QEMU_CAPS).encode() + b"\0"
    ep.receive_data(pack_message(0, C.VFIO_USER_VERSION, b"\0" * 4 + caps))
    assert ep.conn.state.value == "ready"
    return ep


def _read_req(msg_id: int, region: int, offset: int, count: int = 4) -> bytes:
    return pack_message(msg_id, C.VFIO_USER_REGION_READ,
                        RegionAccess(offset, region, count).pack())


def test_register_fast_path_answers_as_the_general_handler(port):
    """Every aligned dword of the BAR0 register block, and reads that are not one."""
    ep = _ready_endpoint(port)
    ep.device.region_write(0, REG_SCRATCH, (0xA5C3_0F1E).to_bytes(4, "little"))
    ep.device.msix.raised[3] = 7                        # a counter register is not 0
    cases = [(0, off, 4) for off in range(0, REG_BLOCK_SIZE, 4)]
    cases += [(0, REG_SCRATCH, 2), (0, REG_SCRATCH + 1, 4), (0, REG_SCRATCH, 8),
              (7, 0, 4), (2, 0, 4), (0, REG_BLOCK_SIZE, 4)]
    for i, (region, offset, count) in enumerate(cases):
        req = _read_req(i, region, offset, count)
        fast = ep.receive_data(req)
        general = ep.handle(Request(i, C.VFIO_USER_REGION_READ, 0, req[16:]))
        assert fast == [general], (region, offset, count)
    assert ep.receive_data(_read_req(1, 0, REG_SCRATCH))[0][-4:] == bytes.fromhex("1e0fc3a5")


def test_connection_partial_follows_what_is_held():
    conn = Connection()
    msg = _read_req(1, 0, 0)
    assert not conn.partial
    conn.receive_data(msg[:10])
    assert conn.partial and conn.has_partial()
    assert len(conn.receive_data(msg[10:])) == 1 and not conn.partial
    conn.receive_data(msg[:20], [101])                   # fds wait for the message
    assert conn.partial
    assert conn.pending_fds() == [101]
    conn.receive_data(msg[20:])
    assert not conn.partial
    big = pack_message(2, C.VFIO_USER_REGION_WRITE, b"\0" * (MAX_MESSAGE_SIZE + 8))
    conn.receive_data(big[:4096])                        # rejected: the rest is skipped
    assert conn.partial
    conn.receive_data(big[4096:])
    assert not conn.partial


@pytest.fixture
def served(tmp_path):
    watch = FdWatch()
    server = Server(Device(fds=OsFdPort()), str(tmp_path / "nic.sock"))
    server.bind()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(server.socket_path)
    server.run_once(0)
    q = FakeQemu(sock, lambda: server.run_once(0))
    q.version()
    yield server, q
    sock.close()
    server.close()
    assert watch.opened() == {}, "fd leak"


def test_one_read_per_round_and_each_fd_stays_with_its_map(served):
    server, q = served
    mems = []
    for i in range(3):                  # each message carries an fd: one read each
        mem = os.memfd_create(f"ram{i}")
        os.ftruncate(mem, 4096 * (i + 1))
        mems.append(mem)
        q.send(C.VFIO_USER_DMA_MAP, DmaMap(32, 3, 0, 0x10000 * (i + 1),
                                           4096 * (i + 1)).pack(), [mem])
    for mem in mems:
        os.close(mem)
    for _ in range(3):
        server.run_once(0)
        assert q.recv_reply().error == 0
        assert q.no_data(), "more than one read in one round"
    # Each file is exactly its map's size: an fd handed to another message would map
    # beyond its file and get EINVAL, so errno 0 everywhere proves the fd rule held.
    regions = [(r.iova, r.size, r.mem is not None) for r in server.device.dma.regions()]
    assert regions == [(0x10000 * (i + 1), 4096 * (i + 1), True) for i in range(3)]


def _general(ep: Endpoint, data: bytes) -> list[bytes]:
    """What the general path (framing, then handle) answers for data."""
    return [r for r in (ep.handle(ev) for ev in ep.conn.receive_data(data)) if r is not None]


def _write_req(msg_id: int, region: int, offset: int, data: bytes, flags: int = 0) -> bytes:
    return pack_message(msg_id, C.VFIO_USER_REGION_WRITE,
                        RegionAccess(offset, region, len(data)).pack() + data, flags=flags)


def _device_view(ep: Endpoint) -> tuple:
    regs = ep.device.regs
    return (ep.device.state(), regs.scratch, regs.errors, regs.last_vector, list(regs.ivar),
            ep.counts, ep.conn.messages_in,
            [ep.device.region_read(7, o, 4) for o in range(0, 256, 4)],
            ep.device.region_read(2, 0, 64))


def test_write_fast_path_has_the_general_paths_replies_and_effects():
    """Two devices fed the same writes, one through the fast path and one through the
    general one: same replies (or none for a posted write), same device state after
    each, for register doorbells, IVAR, CTRL, config space, the MSI-X table, bad
    accesses, every width."""
    from qemu_device.protocol import HeaderFlags
    from qemu_device.testing import FakeFdPort
    from qemu_device.device.registers import REG_CTRL, REG_ICS, REG_IVAR, REG_QKICK
    no_reply = int(HeaderFlags.VFIO_USER_F_NO_REPLY)
    fast, general = _ready_endpoint(FakeFdPort()), _ready_endpoint(FakeFdPort())
    u32 = lambda v: v.to_bytes(4, "little")            # noqa: E731
    cases = [(0, REG_SCRATCH, u32(0xDEADBEEF)), (0, REG_ICS, u32(3)), (0, REG_ICS, u32(999)),
             (0, REG_IVAR + 4, u32(0x8000_0005)), (0, REG_QKICK + 4, u32(1)),
             (0, REG_ICS, b"\3\0"), (0, REG_SCRATCH + 1, u32(7)), (0, REG_SCRATCH, b"\1" * 8),
             (0, 0x2000, u32(5)), (0, REG_CTRL, u32(2)), (7, 4, b"\6\0"), (7, 0x3C, b"\xff"),
             (2, 0, u32(0xFEE0_0000)), (2, 8, u32(0x41)), (2, 12, u32(0)), (4, 0, u32(1)),
             (9, 0, u32(1)), (0, REG_BLOCK_SIZE * 64, u32(1)), (7, 254, u32(1)),
             (0, REG_CTRL, u32(1))]
    irqs = 0
    for i, (region, offset, data) in enumerate(cases):
        for flags in (0, no_reply):
            req = _write_req(i, region, offset, data, flags)
            assert fast.receive_data(req) == _general(general, req), (region, offset, data)
            assert _device_view(fast) == _device_view(general), (region, offset, data)
            irqs = max(irqs, fast.device.regs.irq_total)
    assert irqs > 0 and fast.counts["errors"] > 0

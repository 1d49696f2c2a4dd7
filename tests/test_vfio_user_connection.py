"""The sans-I/O connection: framing (whole, byte by byte, trailing data), the fd rule,
state table, reply rules."""

import errno
import os
import socket
import array

import pytest

from qemu_device.connection import (BadMessage, ConnState, Connection, Request, Transition,
                                    TRANSITIONS)
from qemu_device.errors import LocalProtocolError, RemoteProtocolError
from qemu_device.protocol import Command as C, Header, pack_message
from qemu_device.transport import recv_with_fds

A = pack_message(1, C.VFIO_USER_DEVICE_GET_INFO, b"\x10" + b"\0" * 15)
B = pack_message(2, C.VFIO_USER_REGION_READ, bytes(range(16)))


def events(conn, chunks):
    out = []
    for data, fds in chunks:
        out += conn.receive_data(data, fds)
    return out


@pytest.mark.parametrize("split", ["whole", "bytewise", "together", "odd"])
def test_framing(split):
    stream = A + B
    if split == "whole":
        chunks = [(A, []), (B, [])]
    elif split == "bytewise":
        chunks = [(stream[i:i + 1], []) for i in range(len(stream))]
    elif split == "together":
        chunks = [(stream, [])]
    else:
        chunks = [(stream[:7], []), (stream[7:40], []), (stream[40:], [])]
    evs = events(Connection(), chunks)
    assert [(e.msg_id, e.command, e.payload) for e in evs] == [
        (1, C.VFIO_USER_DEVICE_GET_INFO, A[16:]), (2, C.VFIO_USER_REGION_READ, B[16:])]


def test_trailing_partial_message_waits():
    conn = Connection()
    evs = conn.receive_data(A + B[:20])
    assert [e.msg_id for e in evs] == [1]
    assert [e.msg_id for e in conn.receive_data(B[20:])] == [2]


@pytest.mark.parametrize("layout", ["second", "alone", "split_header_chunk"])
def test_fds_go_to_the_message_holding_the_chunks_last_byte(layout):
    conn = Connection()
    if layout == "second":
        evs = conn.receive_data(A + B, [77])
        assert (evs[0].fds, evs[1].fds) == ([], [77])
    elif layout == "alone":
        evs = conn.receive_data(A, []) + conn.receive_data(B, [77])
        assert (evs[0].fds, evs[1].fds) == ([], [77])
    else:   # the fd came with the first part of B, the rest of B later
        evs = conn.receive_data(A + B[:10], [77]) + conn.receive_data(B[10:])
        assert (evs[0].fds, evs[1].fds) == ([], [77])


def test_kernel_keeps_fds_with_their_sendmsg():
    """The fd rule relies on Linux ending a recvmsg at the skb that carries fds."""
    a, b = socket.socketpair()
    fd = os.eventfd(0)
    try:
        a.sendmsg([A])
        a.sendmsg([B], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        a.sendmsg([A])
        data1, fds1 = recv_with_fds(b)
        data2, fds2 = recv_with_fds(b)
        assert (data1, len(fds1)) == (A + B, 1)
        assert (data2, fds2) == (A, [])
        conn = Connection()
        evs = conn.receive_data(data1, fds1)
        assert evs[1].fds == fds1 and evs[0].fds == []
        os.close(fds1[0])
    finally:
        os.close(fd)
        a.close()
        b.close()


def test_oversize_is_skipped_across_chunks():
    conn = Connection(max_message_size=64)
    big = pack_message(5, C.VFIO_USER_REGION_WRITE, b"\0" * 100)
    evs = conn.receive_data(big[:30])
    assert isinstance(evs[0], BadMessage) and evs[0].error.errno == errno.E2BIG
    evs = conn.receive_data(big[30:] + A)
    assert [type(e) for e in evs] == [Request] and evs[0].msg_id == 1


def test_fds_on_a_discarded_payload_are_returned_for_closing():
    conn = Connection(max_message_size=64)
    big = pack_message(5, C.VFIO_USER_REGION_WRITE, b"\0" * 100)
    conn.receive_data(big[:30])
    evs = conn.receive_data(big[30:], [99])
    assert len(evs) == 1 and evs[0].fds == [99] and evs[0].no_reply


def test_size_below_header_is_fatal():
    conn = Connection()
    evs = conn.receive_data(Header(3, 4, 15, 0).pack() + A)
    assert len(evs) == 1 and evs[0].error.fatal
    assert conn.state is ConnState.CLOSED
    assert conn.receive_data(A) == []


def test_state_table():
    conn = Connection()
    req = Request(1, C.VFIO_USER_DEVICE_GET_INFO, 0, b"")
    with pytest.raises(RemoteProtocolError) as exc:
        conn.check_allowed(req)
    assert exc.value.errno == errno.EINVAL
    conn.check_allowed(Request(0, C.VFIO_USER_VERSION, 0, b""))
    conn.transition(Transition.VERSION_NEGOTIATED)
    conn.check_allowed(req)
    with pytest.raises(RemoteProtocolError):
        conn.check_allowed(Request(0, C.VFIO_USER_VERSION, 0, b""))
    with pytest.raises(LocalProtocolError):
        conn.transition(Transition.VERSION_NEGOTIATED)
    conn.transition(Transition.PEER_CLOSED)
    assert conn.closed
    assert all(isinstance(k[0], ConnState) for k in TRANSITIONS)


def test_replies_never_answer_no_reply():
    posted = Request(4, C.VFIO_USER_REGION_WRITE, 0x10, b"")
    assert Connection.reply(posted, b"x") is None
    assert Connection.reply_error(posted, errno.EINVAL) is None
    req = Request(4, C.VFIO_USER_REGION_READ, 0, b"")
    r = Connection.reply(req, b"abcd")
    assert Header.unpack(r) == Header(4, C.VFIO_USER_REGION_READ, 20, 1, 0)
    e = Connection.reply_error(req, errno.EFAULT)
    assert Header.unpack(e) == Header(4, C.VFIO_USER_REGION_READ, 16, 0x21, errno.EFAULT)
    with pytest.raises(LocalProtocolError):
        Connection.reply_error(req, 0)

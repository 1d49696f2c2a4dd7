"""Ping-pong echo servers: python -m bench.pingpong SOCKET [--epoll].

Concepts: the floors of the REGION_READ benchmark.  Each answers every 32-byte request
with a 36-byte reply, as the device server does for a 4-byte REGION_READ, with no parsing
and no dispatch.  The plain one (the floor the goal is judged against) is a blocking
``recv``/``send`` loop.  With ``--epoll`` it is the least a server shaped like the device
server can do in Python: a non-blocking socket behind an epoll wait, read with
``recvmsg_into`` offering room for fds (a vfio-user client may send fds with any
message), one reply sent per read.
"""

import os
import select
import socket
import sys

from qemu_device.transport import MAX_RECV_FDS

REPLY_EXTRA = b"\0\0\0\0"
#: the ancillary room the device server offers per read
ANC_SIZE = socket.CMSG_SPACE(MAX_RECV_FDS * 4)


def _listen(path: str) -> socket.socket:
    """Accept the one client on ``path`` (after printing ``ready``) and return it."""
    if os.path.exists(path):
        os.unlink(path)
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)
    print("ready", flush=True)
    conn, _ = ls.accept()
    ls.close()
    os.unlink(path)
    return conn


def serve(path: str) -> None:
    """Answer each read from the one client on ``path`` with it plus 4 bytes, until it
    closes: blocking ``recv`` and ``send``."""
    conn = _listen(path)
    recv, send = conn.recv, conn.send
    while True:
        data = recv(4096)
        if not data:
            break
        send(data + REPLY_EXTRA)
    conn.close()


def serve_epoll(path: str) -> None:
    """As ``serve``, the way the device server reads: wait in epoll, then one
    ``recvmsg_into`` a kept buffer with ancillary room, then ``send``."""
    conn = _listen(path)
    conn.setblocking(False)
    ep = select.epoll()
    ep.register(conn.fileno(), select.EPOLLIN)
    buf = bytearray(1 << 17)
    bufs, view = (buf,), memoryview(buf)
    poll, recvmsg_into, send = ep.poll, conn.recvmsg_into, conn.send
    while True:
        for _fd, _events in poll(-1):
            try:
                n, _anc, _flags, _ = recvmsg_into(bufs, ANC_SIZE)
            except BlockingIOError:
                continue
            if not n:
                ep.close()
                conn.close()
                return
            send(view[:n].tobytes() + REPLY_EXTRA)


if __name__ == "__main__":
    (serve_epoll if "--epoll" in sys.argv[2:] else serve)(sys.argv[1])

# Concepts: the thin socket layer under the sans-I/O endpoint. recv_with_fds() reads one
# chunk and the SCM_RIGHTS fds that came with it (the kernel ends a unix-stream read at
# the skb that carries fds, which the connection's fd rule relies on). OutBuffer sends
# whole replies with one send() each (never fds: our replies carry none) and keeps what a
# non-blocking socket would not take, so the loop never blocks on a slow peer.
"""Socket helpers: receive bytes plus fds, buffered non-blocking send."""

from __future__ import annotations

import array
import logging
import os
import socket
import stat

log = logging.getLogger(__name__)

RECV_SIZE = 1 << 17
MAX_RECV_FDS = 32               # more than we accept, so an excess shows as a count error
_ANC_SIZE = socket.CMSG_SPACE(MAX_RECV_FDS * 4)
_INT_SIZE = array.array("i").itemsize


def recv_with_fds(sock: socket.socket, size: int = RECV_SIZE) -> tuple[bytes, list[int]]:
    """One read: (data, fds). b"" means the peer closed. Raises BlockingIOError."""
    data, anc, flags, _ = sock.recvmsg(size, _ANC_SIZE)
    if not anc:
        return data, []
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT_SIZE
            fds.extend(array.array("i", payload[:usable]))
    if flags & socket.MSG_CTRUNC:
        log.warning("fds truncated (more than %d in one message)", MAX_RECV_FDS)
    return data, fds


class OutBuffer:
    """Pending output of a non-blocking socket."""

    def __init__(self, sock: socket.socket, limit: int = 64 << 20) -> None:
        self.sock = sock
        self.limit = limit
        self._pending = bytearray()

    def __bool__(self) -> bool:
        return bool(self._pending)

    def send(self, data: bytes) -> None:
        """Send data now if possible, else queue it. Raises OSError on a dead peer and
        BufferError past the limit."""
        if self._pending:
            self._queue(data)
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self._queue(data[n:])

    def _queue(self, data: bytes) -> None:
        if len(self._pending) + len(data) > self.limit:
            raise BufferError("peer does not read its socket")
        self._pending += data

    def flush(self) -> bool:
        """Send what is queued; True when empty."""
        while self._pending:
            try:
                n = self.sock.send(self._pending)
            except BlockingIOError:
                return False
            del self._pending[:n]
        return True


def listen_unix(path: str, backlog: int = 4) -> socket.socket:
    """A listening non-blocking UNIX stream socket at path (a stale socket is replaced)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock

"""Socket helpers: receive bytes plus fds, buffered non-blocking send, private listening
sockets, a non-blocking eventfd signal.

Concepts: the thin socket layer under the sans-I/O endpoint.  ``recv_chunk()`` reads one
chunk and the SCM_RIGHTS fds that came with it (the kernel ends a unix-stream read at the
skb that carries fds, which the connection's fd rule relies on) and says whether the
kernel had to drop fds (``MSG_CTRUNC``: more fds than we take, or no fd left in this
process).  ``OutBuffer`` sends whole replies with one send() each (never fds: our replies
carry none) and keeps what a non-blocking socket would not take, up to a limit, so the
loop never blocks on a slow peer and never buffers without bound.  ``listen_unix()``
makes a socket only its owner may connect to (mode 0600 whatever the umask).
``signal_eventfd()`` adds 1 to a client's eventfd without ever blocking.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import socket
import stat

log = logging.getLogger(__name__)

RECV_SIZE = 1 << 17
MAX_RECV_FDS = 32               # more than we accept, so an excess shows as a count error
SOCKET_MODE = 0o600
_ANC_SIZE = socket.CMSG_SPACE(MAX_RECV_FDS * 4)
_INT_SIZE = array.array("i").itemsize
# Plain ints: ``flags & socket.MSG_CTRUNC`` would go through enum.IntFlag.__and__.
_CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_NO_FDS: tuple[int, ...] = ()


def _fds_of(anc: list) -> list[int]:
    """The SCM_RIGHTS fds in recvmsg's ancillary data (a partial int is ignored)."""
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT_SIZE
            fds.extend(array.array("i", payload[:usable]))
    return fds


def recv_chunk(sock: socket.socket, size: int = RECV_SIZE) -> tuple[bytes, list[int], bool]:
    """One read: (data, fds, fds_truncated).  b"" means the peer closed.  Raises
    BlockingIOError when there is nothing to read."""
    data, anc, flags, _ = sock.recvmsg(size, _ANC_SIZE)
    return data, _fds_of(anc) if anc else [], bool(flags & _CTRUNC)


class ChunkReader:
    """``recv_chunk`` for a hot loop: reads into one preallocated buffer.

    ``recvmsg(RECV_SIZE)`` allocates a 128 KiB bytes object per call and shrinks it; for
    a 32-byte message that costs more than the read itself, and depending on the heap
    it becomes an mmap/munmap pair per read.  ``recvmsg_into`` a buffer kept for the
    connection's life avoids both; only the bytes read are copied out.  The ancillary
    space is always offered (QEMU's DMA_MAP and SET_IRQS carry fds and nothing says in
    advance which read holds them): it costs about half a microsecond per read."""

    __slots__ = ("_bufs", "_view")

    def __init__(self, size: int = RECV_SIZE) -> None:
        buf = bytearray(size)
        self._bufs = (buf,)
        self._view = memoryview(buf)

    def read(self, sock: socket.socket) -> tuple[bytes, list[int] | tuple, bool]:
        """As ``recv_chunk``; fds is an empty tuple when none came."""
        n, anc, flags, _ = sock.recvmsg_into(self._bufs, _ANC_SIZE)
        data = self._view[:n].tobytes()
        return data, _fds_of(anc) if anc else _NO_FDS, bool(flags & _CTRUNC)


def recv_with_fds(sock: socket.socket, size: int = RECV_SIZE) -> tuple[bytes, list[int]]:
    """One read: (data, fds). b"" means the peer closed. Raises BlockingIOError."""
    data, fds, truncated = recv_chunk(sock, size)
    if truncated:
        log.warning("fds truncated (more than %d in one message, or no fd left)",
                    MAX_RECV_FDS)
    return data, fds


class OutBuffer:
    """Pending output of a non-blocking socket."""

    def __init__(self, sock: socket.socket, limit: int = 64 << 20) -> None:
        self.sock = sock
        self.limit = limit
        self._pending = bytearray()

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def send(self, data: bytes) -> bool:
        """Send data now if possible, else queue it; True when nothing is left queued.
        Raises OSError on a dead peer and BufferError past the limit."""
        if self._pending:
            self._queue(data)
            return False
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self._queue(data[n:])
            return False
        return True

    def _queue(self, data: bytes) -> None:
        if len(self._pending) + len(data) > self.limit:
            raise BufferError(f"peer does not read its socket ({len(self._pending)} bytes "
                              f"pending, limit {self.limit})")
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
    """A listening non-blocking UNIX stream socket at path (a stale socket is replaced),
    mode 0600 from the moment it exists, whatever the umask."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~SOCKET_MODE)     # the inode is born 0600 (single-threaded)
    try:
        sock.bind(path)
        os.chmod(path, SOCKET_MODE)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def signal_eventfd(fd: int) -> None:
    """Add 1 to an eventfd without ever blocking.

    A client's eventfd may be blocking, and a saturated blocking eventfd would stall the
    whole server on write.  So the fd is made non-blocking first (QEMU's eventfds already
    are: this changes nothing for them); a saturated one then raises BlockingIOError,
    which the caller counts as a failed delivery."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    os.eventfd_write(fd, 1)

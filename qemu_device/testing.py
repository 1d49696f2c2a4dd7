"""Fake vfio-user client (QEMU's realize and boot sequences) for tests and benches.

Concepts: a fake QEMU for tests and benchmarks. FakeQemu speaks the client side of
vfio-user over a real socket with QEMU's exact message sizes: one sendmsg per message
with its fds in SCM_RIGHTS, replies read the way QEMU reads them (a 16-byte recvmsg for
the header and its fds, then the payload), and it checks every reply as QEMU would:
matching id, reply type, size within QEMU's receive buffer (rsize), fds only on
GET_REGION_INFO. It is driven without threads: `pump` runs the server side until it
has consumed what was sent (EndpointHarness.pump or a Server's run_once).
"""

from __future__ import annotations

import array
import errno
import json
import os
import select
import socket
import struct
from dataclasses import dataclass
from typing import Callable

from .errors import DeviceError
from .handlers import Endpoint
from .protocol import (HEADER_SIZE, Command, DeviceInfo, DmaMap, DmaUnmap, Header,
                       HeaderFlags, IrqInfo, IrqSet, RegionAccess, RegionInfo,
                       pack_message)
from .transport import recv_with_fds

C = Command
CONFIG = 7
MSIX = 2
QEMU_CAPS = {"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1048576,
                              "pgsizes": 4096, "max_dma_maps": 65535,
                              "write_multiple": True,
                              "migration": {"pgsize": 4096, "max_bitmap_size": 268435456}}}


class ReplyError(AssertionError):
    """A reply QEMU would have rejected."""


@dataclass
class Reply:
    """One reply as the fake client read it: the header, the payload after it, the fds that
    came with it."""
    header: Header
    payload: bytes
    fds: list[int]

    @property
    def error(self) -> int:
        """The reply's errno if it has the ERROR flag, else 0."""
        return self.header.error if self.header.flags & HeaderFlags.VFIO_USER_F_ERROR else 0


def rsize(command: int, request_size: int, request_payload: bytes) -> int:
    """QEMU's receive-buffer size for the reply to a request (reference §2.2)."""
    if command == C.VFIO_USER_DEVICE_GET_REGION_INFO:
        return HEADER_SIZE + RegionInfo.unpack(request_payload).argsz
    if command == C.VFIO_USER_REGION_READ:
        return 32 + RegionAccess.unpack(request_payload).count
    if command == C.VFIO_USER_DEVICE_RESET:
        return HEADER_SIZE
    return request_size


class EndpointHarness:
    """A socketpair whose server end feeds an Endpoint: no threads, no Server."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.client_sock, self.server_sock = socket.socketpair(socket.AF_UNIX,
                                                               socket.SOCK_STREAM)
        self.server_sock.setblocking(False)
        self.eof = False

    def pump(self) -> None:
        """Run the endpoint on everything the client has sent so far, without blocking: feed
        each read (and its fds) in, send back the replies, and stop at EAGAIN.  At EOF the
        received fds are closed and ``eof`` is set; once the endpoint closes, the server
        side is shut down."""
        while True:
            try:
                data, fds = recv_with_fds(self.server_sock)
            except BlockingIOError:
                return
            if not data:
                for fd in fds:
                    os.close(fd)
                self.eof = True
                return
            for r in self.endpoint.receive_data(data, fds):
                self.server_sock.sendall(r)
            if self.endpoint.closed:
                self.server_sock.shutdown(socket.SHUT_RDWR)
                return

    def close(self) -> None:
        """Close both ends of the socket pair."""
        self.client_sock.close()
        self.server_sock.close()


class FakeQemu:
    """Client side; `pump` lets the server run until it has consumed its input."""

    def __init__(self, sock: socket.socket, pump: Callable[[], None]) -> None:
        self.sock = sock
        self.pump = pump
        self.next_id = 0
        self.max_fds = 8                # QEMU's default until VERSION says otherwise
        self.sock.settimeout(5.0)       # a missing reply fails the test, never hangs it

    # -- raw ---------------------------------------------------------------------------
    def send(self, command: int, payload: bytes = b"", fds=(), flags: int = 0,
             msg_id: int | None = None) -> int:
        """Send one message (one sendmsg, ``fds`` as SCM_RIGHTS) without waiting for a reply;
        ``msg_id`` defaults to the next id.  Returns the id used."""
        if msg_id is None:
            msg_id, self.next_id = self.next_id, (self.next_id + 1) & 0xFFFF
        self.send_raw(pack_message(msg_id, command, payload, flags=flags), fds)
        return msg_id

    def send_raw(self, data: bytes, fds=()) -> None:
        """Send ``data`` as is in one sendmsg, with ``fds`` as SCM_RIGHTS."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        n = self.sock.sendmsg([data], anc)
        assert n == len(data)

    def recv_reply(self) -> Reply:
        """Read one reply the way QEMU does: a header-sized recvmsg (with any fds), then the
        payload.  Blocks on the socket; raises ``ReplyError`` if the server closes mid-reply."""
        data, fds = recv_with_fds(self.sock, HEADER_SIZE)
        if len(data) < HEADER_SIZE:
            data += self._recv_exact(HEADER_SIZE - len(data))
        hdr = Header.unpack(data)
        payload = self._recv_exact(hdr.size - HEADER_SIZE) if hdr.size > HEADER_SIZE else b""
        return Reply(hdr, payload, fds)

    def _recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ReplyError("server closed the connection mid-reply")
            out += chunk
        return bytes(out)

    def no_data(self) -> bool:
        """True if the server sent nothing (checked without blocking)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable

    def request(self, command: int, payload: bytes = b"", fds=(), flags: int = 0,
                expect_error: int | None = None) -> Reply:
        """Send, let the server run, read the reply and check it as QEMU would."""
        msg_id = self.send(command, payload, fds, flags)
        self.pump()
        r = self.recv_reply()
        self.check_reply(r, msg_id, command, HEADER_SIZE + len(payload), payload)
        if expect_error is not None and r.error != expect_error:
            raise ReplyError(f"{C(command).short}: expected errno {expect_error}, "
                             f"got {r.error}")
        if expect_error is None and r.error:
            raise ReplyError(f"{C(command).short} failed with errno {r.error}")
        return r

    @staticmethod
    def check_reply(r: Reply, msg_id: int, command: int, size: int, payload: bytes) -> None:
        """Check reply ``r`` to the request ``msg_id``/``command`` of ``size`` bytes as QEMU
        would: same id, reply type, consistent size, no payload on an error, no larger than
        QEMU's receive buffer for that request, fds only on GET_REGION_INFO.  Raises
        ``ReplyError`` naming the first broken rule."""
        h = r.header
        if h.msg_id != msg_id:
            raise ReplyError(f"reply id {h.msg_id} for request {msg_id}")
        if h.flags & 0xF != HeaderFlags.VFIO_USER_F_TYPE_REPLY:
            raise ReplyError(f"reply type {h.flags & 0xF}")
        if h.size < HEADER_SIZE or h.size != HEADER_SIZE + len(r.payload):
            raise ReplyError(f"reply size {h.size}")
        if r.error and h.size != HEADER_SIZE:
            raise ReplyError("error reply with a payload")
        try:
            limit = rsize(command, size, payload) if len(payload) else size
        except struct.error:            # malformed request: QEMU never sends one
            limit = size
        if h.size > limit:
            raise ReplyError(f"{C(command).short} reply {h.size} > QEMU rsize {limit}")
        if r.fds and command != C.VFIO_USER_DEVICE_GET_REGION_INFO:
            raise ReplyError(f"unexpected fds in {C(command).short} reply")

    def posted(self, command: int, payload: bytes) -> None:
        """A NO_REPLY message; asserts the server answered nothing."""
        self.send(command, payload, flags=HeaderFlags.VFIO_USER_F_NO_REPLY)
        self.pump()
        if not self.no_data():
            raise ReplyError(f"server answered a NO_REPLY {C(command).short}")

    # -- messages as QEMU builds them ---------------------------------------------------
    def version(self) -> dict:
        """Negotiate the version with QEMU's capabilities; remember the server's
        ``max_msg_fds`` and return the server's JSON."""
        caps = json.dumps(QEMU_CAPS).encode() + b"\0"
        r = self.request(C.VFIO_USER_VERSION, b"\0\0\0\0" + caps)
        server = json.loads(r.payload[4:].split(b"\0", 1)[0])
        self.max_fds = server.get("capabilities", {}).get("max_msg_fds", 8)
        return server

    def dma_map(self, addr: int, size: int, offset: int = 0, flags: int = 3,
                fd: int | None = None, **kw) -> Reply:
        """DMA_MAP ``size`` bytes at IOVA ``addr`` from ``offset`` in ``fd`` (no fd if
        ``None``), ``flags`` 3 = read and write.  Extra keywords go to ``request``."""
        p = DmaMap(32, flags, offset, addr, size).pack()
        return self.request(C.VFIO_USER_DMA_MAP, p, [fd] if fd is not None else (), **kw)

    def dma_unmap(self, addr: int, size: int, flags: int = 0, **kw) -> Reply:
        """DMA_UNMAP ``size`` bytes at IOVA ``addr``; extra keywords go to ``request``."""
        return self.request(C.VFIO_USER_DMA_UNMAP, DmaUnmap(24, flags, addr, size).pack(),
                            **kw)

    def get_info(self) -> DeviceInfo:
        """DEVICE_GET_INFO: the device's ``DeviceInfo``."""
        r = self.request(C.VFIO_USER_DEVICE_GET_INFO, DeviceInfo(16, 0, 0, 0).pack())
        return DeviceInfo.unpack(r.payload)

    def region_info(self, index: int, **kw) -> RegionInfo | Reply:
        """GET_REGION_INFO of region ``index``: its ``RegionInfo``, or the error ``Reply`` when
        one was expected."""
        r = self.request(C.VFIO_USER_DEVICE_GET_REGION_INFO,
                         RegionInfo(32, 0, index, 0, 0, 0).pack(), **kw)
        return RegionInfo.unpack(r.payload) if not r.error else r

    def irq_info(self, index: int, **kw) -> IrqInfo | Reply:
        """GET_IRQ_INFO of IRQ ``index``: its ``IrqInfo``, or the error ``Reply`` when one was
        expected."""
        r = self.request(C.VFIO_USER_DEVICE_GET_IRQ_INFO, IrqInfo(16, 0, index, 0).pack(),
                         **kw)
        return IrqInfo.unpack(r.payload) if not r.error else r

    def read(self, region: int, offset: int, count: int, **kw) -> bytes:
        """REGION_READ ``count`` bytes at ``offset`` of ``region``: the bytes, or ``b""`` for an
        expected error reply.  Raises ``ReplyError`` if the reply carries another count."""
        r = self.request(C.VFIO_USER_REGION_READ,
                         RegionAccess(offset, region, count).pack(), **kw)
        if r.error:
            return b""
        if len(r.payload) != 16 + count:
            raise ReplyError(f"REGION_READ reply has {len(r.payload) - 16} bytes, not {count}")
        return r.payload[16:]

    def read32(self, region: int, offset: int) -> int:
        """The little-endian dword at ``offset`` of ``region``."""
        return int.from_bytes(self.read(region, offset, 4), "little")

    def write(self, region: int, offset: int, data: bytes, posted: bool = False,
              **kw) -> Reply | None:
        """REGION_WRITE ``data`` at ``offset`` of ``region``: the reply, or ``None`` when
        ``posted`` (sent with NO_REPLY, as QEMU posts BAR writes)."""
        p = RegionAccess(offset, region, len(data)).pack() + data
        if posted:
            self.posted(C.VFIO_USER_REGION_WRITE, p)
            return None
        return self.request(C.VFIO_USER_REGION_WRITE, p, **kw)

    def write32(self, region: int, offset: int, value: int, posted: bool = False) -> None:
        """Write the dword ``value`` at ``offset`` of ``region`` (posted if asked)."""
        self.write(region, offset, value.to_bytes(4, "little"), posted=posted)

    def set_irqs(self, index: int, flags: int, start: int, count: int, fds=(),
                 data: bytes = b"", **kw) -> Reply:
        """DEVICE_SET_IRQS on IRQ ``index`` for vectors ``start`` .. ``start+count-1`` with
        ``flags`` (``IrqSetFlags``), sending ``fds`` and ``data``."""
        p = IrqSet(20 + len(data), flags, index, start, count).pack() + data
        return self.request(C.VFIO_USER_DEVICE_SET_IRQS, p, fds, **kw)

    def reset(self, **kw) -> Reply:
        """DEVICE_RESET."""
        return self.request(C.VFIO_USER_DEVICE_RESET, **kw)

    # -- QEMU's sequences (reference §4) -----------------------------------------------
    def realize(self, ram_fd: int, ram_size: int) -> dict:
        """VERSION, the DMA_MAP burst, GET_INFO, region and irq infos, the config reads,
        ROM sizing, BAR type reads, MSI-X cap reads, pin read, machine reset."""
        facts: dict = {"caps": self.version()}
        self.dma_map(0, 0xA0000, 0, 3, ram_fd)
        self.dma_map(0xC0000, ram_size - 0xC0000, 0xC0000, 3, ram_fd)
        self.dma_map(0xFFFC0000, 0x40000, 0, 1, None)           # BIOS ROM, no fd
        facts["info"] = self.get_info()
        facts["regions"] = {i: self.region_info(i) for i in (0, 1, 2, 3, 4, 5, 7)}
        facts["err_irq"] = self.irq_info(3)
        facts["config"] = cfg = self.read(CONFIG, 0, 4096)
        self.read(CONFIG, 0x30, 4)
        self.write32(CONFIG, 0x30, 0xFFFFF800)
        facts["rom_sized"] = self.read32(CONFIG, 0x30)
        self.write32(CONFIG, 0x30, 0)
        facts["bar_types"] = {i: self.read32(CONFIG, 0x10 + 4 * i)
                              for i, r in facts["regions"].items() if i < 6 and r.size}
        cap = find_cap(cfg, 0x11)
        facts["msix_cap"] = cap
        facts["msix_flags"] = int.from_bytes(self.read(CONFIG, cap + 2, 2), "little")
        facts["msix_table"] = self.read32(CONFIG, cap + 4)
        facts["msix_pba"] = self.read32(CONFIG, cap + 8)
        facts["msix_irq"] = self.irq_info(MSIX)
        facts["pin"] = self.read(CONFIG, 0x3D, 1)[0]
        self.machine_reset()
        return facts

    def machine_reset(self) -> None:
        """What QEMU does to the device on a machine reset: clear the Command register's I/O,
        memory, bus-master and INTx-disable bits, DEVICE_RESET, read the interrupt pin, zero
        the six BARs."""
        cmd = int.from_bytes(self.read(CONFIG, 0x04, 2), "little")
        self.write(CONFIG, 0x04, (cmd & ~0x407).to_bytes(2, "little"))
        self.reset()
        self.read(CONFIG, 0x3D, 1)
        for i in range(6):
            self.write32(CONFIG, 0x10 + 4 * i, 0)

    def enable_msix(self, cap: int) -> None:
        """Linux msix_capability_init as QEMU forwards it (TCG)."""
        self.write(CONFIG, 0x04, (0x0006).to_bytes(2, "little"))      # MEM | MASTER
        self.write(CONFIG, cap + 2, (0xC000).to_bytes(2, "little"))   # ENABLE | MASKALL
        self.set_irqs(MSIX, 0x24, 0, 1)                               # no_vec: no fds
        self.write(CONFIG, 0x04, (0x0406).to_bytes(2, "little"))      # + INTX_DISABLE
        self.write(CONFIG, cap + 2, (0x8000).to_bytes(2, "little"))   # clear MASKALL

    def use_vector(self, nr: int, fd: int) -> None:
        """A vector's first use (or re-use) on the dynamic path: one SET_IRQS with its fd.
        This is also all QEMU 11.1.3 sends when the server advertises MASKABLE: it keeps
        masking in its own table and never sends MASK/UNMASK for MSI-X (checked with
        -trace vfio_user_set_irqs, vfio_msix_*); a release sends nothing under TCG."""
        self.set_irqs(MSIX, 0x24, nr, 1, [fd])

    def disable_msix(self) -> None:
        """SET_IRQS NONE|TRIGGER count 0: every MSI-X eventfd dropped."""
        self.set_irqs(MSIX, 0x21, 0, 0)

    def noresize_grow(self, used: dict[int, int]) -> list[tuple[int, int, int]]:
        """QEMU 11.1.3's NORESIZE growth when a vector beyond nr_vectors is first used
        (observed with -trace vfio_user_set_irqs): disable all (0x21, 0, 0), then
        0x24 over 0..max(used) in runs: a run of used vectors carries their fds, a run
        of unused ones none, each run cut into messages of at most max_msg_fds vectors.
        ``used`` maps vector -> eventfd (QEMU re-sends the same eventfds each time).
        Returns the (start, count, nfds) of the messages sent."""
        self.disable_msix()
        sent = []
        nr_vectors = max(used) + 1
        v = 0
        while v < nr_vectors:
            with_fd = v in used
            end = v
            while end < nr_vectors and (end in used) == with_fd and end - v < self.max_fds:
                end += 1
            fds = [used[i] for i in range(v, end)] if with_fd else []
            self.set_irqs(MSIX, 0x24, v, end - v, fds)
            sent.append((v, end - v, len(fds)))
            v = end
        return sent

    def mask_vectors(self, start: int, count: int = 1, unmask: bool = False,
                     which: bytes | None = None, **kw) -> Reply:
        """Per-vector SET_IRQS MASK (0x09) / UNMASK (0x11), or with DATA_BOOL ``which``
        (0x0A / 0x12).  The vfio-user spec's form; QEMU's dropped "per-IRQ MSI-X
        masking" patch sent NONE|MASK on release and NONE|UNMASK on re-use.  QEMU
        11.1.3 sends neither for MSI-X."""
        action = 0x10 if unmask else 0x08
        dtype = 0x02 if which is not None else 0x01
        return self.set_irqs(MSIX, action | dtype, start, count, data=which or b"", **kw)


class FakeWindow:
    """A FakeFdPort mapping: a slice of a fake memory file, shared with it."""

    def __init__(self, data: bytearray, offset: int, size: int, writable: bool) -> None:
        self._data, self._offset, self._size, self.writable = data, offset, size, writable
        self.closed = False

    def _span(self, index: slice) -> slice:
        if self.closed:
            raise ValueError("mmap closed or invalid")
        start, stop, _ = index.indices(self._size)
        return slice(self._offset + start, self._offset + stop)

    def __getitem__(self, index: slice) -> bytes:
        return bytes(self._data[self._span(index)])

    def __setitem__(self, index: slice, data: bytes) -> None:
        if not self.writable:
            raise TypeError("mmap can't modify a readonly memory map.")
        span = self._span(index)
        if span.stop - span.start != len(data):
            raise IndexError("mmap slice assignment is wrong size")
        self._data[span] = data

    def close(self) -> None:
        """Mark the window unmapped (``FakeFdPort.live_windows`` stops counting it)."""
        self.closed = True


class FakeFdPort:
    """The fd seam (``fdport.FdPort``) without the OS, for unit tests.

    fds are numbers it hands out (``eventfd()``, ``memfd(size)``, ``other()``), from
    1000 up so they never collide with a real fd.  It keeps what the core did to them:
    ``signals[fd]`` (eventfd counters; ``take(fd)`` reads and clears one like
    ``eventfd_read``), ``closed`` (in order), ``windows`` (live mappings) and
    ``problems`` (a close or signal of an fd that is not open: a double close is a bug).
    ``fail_signal`` holds eventfds whose next signals fail with EAGAIN."""

    def __init__(self) -> None:
        self._next = 1000
        self.kinds: dict[int, str] = {}
        self.files: dict[int, bytearray] = {}
        self.open: set[int] = set()
        self.closed: list[int] = []
        self.signals: dict[int, int] = {}
        self.windows: list[FakeWindow] = []
        self.fail_signal: set[int] = set()
        self.problems: list[str] = []

    def _new(self, kind: str) -> int:
        fd, self._next = self._next, self._next + 1
        self.kinds[fd] = kind
        self.open.add(fd)
        return fd

    def eventfd(self) -> int:
        """A new open fake eventfd, its signal count at 0."""
        fd = self._new("eventfd")
        self.signals[fd] = 0
        return fd

    def memfd(self, size: int, data: bytes = b"") -> int:
        """A new open fake memory file of ``size`` bytes starting with ``data``."""
        fd = self._new("memfd")
        self.files[fd] = bytearray(data.ljust(size, b"\0"))
        return fd

    def other(self) -> int:
        """A new open fd that is neither an eventfd nor a memory file (a socket)."""
        return self._new("socket")

    def take(self, fd: int) -> int:
        """The number of signals eventfd ``fd`` received since the last take; resets it to 0."""
        n, self.signals[fd] = self.signals[fd], 0
        return n

    # -- the FdPort contract ------------------------------------------------------------
    def close(self, fd: int) -> None:
        """Close ``fd``; closing an fd that is not open is recorded in ``problems``."""
        if fd not in self.open:
            self.problems.append(f"close of fd {fd}, which is not open")
            return
        self.open.discard(fd)
        self.closed.append(fd)

    def is_eventfd(self, fd: int) -> bool:
        """Whether ``fd`` is an open fake eventfd."""
        return fd in self.open and self.kinds.get(fd) == "eventfd"

    def signal(self, fd: int) -> None:
        """Count one signal on eventfd ``fd``.  An fd that is not an open eventfd is recorded
        in ``problems`` and raises ``OSError`` (EBADF); an fd in ``fail_signal`` raises
        ``OSError`` (EAGAIN)."""
        if not self.is_eventfd(fd):
            self.problems.append(f"signal of fd {fd}, which is not an open eventfd")
            raise OSError(errno.EBADF, "Bad file descriptor")
        if fd in self.fail_signal:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        self.signals[fd] += 1

    def map_memory(self, fd: int, offset: int, size: int, readable: bool,
                   writable: bool) -> FakeWindow:
        """A ``FakeWindow`` onto ``size`` bytes at ``offset`` of fake memory file ``fd``.
        Raises ``DeviceError`` (EINVAL) if ``fd`` is not an open memory file or the range
        passes its end."""
        if fd not in self.open or self.kinds.get(fd) != "memfd":
            raise DeviceError("DMA map fd is not a memory file", errno=errno.EINVAL)
        data = self.files[fd]
        if offset + size > len(data):
            raise DeviceError(f"DMA map {offset:#x}+{size:#x} beyond the file "
                              f"({len(data):#x} bytes)", errno=errno.EINVAL)
        w = FakeWindow(data, offset, size, writable)
        self.windows.append(w)
        return w

    def live_windows(self) -> int:
        """How many windows are mapped and not yet closed."""
        return sum(not w.closed for w in self.windows)


def find_cap(config: bytes, cap_id: int) -> int:
    """The offset of capability ``cap_id`` in ``config`` (following the list from 0x34,
    at most 48 steps); raises ``ReplyError`` if it is not there."""
    pos = config[0x34]
    seen = 0
    while pos and seen < 48:
        if config[pos] == cap_id:
            return pos
        pos = config[pos + 1]
        seen += 1
    raise ReplyError(f"capability {cap_id:#x} not found")


def _fd_table() -> dict[int, str]:
    table = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:          # the listing's own fd, or one closed meanwhile
            pass
    return table


class FdWatch:
    """The fds the code under test opened or closed since the watch began.

    Counting every fd in the process is wrong: an fd that another part of the process
    owns (a pipe the garbage collector closes later, a logging file) changes the count
    without the code under test doing anything.  A watch compares fd numbers *and*
    what they point at, so an fd number freed by someone else and reused by the code
    under test still counts as opened."""

    def __init__(self) -> None:
        self.before = _fd_table()

    def opened(self) -> dict[int, str]:
        """fds open now that were not open (or pointed elsewhere) when the watch began."""
        return {fd: target for fd, target in _fd_table().items()
                if self.before.get(fd) != target}

    def closed(self) -> dict[int, str]:
        """fds open when the watch began that are closed (or reused) now."""
        now = _fd_table()
        return {fd: target for fd, target in self.before.items() if now.get(fd) != target}

"""The device server: one epoll loop over the vfio-user and control sockets.

Concepts: the server process's one loop.  A single epoll serves the vfio-user listening
socket, the one vfio-user client (one at a time: the listener is unregistered while a
client is connected, so the next client waits in the backlog), the control listening
socket and its clients, timers (delayed raises) and a signal wake-up pipe.  Being
single-threaded, a control ``raise`` always sees a consistent eventfd table: no lock is
needed against SET_IRQS replacing fds.

Nothing a peer does may stop the loop, and every resource a peer can make it hold is
bounded (``Limits``): the number of control clients, the output queued for a client that
does not read, the delayed-raise timers, the time a vfio-user client may take to finish
a message (or to send VERSION), the fds that may wait for an incomplete message.  An
accept that fails for lack of fds (EMFILE/ENFILE) is logged and the pending connection
refused (a reserve fd is given up for the moment it takes), and the loop goes on.  A bug
in a handler costs the client that triggered it, never the server; it is logged with its
traceback.  Eventfd writes go through the device's fd port (``fdio.OsFdPort.signal``, which uses
``transport.signal_eventfd``) and never block.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import resource
import select
import signal
import socket
import time
from dataclasses import asdict, dataclass
from typing import Callable

from msixlab_common import jsonlines

from .control import ControlContext, ControlSession
from .connection import ConnState
from .device.nic import Device
from .eventlog import EventBus
from .fdio import close_fds
from .handlers import Endpoint
from .transport import OutBuffer, listen_unix, recv_chunk

log = logging.getLogger(__name__)


_R = select.EPOLLIN
_RW = select.EPOLLIN | select.EPOLLOUT
#: epoll's timeout is a C int of milliseconds: never ask for more than this many seconds.
MAX_POLL_S = 3600.0
_FD_SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_PAUSE_S = 0.5               # a listener that cannot accept rests this long


@dataclass
class Limits:
    """What one peer can make the server hold.  Seconds of 0 mean no limit."""

    max_control_clients: int = 16
    control_output: int = 4 << 20      # bytes queued for a control client that does not read
    client_output: int = 64 << 20      # bytes queued for a vfio-user client that does not read
    max_timers: int = 4096             # delayed raises waiting
    message_timeout: float = 30.0      # to finish a message once begun, and to send VERSION
    idle_timeout: float = 0.0          # with nothing under way (QEMU may idle: off)
    max_fd_dma_maps: int | None = None  # DMA maps holding an fd; None: from RLIMIT_NOFILE


def fd_dma_map_budget(vectors: int, limits: Limits) -> int:
    """DMA maps with an fd the server may hold: what RLIMIT_NOFILE leaves after one
    eventfd per vector, the control clients and a margin (at least 8)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(8, soft - vectors - limits.max_control_clients - 64)


class _Poller:
    """epoll with a callback per fd (leaner than selectors on the hot path)."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.map: dict[int, tuple[object, Callable]] = {}

    def register(self, obj, events: int, cb: Callable) -> None:
        fd = obj.fileno()
        self.ep.register(fd, events)
        self.map[fd] = (obj, cb)

    def modify(self, obj, events: int, cb: Callable) -> None:
        fd = obj.fileno()
        self.ep.modify(fd, events)
        self.map[fd] = (obj, cb)

    def unregister(self, obj) -> None:
        fd = obj.fileno()
        if self.map.pop(fd, None) is not None:
            self.ep.unregister(fd)

    def close(self) -> None:
        self.ep.close()


class _Client:
    """The connected vfio-user client."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, number: int,
                 limit: int, now: float) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.out = OutBuffer(sock, limit)
        self.number = number
        self.log = log.getChild(f"client{number}")
        self.since = now                   # connected, or the start of a message
        self.partial = False               # a message is under way
        self.last_input = self.since


class _Ctl:
    def __init__(self, sock: socket.socket, session: ControlSession, out: OutBuffer):
        self.sock, self.session, self.out = sock, session, out


class Server:
    """The device server: bind(), then serve_forever() (or run_once() from a test)."""

    def __init__(self, device: Device, socket_path: str, control_path: str | None = None,
                 log_path: str | None = None, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.clock = clock                  # monotonic seconds (a test may drive it)
        self.socket_path = socket_path
        self.control_path = control_path
        self.limits = limits or Limits()
        self.bus = EventBus(log_path)
        self.bus.on_change = self._update_sinks
        self.sel = _Poller()
        self.listener: socket.socket | None = None
        self.ctl_listener: socket.socket | None = None
        self.client: _Client | None = None
        self.ctls: dict[int, _Ctl] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._clients_served = 0
        self._doomed: set[socket.socket] = set()     # control clients to drop this round
        self._reserve: int | None = None
        self.counters = {"control_refused": 0, "control_dropped": 0, "accept_failed": 0,
                         "timers_overflowed": 0, "clients_timed_out": 0,
                         "fds_truncated": 0, "internal_errors": 0}
        self._stop = False
        self._wake_r = self._wake_w = None
        device.msix.scheduler = self.call_later
        device.dma.max_fd_maps = (self.limits.max_fd_dma_maps if self.limits.max_fd_dma_maps
                                  else fd_dma_map_budget(device.msix.n, self.limits))
        self._update_sinks()

    # -- setup ------------------------------------------------------------------------
    def bind(self) -> None:
        """Listen on both sockets (before the ready line is printed)."""
        self.listener = listen_unix(self.socket_path)
        self.sel.register(self.listener, _R, self._accept)
        if self.control_path:
            self.ctl_listener = listen_unix(self.control_path, 16)
            self.sel.register(self.ctl_listener, _R, self._accept_ctl)
        self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def install_signal_handlers(self) -> None:
        """Make SIGTERM, SIGINT and SIGHUP stop the loop cleanly: each sets the stop flag and
        wakes the epoll through a socketpair (``signal.set_wakeup_fd``).  Call from the main
        thread, before ``serve_forever``."""
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self.sel.register(self._wake_r, _R, self._drain_wakeup)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        log.info("signal %d: stopping", signum)
        self._stop = True

    def _drain_wakeup(self, _sock) -> None:
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass

    def _update_sinks(self) -> None:
        sink = self.bus.sink()
        self.device.msix.sink = sink
        if self.client is not None:
            self.client.endpoint.sink = sink

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run fn after delay seconds.  Past ``max_timers`` waiting, fn runs now (a
        delayed raise is delivered early rather than lost) and the overflow is counted."""
        if len(self._timers) >= self.limits.max_timers:
            self.counters["timers_overflowed"] += 1
            if self.counters["timers_overflowed"] == 1:
                log.warning("%d timers waiting: running the next ones at once",
                            len(self._timers))
            self._guarded(fn, "timer")
            return
        delay = min(max(delay, 0.0), MAX_POLL_S)
        heapq.heappush(self._timers, (self.clock() + delay, next(self._seq), fn))

    def stop(self) -> None:
        """Ask the loop to end after the current round (safe from a signal handler)."""
        self._stop = True

    # -- loop ---------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run ``run_once`` until ``stop()``: one vfio-user client at a time (the next waits
        in the backlog), any number of control clients up to the limit."""
        try:
            while not self._stop:
                self.run_once(None)
        finally:
            self.close()

    def run_once(self, timeout: float | None = 0.0) -> None:
        """Wait at most ``timeout`` seconds (None: until something is due) for socket
        events, handle them, then run the timers and deadlines that are due."""
        wake = self._next_wake()
        if wake is not None:
            wait = max(0.0, wake - self.clock())
            timeout = wait if timeout is None else min(timeout, wait)
        if timeout is not None and timeout > MAX_POLL_S:
            timeout = MAX_POLL_S
        smap = self.sel.map
        for fd, events in self.sel.ep.poll(-1 if timeout is None else timeout):
            entry = smap.get(fd)
            if entry is None:           # dropped by an earlier callback of this round
                continue
            if events & select.EPOLLOUT:
                self._writable(entry[0])
                entry = smap.get(fd)
                if entry is None:
                    continue
            if events & ~select.EPOLLOUT:
                entry[1](entry[0])
        while self._doomed:
            self._drop_ctl(self._doomed.pop())
        if self._timers:
            now = self.clock()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._guarded(fn, "timer")
        deadline = self._client_deadline()
        if deadline is not None and self.clock() >= deadline:
            self._client_timed_out()

    def _next_wake(self) -> float | None:
        deadline = self._client_deadline()
        if not self._timers:
            return deadline
        first = self._timers[0][0]
        return first if deadline is None or first < deadline else deadline

    def _guarded(self, fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except Exception:                   # a bug must never stop the loop
            self.counters["internal_errors"] += 1
            log.exception("internal error in a %s", what)

    # -- vfio-user client -------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        sock = self._accept_one(listener, "vfio-user")
        if sock is None:
            return
        self._clients_served += 1
        ep = Endpoint(self.device, self.bus.sink())
        self.client = _Client(sock, ep, self._clients_served, self.limits.client_output,
                              self.clock())
        self.sel.unregister(listener)
        self.sel.register(sock, _R, self._client_readable)
        self.client.log.info("client connected")
        if self.bus.active:
            self.bus.emit({"event": "connect", "client": self._clients_served})

    def _client_readable(self, sock: socket.socket) -> None:
        client = self.client
        try:
            data, fds, truncated = recv_chunk(sock)
        except BlockingIOError:
            return
        except OSError as err:
            client.log.info("receive failed: %s", err)
            self._drop_client("error")
            return
        if truncated:                       # fds were lost: the stream cannot be trusted
            close_fds(fds)
            self.counters["fds_truncated"] += 1
            client.log.error("the kernel dropped fds sent with a message (more than we "
                             "take, or this process has no fd left): dropping the client")
            self._drop_client("fds truncated")
            return
        if not data:
            close_fds(fds)
            self._drop_client("eof")
            return
        try:
            replies = client.endpoint.receive_data(data, fds)
        except Exception:                   # a bug must cost the client, not the server
            self.counters["internal_errors"] += 1
            client.log.exception("internal error; dropping the client")
            self._drop_client("internal error")
            return
        self._note_progress(client)
        try:
            for r in replies:
                client.out.send(r)
        except (OSError, BufferError) as err:
            client.log.info("send failed: %s", err)
            self._drop_client("error")
            return
        if client.out:
            self.sel.modify(sock, _RW, self._client_readable)
        if client.endpoint.closed:
            self._drop_client("protocol error")

    def _note_progress(self, client: _Client) -> None:
        partial = client.endpoint.conn.has_partial()
        if partial and not client.partial:
            client.since = self.clock()     # a message begins: its clock starts
        client.partial = partial
        if self.limits.idle_timeout:
            client.last_input = self.clock()

    def _client_deadline(self) -> float | None:
        """When the connected client will have taken too long, or None."""
        c, lim = self.client, self.limits
        if c is None:
            return None
        deadline = None
        if lim.message_timeout and (c.partial or
                                    c.endpoint.conn.state is ConnState.AWAIT_VERSION):
            deadline = c.since + lim.message_timeout
        if lim.idle_timeout and not c.partial:
            idle = c.last_input + lim.idle_timeout
            deadline = idle if deadline is None else min(deadline, idle)
        return deadline

    def _client_timed_out(self) -> None:
        c = self.client
        if c.partial:
            why = f"stalled in the middle of a message for {self.limits.message_timeout:g} s"
        elif c.endpoint.conn.state is ConnState.AWAIT_VERSION:
            why = f"sent no VERSION within {self.limits.message_timeout:g} s"
        else:
            why = f"idle for {self.limits.idle_timeout:g} s"
        self.counters["clients_timed_out"] += 1
        c.log.warning("client %s: disconnecting it", why)
        self._drop_client(f"timeout: {why}")

    def _writable(self, sock) -> None:
        if self.client is not None and sock is self.client.sock:
            out, cb = self.client.out, self._client_readable
        else:
            ctl = self.ctls.get(sock.fileno())
            if ctl is None:
                return
            out, cb = ctl.out, self._ctl_readable
        try:
            if out.flush():
                self.sel.modify(sock, _R, cb)
        except OSError:
            if cb == self._client_readable:
                self._drop_client("error")
            else:
                self._drop_ctl(sock)

    def _drop_client(self, why: str) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.out.flush()
        except OSError:
            pass
        self.sel.unregister(client.sock)
        client.sock.close()
        maps, fds = client.endpoint.close()
        client.log.info("client gone (%s): dropped %d DMA maps, %d eventfds", why, maps, fds)
        if self.bus.active:
            self.bus.emit({"event": "disconnect", "client": client.number, "reason": why,
                           "dma_maps_dropped": maps, "eventfds_closed": fds})
        if self.listener is not None:
            self.sel.register(self.listener, _R, self._accept)

    # -- accepting under fd pressure ------------------------------------------------------
    def _accept_one(self, listener: socket.socket, what: str) -> socket.socket | None:
        """Accept one connection, non-blocking; None if there was none or it had to be
        refused (no fd left: logged, counted, and the loop goes on)."""
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return None
        except OSError as err:
            if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                return None
            self.counters["accept_failed"] += 1
            log.error("%s: cannot accept a connection: %s; refusing it and serving on",
                      what, err)
            self._refuse(listener, what)
            return None
        sock.setblocking(False)
        return sock

    def _refuse(self, listener: socket.socket, what: str) -> None:
        """Take the pending connection off the backlog and close it, using the reserve
        fd for the moment it takes; if even that fails, rest the listener a while."""
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
            try:
                sock, _ = listener.accept()
                sock.close()
                return
            except OSError:
                pass
            finally:
                try:
                    self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    self._reserve = None
        if self.sel.map.get(listener.fileno(), (None,))[0] is listener:
            cb = self.sel.map[listener.fileno()][1]
            self.sel.unregister(listener)
            log.warning("%s: not accepting for %g s", what, _PAUSE_S)
            heapq.heappush(self._timers, (self.clock() + _PAUSE_S, next(self._seq),
                                          lambda: self._resume(listener, cb)))

    def _resume(self, listener: socket.socket, cb: Callable) -> None:
        if listener.fileno() < 0 or listener.fileno() in self.sel.map:
            return
        if cb == self._accept and self.client is not None:
            return                          # re-registered when the client goes
        self.sel.register(listener, _R, cb)

    # -- control clients ----------------------------------------------------------------
    def _server_state(self) -> dict:
        c = self.client
        return {"client_connected": c is not None, "clients_served": self._clients_served,
                "connection": ({"state": c.endpoint.conn.state.value, **c.endpoint.counts}
                               if c else None),
                "control_clients": len(self.ctls), "event_log": self.bus.stats(),
                "limits": asdict(self.limits), "server": dict(self.counters),
                "pid": os.getpid()}

    def _accept_ctl(self, listener: socket.socket) -> None:
        sock = self._accept_one(listener, "control")
        if sock is None:
            return
        if len(self.ctls) >= self.limits.max_control_clients:
            self._refuse_ctl(sock)
            return
        out = OutBuffer(sock, limit=self.limits.control_output)
        key = sock.fileno()

        def push(data: bytes) -> None:
            if sock in self._doomed:
                return
            try:
                out.send(data)
            except (OSError, BufferError) as err:
                log.warning("control client %d: %s; disconnecting it", key, err)
                self.counters["control_dropped"] += 1
                self._doomed.add(sock)
                return
            if out:
                self.sel.modify(sock, _RW, self._ctl_readable)

        ctx = ControlContext(self.device, self.bus, self._server_state)
        self.ctls[key] = _Ctl(sock, ControlSession(ctx, key, push), out)
        self.sel.register(sock, _R, self._ctl_readable)

    def _refuse_ctl(self, sock: socket.socket) -> None:
        self.counters["control_refused"] += 1
        n = self.limits.max_control_clients
        log.warning("refusing a control client: %d are connected (the limit)", n)
        line = jsonlines.dumps({"id": None, "ok": False, "error": {
            "type": "ControlError", "errno": errno.EUSERS, "code": "EUSERS",
            "message": f"too many control clients ({n} connected, the limit)"}})
        try:
            sock.send(line)
        except OSError:
            pass
        sock.close()

    def _ctl_readable(self, sock: socket.socket) -> None:
        ctl = self.ctls.get(sock.fileno())
        if ctl is None or sock in self._doomed:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_ctl(sock)
            return
        try:
            reply = ctl.session.feed(data)
        except Exception:                   # a bug must cost the client, not the server
            self.counters["internal_errors"] += 1
            log.exception("control client %d: internal error; disconnecting it",
                          sock.fileno())
            self._drop_ctl(sock)
            return
        if reply:
            ctl.session.push(reply)

    def _drop_ctl(self, sock: socket.socket) -> None:
        self._doomed.discard(sock)
        ctl = self.ctls.pop(sock.fileno(), None) if sock.fileno() >= 0 else None
        if ctl is None:
            return
        ctl.session.close()
        self.sel.unregister(sock)
        sock.close()

    # -- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        """Drop every client, unlink both sockets, release every fd the server holds."""
        self._drop_client("server stopping")
        for ctl in list(self.ctls.values()):
            self._drop_ctl(ctl.sock)
        for sock, path in ((self.listener, self.socket_path),
                           (self.ctl_listener, self.control_path)):
            if sock is not None:
                self.sel.unregister(sock)
                sock.close()
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self.listener = self.ctl_listener = None
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        self.device.msix.deassign_all()
        self.device.dma.clear()
        self.bus.close()
        if self._wake_r is not None:
            signal.set_wakeup_fd(-1)
            self._wake_r.close()
            self._wake_w.close()
            self._wake_r = self._wake_w = None
        self.sel.close()

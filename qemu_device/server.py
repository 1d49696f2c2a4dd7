# Concepts: the server process's one loop. A single selector serves the vfio-user
# listening socket, the one vfio-user client (one at a time: the listener is unregistered
# while a client is connected, so the next client waits in the backlog), the control
# listening socket and its clients, timers (delayed raises) and a signal wake-up pipe.
# Being single-threaded, a control `raise` always sees a consistent eventfd table: no
# lock is needed against SET_IRQS replacing fds.
"""The device server: selector loop over vfio-user and control sockets."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import signal
import socket
import time
from typing import Callable

from .control import ControlContext, ControlSession
from .device.nic import Device
from .eventlog import EventBus
from .fdio import close_fds
from .handlers import Endpoint
from .transport import OutBuffer, listen_unix, recv_with_fds

log = logging.getLogger(__name__)


_R = select.EPOLLIN
_RW = select.EPOLLIN | select.EPOLLOUT


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

    def __init__(self, sock: socket.socket, endpoint: Endpoint, number: int) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.out = OutBuffer(sock)
        self.number = number
        self.log = log.getChild(f"client{number}")


class _Ctl:
    def __init__(self, sock: socket.socket, session: ControlSession, out: OutBuffer):
        self.sock, self.session, self.out = sock, session, out


class Server:
    def __init__(self, device: Device, socket_path: str, control_path: str | None = None,
                 log_path: str | None = None) -> None:
        self.device = device
        self.socket_path = socket_path
        self.control_path = control_path
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
        self._stop = False
        self._wake_r = self._wake_w = None
        device.msix.scheduler = self.call_later
        self._update_sinks()

    # -- setup ------------------------------------------------------------------------
    def bind(self) -> None:
        """Listen on both sockets (before the ready line is printed)."""
        self.listener = listen_unix(self.socket_path)
        self.sel.register(self.listener, _R, self._accept)
        if self.control_path:
            self.ctl_listener = listen_unix(self.control_path, 16)
            self.sel.register(self.ctl_listener, _R, self._accept_ctl)

    def install_signal_handlers(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self.sel.register(self._wake_r, _R, self._drain_wakeup)
        for sig in (signal.SIGTERM, signal.SIGINT):
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
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def stop(self) -> None:
        self._stop = True

    # -- loop ---------------------------------------------------------------------------
    def serve_forever(self) -> None:
        try:
            while not self._stop:
                self.run_once(None)
        finally:
            self.close()

    def run_once(self, timeout: float | None = 0.0) -> None:
        if self._timers:
            wait = max(0.0, self._timers[0][0] - time.monotonic())
            timeout = wait if timeout is None else min(timeout, wait)
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
        if self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                fn()

    # -- vfio-user client -------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        self._clients_served += 1
        ep = Endpoint(self.device, self.bus.sink())
        self.client = _Client(sock, ep, self._clients_served)
        self.sel.unregister(listener)
        self.sel.register(sock, _R, self._client_readable)
        self.client.log.info("client connected")
        if self.bus.active:
            self.bus.emit({"event": "connect", "client": self._clients_served})

    def _client_readable(self, sock: socket.socket) -> None:
        client = self.client
        try:
            data, fds = recv_with_fds(sock)
        except BlockingIOError:
            return
        except OSError as err:
            client.log.info("receive failed: %s", err)
            self._drop_client("error")
            return
        if not data:
            close_fds(fds)
            self._drop_client("eof")
            return
        try:
            replies = client.endpoint.receive_data(data, fds)
        except Exception:                   # a bug must cost the client, not the server
            client.log.exception("internal error; dropping the client")
            self._drop_client("internal error")
            return
        try:
            for r in replies:
                client.out.send(r)
        except (OSError, BufferError) as err:
            client.log.info("send failed: %s", err)
            self._drop_client("error")
            return
        if client.out:
            self.sel.modify(sock, _RW,
                            self._client_readable)
        if client.endpoint.closed:
            self._drop_client("protocol error")

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

    # -- control clients ----------------------------------------------------------------
    def _server_state(self) -> dict:
        c = self.client
        return {"client_connected": c is not None, "clients_served": self._clients_served,
                "connection": ({"state": c.endpoint.conn.state.value, **c.endpoint.counts}
                               if c else None),
                "pid": os.getpid()}

    def _accept_ctl(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        out = OutBuffer(sock, limit=16 << 20)
        key = sock.fileno()

        def push(data: bytes) -> None:
            try:
                out.send(data)
            except (OSError, BufferError):
                self.call_later(0, lambda: self._drop_ctl(sock))
                return
            if out:
                self.sel.modify(sock, _RW,
                                self._ctl_readable)

        ctx = ControlContext(self.device, self.bus, self._server_state)
        self.ctls[key] = _Ctl(sock, ControlSession(ctx, key, push), out)
        self.sel.register(sock, _R, self._ctl_readable)

    def _ctl_readable(self, sock: socket.socket) -> None:
        ctl = self.ctls.get(sock.fileno())
        if ctl is None:
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
        reply = ctl.session.feed(data)
        if reply:
            ctl.session.push(reply)

    def _drop_ctl(self, sock: socket.socket) -> None:
        ctl = self.ctls.pop(sock.fileno(), None)
        if ctl is None:
            return
        ctl.session.close()
        self.sel.unregister(sock)
        sock.close()

    # -- teardown -------------------------------------------------------------------------
    def close(self) -> None:
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
        self.device.msix.deassign_all()
        self.device.dma.clear()
        self.bus.close()
        if self._wake_r is not None:
            signal.set_wakeup_fd(-1)
            self._wake_r.close()
            self._wake_w.close()
            self._wake_r = self._wake_w = None
        self.sel.close()

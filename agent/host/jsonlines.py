"""A JSON-lines client over a UNIX stream socket, with bounded waits.

Concepts: both the device server's control channel and the guest agent speak one JSON
object per line, replies carrying the request's ``id``; anything without an ``id`` that
matches no request is an *event* and is queued.  Every wait has a deadline and names what
it waited for.  Traces go to a DEBUG child logger per connection (``-->``/``<--``).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import deque
from pathlib import Path

from .errors import HostError, WaitTimeout

log = logging.getLogger(__name__)


class JsonLinesClient:
    def __init__(self, path: Path, name: str):
        self.path = Path(path)
        self.name = name
        self.log = log.getChild(name)
        self._sock: socket.socket | None = None
        self._buf = b""
        self._next_id = 1
        self.events: deque[dict] = deque()

    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                self._sock = sock
                return
            except OSError as err:
                sock.close()
                if time.monotonic() > deadline:
                    raise WaitTimeout(f"{self.name} socket {self.path}", timeout, str(err)) from err
                time.sleep(0.05)

    def abort(self) -> None:
        """Release, from another thread, whoever is blocked reading: they see EOF."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, obj: dict) -> None:
        if self._sock is None:
            raise HostError(f"{self.name}: not connected")
        self.log.debug("--> %s", obj)
        self._sock.sendall(json.dumps(obj).encode() + b"\n")

    def _read_message(self, deadline: float, what: str) -> dict:
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(what, 0.0, f"on {self.path}")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                raise HostError(f"{self.name} closed the connection while we waited for {what}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError as err:
            raise HostError(f"{self.name} sent a line that is not JSON: {line[:200]!r}") from err
        self.log.debug("<-- %s", message)
        return message

    def request(self, payload: dict, timeout: float) -> dict:
        """Send ``payload`` with a fresh id and return the reply with that id."""
        req_id = self._next_id
        self._next_id += 1
        self.send({"id": req_id, **payload})
        deadline = time.monotonic() + timeout
        what = f"{self.name}'s reply to {payload.get('cmd')!r} (id {req_id})"
        while True:
            try:
                message = self._read_message(deadline, what)
            except WaitTimeout:
                raise WaitTimeout(what, timeout) from None
            if message.get("id") == req_id and "ok" in message:
                return message
            self.events.append(message)

    def wait_event(self, name: str, timeout: float) -> dict:
        """The next event called ``name`` (queued or arriving within ``timeout``)."""
        deadline = time.monotonic() + timeout
        what = f"the {name!r} event from {self.name}"
        while True:
            for event in list(self.events):
                if event.get("event") == name:
                    self.events.remove(event)
                    return event
            try:
                self.events.append(self._read_message(deadline, what))
            except WaitTimeout:
                raise WaitTimeout(what, timeout) from None

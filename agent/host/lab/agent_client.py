"""A JSON-lines client over a UNIX stream socket, with bounded waits.

Concepts: both the device server's control channel and the guest agent speak one JSON
object per line, replies carrying the request's ``id``; anything without an ``id`` that
matches no request is an *event* and is queued.  Framing and decoding are the shared
codec's (``msixlab_common.jsonlines``: bounded lines and nesting, no NaN/Infinity); this
module adds the socket and the waits.  Every wait has a deadline and names what it waited
for.  Traces go to a DEBUG child logger per connection (``-->``/``<--``).
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from pathlib import Path

from msixlab_common import jsonlines
from msixlab_common.deadline import Deadline

from agent.host.errors import HostError

log = logging.getLogger(__name__)

#: Longest line accepted from a peer: the guest's routing of 2048 vectors fits well.
MAX_LINE = 16 << 20


class JsonLinesClient:
    """A JSON-lines client on the UNIX socket ``path`` (the device's control channel or the
    guest agent), called ``name`` in errors and traces.  Replies are matched by id; other
    messages are kept as ``events``."""
    def __init__(self, path: Path, name: str):
        self.path = Path(path)
        self.name = name
        self.log = log.getChild(name)
        self._sock: socket.socket | None = None
        self._decoder = jsonlines.Decoder(max_line=MAX_LINE)
        self._inbox: deque = deque()      # decoded lines not yet consumed
        self._next_id = 1
        self.events: deque[dict] = deque()

    def connect(self, timeout: float) -> None:
        """Connect, retrying while the socket is not there yet, for at most ``timeout``
        seconds; then ``WaitTimeout`` naming the socket and the last error."""
        deadline = Deadline(timeout, f"{self.name} socket {self.path}")
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                self._sock = sock
                return
            except OSError as err:
                sock.close()
                if deadline.expired():
                    raise deadline.timeout(str(err)) from err
                time.sleep(min(0.05, deadline.remaining() + 0.001))

    def abort(self) -> None:
        """Release, from another thread, whoever is blocked reading: they see EOF."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Close the socket, if open, and forget what was read on it (a later ``connect``
        starts clean).  Safe to call twice."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._decoder = jsonlines.Decoder(max_line=MAX_LINE)
        self._inbox.clear()
        self.events.clear()

    def send(self, obj: dict) -> None:
        """Send ``obj`` as one line.  ``HostError`` if not connected or ``obj`` cannot be
        encoded; a socket error propagates as ``OSError``."""
        if self._sock is None:
            raise HostError(f"{self.name}: not connected")
        self.log.debug("--> %s", obj)
        try:
            line = jsonlines.dumps(obj)
        except jsonlines.JsonLinesError as err:
            raise HostError(f"{self.name}: cannot send {obj!r}: {err}") from err
        self._sock.sendall(line)

    def _read_message(self, deadline: Deadline) -> dict:
        while not self._inbox:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise deadline.timeout(f"on {self.path}")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                raise HostError(f"{self.name} closed the connection while we waited for "
                                f"{deadline.what}")
            self._inbox.extend(self._decoder.feed(chunk))
        message = self._inbox.popleft()
        if isinstance(message, jsonlines.JsonLinesError):
            raise HostError(f"{self.name} sent a line that is not JSON we accept: "
                            f"{message}") from message
        if not isinstance(message, dict):
            raise HostError(f"{self.name} sent a line that is not a JSON object: "
                            f"{str(message)[:200]}")
        self.log.debug("<-- %s", message)
        return message

    def request(self, payload: dict, timeout: float) -> dict:
        """Send ``payload`` with a fresh id and return the reply with that id."""
        req_id = self._next_id
        self._next_id += 1
        self.send({"id": req_id, **payload})
        deadline = Deadline(timeout, f"{self.name}'s reply to {payload.get('cmd')!r} "
                                     f"(id {req_id})")
        while True:
            message = self._read_message(deadline)
            if message.get("id") == req_id and "ok" in message:
                return message
            self.events.append(message)

    def wait_event(self, name: str, timeout: float) -> dict:
        """The next event called ``name`` (queued or arriving within ``timeout``)."""
        deadline = Deadline(timeout, f"the {name!r} event from {self.name}")
        while True:
            for event in list(self.events):
                if event.get("event") == name:
                    self.events.remove(event)
                    return event
            self.events.append(self._read_message(deadline))

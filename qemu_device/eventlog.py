"""Event bus, JSON-lines event log, and its pretty printer.

Concepts: the event stream. Every protocol message (rx), reply (tx), protocol error,
interrupt event (raise outcome, deliver, pend, eventfd assign), connection change and
control command becomes one dict, stamped with wall time ("ts") and a monotonic time
("mono"), and goes to the JSON-lines log file (--log) and to every control-channel
subscriber. When nobody listens, producers get no sink at all (hot path stays lean).
read_log()/format_event() turn a log back into readable lines for `qemu-device log`. A
failed log write (disk full) loses that event from the file only: it is counted (`lost`,
reported in `state`) and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Iterator

from msixlab_common import jsonlines

log = logging.getLogger(__name__)

Listener = Callable[[dict], None]


class EventBus:
    """Fans events out to the log file and to subscribers.

    A write to the log that fails (disk full, I/O error) never reaches the caller: the
    event still goes to subscribers, it is counted in ``lost`` and the first failure of
    each run of failures is logged.  ``stats()`` reports this for ``state``."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o644) if path else None
        self._listeners: dict[int, Listener] = {}
        self.on_change: Callable[[], None] | None = None
        self.written = 0
        self.lost = 0
        self.last_error: str | None = None
        self._failing = False

    @property
    def active(self) -> bool:
        """Whether anyone listens: a log file is open or a subscriber is attached."""
        return self._fd is not None or bool(self._listeners)

    def sink(self) -> Listener | None:
        """``emit`` while anyone listens, else ``None`` so producers skip building events."""
        return self.emit if self.active else None

    def subscribe(self, key: int, listener: Listener) -> None:
        """Send every later event to ``listener``, under ``key``; notifies ``on_change``."""
        self._listeners[key] = listener
        if self.on_change:
            self.on_change()

    def unsubscribe(self, key: int) -> None:
        """Stop sending events to the listener under ``key`` (unknown keys are ignored)."""
        if self._listeners.pop(key, None) is not None and self.on_change:
            self.on_change()

    def emit(self, event: dict) -> None:
        """Stamp ``event`` with ``ts`` (wall) and ``mono`` (monotonic) seconds, append it to the
        log file if one is open (a failed write is counted in ``lost``), and hand it to every
        subscriber."""
        event = {"ts": round(time.time(), 6), "mono": round(time.monotonic(), 6), **event}
        if self._fd is not None:
            self._write(event)
        for listener in list(self._listeners.values()):
            listener(event)

    def _write(self, event: dict) -> None:
        try:
            line = jsonlines.dumps(event)
        except jsonlines.JsonLinesError as err:
            self._lose(f"not encodable: {err}")
            return
        try:
            n = os.write(self._fd, line)
        except OSError as err:
            self._lose(f"{err.strerror or err} (errno {err.errno})")
            return
        if n != len(line):
            self._lose(f"short write ({n} of {len(line)} bytes)")
            return
        self.written += 1
        if self._failing:
            log.warning("event log %s: writing again after %d lost events", self.path,
                        self.lost)
            self._failing = False

    def _lose(self, why: str) -> None:
        self.lost += 1
        self.last_error = why
        if not self._failing:
            log.error("event log %s: %s; events are being lost (counted in state)",
                      self.path, why)
            self._failing = True

    def stats(self) -> dict:
        """The log's counters: events written and lost, and the last write error."""
        return {"path": self.path, "written": self.written, "lost": self.lost,
                "last_error": self.last_error}

    def close(self) -> None:
        """Close the log file, if open.  Subscribers are kept."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_log(path: str) -> Iterator[dict]:
    """The events of the JSON-lines log at ``path``, in order; blank lines are skipped and
    a line that is not a JSON object yields ``{"event": "unparsable", "line", "text"}``.
    Raises ``OSError`` if the file cannot be read."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                ev = jsonlines.loads(line, max_depth=64)
            except jsonlines.JsonLinesError:
                ev = None
            yield ev if isinstance(ev, dict) else {"event": "unparsable", "line": n,
                                                   "text": line[:200]}


_SKIP = {"ts", "mono", "event", "id", "cmd"}


def format_event(ev: dict, t0: float | None = None) -> tuple[str, str, str]:
    """(relative time, kind, details) for one event."""
    mono = ev.get("mono")
    rel = f"{mono - t0:10.6f}" if isinstance(mono, (int, float)) and t0 is not None else ""
    kind = ev.get("event", "?")
    head = ""
    if "cmd" in ev:
        head = f"#{ev.get('id', '?')} {ev['cmd']} "
    details = " ".join(f"{k}={_short(v)}" for k, v in ev.items() if k not in _SKIP)
    return rel, kind, head + details


def _short(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v > 0xFFFF:
        return hex(v)
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."

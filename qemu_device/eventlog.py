# Concepts: the event stream. Every protocol message (rx), reply (tx), protocol error,
# interrupt event (raise outcome, deliver, pend, eventfd assign), connection change and
# control command becomes one dict, stamped with wall time ("ts") and a monotonic time
# ("mono"), and goes to the JSON-lines log file (--log) and to every control-channel
# subscriber. When nobody listens, producers get no sink at all (hot path stays lean).
# read_log()/format_event() turn a log back into readable lines for `qemu-device log`.
"""Event bus, JSON-lines event log, and its pretty printer."""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Iterator

log = logging.getLogger(__name__)

Listener = Callable[[dict], None]


class EventBus:
    """Fans events out to the log file and to subscribers."""

    def __init__(self, path: str | None = None) -> None:
        self._file = open(path, "a", buffering=1, encoding="utf-8") if path else None
        self._listeners: dict[int, Listener] = {}
        self.on_change: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        return self._file is not None or bool(self._listeners)

    def sink(self) -> Listener | None:
        return self.emit if self.active else None

    def subscribe(self, key: int, listener: Listener) -> None:
        self._listeners[key] = listener
        if self.on_change:
            self.on_change()

    def unsubscribe(self, key: int) -> None:
        if self._listeners.pop(key, None) is not None and self.on_change:
            self.on_change()

    def emit(self, event: dict) -> None:
        event = {"ts": round(time.time(), 6), "mono": round(time.monotonic(), 6), **event}
        if self._file is not None:
            self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        for listener in list(self._listeners.values()):
            listener(event)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_log(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                yield {"event": "unparsable", "line": n, "text": line[:200]}


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

"""The interrupt timeline of a run, from the device's event log (device-events.jsonl).

Concepts: each vector that saw an interrupt event gets a ``Lane`` of ``Mark``s on one
time axis (seconds since the first interrupt event):
- ``raise`` (with its source: ``control``, ``ics``, ``queueN``, ``set_irqs``), then either
  ``deliver`` at once (the device wrote the eventfd) or a *pending* span that ends with
  ``deliver`` when the vector could be delivered again (``pend`` ... ``deliver_pending``),
  or ``drop`` (a fault hook lost it); a delayed raise is a pending span too;
- ``assign`` and ``deassign`` of the vector's eventfd (QEMU's ``SET_IRQS``), which is
  where a group's allocation and free show.
Only the first ``MAX_MARKS`` marks of a lane are kept (a soak raises millions); the lane
counts what it left out.  Reading is streaming and tolerates bad lines (counted).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAX_MARKS = 400
_RAISE_OUTCOMES = {"deliver": "deliver", "pend": "pend", "raise_dropped": "drop",
                   "raise_delayed": "delay"}
_EVENTFD = {"eventfd_assign": "assign", "eventfd_deassign": "deassign"}
INTERRUPT_EVENTS = frozenset(_RAISE_OUTCOMES) | {"deliver_pending"}


@dataclass(frozen=True)
class Mark:
    """One event on a lane: ``t`` seconds after the first interrupt event, its kind, and a
    raise's source."""
    t: float
    kind: str            # raise, deliver, drop, assign, deassign
    source: str = ""


@dataclass
class Lane:
    """One vector's marks, its pending spans (start, end or ``None`` if never ended), marks
    left out, raises and deliveries."""
    vector: int
    marks: list[Mark] = field(default_factory=list)
    spans: list[tuple[float, float | None]] = field(default_factory=list)   # pending
    omitted: int = 0
    raises: int = 0
    delivered: int = 0

    def _add(self, mark: Mark) -> None:
        if len(self.marks) < MAX_MARKS:
            self.marks.append(mark)
        else:
            self.omitted += 1


@dataclass
class Timeline:
    """Every vector's lane on one time axis, the axis's start and end, the last interrupt, and
    unreadable lines."""
    lanes: dict[int, Lane] = field(default_factory=dict)
    start: float | None = None        # monotonic time of t = 0
    end: float = 0.0                  # seconds after start of the last event
    last_interrupt: float = 0.0       # ... of the last raise or delivery
    bad_lines: int = 0

    def lane(self, vector: int) -> Lane:
        """The lane of ``vector``, created empty on first use."""
        return self.lanes.setdefault(vector, Lane(vector))

    def sorted_lanes(self) -> list[Lane]:
        """The lanes in vector order."""
        return [self.lanes[v] for v in sorted(self.lanes)]


def read_events(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file; a bad line yields ``{"event": "bad"}``."""
    with open(path, encoding="utf-8", errors="replace") as src:
        for line in src:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            yield event if isinstance(event, dict) else {"event": "bad"}


def build(events: Iterable[dict]) -> Timeline:
    """The timeline of an event stream (in log order)."""
    timeline = Timeline()
    for event in events:
        kind = event.get("event")
        if kind == "bad":
            timeline.bad_lines += 1
            continue
        vector, mono = event.get("vector"), event.get("mono")
        if not isinstance(vector, int) or vector < 0 or not isinstance(mono, (int, float)):
            continue
        if timeline.start is None:
            if kind not in INTERRUPT_EVENTS:
                continue            # the boot's eventfd set-up precedes the first raise
            timeline.start = float(mono)
        t = float(mono) - timeline.start
        if t < 0:
            continue
        timeline.end = max(timeline.end, t)
        if kind in INTERRUPT_EVENTS:
            timeline.last_interrupt = max(timeline.last_interrupt, t)
        _apply(timeline.lane(vector), kind, t, str(event.get("source") or ""))
    return timeline


def _apply(lane: Lane, kind: str, t: float, source: str) -> None:
    if source.endswith("+delay") and kind in ("deliver", "pend"):
        if kind == "deliver":        # the end of a delayed raise's wait
            _delivered(lane, t, source)
        return                       # pend: its span is already open
    if kind in _RAISE_OUTCOMES:
        lane.raises += 1
        lane._add(Mark(t, "raise", source))
        outcome = _RAISE_OUTCOMES[kind]
        if outcome == "deliver":
            lane.delivered += 1
            lane._add(Mark(t, "deliver", source))
        elif outcome == "drop":
            lane._add(Mark(t, "drop", source))
        elif not (lane.spans and lane.spans[-1][1] is None):
            lane.spans.append((t, None))          # pending (or delayed) from here
    elif kind == "deliver_pending":
        _delivered(lane, t, "pending")
    elif kind in _EVENTFD:
        lane._add(Mark(t, _EVENTFD[kind]))


def _delivered(lane: Lane, t: float, source: str) -> None:
    lane.delivered += 1
    lane._add(Mark(t, "deliver", source))
    if lane.spans and lane.spans[-1][1] is None:
        lane.spans[-1] = (lane.spans[-1][0], t)


def from_file(path: Path) -> Timeline:
    """The timeline of a run's event log; empty when the file is missing."""
    try:
        return build(read_events(path))
    except FileNotFoundError:
        return Timeline()

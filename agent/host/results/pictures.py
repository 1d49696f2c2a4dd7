"""The report's two pictures, as inline SVG text: the routing map and the timeline.

Concepts:
- The *routing map*: MSI-X table index across, one row for the table itself and one row
  per CPU below it.  The table row shows each entry's state: live (its group's colour),
  freed (hatched grey), reused (its new group's colour with a corner in the colour of
  the group that had it before), pending in the device (an orange dot), never used
  (blank).  A live entry fills the cell of the CPU its message targets, with the number
  of interrupts counted there; a count on any other CPU is a red-edged cell.  An index
  with a failed check has a red frame.  Wide tables wrap every 64 entries.
- The *timeline*: one lane per vector, seconds across: a tick per raise (coloured by its
  source), an amber bar while a raise is pending, a green dot when it is delivered, a
  red cross when it is dropped, triangles where the eventfd is assigned and removed.
Pure functions of the run's data; every element carries a ``<title>`` tooltip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

from agent.host.results.model import RunResult
from agent.host.results.timeline import Timeline

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948",
           "#ff9da7", "#9c755f", "#86bcb6", "#d37295", "#a0cbe8")
GROUP0 = "#5b6770"
PENDING, FAIL, FREED = "#f28e2b", "#d62728", "#c8ccd0"
SOURCE_COLOURS = {"control": "#4e79a7", "ics": "#b07aa1", "pending": "#59a14f"}
CELL_W, CELL_H, LEFT, BLOCK = 15, 20, 64, 64


@dataclass
class GroupInfo:
    """One group of the run, for the picture: id, label, colour, its indices, and whether it is
    live at the end."""
    gid: int
    label: str
    colour: str
    indices: list[int] = field(default_factory=list)
    live: bool = False


@dataclass
class Entry:
    """One MSI-X table index in the routing map: its state, group (and the freed group it had
    before), target CPU, per-CPU counts, pending, failed, tooltip text."""
    index: int
    state: str = "never"            # live, freed, never
    group: GroupInfo | None = None
    was: GroupInfo | None = None     # the freed group this index belonged to before
    cpu: int | None = None
    counts: list[int] = field(default_factory=list)
    pending: bool = False
    failed: bool = False
    detail: str = ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def groups_of(run: RunResult) -> dict[int, GroupInfo]:
    """Every group the run made (metadata.groups) or that is live (records), by id."""
    groups: dict[int, GroupInfo] = {}
    raw = run.metadata.get("groups")
    for label, group in (raw.items() if isinstance(raw, Mapping) else ()):
        gid = _int(group.get("group")) if isinstance(group, Mapping) else None
        if gid is not None:
            groups[gid] = GroupInfo(gid, str(label), "", [i for i in group.get("indices") or ()
                                                          if _int(i) is not None])
    for record in run.records:
        gid = _int(record.get("group"))
        if gid is not None and record.get("guest") is not None:
            info = groups.setdefault(gid, GroupInfo(gid, str(gid), ""))
            info.live = True
            if record.get("index") not in info.indices and _int(record.get("index")) is not None:
                info.indices.append(record["index"])
    for n, gid in enumerate(sorted(groups)):
        groups[gid].colour = GROUP0 if gid == 0 else PALETTE[(n - (0 in groups)) % len(PALETTE)]
        if gid == 0 and groups[gid].label == "0":
            groups[gid].label = "0 (driver)"
    return groups


def entries_of(run: RunResult, groups: dict[int, GroupInfo]) -> list[Entry]:
    """One ``Entry`` per table index of ``run`` (none when it recorded no vectors), from its
    records and ``groups``."""
    if not run.records:
        return []
    size = _int(run.metadata.get("vectors")) or 0
    size = max([size] + [(_int(r.get("index")) or 0) + 1 for r in run.records])
    entries = [Entry(i) for i in range(size)]
    for info in groups.values():
        if not info.live:
            for index in info.indices:
                if 0 <= index < size:
                    entries[index].state, entries[index].was = "freed", info
    failed = {c.index for c in run.checks() if c.failed}
    for record in run.records:
        index = _int(record.get("index"))
        if index is None or not 0 <= index < size:
            continue
        entry = entries[index]
        device = record.get("device") or {}
        entry.pending = bool(device.get("pending"))
        entry.failed = index in failed
        guest = record.get("guest")
        if guest is not None and _int(record.get("group")) in groups:
            entry.state, entry.group = "live", groups[record["group"]]
            entry.counts = [c for c in guest.get("counts") or () if _int(c) is not None]
            entry.cpu = _target_cpu(record)
        entry.detail = _detail(record, entry)
    return entries


def _target_cpu(record: Mapping[str, Any]) -> int | None:
    decoded = record.get("decoded") or {}
    if _int(decoded.get("cpu")) is not None:
        return decoded["cpu"]
    effective = ((record.get("guest") or {}).get("affinity") or {}).get("effective") or []
    return effective[0] if len(effective) == 1 else None


def _detail(record: Mapping[str, Any], entry: Entry) -> str:
    parts = [f"index {entry.index}"]
    if entry.group:
        parts.append(f"group {entry.group.label} (id {entry.group.gid}), irq {record.get('irq')}")
        decoded = record.get("decoded") or {}
        parts.append(f"target CPU {entry.cpu}, APIC {decoded.get('dest_apic_id')}, "
                     f"vector {decoded.get('vector')}")
        parts.append("counts per CPU " + ", ".join(f"{c}:{n}" for c, n in enumerate(entry.counts)))
    if entry.was is not None:
        parts.append(f"freed from group {entry.was.label} (id {entry.was.gid})")
    device = record.get("device") or {}
    parts.append(f"device raised {device.get('raised')} delivered {device.get('delivered')}"
                 + (" PENDING" if entry.pending else ""))
    if entry.failed:
        parts.append("a check FAILED here")
    return "; ".join(parts)


def _cpus(run: RunResult, entries: list[Entry]) -> int:
    cpus = _int(run.metadata.get("cpus")) or 1
    return max([cpus] + [len(e.counts) for e in entries] + [(e.cpu or 0) + 1 for e in entries])


def _rect(x, y, w, h, fill, title="", extra="") -> str:
    tip = f"<title>{escape(title)}</title>" if title else ""
    return f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}" {extra}>{tip}</rect>'


def _text(x, y, text, size=10, anchor="middle", fill="#333", extra="") -> str:
    return (f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'{extra}>{escape(str(text))}</text>')


def _table_cell(entry: Entry, x: int, y: int) -> list[str]:
    out = []
    if entry.state == "live":
        out.append(_rect(x, y, CELL_W - 1, CELL_H - 1, entry.group.colour, entry.detail))
        if entry.was is not None and entry.was is not entry.group:
            out.append(f'<path d="M{x},{y} h7 l-7,7 z" fill="{entry.was.colour}" stroke="#fff" '
                       f'stroke-width="1"><title>{escape(entry.detail)}</title></path>')
    elif entry.state == "freed":
        out.append(_rect(x, y, CELL_W - 1, CELL_H - 1, "url(#freed)", entry.detail,
                         f'stroke="{FREED}"'))
    else:
        out.append(_rect(x, y, CELL_W - 1, CELL_H - 1, "#ffffff", entry.detail, 'stroke="#e3e6e8"'))
    if entry.pending:
        out.append(f'<circle cx="{x + CELL_W / 2 - .5}" cy="{y + CELL_H / 2 - .5}" r="3.5" '
                   f'fill="{PENDING}"><title>{escape(entry.detail)}</title></circle>')
    if entry.failed:
        out.append(_rect(x - 1, y - 1, CELL_W + 1, CELL_H + 1, "none", entry.detail,
                         f'stroke="{FAIL}" stroke-width="2"'))
    return out


def _cpu_cells(entry: Entry, x: int, y0: int, cpus: int) -> list[str]:
    out = []
    if entry.state != "live":
        return out
    for cpu in range(cpus):
        count = entry.counts[cpu] if cpu < len(entry.counts) else 0
        y = y0 + cpu * CELL_H
        if cpu == entry.cpu:
            out.append(_rect(x, y, CELL_W - 1, CELL_H - 1, entry.group.colour, entry.detail))
            if count:
                out.append(_text(x + CELL_W / 2 - .5, y + CELL_H / 2 + 3,
                                 count if count < 100 else "99+",
                                 size=8.5, fill="#fff", extra='font-weight="bold"'))
        elif count:
            out.append(_rect(x, y, CELL_W - 1, CELL_H - 1, "#fff", entry.detail + f"; {count} on "
                             f"CPU {cpu}, not the target", f'stroke="{FAIL}" stroke-width="1.5"'))
            out.append(_text(x + CELL_W / 2, y + CELL_H / 2 + 3, count, size=8.5, fill=FAIL))
    return out


def _block(block: list[Entry], y0: int, block_h: int, cpus: int) -> list[str]:
    """One row of up to BLOCK entries: row labels and backgrounds, then the cells."""
    body = [_text(LEFT - 8, y0 + 4 + CELL_H / 2 + 4, "table", size=11, anchor="end",
                  extra='font-weight="bold"'),
            _text(LEFT + len(block) * CELL_W / 2, y0 + block_h - 12, "MSI-X table index",
                  size=10, fill="#666")]
    for cpu in range(cpus):
        y = y0 + 8 + CELL_H * (cpu + 1)
        body.append(_rect(LEFT, y, len(block) * CELL_W - 1, CELL_H - 1, "#f6f7f8"))
        body.append(_text(LEFT - 8, y + CELL_H / 2 + 4, f"CPU {cpu}", size=11, anchor="end"))
    for entry in block:
        x = LEFT + (entry.index % BLOCK) * CELL_W
        if entry.index % 4 == 0:
            body.append(_text(x + CELL_W / 2, y0 - 3, entry.index, size=9, fill="#666"))
        body += _table_cell(entry, x, y0 + 4)
        body += _cpu_cells(entry, x, y0 + 8 + CELL_H, cpus)
    return body


def routing_map(run: RunResult) -> str:
    """The routing map as one ``<svg>`` element (empty text when the run has no records)."""
    groups = groups_of(run)
    entries = entries_of(run, groups)
    if not entries:
        return ""
    cpus = _cpus(run, entries)
    blocks = [entries[i:i + BLOCK] for i in range(0, len(entries), BLOCK)]
    block_h = 16 + CELL_H * (cpus + 1) + 8 + 14
    width = LEFT + min(len(entries), BLOCK) * CELL_W + 10
    body = ['<defs><pattern id="freed" width="5" height="5" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="5" height="5" fill="#eef0f2"/>'
            f'<line x1="0" y1="0" x2="0" y2="5" stroke="{FREED}" stroke-width="2.5"/>'
            '</pattern></defs>']
    for b, block in enumerate(blocks):
        body += _block(block, b * block_h + 14, block_h, cpus)
    height = len(blocks) * block_h + 4
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="map" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
            f'role="img" aria-label="routing map">{"".join(body)}</svg>')


def legend(run: RunResult) -> list[tuple[str, str, str]]:
    """(kind, colour, text) for the map's legend: each group, then the markers."""
    groups = groups_of(run)
    rows = []
    for gid in sorted(groups):
        info = groups[gid]
        span = _span(sorted(info.indices))
        reused = [g for g in groups.values() if not g.live and info.live
                  and set(g.indices) & set(info.indices)]
        text = f"group {info.label} (id {gid}): {span}"
        text += "" if info.live else ", freed"
        text += "".join(f", reuses {g.label}'s entries" for g in reused)
        rows.append(("swatch", info.colour, text))
    rows += [("freed", FREED, "freed, not reused"), ("pending", PENDING, "pending in the device"),
             ("fail", FAIL, "a check failed at this index")]
    return rows


def _span(indices: list[int]) -> str:
    """``indices 1-4, 7`` for [1, 2, 3, 4, 7]."""
    if not indices:
        return "no entries"
    runs: list[str] = []
    start = prev = indices[0]
    for cur in indices[1:] + [None]:
        if cur is None or cur != prev + 1:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
        prev = cur
    return ("index " if len(indices) == 1 else "indices ") + ", ".join(runs)


# --- the timeline ----------------------------------------------------------------------

TL_WIDTH, LANE_H, MAX_LANES = 1000, 18, 96


def _ticks(end: float) -> list[float]:
    if end <= 0:
        return [0.0]
    raw = end / 8
    step = min((s for s in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
                            20, 30, 60, 120, 300, 600, 1800, 3600) if s >= raw), default=raw)
    return [i * step for i in range(int(end / step) + 1)]


def timeline_svg(timeline: Timeline) -> str:
    """The timeline as one ``<svg>`` element (empty text when nothing was raised)."""
    lanes = [lane for lane in timeline.sorted_lanes() if lane.raises or lane.marks][:MAX_LANES]
    if not lanes:
        return ""
    end = max(timeline.last_interrupt, 1e-3) * 1.04   # teardown's eventfd removal is cut
    plot = TL_WIDTH - LEFT - 10

    def x(t: float) -> float:
        return round(LEFT + t / end * plot, 2)

    height = 22 + LANE_H * len(lanes) + 24
    body = []
    for t in _ticks(end):
        body.append(f'<line x1="{x(t)}" y1="16" x2="{x(t)}" y2="{height - 22}" stroke="#e3e6e8"/>')
        body.append(_text(x(t), 12, f"{t:g} s", size=9, fill="#666"))
    for row, lane in enumerate(lanes):
        y = 20 + row * LANE_H
        mid = y + LANE_H / 2
        if row % 2 == 0:
            body.append(_rect(LEFT, y, plot, LANE_H, "#f6f7f8"))
        body.append(_text(LEFT - 8, mid + 4, f"vec {lane.vector}", size=10, anchor="end"))
        tip = f"vector {lane.vector}: {lane.raises} raised, {lane.delivered} delivered" + \
              (f", {lane.omitted} later events not drawn" if lane.omitted else "") + \
              (f"; {later} event(s) after the last interrupt not drawn"
               if (later := sum(m.t > end for m in lane.marks)) else "")
        body.append(f'<line x1="{LEFT}" y1="{mid}" x2="{LEFT + plot}" y2="{mid}" '
                    f'stroke="#d5d9dc" stroke-width="1"><title>{escape(tip)}</title></line>')
        for start, stop in lane.spans:
            stop = end if stop is None else min(stop, end)
            body.append(_rect(x(start), mid - 4, max(x(stop) - x(start), 2), 8, PENDING,
                              f"vector {lane.vector} pending {start:.4f} s to {stop:.4f} s",
                              'rx="2"'))
        body += [_mark(mark, x(mark.t), mid, lane.vector) for mark in lane.marks if mark.t <= end]
    body.append(_text(LEFT + plot / 2, height - 6, "seconds since the first raise", size=10,
                      fill="#666"))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{TL_WIDTH}" '
            f'height="{height}" viewBox="0 0 {TL_WIDTH} {height}" font-family="sans-serif" '
            f'role="img" aria-label="interrupt timeline">{"".join(body)}</svg>')


def _mark(mark, x: float, mid: float, vector: int) -> str:
    tip = f"<title>vector {vector}: {mark.kind}" + \
          (f" ({mark.source})" if mark.source else "") + f" at {mark.t:.4f} s</title>"
    if mark.kind == "raise":
        colour = SOURCE_COLOURS.get(mark.source.split("+")[0], "#444")
        return (f'<line x1="{x}" y1="{mid - 7}" x2="{x}" y2="{mid - 1}" stroke="{colour}" '
                f'stroke-width="2">{tip}</line>')
    if mark.kind == "deliver":
        return f'<circle cx="{x}" cy="{mid + 2}" r="3" fill="#2ca02c">{tip}</circle>'
    if mark.kind == "drop":
        return (f'<path d="M{x - 3},{mid - 3} l6,6 m0,-6 l-6,6" stroke="{FAIL}" '
                f'stroke-width="2">{tip}</path>')
    if mark.kind == "assign":
        return f'<path d="M{x},{mid - 5} l4,7 h-8 z" fill="#76b7b2">{tip}</path>'
    return f'<path d="M{x},{mid + 5} l4,-7 h-8 z" fill="#9aa3ab">{tip}</path>'

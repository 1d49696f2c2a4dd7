"""The terminal table: one row per vector that was ever live, rendered with ``rich`` on a
console the caller passes in, the failures under it and the verdict line last.

``render`` prints a snapshot (and a run's ``RunVerdict`` when there is one) and returns the
exit code; rows never live nor raised are counted in the caption (``--table all`` shows
every row).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.host.errors import EXIT_FAIL, EXIT_PASS
from agent.host.verdict.exit import exit_status
from agent.host.verdict.outcome import RunVerdict
from agent.host.verdict.routing import (
    CheckResult,
    DestMode,
    MsiFormat,
    RoutingRecord,
    Snapshot,
    Verdict,
)

_SHORT_NAMES = {
    "cached_msg_matches_table": "msg",
    "destination_matches_affinity": "dest",
    "raise_counted_once_on_cpu": "raise",
    "freed_entry_masked_and_cleared": "freed",
    "pending_delivered_after_alloc": "pending",
    "doorbell_raise_counted_once_on_cpu": "doorbell",
    "freed_raise_delivered_once_on_reuse": "reuse-pending",
    "freed_index_reused": "reuse",
    "affinity_honoured": "affinity",
    "kernel_irq_view_agrees": "kernel",
    "counts_match_raises": "count",
    "device_counters_match": "device",
    "requested_affinity_honoured": "asked-cpu",
    "raise_held_while_function_masked": "maskall",
}
_VERDICT_STYLE = {Verdict.PASS: "green", Verdict.FAIL: "bold red", Verdict.SKIP: "dim"}


def _opt(value: Any) -> str:
    return "-" if value is None else str(value)


def _cpus(cpus: Iterable[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus) or "-"


def _message_cell(record: RoutingRecord) -> str:
    if record.guest is not None:
        msg, suffix = record.guest.msg, ""
    elif record.qemu is not None:
        msg = record.qemu.message
        suffix = " masked" if record.qemu.masked else " UNMASKED"
    else:
        return "-"
    high = f"{msg.address_hi:08x}:" if msg.address_hi else ""
    return f"{high}{msg.address_lo:08x}/{msg.data:04x}{suffix}"


def _decoded_cell(record: RoutingRecord) -> str:
    decoded = record.decoded
    if decoded is None:
        return "-"
    if decoded.format is MsiFormat.REMAPPABLE:
        return f"IRTE {decoded.remap_handle}"
    if decoded.format is MsiFormat.NOT_MSI:
        return "none"
    flags = ("L" if decoded.dest_mode is DestMode.LOGICAL else "") + \
            ("RH" if decoded.redirection_hint else "")
    return f"apic {decoded.dest_apic_id} vec {decoded.vector:#04x}" + \
           (f" {flags}" if flags else "")


def _counts_cell(record: RoutingRecord) -> str:
    if record.guest is None:
        return "-"
    per_cpu = " ".join(f"{cpu}:{n}" for cpu, n in enumerate(record.guest.counts) if n)
    return f"{record.guest.total}" + (f" ({per_cpu})" if per_cpu else "")


def _device_cell(record: RoutingRecord) -> str:
    device = record.device
    if device is None:
        return "-"
    flags = ("E" if device.eventfd else "-") + ("P" if device.pending else "-")
    return f"{device.raised}/{device.delivered} {flags}"


def _checks_cell(record: RoutingRecord) -> Text:
    """Passes counted, failures named, skips counted: one short line per vector."""
    text = Text()
    passed = sum(1 for r in record.checks if r.verdict is Verdict.PASS)
    skipped = sum(1 for r in record.checks if r.verdict is Verdict.SKIP)
    failed = sorted({_SHORT_NAMES.get(r.name, r.name) for r in record.checks
                     if r.verdict is Verdict.FAIL})
    if passed:
        text.append(f"{passed} pass", style=_VERDICT_STYLE[Verdict.PASS])
    if failed:
        text.append((" " if text else "") + "FAIL " + ",".join(failed),
                    style=_VERDICT_STYLE[Verdict.FAIL])
    if skipped:
        text.append((" " if text else "") + f"{skipped} skip", style=_VERDICT_STYLE[Verdict.SKIP])
    return text


def _shown(record: RoutingRecord) -> bool:
    """A row the default table keeps: a vector live now or during the run (it was judged,
    raised or delivered, or holds a raise), or one whose check failed.  An entry QEMU gave
    an eventfd but nothing ever used is left to the summary line."""
    device = record.device
    return (record.allocated or bool(record.checks) or record.group is not None
            or (device is not None and (device.pending or device.raised > 0
                                         or device.delivered > 0)))


def routing_table(snapshot: Snapshot, show_all: bool = False,
                  title: str | None = "MSI-X routing") -> Table:
    """One row per vector that was ever live or has a failed check; the other entries are
    counted in the caption (``show_all``: every row)."""
    table = Table(title=title)
    for header, justify in (("idx", "right"), ("grp", "right"), ("irq", "right"),
                            ("address/data", "left"), ("decoded", "left"),
                            ("cpu", "right"), ("effective", "left"), ("counts", "left"),
                            ("device r/d ep", "left"), ("checks", "left")):
        table.add_column(header, justify=justify)
    hidden = 0
    for record in snapshot.records:
        if not (show_all or _shown(record)):
            hidden += 1
            continue
        effective = record.guest.affinity.effective if record.guest else ()
        table.add_row(
            str(record.index), _opt(record.group), _opt(record.irq),
            _message_cell(record), _decoded_cell(record),
            _opt(record.decoded.cpu if record.decoded else None), _cpus(effective),
            _counts_cell(record), _device_cell(record), _checks_cell(record))
    if hidden:
        table.caption = (f"{hidden} more of {len(snapshot.records)} entries were never live and "
                         "never raised (--table all shows every row)")
    return table


def render(console: Console, snapshot: Snapshot, verdict: RunVerdict | None = None,
           results: Iterable[CheckResult] | None = None, show_all: bool = False) -> int:
    """Print the table, each failure's summary, and the verdict line (then, for a verdict
    that is not a pass, the console's last lines when its evidence holds them); return the
    exit code (the verdict's, or judged from the snapshot's checks when none is given)."""
    if snapshot.records:
        console.print(routing_table(snapshot, show_all))
    results = list(snapshot.results() if results is None else results)
    for result in results:
        if result.verdict is Verdict.FAIL:
            console.print(Text(f"FAIL {result.label}: {result.summary}", style="red"))
    if verdict is None:
        status = exit_status(results)
        code, line = status.code, f"exit {status.code}: {status.message}"
    else:
        code = verdict.exit_code
        counts = verdict.counts
        if counts:
            console.print(f"declared {counts.get('declared')} checks; {counts.get('passed')} "
                          f"results passed, {counts.get('failed')} failed "
                          f"({counts.get('not_judged')} not judged)")
        for fault in verdict.faults:
            console.print(Text(f"device fault armed on purpose: {json.dumps(fault)}",
                               style="yellow"))
        line = f"exit {code} ({verdict.outcome}): {verdict.summary}"
    style = {EXIT_PASS: "bold green", EXIT_FAIL: "bold red"}.get(code, "bold yellow")
    console.print(Text(line, style=style))
    if verdict is not None and code != EXIT_PASS and verdict.evidence.get("console_tail"):
        console.print(Text("the console's last lines:\n" + verdict.evidence["console_tail"],
                           style="dim"))   # where the guest was, in a CI log that keeps no files
    return code

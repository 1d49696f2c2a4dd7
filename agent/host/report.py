"""Report: the routing records and verdicts as a file, a terminal table and an exit code.

Concepts owned here:
- routing.json: a versioned document (schema "msixlab.routing", version SCHEMA_VERSION)
  holding the run's metadata, the APIC map, every routing record with its checks, and
  a checks summary; written atomically, read back into a Snapshot (docs/routing.md).
- The terminal table: one row per vector, rendered with `rich` on a console the caller
  passes in, failures listed under it.
- ``judge_exit`` for a bare list of results: 0 every check passed, 1 a check failed
  (named), 125 nothing could be judged.  A run's verdict is a ``RunVerdict``
  (outcome.py); ``render`` prints it last and returns its exit code.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.host.errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS, HostError
from agent.host.outcome import RunVerdict
from agent.host.routing import (
    ApicMap,
    CheckResult,
    DestMode,
    MsiFormat,
    RoutingRecord,
    Snapshot,
    Verdict,
    record_from_dict,
)

log = logging.getLogger(__name__)

SCHEMA = "msixlab.routing"
SCHEMA_VERSION = 1

EXIT_CANNOT_JUDGE = EXIT_INFRA  # the contract's 125: nothing could be judged

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


class ReportError(HostError, ValueError):
    """routing.json could not be read: wrong schema, version or shape."""


# --- the verdict contract --------------------------------------------------------------

@dataclass(frozen=True)
class ExitStatus:
    """The exit code a set of check results means, the failed checks (``name[index]``) and a
    message."""
    code: int
    failed: tuple[str, ...]  # "name[index]" of each failed check
    message: str


def judge_exit(results: Iterable[CheckResult]) -> ExitStatus:
    """0 if every judged check passed, 1 naming the failures, 125 if none was judged
    (no results, or every one skipped). Pure; exit_status() also logs the outcome."""
    results = list(results)
    failed = tuple(f"{r.name}[{r.index}]" for r in results if r.verdict is Verdict.FAIL)
    passed = sum(r.verdict is Verdict.PASS for r in results)
    if failed:
        return ExitStatus(EXIT_FAIL, failed,
                          f"{len(failed)} check(s) failed: " + ", ".join(failed))
    if passed:
        return ExitStatus(EXIT_PASS, (), f"all {passed} judged check(s) passed")
    return ExitStatus(EXIT_CANNOT_JUDGE, (),
                      f"no check could judge ({len(results)} result(s), all skipped)")


def exit_status(results: Iterable[CheckResult]) -> ExitStatus:
    """judge_exit(), logged: failures and 'cannot judge' at ERROR, success at INFO."""
    status = judge_exit(results)
    log.log(logging.INFO if status.code == EXIT_PASS else logging.ERROR, "%s",
            status.message)
    return status


# --- routing.json ----------------------------------------------------------------------

def checks_summary(results: Iterable[CheckResult]) -> dict[str, Any]:
    """routing.json's ``checks`` summary: totals per verdict, per check, the failures and the
    exit code."""
    results = list(results)
    totals = Counter(str(r.verdict) for r in results)
    by_check: dict[str, Counter] = {}
    for result in results:
        by_check.setdefault(result.name, Counter())[str(result.verdict)] += 1
    return {
        "total": len(results),
        **{str(v): totals.get(str(v), 0) for v in Verdict},
        "by_check": {name: {str(v): c.get(str(v), 0) for v in Verdict}
                     for name, c in sorted(by_check.items())},
        "failed": [{"name": r.name, "index": r.index, "summary": r.summary}
                   for r in results if r.verdict is Verdict.FAIL],
        "exit_code": judge_exit(results).code,
    }


def routing_document(snapshot: Snapshot, metadata: Mapping[str, Any],
                     apic_map: ApicMap | None = None, *, verdict: RunVerdict | None = None,
                     results: Iterable[CheckResult] | None = None) -> dict[str, Any]:
    """The routing.json document: the records (each with its per-vector checks), every
    check result (``results``, table-wide ones included, each naming its step), their
    summary and the run's verdict."""
    results = list(snapshot.results() if results is None else results)
    document = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "metadata": dict(metadata),
        "apic_map": (apic_map or ApicMap.identity()).to_dict(),
        "records": [record.to_dict() for record in snapshot.records],
        "results": [result.to_dict() for result in results],
        "checks": checks_summary(results),
    }
    if verdict is not None:
        document["verdict"] = verdict.to_dict()
    return document


def write_routing_json(path: Path, snapshot: Snapshot, metadata: Mapping[str, Any],
                       apic_map: ApicMap | None = None, *, verdict: RunVerdict | None = None,
                       results: Iterable[CheckResult] | None = None) -> Path:
    """Write routing.json atomically (temporary file, then rename); return its path."""
    path = Path(path)
    write_text_atomic(path, json.dumps(routing_document(snapshot, metadata, apic_map,
                                                        verdict=verdict, results=results),
                                       indent=2) + "\n")
    log.info("wrote %s (%d records)", path, len(snapshot.records))
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a
    rename: a reader sees the old file or the whole new one, never a part (a full disk
    leaves no partial file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def snapshot_from_document(document: Mapping[str, Any]) -> tuple[ApicMap, Snapshot]:
    """Read a routing.json document back: its APIC map and its records."""
    if document.get("schema") != SCHEMA:
        raise ReportError(f"not a {SCHEMA} document: schema {document.get('schema')!r}")
    if document.get("version") != SCHEMA_VERSION:
        raise ReportError(f"unsupported {SCHEMA} version {document.get('version')!r}, "
                          f"this reader knows {SCHEMA_VERSION}")
    raw_map = document.get("apic_map")
    try:
        apic_map = ApicMap.identity() if raw_map is None else ApicMap.from_apic_ids(
            {int(cpu): apic for cpu, apic in raw_map.items()})
        records = tuple(record_from_dict(r, apic_map) for r in document["records"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ReportError(f"malformed {SCHEMA} document: {err}") from err
    return apic_map, Snapshot(records)


def read_routing_json(path: Path) -> tuple[ApicMap, Snapshot]:
    """The APIC map and snapshot of the routing.json at ``path``; ``ReportError`` if it is not
    JSON or not that schema."""
    with open(path, encoding="utf-8") as src:
        try:
            document = json.load(src)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}: not JSON: {err}") from err
    return snapshot_from_document(document)


# --- the terminal table ----------------------------------------------------------------

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

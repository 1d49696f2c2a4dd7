"""Unit tests for routing.json (results/routing_json.py), the terminal table
(results/terminal.py) and the exit code of a list of results (verdict/exit.py)."""

import json

import pytest
from rich.console import Console

from agent.host.errors import EXIT_FAIL, EXIT_PASS
from agent.host.results.routing_json import (
    SCHEMA,
    SCHEMA_VERSION,
    ReportError,
    checks_summary,
    read_routing_json,
    snapshot_from_document,
    write_routing_json,
)
from agent.host.results.terminal import render, routing_table
from agent.host.verdict.exit import EXIT_CANNOT_JUDGE, exit_status
from agent.host.verdict.outcome import BootStalled, Outcome, RunVerdict
from agent.host.verdict.routing import ApicMap, CheckResult, Snapshot, Verdict, build_snapshot

PASS_MSG = CheckResult("cached_msg_matches_table", 1, Verdict.PASS)
FAIL_RAISE = CheckResult("raise_counted_once_on_cpu", 1, Verdict.FAIL,
                         "counts grew by {'0': 1}, expected {1: 1}", {"count_deltas": {"0": 1}})
SKIP_FREED = CheckResult("freed_entry_masked_and_cleared", 2, Verdict.SKIP, "no QEMU view")
METADATA = {"run_id": "20261124-0001", "kernel": "6.12.0", "qemu": "10.1.0"}


def snapshot(results=()):
    msg = {"address_lo": 0xFEE02000, "address_hi": 0, "data": 0x23}
    guest = {"group": 0, "index": 1, "irq": 41, "msg": msg, "table": {**msg, "ctrl": 0},
             "affinity": {"requested": None, "mask": [0, 1, 2], "effective": [1]}, "counts": [0, 3, 0]}
    device = [{"index": i, "eventfd": i == 1, "raised": 3 * (i == 1) + 2 * (i == 2),
               "delivered": 3 * (i == 1), "pending": i == 2} for i in range(4)]
    qemu = {1: {**msg, "ctrl": 0},
            2: {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 1}}
    snap = build_snapshot([guest], qemu, device, ApicMap.from_apic_ids([0, 2, 4]))
    return snap.with_checks(results)


# --- exit status ------------------------------------------------------------------

def test_exit_status_all_passed():
    status = exit_status([PASS_MSG, SKIP_FREED])
    assert status.code == EXIT_PASS and status.failed == ()


def test_exit_status_names_failures(caplog):
    status = exit_status([PASS_MSG, FAIL_RAISE, SKIP_FREED])
    assert status.code == EXIT_FAIL
    assert status.failed == ("raise_counted_once_on_cpu[1]",)
    assert "raise_counted_once_on_cpu[1]" in status.message
    assert "raise_counted_once_on_cpu[1]" in caplog.text


@pytest.mark.parametrize("results", [[], [SKIP_FREED]])
def test_exit_status_cannot_judge_without_a_verdict(results):
    assert exit_status(results).code == EXIT_CANNOT_JUDGE


# --- routing.json -----------------------------------------------------------------

def test_checks_summary_counts_by_verdict_and_check():
    summary = checks_summary([PASS_MSG, FAIL_RAISE, SKIP_FREED, PASS_MSG])
    assert summary["total"] == 4
    assert (summary["pass"], summary["fail"], summary["skip"]) == (2, 1, 1)
    assert summary["by_check"]["cached_msg_matches_table"] == {"pass": 2, "fail": 0,
                                                               "skip": 0}
    assert summary["failed"] == [{"name": "raise_counted_once_on_cpu", "index": 1,
                                  "summary": FAIL_RAISE.summary}]
    assert summary["exit_code"] == EXIT_FAIL


def test_write_routing_json_document(tmp_path):
    path = write_routing_json(tmp_path / "routing.json", snapshot([PASS_MSG, FAIL_RAISE]),
                              METADATA, ApicMap.from_apic_ids([0, 2, 4]))
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["version"] == SCHEMA_VERSION
    assert doc["metadata"] == METADATA
    assert doc["apic_map"] == {"0": 0, "1": 2, "2": 4}
    assert [r["index"] for r in doc["records"]] == [0, 1, 2, 3]
    rec = doc["records"][1]
    assert (rec["group"], rec["irq"]) == (0, 41)
    assert rec["guest"]["msg"]["address_lo"] == 0xFEE02000
    assert rec["decoded"] == {"format": "compat", "dest_apic_id": 2, "dest_mode": "physical",
                              "redirection_hint": False, "vector": 0x23,
                              "delivery_mode": "fixed", "trigger": "edge",
                              "level_assert": False, "remap_handle": None, "cpu": 1}
    assert [c["verdict"] for c in rec["checks"]] == ["pass", "fail"]
    assert rec["checks"][1]["evidence"] == {"count_deltas": {"0": 1}}
    assert doc["records"][2]["guest"] is None and doc["records"][2]["qemu"]["ctrl"] == 1
    assert doc["checks"]["fail"] == 1 and doc["checks"]["exit_code"] == EXIT_FAIL
    assert [p.name for p in tmp_path.iterdir()] == ["routing.json"]


def test_routing_json_round_trips(tmp_path):
    original = snapshot([PASS_MSG, FAIL_RAISE, SKIP_FREED])
    apic_map = ApicMap.from_apic_ids([0, 2, 4])
    path = write_routing_json(tmp_path / "routing.json", original, METADATA, apic_map)
    assert read_routing_json(path) == (apic_map, original)


def test_write_routing_json_leaves_nothing_on_error(tmp_path):
    with pytest.raises(TypeError):
        write_routing_json(tmp_path / "routing.json", snapshot(), {"bad": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change,message", [
    ({"schema": "other"}, "not a msixlab.routing document"),
    ({"version": SCHEMA_VERSION + 1}, "unsupported"),
    ({"records": [{"index": 1, "guest": {"msg": {}}}]}, "malformed"),
    ({"apic_map": {"0": 1, "1": 1}}, "malformed"),
])
def test_snapshot_from_document_rejects(change, message):
    doc = {"schema": SCHEMA, "version": SCHEMA_VERSION, "metadata": {}, "apic_map": None,
           "records": [], **change}
    with pytest.raises(ReportError, match=message):
        snapshot_from_document(doc)


def test_read_routing_json_rejects_non_json(tmp_path):
    path = tmp_path / "routing.json"
    path.write_text("{")
    with pytest.raises(ReportError, match="not JSON"):
        read_routing_json(path)


# --- terminal table ---------------------------------------------------------------

def console():
    return Console(record=True, width=200, force_terminal=True, color_system="standard")


def test_render_table_rows_and_verdict():
    out = console()
    code = render(out, snapshot([PASS_MSG, FAIL_RAISE, SKIP_FREED]))
    text = out.export_text()
    assert code == EXIT_FAIL
    row1 = next(line for line in text.splitlines() if "fee02000/0023" in line)
    for cell in ("41", "apic 2 vec 0x23", "3 (1:3)", "3/3 E-", "1 pass", "FAIL raise"):
        assert cell in row1, row1
    row2 = next(line for line in text.splitlines() if "00000000/0000 masked" in line)
    assert "2/0 -P" in row2 and "1 skip" in row2 and "pass" not in row2
    assert "FAIL raise_counted_once_on_cpu[1]: counts grew by" in text
    assert "exit 1: 1 check(s) failed: raise_counted_once_on_cpu[1]" in text


def test_render_colours_verdicts():
    out = console()
    render(out, snapshot([PASS_MSG, FAIL_RAISE]))
    styled = out.export_text(styles=True)
    assert "\x1b[32m1 pass" in styled
    assert "\x1b[1;31m FAIL raise" in styled


def test_routing_table_hides_quiet_entries_unless_asked():
    snap = snapshot()
    shown = Console(record=True, width=200)
    shown.print(routing_table(snap))
    lines = [line.split("│")[1].strip() for line in shown.export_text().splitlines()
             if line.startswith("│") and line.split("│")[1].strip().isdigit()]
    assert lines == ["1", "2"]  # 0 and 3: never used, no checks
    every = Console(record=True, width=200)
    every.print(routing_table(snap, show_all=True))
    assert every.export_text().count("│") > shown.export_text().count("│")


def test_render_all_passed_exit_zero():
    out = console()
    assert render(out, snapshot([PASS_MSG])) == EXIT_PASS
    assert "exit 0: all 1 judged check(s) passed" in out.export_text()


def test_render_shows_the_console_tail_of_a_run_that_did_not_pass():
    # a CI log keeps no artifacts: where the guest stopped must be in the printed verdict
    tail = "[    0.77] smp: Bringing up secondary CPUs ...\n[    0.78] [x86] CPU 1"
    stalled = RunVerdict.from_error(BootStalled("the guest did not finish booting within "
                                                "180 s", console_tail=tail))
    out = console()
    assert render(out, Snapshot(()).with_checks([]), stalled) == 125
    text = out.export_text()
    assert "exit 125 (process_failed): the guest did not finish booting" in text
    assert "the console's last lines:\n" + tail in text          # markup-like text kept whole
    passed = RunVerdict(Outcome.PASS, "all passed", evidence={"console_tail": tail})
    out = console()
    render(out, Snapshot(()).with_checks([]), passed)
    assert "smp:" not in out.export_text()


def test_the_terminal_table_keeps_live_rows_and_counts_the_rest():
    """A 2,048-entry table must not print 2,048 rows: entries never live and never raised
    (QEMU gave them an eventfd, nothing else) go to one caption line; --table all keeps
    every row."""
    from agent.host.verdict.routing import DeviceView, RoutingRecord
    records = []
    for index in range(8):
        live = index in (2, 5)
        records.append(RoutingRecord(
            index=index, group=1 if live else None, irq=30 + index if live else None,
            guest=None, qemu=None,
            device=DeviceView(eventfd=True, raised=1 if index == 5 else 0,
                              delivered=1 if index == 5 else 0, pending=index == 7),
            decoded=None))
    snapshot = Snapshot(tuple(records))
    table = routing_table(snapshot)
    assert table.row_count == 3                   # 2 and 5 live, 7 holds a raise
    assert table.caption.startswith("5 more of 8 entries were never live")
    assert routing_table(snapshot, show_all=True).row_count == 8

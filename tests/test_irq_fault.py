"""The request_irq() failure judgement: all or nothing (every IRQ view exactly as before,
ENOMEM), and nothing leaked after a later free.  Real snapshots built from the views'
JSON, no lab."""

from __future__ import annotations

import pytest

from agent.host.scenarios import irq_fault
from agent.host.scenarios.irq_fault import IrqViews, unwound
from agent.host.verdict.routing import Verdict, build_snapshot

ENTRY = {"address_lo": 0xFEE00000, "address_hi": 0, "data": 0x21, "ctrl": 0}
CLEARED = {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 1}


def views(allocated=(0,), table=None, msi=(40,), rows=((40, 3),)) -> IrqViews:
    """Views of a 4-entry table: ``allocated`` indices live (IRQ 40 + index)."""
    table = table or {i: ENTRY if i in allocated else CLEARED for i in range(4)}
    guest = [{"group": 0, "index": i, "irq": 40 + i, "msg": ENTRY, "table": ENTRY,
              "affinity": {"requested": None, "mask": [0, 1], "effective": [0]},
              "counts": [0, 0]} for i in allocated]
    snap = build_snapshot(guest=guest, qemu=table)
    return IrqViews.read(snap, {"irqs": [{"irq": irq, "mode": "msix"} for irq in msi]},
                         {"rows": [{"irq": irq, "counts": [n, 0]} for irq, n in rows]})


def test_an_unwound_failure_passes():
    assert unwound("request_irq_failure_unwound", views(), views(), "ENOMEM").verdict \
        is Verdict.PASS
    assert unwound("no_leak_after_free", views(), views()).verdict is Verdict.PASS


@pytest.mark.parametrize("after, view", [
    (views(msi=(40, 42)), "msi_irqs"),                          # an IRQ left allocated
    (views(rows=((40, 3), (41, 0))), "interrupts"),             # a handler left requested
    (views(table={0: ENTRY, 1: ENTRY, 2: CLEARED, 3: CLEARED}), "table_entries"),
    (views(allocated=(0, 1), msi=(40, 41), rows=((40, 3), (41, 0))), "driver"),
])
def test_any_view_changed_fails_and_names_it(after, view):
    result = unwound("request_irq_failure_unwound", views(), after, "ENOMEM")
    assert result.verdict is Verdict.FAIL and view in result.evidence["changed"]
    assert view in result.summary


def test_a_group_that_did_not_fail_or_failed_otherwise_fails():
    got = unwound("request_irq_failure_unwound", views(), views(), None,
                  {"group": 5, "indices": [1, 2, 3]})
    assert got.verdict is Verdict.FAIL and "succeeded" in got.summary
    other = unwound("request_irq_failure_unwound", views(), views(), "ENOSPC")
    assert other.verdict is Verdict.FAIL and "expected ENOMEM" in other.summary


def test_a_masked_entry_s_leftover_message_is_not_in_effect():
    stale = {**CLEARED, "address_lo": 0xFEE00000, "data": 0xEF}   # never started, freed
    table = {0: ENTRY, 1: stale, 2: CLEARED, 3: CLEARED}
    assert unwound("request_irq_failure_unwound", views(), views(table=table)).verdict \
        is Verdict.PASS
    unmasked = {0: ENTRY, 1: {**stale, "ctrl": 0}, 2: CLEARED, 3: CLEARED}
    result = unwound("request_irq_failure_unwound", views(), views(table=unmasked))
    assert result.verdict is Verdict.FAIL and 1 in result.evidence["changed"]["table_entries"]


def test_without_fault_injection_both_checks_skip():
    assert {(r.name, r.verdict) for r in irq_fault.skipped("off")} == {
        (name, Verdict.SKIP) for name in irq_fault.CHECKS}

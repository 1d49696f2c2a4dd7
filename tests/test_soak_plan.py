"""The soak's pure parts: ops drawn from a seed (on one NIC or several), and the
reconciliation of counts."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import pytest

from agent.host.scenarios.soak_plan import (
    MAX_DOORBELLS,
    OP_KINDS,
    RECONCILE_CHECKS,
    SAFE_VECTORS_PER_CPU,
    SoakView,
    generate,
    judge_enospc,
    next_nic_op,
    next_op,
    reconcile,
)
from agent.host.verdict.routing import Verdict


def churn(seed: int, table: int = 64, cpus: int = 2, count: int = 600,
          nics: int = 1) -> list[dict]:
    """Ops for ``count`` steps on ``nics`` NICs, each a table that allocates the lowest
    free indices (any index) or start, start+1, ... (explicit), as the driver does."""
    rng = random.Random(seed)
    tables = [{0: (0,)} for _ in range(nics)]
    next_ids, log = [1] * nics, []
    for _ in range(count):
        views = [SoakView(table, cpus, dict(groups)) for groups in tables]
        op = next_nic_op(rng, views)
        nic = 0 if op.nic is None else op.nic
        groups, view = tables[nic], views[nic]
        check_op(op, view)
        entry = op.to_dict()
        if op.kind == "alloc":
            free = view.free_indices()
            start = op.args.get("start")
            if start is None:
                got = free[:op.args["max"]]
            else:
                got = []
                while start + len(got) < table and start + len(got) in free \
                        and len(got) < op.args["max"]:
                    got.append(start + len(got))
            groups[next_ids[nic]] = tuple(got)
            entry["group"] = next_ids[nic]
            next_ids[nic] += 1
        elif op.kind == "free":
            del groups[op.args["group"]]
        log.append(entry)
    return log


def check_op(op, view: SoakView) -> None:
    live, free = set(view.live()), set(view.free_indices())
    assert op.kind in OP_KINDS
    if op.kind == "alloc":
        a = op.args
        assert 1 <= a["min"] <= a["max"] and a["min"] <= len(free)
        if "start" in a:
            wanted = set(range(a["start"], a["start"] + a["min"]))
            assert wanted <= free, (a, sorted(free))
        if a.get("managed"):
            assert "cpu" in a
        if "cpu" in a:
            assert 0 <= a["cpu"] < view.cpus
    elif op.kind == "free":
        assert op.args["group"] in view.dynamic_groups()
    else:
        vectors = op.args["vectors"]
        assert len(set(vectors)) == len(vectors) >= 1, "one raise in flight per vector"
        assert set(vectors) <= (free if op.kind == "raise_unowned" else live)
        if op.kind == "raise_doorbell":
            assert len(vectors) <= MAX_DOORBELLS


def test_same_seed_same_ops_other_seed_other_ops():
    assert churn(5) == churn(5)
    assert churn(5) != churn(6)


@pytest.mark.parametrize("seed", range(6))
def test_every_kind_is_drawn_and_every_op_is_valid(seed):
    log = churn(seed, table=32, cpus=3)
    kinds = {entry["op"] for entry in log}
    assert kinds == set(OP_KINDS)
    allocs = [e for e in log if e["op"] == "alloc"]
    assert any("start" in e for e in allocs) and any("start" not in e for e in allocs)
    assert any(e.get("managed") for e in allocs) and any("cpu" not in e for e in allocs)


# sha256 (16 hex digits) of json.dumps(churn(seed)) made by the generator before the
# soak had NICs (commit 6dadcd9): a one-NIC soak must still make exactly these ops
BEFORE_NICS = {5: "27368247cc18175b", 7: "1dd51d410a97cfe4"}


@pytest.mark.parametrize("seed", sorted(BEFORE_NICS))
def test_one_nic_makes_the_ops_it_made_before_nics_existed(seed):
    log = churn(seed, nics=1)
    assert hashlib.sha256(json.dumps(log).encode()).hexdigest()[:16] == BEFORE_NICS[seed]
    assert not any("nic" in entry for entry in log)
    view = SoakView(64, 2, {0: (0,), 1: (1, 2, 3)})
    rng = random.Random(seed)
    assert generate(seed, view, 300, nics=1) == [next_op(rng, view) for _ in range(300)]


@pytest.mark.parametrize("nics", [2, 3, 8])
def test_nic_choices_replay_and_every_nic_gets_every_kind(nics):
    log = churn(5, nics=nics, count=300 * nics)
    assert log == churn(5, nics=nics, count=300 * nics)       # the same NIC choices too
    assert [e["nic"] for e in log] != [e["nic"] for e in churn(6, nics=nics, count=300 * nics)]
    by_nic = Counter(entry["nic"] for entry in log)
    assert set(by_nic) == set(range(nics))
    assert min(by_nic.values()) > 200                          # drawn evenly enough
    for nic in range(nics):
        assert {e["op"] for e in log if e["nic"] == nic} == set(OP_KINDS), nic


def test_a_full_table_is_only_raised_or_freed():
    view = SoakView(4, 1, {0: (0,), 1: (1, 2, 3)})
    ops = generate(1, view, 200)
    assert {op.kind for op in ops} == {"raise_device", "raise_doorbell", "free"}


def test_live_cap_stops_allocation():
    view = SoakView(64, 2, {0: (0,), 1: tuple(range(1, 8))}, live_cap=8)
    assert "alloc" not in {op.kind for op in generate(2, view, 200)}


def test_reconcile_names_lost_duplicated_and_spurious():
    expected = {0: 1, 5: 2, 6: 1, 7: 0}
    before = {0: 1, 5: 1, 6: 0, 7: 0}
    totals = {0: 1, 5: 1, 6: 2, 7: 1}      # 5 lost one, 6 counted twice, 7 unraised
    results = reconcile(expected, before, totals, raised=[5, 6])
    failed = {(r.name, r.index) for r in results if r.verdict is Verdict.FAIL}
    assert failed == {("no_interrupt_lost", 5), ("no_interrupt_duplicated", 6),
                      ("no_spurious_interrupt", 7)}
    assert all(r.verdict is Verdict.FAIL for r in results)


def test_reconcile_passes_when_every_count_agrees_and_flags_a_missing_vector():
    results = reconcile({0: 3, 4: 1}, {0: 2}, {0: 3, 4: 1}, raised=[0, 4])
    assert [(r.name, r.verdict) for r in results] == [(n, Verdict.PASS) for n in RECONCILE_CHECKS]
    (missing,) = [r for r in reconcile({9: 1}, {}, {}, [9]) if r.verdict is Verdict.FAIL]
    assert missing.name == "no_interrupt_lost" and missing.index == 9


# --- ENOSPC judged against the ledger's free entries and the CPUs' vector space ----------

def enospc(args: dict, free: list[int], live: int = 10, cpus: int = 2, table: int = 64):
    return judge_enospc(args, free, table, live, cpus)


def test_enospc_with_room_for_an_any_index_group_fails_even_when_scattered():
    scattered = [3, 9, 17, 40]                  # no two adjacent: any index needs none
    result = enospc({"min": 4, "max": 6}, scattered)
    assert result.verdict is Verdict.FAIL and result.name == "enospc_only_when_full"
    assert result.evidence["table_room"] and result.evidence["vector_room"]
    assert enospc({"min": 5, "max": 6}, scattered).verdict is Verdict.PASS   # table full


def test_enospc_for_an_explicit_start_needs_its_run_of_entries_free():
    assert enospc({"min": 3, "max": 3, "start": 9}, [9, 10, 11]).verdict is Verdict.FAIL
    assert enospc({"min": 3, "max": 3, "start": 9}, [9, 11, 12]).verdict is Verdict.PASS
    assert enospc({"min": 3, "max": 3, "start": 62}, [62, 63]).verdict is Verdict.PASS


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_enospc_is_right_when_the_cpus_vector_space_may_be_full(cpus):
    free = list(range(1, 64))
    # a group for one CPU: all live vectors may sit on that CPU
    edge = SAFE_VECTORS_PER_CPU - 4
    assert enospc({"min": 4, "max": 4, "cpu": 0}, free, edge, cpus).verdict is Verdict.FAIL
    assert enospc({"min": 4, "max": 4, "cpu": 0}, free, edge + 1, cpus).verdict is Verdict.PASS
    # a group for no CPU: any CPU with room takes it
    spread = SAFE_VECTORS_PER_CPU * cpus - 4
    assert enospc({"min": 4, "max": 4}, free, spread, cpus).verdict is Verdict.FAIL
    assert enospc({"min": 4, "max": 4}, free, spread + 1, cpus).verdict is Verdict.PASS

"""The scenario's own logic without a guest: declared checks and the 'not judged' rule,
the plan's consistency, and the pure judgements it makes itself."""

import inspect

import pytest

from agent.host.jobs.run import judge
from agent.host.scenarios import reset_step, default as scenario
from agent.host.scenarios.default import PLAN, Scenario
from agent.host.verdict import accounting, checks
from agent.host.verdict.outcome import Outcome
from agent.host.verdict.routing import CheckResult, Verdict, build_snapshot


def passed_everything():
    s = Scenario(lab=None)
    for step, names in PLAN:
        for name in names:
            s.results.append(CheckResult(name, None, Verdict.PASS, step=step))
    return s


def test_every_step_has_a_method_and_declares_checks():
    for step, names in PLAN:
        assert callable(getattr(Scenario, "step_" + step.replace("-", "_")))
        assert names and len(set(names)) == len(names)


def test_every_declared_check_is_produced_somewhere():
    source = "".join(inspect.getsource(m) for m in (scenario, checks, accounting, reset_step))
    for _, names in PLAN:
        for name in names:
            assert f'"{name}"' in source, name


def test_a_declared_check_that_did_not_run_fails_as_not_judged():
    s = passed_everything()
    assert s.not_judged() == []
    s.results = [r for r in s.results if not (r.step == "final" and r.name ==
                                               "kernel_irq_view_agrees")]
    (missing,) = s.not_judged()
    assert (missing.step, missing.name, missing.verdict) == ("final", "kernel_irq_view_agrees",
                                                             Verdict.FAIL)


def test_a_skip_does_not_count_as_judged():
    s = passed_everything()
    s.results.append(CheckResult("x", None, Verdict.SKIP, step="alloc"))
    s.results = [r for r in s.results if not (r.step == "alloc" and r.name == "group_id_unique")]
    s.results.append(CheckResult("group_id_unique", None, Verdict.SKIP, step="alloc"))
    assert [m.name for m in s.not_judged()] == ["group_id_unique"]


def test_judge_pass_fail_and_nothing_judged():
    s = passed_everything()
    verdict = judge(s, [])
    assert verdict.outcome is Outcome.PASS and verdict.counts["failed"] == 0
    assert verdict.counts["declared"] == sum(len(n) for _, n in PLAN)
    s.results.append(CheckResult("counts_match_raises", 5, Verdict.FAIL, "lost", step="raise-device"))
    s.stopped_at = "raise-device"
    verdict = judge(s, [{"kind": "drop_raise"}])
    assert verdict.outcome is Outcome.CHECK_FAILED and verdict.exit_code == 1
    assert verdict.failed == ("raise-device/counts_match_raises[5]",)
    assert verdict.faults == ({"kind": "drop_raise"},)
    assert judge(Scenario(lab=None), []).exit_code == 125


def test_a_failed_allocation_must_leave_every_entry_as_it_was():
    entry = {"address_lo": 0xFEE00000, "address_hi": 0, "data": 0x21, "ctrl": 0}
    before = build_snapshot(qemu={1: entry, 2: {**entry, "ctrl": 1}})
    assert Scenario._unchanged(before, before).verdict is Verdict.PASS
    after = build_snapshot(qemu={1: entry, 2: {**entry, "ctrl": 0}})
    result = Scenario._unchanged(before, after)
    assert result.verdict is Verdict.FAIL and result.evidence["changed"] == [2]


def test_out_of_cpu_vectors_a_free_entry_may_keep_a_masked_stale_message():
    blank = {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 1}
    stale = {"address_lo": 0xFEE00000, "address_hi": 0, "data": 0xEF, "ctrl": 1}
    before = build_snapshot(qemu={7: blank})
    after = build_snapshot(qemu={7: stale})
    assert Scenario._unchanged(before, after).verdict is Verdict.FAIL   # the table's end
    result = Scenario._unchanged(before, after, stale_masked_ok=True)
    assert result.verdict is Verdict.PASS and result.evidence == {"stale_masked": [7]}
    unmasked = build_snapshot(qemu={7: {**stale, "ctrl": 0}})
    result = Scenario._unchanged(before, unmasked, stale_masked_ok=True)
    assert result.verdict is Verdict.FAIL and result.evidence["changed"] == [7]


def test_index_reuse():
    assert {r.verdict for r in Scenario.index_reused([5, 6], [6, 5])} == {Verdict.PASS}
    assert {r.verdict for r in Scenario.index_reused([5, 6], [5, 15])} == {Verdict.FAIL}


def test_exhaustion_fills_the_table_only_when_the_cpus_can_hold_it():
    per_cpu = scenario.VECTORS_PER_CPU
    assert scenario.exhaustion_fill(64, 1) == 64               # the default table: all of it
    assert scenario.exhaustion_fill(2048, 2) == 2 * per_cpu    # x86 runs out first
    assert scenario.exhaustion_fill(512, 2) == 2 * per_cpu
    assert scenario.exhaustion_fill(512, 4) == 512             # 4 CPUs fill 512 entries
    smallest = -(-2048 // per_cpu)
    assert smallest == 15                                      # as docs/scenarios.md says
    assert scenario.exhaustion_fill(2048, smallest) == 2048
    assert scenario.exhaustion_fill(2048, smallest - 1) < 2048


@pytest.mark.parametrize("live,size,held", [
    ({0, 1, 2, 3, 4, 5, 6, 7, 8, 60, 61, 62, 63}, 64, [1, 2, 8, 63]),
    ({0, 5, 9, 10, 63}, 64, [5, 9, 10, 63]),        # the pair is 9, 10; 5 is another byte
    ({0, 1, 2, 3}, 64, [1, 2]),                   # N - 1 not live: not raised
    ({0, 7, 8, 23}, 24, [7, 8, 23]),            # no pair in one byte: the first two
])
def test_held_pending_choice(live, size, held):
    assert scenario.held_pending_choice(live, size) == held

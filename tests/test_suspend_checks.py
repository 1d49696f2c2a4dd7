"""The suspend scenario's own checks and the restore checks it shares with the reset step,
on good data and on broken data; and what it does with a kernel that offers less."""

from __future__ import annotations

import pytest

from agent.guest import power
from agent.host.scenarios import reset_step
from agent.host.scenarios import suspend
from agent.host.scenarios.default import Scenario
from agent.host.verdict.outcome import CouldNotJudge, Outcome
from agent.host.verdict.routing import Verdict

from test_checks import snap, vec


def device(power_state="D3hot", **vectors):
    """A device ``state`` with the given power state and vectors ({index: (delivered,
    pending)})."""
    table = [{"index": i, "delivered": 0, "pending": False} for i in range(8)]
    for name, (delivered, pending) in vectors.items():
        table[int(name[1:])] = {"index": int(name[1:]), "delivered": delivered,
                                "pending": pending}
    return {"power": {"state": power_state, "d3hot_entries": 1}, "vectors": table,
            "resets": 0, "faults": []}


def verdicts(results):
    return [r.verdict for r in results]


def test_low_power_reached_wants_d3hot_and_no_other_problem():
    ok = suspend.low_power_reached(device(), [], "runtime D3hot")
    assert ok.verdict is Verdict.PASS
    d0 = suspend.low_power_reached(device("D0"), [], "runtime D3hot")
    assert d0.verdict is Verdict.FAIL and "in D0 during runtime D3hot" in d0.summary
    extra = suspend.low_power_reached(device(), ["runtime_status active"], "x")
    assert extra.verdict is Verdict.FAIL and "runtime_status active" in extra.summary


def test_a_raise_in_d3hot_must_be_held_and_not_delivered():
    before = device(v1=(3, False), v2=(3, False), v3=(3, False))
    after = device(v1=(3, True), v2=(4, False), v3=(3, False))
    held, sent, lost = suspend.held_in_d3hot(before, after, [1, 2, 3])
    assert held.verdict is Verdict.PASS
    assert sent.verdict is Verdict.FAIL and "delivered 1 times in D3hot" in sent.summary
    assert lost.verdict is Verdict.FAIL and "not held pending" in lost.summary


PM = {"runtime_suspends": 1, "runtime_resumes": 1, "system_suspends": 0,
      "system_resumes": 0, "irqs_disabled": False}


@pytest.mark.parametrize("after,kind,ok,words", [
    ({**PM, "runtime_suspends": 2, "runtime_resumes": 2}, "runtime", True, ""),
    ({**PM, "system_suspends": 1, "system_resumes": 1}, "system", True, ""),
    ({**PM, "runtime_suspends": 2, "runtime_resumes": 3}, "runtime", False, "ran 2 times"),
    ({**PM, "runtime_suspends": 2, "runtime_resumes": 2, "system_resumes": 1}, "runtime",
     False, "system resume ran too"),
    ({**PM, "runtime_suspends": 2, "runtime_resumes": 2, "irqs_disabled": True}, "runtime",
     False, "still disabled"),
    (PM, "system", False, "system suspend ran 0 times"),
])
def test_the_drivers_callbacks_ran_once_each_and_enabled_the_vectors(after, kind, ok, words):
    (result,) = suspend.callbacks_ran(PM, after, kind)
    assert (result.verdict is Verdict.PASS) is ok, result
    assert words in result.summary


def test_entry_restored_judges_a_moved_vector_against_the_kernels_message():
    before = snap(vec(5, cpu=1))
    moved = snap(vec(5, cpu=0))                    # S3 took CPU 1 down: now on CPU 0
    assert reset_step.entry_restored(before, moved, 5, moved=True).verdict is Verdict.PASS
    assert reset_step.entry_restored(before, moved, 5).verdict is Verdict.FAIL
    stale = vec(5, cpu=0)
    stale["qemu"] = dict(vec(5, cpu=1)["qemu"])    # QEMU kept the old message: not restored
    result = reset_step.entry_restored(before, snap(stale), 5, moved=True)
    assert result.verdict is Verdict.FAIL and "the kernel's" in result.summary


def test_a_vector_off_cpu_0_counts_as_moved_by_s3():
    assert reset_step._off_boot_cpu(snap(vec(1, cpu=1)).get(1))
    assert not reset_step._off_boot_cpu(snap(vec(1, cpu=0)).get(1))
    assert not reset_step._off_boot_cpu(None)


@pytest.mark.parametrize("grew,resets,ok", [(2, 2, True), (1, 2, False), (2, 1, False)])
def test_reached_device_counts_the_resets_the_transition_makes(grew, resets, ok):
    result = reset_step.reached_device({"resets": 3}, {"resets": 3 + grew, "faults": []},
                                       "suspend-mem", resets)
    assert (result.verdict is Verdict.PASS) is ok


def test_the_host_waits_for_the_marker_the_guest_prints():
    assert suspend.RESUMED_MARKER == power.RESUMED_MARKER


class FakeLab:
    cpus = 2
    hello = {"kernel": "7.3.4-test"}

    def __init__(self, offered):
        self.offered = offered

    def agent(self, cmd, **args):
        assert cmd == "sleep_states"
        return self.offered


OFFERED = {"states": ["freeze", "mem"], "mem_sleep": ["s2idle", "[deep]"], "s3": True,
           "s2idle": True, "keyboard_wakeup": "disabled"}


@pytest.mark.parametrize("change,skipped", [
    ({}, []),
    ({"s3": False}, ["suspend-mem"]),
    ({"keyboard_wakeup": None}, ["suspend-freeze"]),
])
def test_a_kernel_without_one_sleep_runs_the_other(monkeypatch, change, skipped):
    monkeypatch.setattr(Scenario, "run", lambda self: "ran")
    sc = suspend.Suspend(FakeLab({**OFFERED, **change}), say=lambda text: None)
    assert sc.run() == "ran"
    steps = [step for step, _ in sc.PLAN]
    assert [s for s in suspend.STEPS if s not in steps] == skipped
    assert [t["step"] for t in sc.transitions] == skipped
    assert steps[-1] == "final" and steps.index("suspend-freeze" if not skipped else steps[1])


@pytest.mark.parametrize("change", [{"s3": False, "s2idle": False},
                                    {"s3": False, "keyboard_wakeup": None}])
def test_a_kernel_the_rig_cannot_wake_is_could_not_judge(change):
    sc = suspend.Suspend(FakeLab({**OFFERED, **change}), say=lambda text: None)
    with pytest.raises(CouldNotJudge) as err:
        sc.run()
    assert err.value.outcome is Outcome.KERNEL_UNSUPPORTED
    assert "offers no system sleep" in str(err.value)


def test_s3_comes_last():
    steps = [step for step, _ in suspend.PLAN]
    assert steps == ["alloc", "runtime-d3hot", "suspend-freeze", "suspend-mem", "final"]

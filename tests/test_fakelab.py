"""The fake lab (agent/host/testkit/fakelab.py): every scenario it simulates passes whole,
in milliseconds, and its default run ends exactly where a real run ended; a mistake in
the ledger, the checks, the scenarios, the device model or the simulated guest fails it
before any guest boots."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from agent.host import scenarios
from agent.host.errors import GuestAgentError, HostError, WaitTimeout
from agent.host.jobs.run import judge
from agent.host.scenarios import default
from agent.host.scenarios.default import Scenario
from agent.host.testkit.fakelab import FakeLab, bdf, run_scenario, virtual_time
from agent.host.testkit.simdriver import Msixlab
from agent.host.verdict.ledger import Ledger
from agent.host.verdict.outcome import DriverCallFailed, Outcome
from mutants import fakelab as fake_mutants
from mutants import run as mutate
from mutants.catalogue import MUTANTS
from qemu_device.device.msix import MsixState

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "fakelab"
#: a run takes 20 to 300 ms on the project's loaded 2-core machine (2048 vectors: about
#: 1 s); the bound only catches a run that really sleeps or waits out a deadline
WALL_LIMIT_S = 10.0
CASES = [
    ("default", {}), ("default", {"cpus": 1}), ("default", {"cpus": 4}),
    ("default", {"cpus": 8}), ("default", {"vectors": 24}), ("default", {"vectors": 2048}),
    ("default", {"msix_maskable": True}), ("default", {"msix_noresize": True}),
    ("default", {"nics": 2}), ("default", {"nics": 3, "cpus": 4}),
    ("cpu-hotplug", {}), ("cpu-hotplug", {"cpus": 8}), ("cpu-hotplug", {"nics": 2}),
    ("remove-rescan", {}),
]


def failed(sc) -> set[str]:
    return {r.name for r in sc.results if r.verdict == "fail"}


# --- every scenario that can be simulated, whole ---------------------------------------------

@pytest.mark.parametrize("name, options", CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'plain'}"
                              for n, o in CASES])
def test_every_simulated_scenario_passes_whole_in_milliseconds(name, options):
    started = time.perf_counter()
    sc = run_scenario(scenarios.get(name), **options)
    wall = time.perf_counter() - started
    verdict = judge(sc, [])
    assert verdict.outcome is Outcome.PASS, verdict.summary
    assert sc.stopped_at is None and verdict.counts["not_judged"] == 0
    assert verdict.counts["passed"] == verdict.counts["results"] > 100
    assert wall < WALL_LIMIT_S, f"{name} {options} took {wall:.2f} s"
    # nothing went astray on the way: no MSI without a handler, no fd misused, no message
    # lost to bus mastering off
    assert sc.lab.kernel.stray == []
    assert [(d.qemu.fds.problems, d.qemu.dropped) for d in sc.lab.devices] == \
        [([], 0)] * len(sc.lab.devices)


def _vector_blind(record: dict) -> dict:
    """A record without its vector number (the message's data, the decoded vector)."""
    record = json.loads(json.dumps(record))
    for entry in ([record["guest"]["msg"], record["guest"]["table"]] if record["guest"] else []) \
            + ([record["qemu"]] if record["qemu"] else []):
        entry["data"] = None
    if record["decoded"]:
        record["decoded"]["vector"] = None
    return record


@pytest.mark.parametrize("name, exact", [("default", True), ("cpu-hotplug", False)])
def test_a_fake_run_ends_where_a_real_one_did(name, exact, tmp_path):
    """The same verdict counts, steps, groups, final records (the driver's view, QEMU's
    table, the device's counters, the decoded message) and SET_IRQS of each reset as a
    real run of the scenario (7.3.4, QEMU 11.1.3, TCG, 2 CPUs, 64 vectors:
    tests/data/fakelab/).  After a CPU went offline the real kernel moved its other
    devices' IRQs too, which the fake does not: there the vector numbers differ."""
    real = json.loads((REAL / f"real-{name}-2cpu-64.json").read_text())
    sc = run_scenario(scenarios.get(name), cpus=2, vectors=64, event_logs=str(tmp_path))
    assert judge(sc, []).counts == real["verdict"]["counts"]
    assert [s["step"] for s in sc.steps] == real["steps"]
    assert {label: group["indices"] for label, group in sc.groups.items()} == real["groups"]
    keys = ("index", "group", "irq", "guest", "qemu", "device", "decoded")
    same = (lambda a, b: a == b) if exact else (lambda a, b: _vector_blind(a) == _vector_blind(b))
    fake = [{k: r.to_dict()[k] for k in keys} for r in sc.final.records]
    assert [f["index"] for f, r in zip(fake, real["records"], strict=True) if not same(f, r)] == []
    assert len(sc.resets) == len(real["resets"])
    for mine, theirs in zip(sc.resets, real["resets"]):
        assert mine["method"] == theirs["method"]
        assert (mine["raised_during"], mine["discarded"]) == (theirs["raised_during"],
                                                              theirs["discarded"])
        assert mine["qemu_sent"]["set_irqs"] == theirs["set_irqs"]
        assert mine["qemu_sent"]["resets"] == theirs["device_resets"]


# --- mistakes it catches ------------------------------------------------------------------------

def test_a_ledger_that_forgets_a_raise_qemu_held_fails_at_reuse(monkeypatch):
    """Planted: the ledger no longer owes a freed index's held raise to its next owner."""
    original = Ledger.allocated

    def forgetful(self, request):
        for index in request.indices:
            self.accounts[index].qemu_held = False
        original(self, request)
    monkeypatch.setattr(Ledger, "allocated", forgetful)
    sc = run_scenario(Scenario)
    assert sc.stopped_at == "free-and-reuse"
    assert "counts_match_raises" in failed(sc)


def test_a_ledger_that_counts_a_doorbell_twice_fails_at_the_doorbell_step(monkeypatch):
    original = Ledger.raised

    def twice(self, index, *, has_eventfd, doorbell=False):
        original(self, index, has_eventfd=has_eventfd, doorbell=doorbell)
        self.doorbell_raises += doorbell
    monkeypatch.setattr(Ledger, "raised", twice)
    sc = run_scenario(Scenario)
    assert sc.stopped_at == "raise-doorbell" and "irq_total_matches" in failed(sc)


def test_a_step_that_stops_judging_a_declared_check_fails_as_not_judged(monkeypatch):
    monkeypatch.setattr(default.checks, "RECORD_CHECKS", default.checks.RECORD_CHECKS[:2])
    sc = run_scenario(Scenario)
    verdict = judge(sc, [])
    assert verdict.outcome is Outcome.CHECK_FAILED and verdict.counts["not_judged"] > 0
    assert "affinity_honoured" in failed(sc)


def test_a_guest_that_counts_every_interrupt_twice_fails_at_the_first_interrupt(monkeypatch):
    original = Msixlab.count

    def twice(self, vec, cpu):
        original(self, vec, cpu)
        vec.counts[cpu] += 1
    monkeypatch.setattr(Msixlab, "count", twice)
    sc = run_scenario(Scenario)
    assert sc.stopped_at == "alloc"
    assert {"pending_delivered_after_alloc", "counts_match_raises"} <= failed(sc)


def test_the_real_device_model_is_in_the_loop(monkeypatch):
    """Planted in qemu_device's own MsixState: a held raise is never delivered."""
    monkeypatch.setattr(MsixState, "flush_pending", lambda self, vectors=None: [])
    sc = run_scenario(Scenario)
    assert sc.stopped_at == "alloc" and "pending_delivered_after_alloc" in failed(sc)


HOST_SIDE = [m for m in MUTANTS if fake_mutants.why_not(m) is None
             and all(e.path.startswith("agent/host/") for e in m.edits)]


def test_the_fake_lab_kills_every_host_side_mutant_of_the_catalogue(capsys):
    """The catalogue's mutants that edit only the host (checks, accounting, the
    scenarios), each in a scratch copy run in the fake lab; the list says which killed."""
    assert len(HOST_SIDE) >= 8
    bases, results = fake_mutants.run_all(HOST_SIDE, jobs=2)
    assert [(b.name, b.exit_code) for b in bases] == [("baseline:run", 0)]
    with capsys.disabled():
        for out in results:
            print(f"\n{'killed' if out.killed else 'SURVIVED'} {out.name}: "
                  f"{', '.join(out.matched) or out.summary} ({out.seconds:.1f} s)", end="")
    assert [o.name for o in results if not o.killed] == []


@pytest.mark.parametrize("twin", fake_mutants.TWINS, ids=lambda t: t.name)
def test_every_twin_applies_once_and_expects_checks_that_exist(twin):
    mutate.check_applies(twin, ROOT)
    real = twin.name.removesuffix("@sim")
    assert real in {m.name for m in MUTANTS}
    outcomes = {str(o) for o in Outcome if o.exit_code == 1}
    assert twin.expected and twin.expected <= mutate.declared_checks() | outcomes


def test_the_list_says_why_a_mutant_does_not_hold():
    reasons = {m.name: fake_mutants.why_not(m) for m in MUTANTS}
    assert reasons["dev-lost-raise"] is None
    assert "twin" in reasons["kmod-handler-counts-twice"]
    assert "not simulated" in reasons["dev-live-raise-held"]
    assert "kernel report" in reasons["kmod-double-free-irq"]
    assert fake_mutants.fake_options(("run", "--nics", "2")) == {"scenario": "default",
                                                               "nics": 2}
    assert fake_mutants.fake_options(("run", "--iommu")) is None


# --- the lab itself -----------------------------------------------------------------------------

def test_waits_run_on_virtual_time_and_name_what_they_waited_for():
    lab = FakeLab()
    index = lab.agent("alloc_group", min=1, max=1)["indices"][0]
    lab.device_command("fault", kind="delay_raise", vector=index, delay_ms=300)
    lab.device_command("raise", vectors=[index])
    assert lab.agent("vector", index=index)["total"] == 0
    started = time.perf_counter()
    lab.wait_until(lambda: lab.agent("vector", index=index)["total"] == 1, 1.0,
                   "the delayed raise")
    assert 0.3 <= lab.clock.now() < 1.0
    with pytest.raises(WaitTimeout, match="nothing at all"):
        lab.wait_until(lambda: False, 60.0, "nothing at all")
    assert lab.clock.now() >= 60 and time.perf_counter() - started < 2.0


def test_virtual_time_puts_the_scenario_modules_back():
    lab = FakeLab()
    before = (default.time, default.Deadline)
    with pytest.raises(RuntimeError), virtual_time(lab):
        default.time.sleep(3600)
        assert lab.clock.now() == 3600
        raise RuntimeError("the run ended")
    assert (default.time, default.Deadline) == before


def test_the_real_agent_checks_arguments_and_the_driver_answers_with_its_errnos():
    lab = FakeLab(vectors=32)
    with pytest.raises(GuestAgentError) as bad:
        lab.agent("alloc_group", min=0, max=1)               # the agent's own Arg check
    assert bad.value.code == "EINVAL" and not isinstance(bad.value, DriverCallFailed)
    with pytest.raises(DriverCallFailed) as busy:
        lab.agent("alloc_group", min=2, max=2, start=0)      # index 0 is group 0's
    assert busy.value.code == "EBUSY"
    with pytest.raises(DriverCallFailed) as absent:
        lab.agent("raise", index=5)
    assert absent.value.code == "ENOENT"
    assert lab.hello["device"]["bdf"] == bdf(0) and lab.hello["dyn_alloc"] is True


@pytest.mark.parametrize("cmd, args", [("vfio_bind", {}), ("crash", {"kind": "warn"}),
                                       ("reload_module", {}),
                                       ("await_device", {"present": True})])
def test_what_is_not_simulated_is_refused_with_enosys(cmd, args):
    with pytest.raises(GuestAgentError) as err:
        FakeLab().agent(cmd, **args)
    assert err.value.code == "ENOSYS" and "fake lab" in str(err.value)


@pytest.mark.parametrize("options, named", [({"vectors": 0}, "vectors"),
                                            ({"cpus": 65}, "cpus"), ({"nics": 9}, "nics"),
                                            ({"cpus": True}, "cpus"),
                                            ({"iommu": True}, "--iommu")])
def test_bad_options_are_refused_naming_them(options, named):
    with pytest.raises(HostError, match=named):
        FakeLab(**options)


def test_the_example_of_the_page_runs():
    """docs/writing-tests.md's fake lab example, as written."""
    page = (ROOT / "docs" / "writing-tests.md").read_text()
    section = page[page.index("## The fake lab"):]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    exec(compile(example, "docs/writing-tests.md", "exec"), {})


@pytest.mark.parametrize("name", ["hotplug", "vfio-pci"])
def test_a_scenario_it_does_not_simulate_is_refused_saying_why(name):
    with pytest.raises(HostError, match=f"does not run scenario '{name}'"):
        run_scenario(scenarios.get(name))

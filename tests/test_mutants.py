"""The mutant catalogue cannot rot: every mutant applies to the current tree exactly once,
says what it plants, expects checks that exist, and the runner judges kills correctly."""

from pathlib import Path

import pytest

import json

from agent.host.scenarios.default import PLAN
from agent.host.scenarios.soak_plan import SOAK_CHECKS
from agent.host.verdict.outcome import Outcome
from mutants import catalogue, run
from mutants.catalogue import EQUIVALENT, MUTANTS, Edit, Mutant

ROOT = Path(__file__).resolve().parents[1]
DECLARED = run.declared_checks()
AREAS = ("qemu_device/device/", "agent/kmod/", "agent/host/verdict/checks.py",
         "agent/host/verdict/accounting.py", "agent/host/scenarios/default.py")


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_every_mutant_applies_exactly_once(mutant):
    run.check_applies(mutant, ROOT)
    for edit in mutant.edits:
        assert edit.old != edit.new


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_every_mutant_says_what_it_plants_and_what_catches_it(mutant):
    assert mutant.kind in ("bug", "unjudged", "weakened")
    assert mutant.description.strip() and "\n" not in mutant.description
    assert mutant.expected
    outcomes = {str(o) for o in Outcome if o.exit_code == 1}
    declared = DECLARED
    unknown = mutant.expected - declared - outcomes - catalogue.SELFTEST_CASES
    assert not unknown, f"{mutant.name} expects checks nobody declares: {sorted(unknown)}"
    if "kernel_splat" in mutant.expected:
        assert mutant.splat, "an expected splat names the console line it must match"
    if mutant.kind == "weakened":
        host = [e for e in mutant.edits if e.path.startswith("agent/host/")]
        assert host and len(host) < len(mutant.edits), "a weakened check plus the bug it guards"


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutated_python_still_compiles(mutant, tmp_path):
    for edit in mutant.edits:
        if edit.path.endswith(".py"):
            text = (ROOT / edit.path).read_text().replace(edit.old, edit.new, 1)
            compile(text, edit.path, "exec")


def test_the_catalogue_covers_every_area_and_has_25_distinct_mutants():
    assert len(MUTANTS) >= 25
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    assert not set(EQUIVALENT) & {m.name for m in MUTANTS}
    for area in AREAS:
        assert any(p.startswith(area) for m in MUTANTS for p in m.paths), area
    assert catalogue.by_name()["kmod-readout-omits-index0"].paths == ("agent/kmod/msixlab_group.c",)


def test_rot_is_refused_loudly(tmp_path):
    (tmp_path / "f.py").write_text("a = 1\na = 1\n")
    twice = Mutant("twice", "bug", "x", frozenset({"counts_match_raises"}),
                   (Edit("f.py", "a = 1", "a = 2"),))
    with pytest.raises(run.CatalogueRot, match="occurs 2 times"):
        run.apply(twice, tmp_path)
    gone = Mutant("gone", "bug", "x", frozenset({"counts_match_raises"}),
                  (Edit("f.py", "b = 1", "b = 2"),))
    with pytest.raises(run.CatalogueRot, match="occurs 0 times"):
        run.apply(gone, tmp_path)
    assert (tmp_path / "f.py").read_text() == "a = 1\na = 1\n"
    once = Mutant("once", "bug", "x", frozenset({"x"}), (Edit("f.py", "a = 1\na", "b = 1\na"),))
    run.apply(once, tmp_path)
    assert (tmp_path / "f.py").read_text() == "b = 1\na = 1\n"


def test_a_kill_needs_exit_1_and_an_expected_check_or_outcome():
    m = Mutant("m", "bug", "x", frozenset({"group_id_unique", "kernel_splat"}), ())
    failed = {"outcome": "check_failed", "failed": ["free-and-reuse/group_id_unique",
                                                    "alloc/counts_match_raises[3]"]}
    assert run.judge(m, 1, failed).killed
    assert run.judge(m, 1, failed).matched == ["group_id_unique"]
    assert not run.judge(m, 125, failed).killed
    assert not run.judge(m, 0, {"outcome": "pass", "failed": []}).killed
    other = {"outcome": "check_failed", "failed": ["alloc/counts_match_raises[3]"]}
    assert not run.judge(m, 1, other).killed
    assert run.judge(m, 1, {"outcome": "kernel_splat", "failed": []}).killed
    assert not run.judge(m, 1, None).killed
    splat = Mutant("s", "bug", "x", frozenset({"kernel_splat"}), (), splat=r"free_irq")
    assert run.judge(splat, 1, {"outcome": "kernel_splat", "evidence": {
        "line": "WARNING: kernel/irq/manage.c:1894 at free_irq+0x1ae/0x2e0, CPU#1"}}).killed
    assert not run.judge(splat, 1, {"outcome": "kernel_splat", "evidence": {
        "line": "Kernel panic - not syncing: IO-APIC + timer doesn't work!"}}).killed
    assert run.check_name("final/kernel_irq_view_agrees[12]") == "kernel_irq_view_agrees"
    assert run.check_name("exhausted_with_enospc") == "exhausted_with_enospc"


def test_the_scratch_copy_is_the_working_tree_without_venv_or_results(tmp_path):
    files = run.project_files(ROOT)
    assert "agent/host/scenarios/default.py" in files and "mutants/catalogue.py" in files
    assert not [f for f in files if f.startswith((".venv/", "results/"))]
    run.copy_project(ROOT, tmp_path, ["agent/kmod/msixlab_group.c"])
    assert (tmp_path / "agent/kmod/msixlab_group.c").read_bytes() == \
        (ROOT / "agent/kmod/msixlab_group.c").read_bytes()


def test_only_a_run_whose_guest_never_came_up_is_run_again():
    assert run.guest_was_up({"metadata": {"timings": {"kmod_build_s": 0, "boot_to_agent_s": 9}}})
    assert not run.guest_was_up({"metadata": {"timings": {"kmod_build_s": 0}}})
    assert not run.guest_was_up({})


def test_declared_checks_are_every_scenario_step_s_and_the_soak_s():
    assert {name for _, names in PLAN for name in names} <= DECLARED
    assert set(SOAK_CHECKS) <= DECLARED and "enospc_only_when_full" in DECLARED
    assert "kernel_splat" not in DECLARED          # an outcome, not a check


def test_a_soak_mutant_is_judged_by_a_soak_of_fixed_seed_and_ops():
    soak = [m for m in MUTANTS if m.command[0] == "soak"]
    assert soak, "the soak's checks need mutants of their own"
    for mutant in soak:
        assert "--seed" in mutant.command and "--ops" in mutant.command
    assert {m.command[0] for m in MUTANTS} == {"run", "soak"}
    assert catalogue.by_name()["lab-irte-last-unread"].command == ("run", "--iommu")


def killed_by(name: str, *matched: str) -> run.MutantResult:
    out = run.MutantResult(name, "bug", "x", sorted(matched), exit_code=1)
    out.matched, out.killed = list(matched), True
    return out


def test_the_report_counts_distinct_killing_checks_and_lists_those_never_killing(tmp_path):
    declared = {"a", "b", "c", "d"}
    survivor = run.MutantResult("s", "bug", "x", ["d"], exit_code=0)
    outcomes = [killed_by("m1", "a"), killed_by("m2", "a", "kernel_splat"), survivor]
    report = run.check_report(outcomes, set(), declared)
    assert report["checks_killing"] == ["a"]               # two kills, one distinct check
    assert report["checks_never_killing"] == ["b", "c", "d"]
    assert report["checks_declared"] == 4
    # an earlier run's kills count as "ever", not as this run's
    earlier = tmp_path / "20260101-000000"
    earlier.mkdir()
    (earlier / "summary.json").write_text(json.dumps({"mutants": [
        {"name": "old", "killed": True, "matched": ["b"]},
        {"name": "lived", "killed": False, "matched": ["c"]}]}))
    (tmp_path / "20260102-000000").mkdir()
    (tmp_path / "20260102-000000" / "summary.json").write_text("{not json")
    report = run.check_report(outcomes, run.earlier_killers(tmp_path), declared)
    assert report["checks_killing"] == ["a"] and report["checks_killing_ever"] == ["a", "b"]
    assert report["checks_never_killing"] == ["c", "d"]
    assert run.earlier_killers(tmp_path, skip=earlier) == set()


def test_every_mutants_job_is_a_command_line_msixlab_takes():
    """``command`` (``run --nics 2`` for a bug only several NICs show, the soak's fixed
    seed, a scenario) parses as msixlab's own parser takes it."""
    from agent.host.cli import parser
    for mutant in MUTANTS:
        parser().parse_args([*mutant.command])
    nics = catalogue.by_name()["agent-select-nic-keeps-driver"]
    assert parser().parse_args([*nics.command]).nics == 2

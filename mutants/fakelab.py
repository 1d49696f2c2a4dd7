"""``python -m mutants.fakelab``: the mutant catalogue against the host-only fake lab.

Concepts owned here:
- A catalogue mutant *holds* in the fake lab when every edit is in Python the fake lab
  runs (``FAKE_PATHS``: the device model, the host's verdict and scenarios, the guest
  agent) and its job is one the fake lab simulates (``fake_options``: the main job plain,
  with ``--nics N`` or with ``--scenario`` default, cpu-hotplug or remove-rescan).  The
  others are listed with the reason (the soak, ``--iommu``, vfio-pci, a kernel report).
- A *twin* (``TWINS``) is a guest driver mutant (C, agent/kmod) whose bug is planted in
  the fake lab's simulated driver or kernel instead (agent/host/testkit/), named
  ``<mutant>@sim``, with the same expected set: the fake lab must catch the same kind of
  guest bug.  Twins rot like the catalogue: each edit must apply exactly once.
- One mutant runs in a scratch copy of the project's Python (``mutants.run``'s copy and
  edits), in its own interpreter: ``python -m mutants.fakelab --child NAME`` runs the
  scenario on a fresh ``FakeLab`` under virtual time, judges it as the main job does
  (``jobs.run.judge``; an error that ends the run is classified by its outcome) and
  prints one JSON line.  Killed means what it means for ``make mutate``
  (``mutants.run.judge``): exit 1 naming a check, or outcome, of the expected set.
- The unmutated tree runs first (the baseline) and must pass every job.
Exit 0 all killed, 1 a survivor, 2 the catalogue or twins do not apply or the baseline
failed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msixlab_common.removal import remove_tree

from agent.host.testkit.fakelab import SIMULATED

from .catalogue import AGENT, ACCOUNTING, MUTANTS, Edit, Mutant, _m
from .run import CatalogueRot, MutantResult, apply, check_applies, copy_project, judge, \
    project_files

ROOT = Path(__file__).resolve().parents[1]
FAKE_PATHS = ("qemu_device/", "agent/host/verdict/", "agent/host/scenarios/",
              "agent/host/testkit/", AGENT)
COPIED = ("agent/", "qemu_device/", "msixlab_common/", "mutants/")
TIMEOUT_S = 300.0
SIMDRIVER = "agent/host/testkit/simdriver.py"
SIMKERNEL = "agent/host/testkit/simkernel.py"


def _twin(name: str, *edits: Edit) -> Mutant:
    """The catalogue mutant ``name``'s bug, planted in the simulated driver or kernel."""
    real = next(m for m in MUTANTS if m.name == name)
    host = tuple(e for e in real.edits if e.path.startswith("agent/host/"))
    return _m(f"{name}@sim", real.kind, real.description, set(real.expected) - {"kernel_splat"},
              *host, *edits, command=real.command)


_COUNTS_TWICE = Edit(SIMDRIVER, "        vec.counts[cpu] += 1\n", "        vec.counts[cpu] += 2\n")
TWINS = (
    _twin("kmod-request-irq-failure-leaks",
          Edit(SIMDRIVER, "        except KernelErrno:\n"
                          "            self.function.free_irq_at(desc)\n            raise\n",
               "        except KernelErrno:\n            raise\n")),
    _twin("kmod-affinity-hint-ignored",
          Edit(SIMDRIVER, "alloc_irq_at(index, group.cpu, group.managed)",
               "alloc_irq_at(index, None, False)")),
    _twin("kmod-affinity-wrong-cpu",
          Edit(SIMDRIVER, "alloc_irq_at(index, group.cpu, group.managed)",
               "alloc_irq_at(index, None if group.cpu is None else\n"
               "                                              (group.cpu + 1) % "
               "self.kernel.nr_cpus, group.managed)")),
    _twin("kmod-start-first-only",
          Edit(SIMDRIVER, "                self._vec_alloc(group, index)\n",
               "                self._vec_alloc(group, None if i else index)\n")),
    _twin("kmod-group-id-reused-while-live",
          Edit(SIMDRIVER, "        self.next_group += 1\n",
               "        self.next_group = self.next_group % 4 + 1\n")),
    _twin("kmod-readout-omits-index0",
          Edit(SIMDRIVER, "if group is None or v.group is group)",
               "if i and (group is None or v.group is group))")),
    _twin("kmod-handler-counts-twice", _COUNTS_TWICE),
    _twin("weakened-counts-allow-extra", _COUNTS_TWICE),
    _twin("kmod-free-keeps-table-entry",
          Edit(SIMDRIVER,
               "        if dynamic:\n            self.function.free_irq_at(vec.desc)\n", "")),
    _twin("kmod-doorbell-wrong-index",
          Edit(SIMDRIVER, "mmio_write(0, REG_ICS, index)", "mmio_write(0, REG_ICS, index ^ 1)")),
    _twin("kmod-function-mask-never-set",
          Edit(SIMDRIVER, "control = self.ml.function.function_mask(masked)",
               "control = self.ml.function.function_mask(False)")),
    _twin("kmod-pba-readout-low-half",
          Edit(SIMKERNEL, "            words.append(hi << 32 | lo)",
               "            words.append(lo)")),
    _twin("kmod-min-not-honoured",
          Edit(SIMDRIVER, "        if group.count < min_:\n", "        if group.count < 1:\n")),
    _twin("kmod-full-table-ebusy",
          Edit(SIMDRIVER, "            if code == errno.EBUSY and index is None:\n"
                          "                code = errno.ENOSPC\n            elif",
               "            if")),
    _twin("kmod-refuses-inside-cpu-budget",
          Edit(SIMDRIVER, "            try:\n                self._vec_alloc(group, index)\n",
               "            if len(self.vecs) >= 40:\n"
               "                failed = KernelErrno(errno.ENOSPC, 'refused')\n"
               "                break\n"
               "            try:\n                self._vec_alloc(group, index)\n")),
    _twin("kmod-remove-skips-a-group",
          Edit(SIMDRIVER, "        for gid in sorted(self.groups, reverse=True):\n",
               "        for gid in sorted(self.groups, reverse=True)[1:]:\n")),
)
assert not {e.path for t in TWINS for e in t.edits} - {SIMDRIVER, SIMKERNEL, ACCOUNTING}


def fake_options(command: tuple[str, ...]) -> dict | None:
    """The fake lab run of a mutant's job: {"scenario", "nics"}; None when the fake lab
    does not simulate that job."""
    if not command or command[0] != "run":
        return None
    out, words = {"scenario": "default", "nics": 1}, list(command[1:])
    while words:
        word = words.pop(0)
        if word == "--nics" and words and words[0].isdigit():
            out["nics"] = int(words.pop(0))
        elif word == "--scenario" and words and words[0] in SIMULATED:
            out["scenario"] = words.pop(0)
        else:
            return None
    return out


def why_not(mutant: Mutant) -> str | None:
    """Why ``mutant`` cannot run in the fake lab, or None when it can."""
    if mutant.kind != "unjudged" and mutant.expected <= {"kernel_splat"}:
        return "only a kernel report shows it: the fake lab's kernel reports nothing"
    foreign = [e.path for e in mutant.edits if not e.path.startswith(FAKE_PATHS)]
    if foreign:
        twin = f"{mutant.name}@sim" in {t.name for t in TWINS}
        return f"edits {', '.join(sorted(set(foreign)))}" + ("; see its twin" if twin else "")
    if fake_options(mutant.command) is None:
        return f"its job ({' '.join(mutant.command)}) is not simulated"
    return None


def holding() -> list[Mutant]:
    """The catalogue mutants that hold in the fake lab, then the twins."""
    return [m for m in MUTANTS if why_not(m) is None] + list(TWINS)


# --- the child: one run in a scratch copy -----------------------------------------------

def child(name: str) -> dict:
    """Run ``name``'s job (``baseline`` or ``baseline:<command>`` for the unmutated tree)
    in this tree's fake lab; its exit code and verdict."""
    import logging
    from agent.host import scenarios
    from agent.host.jobs.run import judge as judge_run
    from agent.host.testkit.fakelab import FakeLab, run_scenario
    from agent.host.verdict.outcome import RunVerdict

    logging.disable(logging.CRITICAL)
    if name.startswith("baseline"):
        command = tuple(name.split(":", 1)[1].split()) if ":" in name else ("run",)
    else:
        command = {m.name: m for m in holding()}[name].command
    options = fake_options(command)
    lab = FakeLab(nics=options["nics"])
    try:
        sc = run_scenario(scenarios.get(options["scenario"]), nics=options["nics"], lab=lab)
        verdict = judge_run(sc, [])
    except Exception as err:          # noqa: BLE001 - the run's ending, classified
        verdict = RunVerdict.from_error(err)
    return {"exit_code": verdict.exit_code,
            "verdict": {"outcome": str(verdict.outcome), "summary": verdict.summary,
                        "failed": list(verdict.failed)}}


def run_one(mutant: Mutant | None, files: list[str], command=("run",)) -> MutantResult:
    """Copy, mutate (None: the baseline of ``command``), run the child, judge."""
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="msixlab-fakelab-mutant-"))
    name = mutant.name if mutant else "baseline:" + " ".join(command)
    try:
        copy_project(ROOT, scratch, files)
        if mutant is not None:
            apply(mutant, scratch)
        env = {**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            done = subprocess.run([sys.executable, "-m", "mutants.fakelab", "--child", name],
                                  cwd=scratch, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
            lines = done.stdout.strip().splitlines()
            got = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
            error = "" if got else (done.stderr.strip().splitlines() or ["no output"])[-1]
        except subprocess.TimeoutExpired:
            got, error = {}, f"no verdict within {TIMEOUT_S:g} s"
    finally:
        remove_tree(scratch, ignore_errors=True)
    if mutant is None:
        mutant = Mutant(name, "baseline", "the unmutated tree", frozenset(), (),
                        command=tuple(command))
    out = judge(mutant, got.get("exit_code"), got.get("verdict"))
    out.summary = out.summary or error
    out.seconds = round(time.monotonic() - started, 2)
    return out


def run_all(chosen: list[Mutant], jobs: int = 2) -> tuple[list[MutantResult], list[MutantResult]]:
    """The baselines (one per job of ``chosen``), then every mutant: (baselines, results).
    ``CatalogueRot`` when an edit does not apply to this tree."""
    for mutant in chosen:
        check_applies(mutant, ROOT)
    files = [f for f in project_files(ROOT) if f.startswith(COPIED)]
    commands = list(dict.fromkeys([("run",)] + [m.command for m in chosen]))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        bases = list(pool.map(lambda c: run_one(None, files, c), commands))
        results = list(pool.map(lambda m: run_one(m, files), chosen))
    return bases, results


def main(argv: list[str] | None = None) -> int:
    """Run (or ``--list``) the mutants that hold in the fake lab; print each verdict and
    the kill rate.  Exit 0 all killed, 1 a survivor, 2 rot or a baseline failed."""
    parser = argparse.ArgumentParser(prog="python -m mutants.fakelab",
                                     description="the mutant catalogue against the fake lab")
    parser.add_argument("patterns", nargs="*", metavar="NAME-OR-GLOB",
                        help="run only these mutants (fnmatch globs), default all that hold")
    parser.add_argument("--list", action="store_true",
                        help="say which mutants hold in the fake lab, and why not the others")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the results there")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.list:
        for mutant in list(MUTANTS) + list(TWINS):
            reason = why_not(mutant) if mutant not in TWINS else None
            print(f"{mutant.name:45} {'holds' if reason is None else 'no: ' + reason}")
        return 0
    started = time.monotonic()
    chosen = [m for m in holding()
              if not args.patterns or any(fnmatch.fnmatchcase(m.name, p) for p in args.patterns)]
    if not chosen:
        parser.error(f"no mutant that holds in the fake lab matches {args.patterns}")
    try:
        bases, results = run_all(chosen, args.jobs)
    except CatalogueRot as err:
        print(f"mutants.fakelab: the catalogue does not apply: {err}", file=sys.stderr)
        return 2
    for base in bases:
        print(f"{base.name}: exit {base.exit_code}, {base.outcome} ({base.seconds:.1f} s)")
    if any(base.exit_code != 0 for base in bases):
        print("mutants.fakelab: the unmutated tree does not pass in the fake lab",
              file=sys.stderr)
        return 2
    for out in results:
        print(f"{'killed  ' if out.killed else 'SURVIVED'} {out.name:45} exit {out.exit_code} "
              f"{out.outcome} {', '.join(out.matched) or out.summary[:80]} ({out.seconds:.1f} s)")
    killed = sum(o.killed for o in results)
    wall = time.monotonic() - started
    print(f"kill rate {killed}/{len(results)} in {wall:.1f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"killed": killed, "total": len(results), "wall_seconds": round(wall, 1),
             "mutants": [vars(o) for o in results]}, indent=2) + "\n")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``make mutate``: apply each mutant to a scratch copy and judge the main job's verdict.

Concepts owned here:
- A *scratch copy* is the project's working tree (the files git tracks or would track,
  as they are now: uncommitted edits included, ``.venv``/``results`` excluded) copied to
  a private temporary directory.  The main job runs from it with ``PYTHONPATH`` and the
  working directory set to it, so the device server, the host agent, the guest agent
  (staged for the guest from the copy, keyed by a hash of its files: images/staging.py)
  and the driver build (keyed by a hash of its sources, ``kmod.py``) all use the mutated
  code.
- *Rot*: an edit whose old text does not occur exactly once stops the suite before
  anything runs: the catalogue must follow the code.
- *Killed*: the run exits 1 and its verdict (routing.json) names a member of the
  mutant's expected set, as a failed check or as the outcome.  Exit 0 or 125, or a
  failure that names none of the expected checks, is a survivor.
- A *baseline* run of the unmutated copy comes first, one per job the chosen mutants are
  judged by (the main job; the soak when a soak mutant is chosen): it must pass, else no
  kill means anything.
- The *check report*: the declared checks (every scenario step's, and the soak's) that
  killed a mutant in this run or in any earlier run under the same results directory
  (their summary.json files), how many, and the declared checks no mutant has ever made
  fail: a check that never failed is not yet shown able to.
- A *retry*: a survivor whose run ended before the guest agent said hello (a guest boot
  that hung or panicked on the loaded host) is run again (``--retries``, default once);
  a kill is never retried.
Results: a table on the terminal, the kill rate, and ``results/mutate/<stamp>/``
(summary.json, and per mutant its log, verdict and console).  Exit 0 when every mutant
was killed, 1 when one survived, 2 when the catalogue rotted or the baseline failed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from msixlab_common.removal import remove_tree

from .catalogue import MUTANTS, Mutant

RUN = ("run",)

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
EXIT_ALL_KILLED, EXIT_SURVIVORS, EXIT_BROKEN = 0, 1, 2
LABEL = re.compile(r"^(?:[^/]*/)?(?P<name>[A-Za-z0-9_.]+)(?:\[\d+\])?$")


class CatalogueRot(Exception):
    """A mutant's edit no longer applies to the tree exactly once."""


@dataclass
class MutantResult:
    """What one mutant's run gave: the mutant (name, kind, description, expected set), the
    run's exit code, outcome, summary and failed checks, which expected names it ``matched``,
    whether it was ``killed``, seconds, where its ``artifacts`` are, whether the guest came
    up, and the number of attempts."""
    name: str
    kind: str
    description: str
    expected: list[str]
    exit_code: int | None = None
    outcome: str | None = None
    summary: str = ""
    failed: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    killed: bool = False
    seconds: float = 0.0
    artifacts: str = ""
    guest_up: bool = False    # the guest agent said hello (the boot did not hang or panic)
    attempts: int = 1

    @property
    def first_failed(self) -> str:
        """The first failed check the verdict named, or ``""``."""
        return self.failed[0] if self.failed else ""


# --- the scratch copy --------------------------------------------------------------------

def project_files(root: Path) -> list[str]:
    """The working tree's files git tracks or would track (ignored ones left out)."""
    done = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                           "--exclude-standard"], capture_output=True, timeout=30)
    if done.returncode != 0:
        raise CatalogueRot(f"cannot list the project's files with git: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return [p for p in done.stdout.decode().split("\0") if p and (root / p).is_file()]


def copy_project(root: Path, dest: Path, files: list[str]) -> None:
    """Copy each of ``files`` (relative paths) from ``root`` to ``dest``, keeping metadata."""
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def check_applies(mutant: Mutant, root: Path) -> None:
    """Raise CatalogueRot unless every edit's old text occurs exactly once."""
    for edit in mutant.edits:
        path = root / edit.path
        if not path.is_file():
            raise CatalogueRot(f"{mutant.name}: {edit.path} does not exist")
        count = path.read_text().count(edit.old)
        if count != 1:
            raise CatalogueRot(f"{mutant.name}: the old text occurs {count} times in "
                               f"{edit.path}, not once:\n{edit.old}")


def apply(mutant: Mutant, tree: Path) -> None:
    """Make the mutant's edits in ``tree`` (each ``old`` replaced once); ``CatalogueRot`` if
    one does not apply."""
    check_applies(mutant, tree)
    for edit in mutant.edits:
        path = tree / edit.path
        path.write_text(path.read_text().replace(edit.old, edit.new, 1))


# --- judging --------------------------------------------------------------------------------

def check_name(label: str) -> str:
    """``step/check[index]`` -> ``check`` (a selftest case's check is named as the harness
    names it: ``fixture.variant.test``)."""
    match = LABEL.match(label)
    return match["name"] if match else label


def read_routing(results: Path) -> dict:
    """The run's routing.json (verdict and metadata), or {} when it wrote none."""
    found = sorted(results.glob("*/routing.json"))
    if not found:
        return {}
    try:
        return json.loads(found[-1].read_text())
    except (OSError, ValueError):
        return {}


def guest_was_up(routing: dict) -> bool:
    """The run's guest agent said hello: the boot neither hung nor panicked."""
    return "boot_to_agent_s" in ((routing.get("metadata") or {}).get("timings") or {})


def judge(mutant: Mutant, exit_code: int | None, verdict: dict | None) -> MutantResult:
    """The ``MutantResult`` of a run that exited ``exit_code`` with ``verdict`` (routing.json's,
    or ``None``): killed only on exit 1 with a failed check or outcome in the expected set (a
    splat must match the mutant's ``splat`` pattern)."""
    out = MutantResult(mutant.name, mutant.kind, mutant.description, sorted(mutant.expected),
                  exit_code=exit_code)
    if verdict:
        out.outcome, out.summary = verdict.get("outcome"), verdict.get("summary", "")
        out.failed = list(verdict.get("failed", []))
    named = {check_name(label) for label in out.failed} | ({out.outcome} - {None})
    line = str(((verdict or {}).get("evidence") or {}).get("line", ""))
    if mutant.splat and out.outcome == "kernel_splat" and not re.search(mutant.splat, line):
        named.discard("kernel_splat")       # a crash, but not the one this mutant causes
    out.matched = sorted(named & mutant.expected)
    out.killed = exit_code == 1 and bool(out.matched)
    return out


# --- running -------------------------------------------------------------------------------

def run_one(mutant: Mutant | None, files: list[str], artifacts: Path, python: str,
            timeout: float, keep: bool, command: tuple[str, ...] = RUN) -> MutantResult:
    """Copy, mutate (None: the baseline of ``command``), run the mutant's job (the main
    job, or the soak it names), keep its verdict."""
    command = mutant.command if mutant else command
    name = mutant.name if mutant else ("baseline" if command == RUN
                                       else f"baseline-{command[0]}")
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix=f"msixlab-mutant-{name}-"))
    where = artifacts / name
    where.mkdir(parents=True, exist_ok=True)
    try:
        copy_project(ROOT, scratch, files)
        if mutant is not None:
            apply(mutant, scratch)
        env = {**os.environ, "PYTHONPATH": str(scratch)}
        with open(where / "run.log", "w") as logf:
            try:
                done = subprocess.run([python, "-m", "agent.host", *command, "--results",
                                       str(scratch / "results")], cwd=scratch, env=env,
                                      stdin=subprocess.DEVNULL, stdout=logf,
                                      stderr=subprocess.STDOUT, timeout=timeout)
                exit_code = done.returncode
            except subprocess.TimeoutExpired:
                logf.write(f"\nmutate: {' '.join(command)} took longer than {timeout} s\n")
                exit_code = None
        routing = read_routing(scratch / "results")
        for run_dir in (scratch / "results").glob("*"):
            for keep_name in ("routing.json", "console.log"):
                if (run_dir / keep_name).is_file():
                    shutil.copy2(run_dir / keep_name, where / keep_name)
    finally:
        if keep:
            log.warning("kept the scratch copy of %s at %s", name, scratch)
        else:
            remove_tree(scratch, ignore_errors=True)
    if mutant is None:
        mutant = Mutant(name, "baseline", "the unmutated tree", frozenset(), (),
                        command=command)
    out = judge(mutant, exit_code, routing.get("verdict"))
    out.guest_up = guest_was_up(routing)
    out.seconds = round(time.monotonic() - started, 1)
    out.artifacts = str(where)
    return out


def select(patterns: list[str]) -> list[Mutant]:
    """The mutants whose names match any of the fnmatch ``patterns`` (all when none);
    ``CatalogueRot`` for a pattern that matches none."""
    if not patterns:
        return list(MUTANTS)
    chosen = [m for m in MUTANTS if any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(m.name, p) for m in MUTANTS)]
    if unknown:
        raise CatalogueRot(f"no mutant matches {', '.join(unknown)} (see --list)")
    return chosen


def _table(outcomes: list[MutantResult]) -> Table:
    table = Table(title="mutants")
    for column in ("mutant", "kind", "exit", "outcome", "first failed check", "seconds",
                   "verdict"):
        table.add_column(column, justify="right" if column in ("exit", "seconds") else "left")
    for o in outcomes:
        table.add_row(o.name, o.kind, "-" if o.exit_code is None else str(o.exit_code),
                      o.outcome or "-", o.first_failed or "-", f"{o.seconds:.1f}",
                      "[green]killed[/]" if o.killed else "[red]SURVIVED[/]")
    return table


def _list(console: Console) -> int:
    table = Table(title=f"{len(MUTANTS)} mutants")
    for column in ("mutant", "kind", "job", "files", "bug", "expected (one of)"):
        table.add_column(column)
    for m in MUTANTS:
        table.add_row(m.name, m.kind, " ".join(m.command), "\n".join(m.paths), m.description,
                      ", ".join(sorted(m.expected)))
    console.print(table)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The mutation suite's options; a bad ``--jobs`` or ``--retries`` exits 2 with argparse's
    usage."""
    parser = argparse.ArgumentParser(prog="python -m mutants.run",
                                     description="msixlab's mutation suite (docs/mutate.md)")
    parser.add_argument("patterns", nargs="*", metavar="NAME-OR-GLOB",
                        help="run only these mutants (fnmatch globs), default all")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1,
                        help="mutants run at once (default 1: a guest needs both cores)")
    parser.add_argument("--results", default=str(ROOT / "results" / "mutate"),
                        help="where results/mutate/<stamp>/ goes")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds one main job may take (default 900)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the unmutated tree that must pass first")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--retries", type=int, default=1,
                        help="runs again a survivor whose run ended before the guest agent "
                             "was up (a boot that hung on the loaded host), default 1")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.retries < 0:
        parser.error("--retries must be at least 0")
    return args


def _baselines(chosen: list[Mutant], files: list[str], artifacts: Path, python: str,
               args: argparse.Namespace, console: Console) -> bool:
    """Run the unmutated tree once per job the ``chosen`` mutants are judged by (the main
    job first); False, said on the console, when one does not pass."""
    for command in dict.fromkeys([RUN] + [m.command for m in chosen]):
        what = " ".join(command)
        console.print(f"baseline: the unmutated tree must pass `{what}` ...")
        base = run_one(None, files, artifacts, python, args.timeout, args.keep, command)
        if base.exit_code != 0:
            console.print(f"[red]mutate: the unmutated tree does not pass `{what}` (exit "
                          f"{base.exit_code}, {base.outcome}: {base.summary}); see "
                          f"{base.artifacts}[/]")
            return False
        console.print(f"baseline `{what}` passed in {base.seconds:.1f} s")
    return True


# --- the check report -----------------------------------------------------------------------

def declared_checks() -> set[str]:
    """Every check a job the catalogue runs declares: each step's of every scenario
    ``run`` can run (``--nics`` adds its isolation step) and the soak's."""
    from agent.host.scenarios import REGISTRY, PerNic
    from agent.host.scenarios.soak_plan import SOAK_CHECKS
    plans = [cls.PLAN for cls in REGISTRY.values()] + [PerNic(None, REGISTRY["default"], 2).PLAN]
    return {name for plan in plans for _, names in plan for name in names} | set(SOAK_CHECKS)


def earlier_killers(results: Path, skip: Path | None = None) -> set[str]:
    """The check names that killed a mutant in the earlier runs' summary.json files under
    ``results`` (``skip``: this run's folder); an unreadable summary is passed over."""
    found: set[str] = set()
    for summary in sorted(results.glob("*/summary.json")):
        if skip is not None and summary.parent == skip:
            continue
        try:
            mutants = json.loads(summary.read_text()).get("mutants", [])
        except (OSError, ValueError, AttributeError):
            continue
        found |= {name for m in mutants if isinstance(m, dict) and m.get("killed")
                  for name in m.get("matched", []) if isinstance(name, str)}
    return found


def check_report(outcomes: list[MutantResult], earlier: set[str],
                 declared: set[str]) -> dict:
    """Which ``declared`` checks killed something: in this run (``outcomes``: the checks
    each kill matched) and ever (with ``earlier``); the declared checks that never did."""
    now = {name for o in outcomes if o.killed for name in o.matched} & declared
    ever = (now | earlier) & declared
    return {"checks_declared": len(declared), "checks_killing": sorted(now),
            "checks_killing_ever": sorted(ever),
            "checks_never_killing": sorted(declared - ever)}


def _print_report(console: Console, report: dict) -> None:
    console.print(f"{len(report['checks_killing'])} distinct checks killed a mutant in this "
                  f"run, {len(report['checks_killing_ever'])} of the "
                  f"{report['checks_declared']} declared checks ever")
    if report["checks_never_killing"]:
        console.print(f"[yellow]declared checks no mutant has ever made fail: "
                      f"{', '.join(report['checks_never_killing'])}[/]")


def main(argv: list[str] | None = None) -> int:
    """``python -m mutants.run``: check the catalogue applies, run the baseline, then every
    chosen mutant (``--jobs`` at once, survivors whose guest never came up retried), print
    the table and write summary.json.  Returns 0 all killed, 1 a survivor, 2 when the
    catalogue rotted or the baseline did not pass."""
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.list:
        return _list(console)
    try:
        chosen = select(args.patterns)
        for mutant in chosen:
            check_applies(mutant, ROOT)
        files = project_files(ROOT)
    except CatalogueRot as err:
        console.print(f"[red]mutate: the catalogue does not apply: {err}[/]")
        return EXIT_BROKEN
    stamp = time.strftime("%Y%m%d-%H%M%S")
    artifacts = Path(args.results) / stamp
    artifacts.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    python = sys.executable
    if not args.no_baseline and not _baselines(chosen, files, artifacts, python, args,
                                               console):
        return EXIT_BROKEN

    def one(mutant: Mutant) -> MutantResult:
        for attempt in range(1, args.retries + 2):
            try:
                out = run_one(mutant, files, artifacts, python, args.timeout, args.keep)
            except (CatalogueRot, OSError) as err:     # the tree changed under the suite
                out = judge(mutant, None, None)
                out.summary = f"not run: {err}"
                break
            out.attempts = attempt
            if out.killed or out.guest_up or attempt > args.retries:
                break
            console.print(f"[yellow]{mutant.name}: the run ended before the guest agent "
                          f"was up ({out.outcome}: {out.summary[:100]}): running it again[/]")
            first = artifacts / mutant.name / "run.log"
            if first.is_file():
                first.rename(first.with_name(f"run.attempt{attempt}.log"))
        console.print(f"{'[green]killed[/]' if out.killed else '[red]SURVIVED[/]'} "
                      f"{out.name}: exit {out.exit_code}, {out.outcome}, "
                      f"{out.first_failed or out.summary[:80]} ({out.seconds:.1f} s)")
        return out

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(one, chosen))
    wall = round(time.monotonic() - started, 1)
    killed = sum(o.killed for o in outcomes)
    rate = killed / len(outcomes) if outcomes else 1.0
    console.print(_table(outcomes))
    console.print(f"kill rate {killed}/{len(outcomes)} = {rate:.0%} in {wall:.0f} s wall")
    survivors = [o.name for o in outcomes if not o.killed]
    if survivors:
        console.print(f"[red]survived: {', '.join(survivors)}[/]")
    report = check_report(outcomes, earlier_killers(Path(args.results), artifacts),
                          declared_checks())
    _print_report(console, report)
    summary = {"stamp": stamp, "wall_seconds": wall, "jobs": args.jobs,
               "baseline": not args.no_baseline, "killed": killed, "total": len(outcomes),
               "kill_rate": round(rate, 4), "survivors": survivors, **report,
               "mutants": [asdict(o) for o in outcomes]}
    (artifacts / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"results in {artifacts}")
    return EXIT_ALL_KILLED if not survivors else EXIT_SURVIVORS


if __name__ == "__main__":
    sys.exit(main())

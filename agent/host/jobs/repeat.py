"""``msixlab run --repeat N``: the main job N times, to tell a flaky result from a steady one.

Concepts: each run is an ordinary run with its own ``results/<run-id>/``; afterwards a
summary names each run's exit code, outcome and failed checks, says whether the runs
disagreed (*flaky*: different exit codes, or different failed checks), and is written to
``results/repeat-<id>/summary.json``.  The exit code is the worst seen, as a bisect
wants it: 1 if any run found the kernel misbehaving (an intermittent regression is a
regression), else 125 if any run could not judge, else 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from msixlab_common.artifacts import write_artifact

from agent.host.errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS
from agent.host.jobs.progress import phase
from agent.host.results.model import verdict_of
from agent.host.rundirs import new_run_id

log = logging.getLogger(__name__)
RunOnce = Callable[[Any, Console], int]


def overall_exit(codes: list[int]) -> int:
    """The worst of the runs' exit codes: 1, then 125, then 0."""
    if EXIT_FAIL in codes:
        return EXIT_FAIL
    if any(code != EXIT_PASS for code in codes):
        return EXIT_INFRA
    return EXIT_PASS


def _verdict_of(run_dir: Path | None) -> dict[str, Any]:
    """outcome and failed checks from a run directory's routing.json, when it has one."""
    if run_dir is None:
        return {}
    try:
        doc = json.loads((run_dir / "routing.json").read_text())
    except (OSError, ValueError):
        return {}
    verdict = verdict_of(doc) if isinstance(doc, dict) else None
    return {"outcome": verdict.outcome, "failed": list(verdict.failed)} if verdict else {}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat summary of ``runs``: each run, the overall exit code, whether they disagreed
    (``flaky``), and how many ended with each code."""
    codes = [r["exit_code"] for r in runs]
    failed_sets = {tuple(sorted(r.get("failed") or ())) for r in runs}
    return {"repeat": len(runs), "runs": runs, "exit_code": overall_exit(codes),
            "flaky": len(set(codes)) > 1 or len(failed_sets) > 1,
            "counts": {str(code): codes.count(code) for code in sorted(set(codes))}}


def run_repeated(args, console: Console, run_once: RunOnce) -> int:
    """Run ``run_once(args, console)`` ``args.repeat`` times; print and save the summary."""
    root = Path(args.results)
    runs: list[dict[str, Any]] = []
    for number in range(1, args.repeat + 1):
        console.rule(f"run {number} of {args.repeat}")
        before = set(root.iterdir()) if root.is_dir() else set()
        with phase(console, f"run {number} of {args.repeat}"):
            code = run_once(args, console)
        new = sorted(p for p in (set(root.iterdir()) if root.is_dir() else set()) - before
                     if p.is_dir() and p.name.startswith("run-"))
        run_dir = new[-1] if new else None
        runs.append({"number": number, "run_id": run_dir.name if run_dir else None,
                     "exit_code": code, **_verdict_of(run_dir)})
    summary = summarize(runs)
    out = root / new_run_id("repeat")
    out.mkdir(parents=True, exist_ok=True)
    write_artifact(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _print(console, summary, out)
    return summary["exit_code"]


def _print(console: Console, summary: dict[str, Any], out: Path) -> None:
    table = Table(title=f"msixlab run --repeat {summary['repeat']}")
    for header in ("run", "run id", "exit", "outcome", "failed checks"):
        table.add_column(header)
    for run in summary["runs"]:
        table.add_row(str(run["number"]), run["run_id"] or "-", str(run["exit_code"]),
                      run.get("outcome") or "-", ", ".join(run.get("failed") or ()) or "-")
    console.print(table)
    steady = "[bold red]FLAKY: the runs disagree[/]" if summary["flaky"] else "steady"
    console.print(f"{steady}; exit {summary['exit_code']} (the worst run); summary in "
                  f"{out / 'summary.json'}")

"""python -m bench.kernel [--skip-scratch] [--boots N] [--out DIR]

Concepts: the costs of testing a kernel tree, on the minimal kernel msixlab builds from
Debian's linux-source (``agent.host.kernel.testtrees``) and on the image's Debian kernel:
- the from-scratch build (unpack, tinyconfig + fragment, ``bzImage modules``) and a
  one-file incremental rebuild (``drivers/pci/msi/api.c`` touched);
- boot-to-ready (median of N ready boots) and the main job's wall time on each kernel;
- the seconds per step of a real ``msixlab bisect`` of the fixture's regression series.
Each is compared with its goal (boot-to-ready <= 2.0 s and main job <= 6 s on the minimal
kernel, one bisect step <= 30 s).  JSON goes to ``results/bench/kernel-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.host.kernel import build as kbuild
from agent.host.kernel import source, testtrees
from agent.host.kernel.under_test import KernelUnderTest
from agent.host.lab.boot import boot_ready
from images.build import ensure_image
from msixlab_common.removal import remove_tree

PROJECT = Path(__file__).resolve().parents[1]
GOALS = {"boot_to_ready_minimal_s": 2.0, "main_job_minimal_s": 6.0, "bisect_step_s": 30.0}


def _say(text: str) -> None:
    print(f"bench.kernel: {text}", flush=True)


def bench_builds(skip_scratch: bool, fixture: dict) -> dict:
    """From-scratch and one-file-incremental build seconds of the minimal kernel."""
    out: dict = {"jobs": os.cpu_count()}
    if skip_scratch:
        cached = testtrees.ensure_test_kernel()
        record = cached.path.parent / (cached.path.name + "-build-time.json")
        if record.is_file():
            out["from_scratch_s"] = json.loads(record.read_text())["seconds"]
            out["from_scratch_note"] = "recorded when the cached test kernel was built"
        testtrees.reset_fixture(fixture, "base")
        tree = Path(fixture["path"])
        scratch = None
    else:
        scratch = Path(tempfile.mkdtemp(prefix="msixlab-bench-kernel-"))
        tree = scratch / "linux"
        package = source.fetch_deb()
        started = time.monotonic()
        source.extract(package, tree, scratch / "extract.log")
        out["unpack_s"] = round(time.monotonic() - started, 1)
        result = kbuild.build(kbuild.KernelTree(tree), scratch / "build.log")
        out["from_scratch_s"] = round(result.seconds, 1)
        out["from_scratch_steps"] = result.steps
        _say(f"from scratch: {out['from_scratch_s']} s ({result.steps} steps)")
    try:
        (tree / "drivers/pci/msi/api.c").touch()
        result = kbuild.build(kbuild.KernelTree(tree), Path(tempfile.mkdtemp()) / "build.log")
        out["incremental_one_file_s"] = round(result.seconds, 1)
        _say(f"one file touched: {out['incremental_one_file_s']} s")
    finally:
        if scratch:
            remove_tree(scratch, ignore_errors=True)
    return out


def bench_boots(image, kernels: dict, boots: int) -> dict:
    """The boot-to-ready seconds of ``boots`` boots of each of ``kernels``, and their median."""
    out = {}
    for name, kernel in kernels.items():
        ready = [boot_ready(image, kernel, timeout=180, keep=False).ready_seconds
                 for _ in range(boots)]
        out[name] = {"boot_to_ready_s": [round(r, 2) for r in ready],
                     "median_s": round(statistics.median(ready), 2)}
        _say(f"boot-to-ready {name}: median {out[name]['median_s']} s over {boots}")
    return out


def bench_main_job(kernel_args: dict) -> dict:
    """Run ``msixlab run`` once with each option list of ``kernel_args``: exit code, process
    and job wall seconds."""
    out = {}
    for name, extra in kernel_args.items():
        results = Path(tempfile.mkdtemp(prefix="msixlab-bench-run-"))
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--results",
                               str(results), *extra], cwd=PROJECT, capture_output=True, text=True)
        wall = time.monotonic() - started
        docs = list(results.glob("*/routing.json"))
        inner = json.loads(docs[0].read_text())["metadata"].get("wall_seconds") if docs else None
        out[name] = {"exit_code": done.returncode, "process_wall_s": round(wall, 2),
                     "job_wall_s": inner}
        _say(f"main job {name}: exit {done.returncode}, {wall:.1f} s (job {inner} s)")
        remove_tree(results, ignore_errors=True)
    return out


def bench_bisect(fixture: dict) -> dict:
    """Bisect the fixture's regression series: steps, seconds per step, and whether it named
    the culprit and reset the tree."""
    git = testtrees.reset_fixture(fixture, "msix-regression")
    series = fixture["series"]["msix-regression"]
    results = Path(tempfile.mkdtemp(prefix="msixlab-bench-bisect-"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agent.host", "bisect", "--kernel-tree",
                           fixture["path"], "--good", fixture["base"], "--bad", series["tip"],
                           "--results", str(results)], cwd=PROJECT, capture_output=True, text=True)
    wall = time.monotonic() - started
    summary = json.loads(next(results.glob("bisect-*/summary.json")).read_text())
    steps = [s["build_seconds"] + s["run_seconds"] for s in summary["steps"]]
    remove_tree(results, ignore_errors=True)
    out = {"exit_code": done.returncode, "wall_s": round(wall, 1), "steps": len(steps),
           "step_s": [round(s, 1) for s in steps],
           "build_s": [s["build_seconds"] for s in summary["steps"]],
           "run_s": [s["run_seconds"] for s in summary["steps"]],
           "mean_step_s": round(statistics.mean(steps), 1) if steps else None,
           "max_step_s": round(max(steps), 1) if steps else None,
           "named_the_culprit": (summary["first_bad"] or {}).get("commit") == series["culprit"],
           "tree_reset": git.head() == series["tip"] and not git.bisecting()}
    _say(f"bisect: {len(steps)} steps, mean {out['mean_step_s']} s, max {out['max_step_s']} s")
    return out


def main(argv=None) -> int:
    """``python -m bench.kernel``: measure builds, boots, main jobs and a bisect on the
    minimal and the Debian kernel, compare them with the goals and write the JSON report."""
    ap = argparse.ArgumentParser(prog="python -m bench.kernel")
    ap.add_argument("--skip-scratch", action="store_true",
                    help="report the cached test kernel's recorded from-scratch time instead")
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    image = ensure_image()
    report: dict = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()}
    minimal = testtrees.ensure_test_kernel()
    kernels = {"minimal": KernelUnderTest.from_tree(minimal.tree),
               "debian": KernelUnderTest.from_flavor(image, "default")}
    report["kernels"] = {name: k.release for name, k in kernels.items()}
    report["boot"] = bench_boots(image, kernels, args.boots)
    report["main_job"] = bench_main_job({"minimal": ["--kernel-tree", str(minimal.path)],
                                         "debian": ["--flavor", "default"]})
    with testtrees.fixture_in_use(testtrees.ensure_bisect_fixture()) as fixture:
        report["build"] = bench_builds(args.skip_scratch, fixture)
        report["bisect"] = bench_bisect(fixture)
    measured = {"boot_to_ready_minimal_s": report["boot"]["minimal"]["median_s"],
                "main_job_minimal_s": report["main_job"]["minimal"]["job_wall_s"],
                "bisect_step_s": report["bisect"]["max_step_s"]}
    report["goals"] = {name: {"goal": goal, "measured": measured[name],
                              "met": measured[name] is not None and measured[name] <= goal}
                       for name, goal in GOALS.items()}
    report["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"kernel-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for name, goal in report["goals"].items():
        _say(f"{name}: {goal['measured']} (goal <= {goal['goal']}): "
             f"{'met' if goal['met'] else 'NOT met'}")
    _say(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

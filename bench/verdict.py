"""How fast a verdict comes: the main job's wall time when it passes, when a check fails,
and when the guest kernel panics, on the image's Debian kernel under TCG.

Concepts: each case is a real ``msixlab run`` (a subprocess, as a user or a bisect runs
it) into a scratch results directory; the wall time is measured around the process and
the run's own timings (boot to agent, the scenario's steps) are read back from its
routing.json.  Goals (issue 8): a pass in at most 10 s, a failing run in at most 20 s;
(issue 17) ``--scenario vfio-pci`` passing in at most 15 s.
Results go to ``results/bench/verdict-<time>.json``.

    python -m bench.verdict [--runs N] [--flavor F] [--case NAME ...] [--out DIR]
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

PROJECT = Path(__file__).resolve().parents[1]
CASES = {
    # name: (extra run options, expected exit code, goal in seconds)
    "pass": ((), 0, 10.0),
    "check_fails": (("--device-fault", "drop_raise:vector=1"), 1, 20.0),
    "device_error": (("--device-fault", "errno_reply:command=DEVICE_SET_IRQS"), 125, 20.0),
    # issue 17: the vfio-pci scenario (vIOMMU, vfio-pci bound in the guest) to its verdict
    "vfio_pci_pass": (("--scenario", "vfio-pci"), 0, 15.0),
}


def one_run(options: tuple[str, ...], flavor: str) -> dict:
    """One ``msixlab run`` with ``options`` on ``flavor`` in a scratch dir: exit, wall seconds,
    outcome, boot-to-agent and step seconds."""
    with tempfile.TemporaryDirectory(prefix="msixlab-bench-") as tmp:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--flavor", flavor,
                               "--results", tmp, *options], cwd=PROJECT, capture_output=True,
                              text=True, timeout=900)
        wall = time.monotonic() - started
        runs = list(Path(tmp).iterdir())
        doc = json.loads((runs[0] / "routing.json").read_text()) if runs else {}
    meta = doc.get("metadata", {})
    return {"exit": done.returncode, "wall_s": round(wall, 2),
            "outcome": doc.get("verdict", {}).get("outcome"),
            "boot_to_agent_s": meta.get("timings", {}).get("boot_to_agent_s"),
            "steps_s": round(sum(s["seconds"] for s in meta.get("steps", [])), 2)}


def main(argv=None) -> int:
    """``python -m bench.verdict``: run every case ``--runs`` times, print the medians against
    the goals, write the JSON; 1 if any run exited otherwise than expected."""
    ap = argparse.ArgumentParser(prog="python -m bench.verdict")
    ap.add_argument("--runs", type=int, default=3, help="runs per case (median reported)")
    ap.add_argument("--flavor", default="default")
    ap.add_argument("--case", action="append", choices=sorted(CASES),
                    help="run only this case (repeatable; default: every case)")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "flavor": args.flavor,
              "load_average": os.getloadavg(), "cases": {}}
    for name, (options, expected, goal) in CASES.items():
        if args.case and name not in args.case:
            continue
        runs = [one_run(options, args.flavor) for _ in range(args.runs)]
        median = statistics.median(r["wall_s"] for r in runs)
        report["cases"][name] = {
            "options": list(options), "expected_exit": expected, "goal_s": goal,
            "median_wall_s": median, "goal_met": median <= goal,
            "all_exits_expected": all(r["exit"] == expected for r in runs), "runs": runs}
        print(f"{name:14} median {median:6.2f} s (goal {goal:g} s, "
              f"{'met' if median <= goal else 'NOT met'}); exits {[r['exit'] for r in runs]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"verdict-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")
    return 0 if all(c["all_exits_expected"] for c in report["cases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

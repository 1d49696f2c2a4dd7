"""``make matrix``: the cross-product of run modes the guest tests cover only in part.

Concepts: a *cell* is one ``msixlab run`` argv (a scenario, with or without ``--iommu``,
an MSI-X mode, a CPU count); every cell runs as its own process, one after the other,
and its exit code (0 pass, 1 kernel misbehaved, 125 could not judge) is kept.  The
summary is printed and written to ``results/matrix-<time>.json``; the exit code is the
worst cell's (1, then 125, then 0).  ``hotplug`` is left out: on QEMU 11.1.3 its
``device_del`` aborts QEMU (docs/scenarios.md), so it could only add 125s.  ``vfio-pci``
adds its own vIOMMU and drives the NIC through the guest's vfio-pci, not the rig's driver,
so it runs once per CPU count (``VFIO_CELLS``), not across ``--iommu`` and the modes;
``vfio-selftests`` (the same binding, the kernel's own tests) runs once.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

from msixlab_common import atomic
from msixlab_common.lifetime import die_with_parent

SCENARIOS = ("default", "cpu-hotplug", "remove-rescan", "suspend")
IOMMU = ((), ("--iommu",))
MODES = ((), ("--msix-maskable",), ("--msix-noresize",))
CPUS = ("2", "4")
VFIO_CELLS = tuple(["--scenario", "vfio-pci", "--cpus", cpus] for cpus in CPUS) + (
    ["--scenario", "vfio-selftests", "--cpus", "2"],)


def cells() -> list[list[str]]:
    """Every cell's ``msixlab run`` options: scenario x iommu x MSI-X mode x CPUs, then the
    vfio-pci cells."""
    return [["--scenario", scenario, *iommu, *mode, "--cpus", cpus]
            for scenario, iommu, mode, cpus in itertools.product(SCENARIOS, IOMMU, MODES, CPUS)
            ] + [list(cell) for cell in VFIO_CELLS]


def worst(codes: list[int]) -> int:
    """The worst of ``codes``: 1 if any is 1, else 125 if any is not 0, else 0."""
    return 1 if 1 in codes else 125 if any(c != 0 for c in codes) else 0


def main(results: str = "results") -> int:
    """``make matrix``: run every cell one after another (each at most 30 min), print a line
    each, write ``results/matrix-<time>.json`` and return the worst exit code."""
    root = Path(results)
    root.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.monotonic()
    for argv in cells():
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "agent.host", "run", *argv,
                               "--results", str(root)], capture_output=True, text=True,
                              timeout=1800, check=False,
                              preexec_fn=die_with_parent(signal.SIGTERM))
        rows.append({"argv": argv, "exit": done.returncode,
                     "seconds": round(time.monotonic() - t0, 1)})
        print(f"{done.returncode:>3}  {rows[-1]['seconds']:>6.1f} s  {' '.join(argv)}",
              flush=True)
    summary = {"cells": rows, "seconds": round(time.monotonic() - started, 1),
               "exit": worst([r["exit"] for r in rows])}
    path = root / f"matrix-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic.write_json(path, summary)
    print(f"{len(rows)} cells in {summary['seconds']} s, exit {summary['exit']}; {path}")
    return summary["exit"]


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))

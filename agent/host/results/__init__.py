"""Machine-readable results and the HTML report of a run, written from its run directory.

Concepts: the writers read only what a run left in ``results/<run-id>/`` (routing.json,
device-events.jsonl, the logs), never the live lab, so they also run on an old run
directory (``python -m agent.host.results DIR``).  ``write_all(run_dir)`` writes:

| file | format | module |
|---|---|---|
| ``results.ktap`` | KTAP version 1, one test per check, nested per scenario step | ``ktap`` |
| ``junit.xml`` | JUnit XML, one suite per step, one case per check | ``junit`` |
| ``kcidb.json`` | KernelCI KCIDB I/O v5.3 (checkout, build, one test per check) | ``kcidb`` |
| ``report.html`` | one page: verdict, routing map, timeline, checks, logs | ``html`` |

Each carries the provenance (kernel release, config hash, QEMU version, msixlab commit,
seed, and a one-line command that reproduces the run; model.py).  Every file is written
atomically (temporary file, rename).  A failure to write them is logged and raised as
``ResultsError``: the caller decides whether that changes the verdict.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from msixlab_common import atomic

from agent.host.results import html, junit, kcidb, ktap, timeline
from agent.host.results.model import ResultsError, RunResult, load

log = logging.getLogger(__name__)

FILES = ("results.ktap", "junit.xml", "kcidb.json", "report.html")
RESULTS_URL_ENV = "MSIXLAB_RESULTS_URL"

__all__ = ["FILES", "ResultsError", "RunResult", "load", "write_all"]


def write_all(run_dir: Path, results_url: str | None = None) -> dict[str, Path]:
    """Write the four result files into ``run_dir``; return them by name.  Log links in
    kcidb.json use ``results_url`` (default: ``$MSIXLAB_RESULTS_URL``) as their base."""
    run_dir = Path(run_dir)
    run = load(run_dir)
    base = results_url if results_url is not None else os.environ.get(RESULTS_URL_ENV)
    texts = {
        "results.ktap": ktap.render(run),
        "junit.xml": junit.render(run),
        "kcidb.json": json.dumps(kcidb.render(run, base), indent=1) + "\n",
        "report.html": html.render(run, timeline.from_file(run_dir / "device-events.jsonl"),
                                   siblings=FILES[:3]),
    }
    written = {}
    for name, text in texts.items():
        try:
            atomic.write_text(run_dir / name, text)
        except OSError as err:
            raise ResultsError(f"cannot write {run_dir / name}: {err}") from err
        written[name] = run_dir / name
    log.info("wrote %s in %s", ", ".join(written), run_dir)
    return written

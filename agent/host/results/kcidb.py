"""``kcidb.json``: the run in KernelCI's KCIDB I/O format (schema v5.3, kcidb-io).

Concepts: KCIDB links three kinds of object by id, each id prefixed by the origin
(``msixlab:``):
- one *checkout*: the kernel under test (its release, flavor or tree, config hash);
- one *build*: that kernel as booted (architecture, config name, the config hash);
- one *test* per check, with ``path`` ``msixlab.<step>.<check>.<index>`` (path segments
  are letters, digits, ``_`` and ``-``), status PASS, FAIL or SKIP, the summary as
  ``comment`` and the evidence, seed, commit and reproduce command under ``misc``.
A run that ended for a reason no check holds adds a test ``msixlab.verdict`` (FAIL for
exit 1, ERROR for could-not-judge).  The environment (QEMU version, accelerator, CPUs,
vectors) is on every test.  Log links need absolute URLs: they are written only when a
base URL for the results is known (``MSIXLAB_RESULTS_URL``), as ``<base>/<run>/<file>``.
"""

from __future__ import annotations

import re
from typing import Any

from agent.host.results.model import UNKNOWN, CheckRow, RunResult

ORIGIN = "msixlab"
SCHEMA_VERSION = {"major": 5, "minor": 3}
_STATUS = {"pass": "PASS", "skip": "SKIP", "fail": "FAIL", "not_judged": "FAIL"}
_SEGMENT = re.compile(r"[^a-zA-Z0-9_-]+")


def _segment(text: str) -> str:
    return _SEGMENT.sub("_", str(text)).strip("_") or "unnamed"


def _time(run: RunResult) -> str:
    return run.started.isoformat(timespec="seconds")


def _environment(run: RunResult) -> dict[str, Any]:
    meta = run.metadata
    comment = (f"QEMU {run.provenance.qemu_version} q35 ({meta.get('accel', 'tcg')}), "
               f"{meta.get('cpus', '?')} CPUs, msixlab NIC with {meta.get('vectors', '?')} "
               "MSI-X vectors over vfio-user")
    return {"comment": comment,
            "misc": {key: meta[key] for key in ("accel", "cpus", "vectors", "flavor",
                                                "iommu", "guest_cmdline", "boot_stalls")
                     if meta.get(key)} | {"qemu_version": run.provenance.qemu_version}}


def _files(run: RunResult, base_url: str | None) -> dict[str, Any]:
    if not base_url:
        return {}
    base = f"{base_url.rstrip('/')}/{run.run_id}"
    files = [{"name": name, "url": f"{base}/{name}"} for name in run.logs if name != "console.log"]
    out: dict[str, Any] = {"output_files": files} if files else {}
    if "console.log" in run.logs:
        out["log_url"] = f"{base}/console.log"
    return out


def _test(run: RunResult, build_id: str, check: CheckRow, common: dict) -> dict[str, Any]:
    path = ".".join([ORIGIN, _segment(check.step), _segment(check.name)]
                    + ([str(check.index)] if check.index is not None else []))
    test = {"id": f"{ORIGIN}:{run.run_id}:{check.step}:{check.test_name}", "origin": ORIGIN,
            "build_id": build_id, "path": path, "status": _STATUS.get(check.verdict, "ERROR"),
            "misc": {"step": check.step, "check": check.name, "index": check.index,
                     "verdict": check.verdict, "evidence": dict(check.evidence),
                     **run.provenance.as_dict()}, **common}
    if check.summary:
        test["comment"] = check.summary[:1000]
    return test


def render(run: RunResult, base_url: str | None = None) -> dict[str, Any]:
    """The KCIDB document (a JSON-ready dict)."""
    prov = run.provenance
    checkout_id = f"{ORIGIN}:{run.run_id}"
    build_id = f"{ORIGIN}:{run.run_id}:build"
    # a tree's path (metadata.options, docs/routing.md; an older run's is upgraded to it),
    # else the image's flavor
    options = run.metadata.get("options") if isinstance(run.metadata.get("options"), dict) else {}
    tree = options.get("kernel_tree") or f"debian-{run.metadata.get('flavor') or 'kernel'}"
    checkout = {"id": checkout_id, "origin": ORIGIN, "tree_name": _segment(tree),
                "comment": f"kernel {prov.kernel_release}", "start_time": _time(run),
                "valid": True, "misc": {"kernel_release": prov.kernel_release}}
    build = {"id": build_id, "origin": ORIGIN, "checkout_id": checkout_id,
             "architecture": "x86_64", "config_name": str(run.metadata.get("flavor", UNKNOWN)),
             "comment": f"kernel {prov.kernel_release}, config {prov.config_hash}",
             "start_time": _time(run), "status": "PASS",
             "misc": {"kernel_release": prov.kernel_release, "config_hash": prov.config_hash}}
    common = {"environment": _environment(run), "start_time": _time(run),
              **_files(run, base_url)}
    tests = [_test(run, build_id, check, common) for check in run.checks()]
    if not run.checks_hold_verdict:
        verdict = run.verdict
        tests.append({"id": f"{ORIGIN}:{run.run_id}:verdict", "origin": ORIGIN,
                      "build_id": build_id, "path": f"{ORIGIN}.verdict",
                      "status": "ERROR" if verdict.exit_code == 125 else "FAIL",
                      "comment": (verdict.summary or verdict.meaning)[:1000],
                      "misc": {"outcome": verdict.outcome, "exit_code": verdict.exit_code,
                               "evidence": dict(verdict.evidence), **prov.as_dict()},
                      **common})
    return {"version": dict(SCHEMA_VERSION), "checkouts": [checkout], "builds": [build],
            "tests": tests}


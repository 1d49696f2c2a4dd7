"""``msixlab run --repeat 2`` against the real guest: two runs, each leaving the four result
files (results.ktap, junit.xml, kcidb.json, report.html), which parse and agree with the
run's routing.json, and a repeat summary that calls the runs steady."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from kcidb_io.schema import LATEST

from agent.host.results import FILES, ktap
from agent.host.rundirs import PROJECT_DIR

pytestmark = pytest.mark.guest


def kci_dev_dry_run(kcidb: "Path", home: "Path") -> dict:
    """What KernelCI's own client would send for a run (docs/results.md): ``kci-dev submit
    build --from-json FILE --dry-run`` prints the payload without sending it."""
    kci_dev = Path(sys.executable).with_name("kci-dev")
    done = subprocess.run([str(kci_dev), "submit", "build", "--from-json", str(kcidb),
                           "--dry-run"], capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "HOME": str(home)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout)


def test_run_repeat_writes_every_result_file(image, tmp_path):
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--repeat", "2",
                           "--results", str(tmp_path)], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "run 2 of 2" in done.stderr and "steady; exit 0" in done.stderr
    runs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("run-"))
    (repeat,) = [p for p in tmp_path.iterdir() if p.name.startswith("repeat-")]
    summary = json.loads((repeat / "summary.json").read_text())
    assert [r["run_id"] for r in summary["runs"]] == [p.name for p in runs]
    assert [r["exit_code"] for r in summary["runs"]] == [0, 0] and summary["flaky"] is False
    for run_dir in runs:
        routing = json.loads((run_dir / "routing.json").read_text())
        judged = routing["checks"]["total"]
        tests = ktap.parse((run_dir / "results.ktap").read_text())
        assert sum(len(t.subtests) for t in tests) == judged and all(t.ok for t in tests)
        root = ET.parse(run_dir / "junit.xml").getroot()
        assert (root.get("tests"), root.get("failures")) == (str(judged), "0")
        kcidb = json.loads((run_dir / "kcidb.json").read_text())
        LATEST.validate(kcidb)
        assert len(kcidb["tests"]) == judged
        assert kcidb["builds"][0]["misc"]["kernel_release"] == image.kernel("default").version
        assert kci_dev_dry_run(run_dir / "kcidb.json", tmp_path) == kcidb
        page = (run_dir / "report.html").read_text()
        assert run_dir.name in page and "PASS &middot; exit 0" in page
        assert all((run_dir / name).stat().st_size > 0 for name in FILES)

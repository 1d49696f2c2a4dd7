"""The open-file limit a run needs (agent/host/lab/hostlimits.py), in real processes whose
limits prlimit set: a low soft limit is raised to the hard one (and children inherit it),
a hard limit below the minimum is host_resource (125) naming RLIMIT_NOFILE."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")

PROBE = """
import json, resource, subprocess, sys
from agent.host.lab.hostlimits import ensure_fd_limit
from agent.host.verdict.outcome import RunVerdict
try:
    now = ensure_fd_limit()
except Exception as err:
    print(json.dumps(RunVerdict.from_error(err).to_dict()))
else:
    child = subprocess.run(["sh", "-c", "ulimit -n"], capture_output=True, text=True).stdout
    print(json.dumps({"limit": now, "child": int(child)}))
"""


def probe(nofile: str) -> dict:
    out = subprocess.run(["prlimit", f"--nofile={nofile}", sys.executable, "-c", PROBE],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_a_low_soft_limit_is_raised_to_the_hard_one():
    assert probe("64:4096") == {"limit": 4096, "child": 4096}


@pytest.mark.parametrize("nofile", ["32", "64:1000"])
def test_a_hard_limit_below_the_minimum_cannot_judge(nofile):
    verdict = probe(nofile)
    assert verdict["outcome"] == "host_resource" and verdict["exit_code"] == 125
    assert "RLIMIT_NOFILE" in verdict["summary"] and "ulimit -n 1024" in verdict["summary"]
    assert verdict["evidence"]["hard"] == int(nofile.split(":")[-1])


def test_msixlab_run_under_prlimit_32_is_refused_before_anything_starts(tmp_path):
    """The fd limit of issue 22 (QEMU's 9p hit EMFILE, the rig's init died, judged a
    kernel panic): 125 naming the limit, at once."""
    out = subprocess.run(["prlimit", "--nofile=32", sys.executable, "-m", "agent.host", "run",
                          "--results", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 125, out.stdout + out.stderr
    said = out.stdout + out.stderr
    assert "host_resource" in said and "RLIMIT_NOFILE" in said
    routing = json.loads(next(tmp_path.glob("run-*/routing.json")).read_text())
    assert routing["verdict"]["evidence"]["resource"] == "RLIMIT_NOFILE"

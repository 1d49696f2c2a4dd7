"""The main job against the real guest: the default scenario passes, and a check made to
fail by an injected device fault is seen to fail with its evidence."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.host.errors import EXIT_FAIL, EXIT_PASS
from agent.host.lab import Lab
from agent.host.report import judge_exit
from agent.host.routing import Verdict
from agent.host.scenario import Scenario
from agent.host.session import PROJECT_DIR, RunDirs
from images import recipe

EVERY_CHECK = {
    "cached_msg_matches_table", "destination_matches_affinity", "raise_counted_once_on_cpu",
    "doorbell_raise_counted_once_on_cpu", "freed_entry_masked_and_cleared",
    "pending_delivered_after_alloc", "freed_index_reused", "freed_raise_delivered_once_on_reuse",
    "affinity_honoured", "kernel_irq_view_agrees",
}


@pytest.mark.parametrize("flavor", sorted(recipe.FLAVORS))
def test_msixlab_run_passes_and_writes_routing_json(image, flavor, tmp_path):
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--flavor", flavor,
                           "--results", str(tmp_path)],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900)
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    assert "MSI-X routing" in done.stderr and "all" in done.stderr
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "routing.json").read_text())
    assert doc["metadata"]["kernel"] == image.kernel(flavor).version
    names = {c["name"] for r in doc["records"] for c in r["checks"]}
    assert names == EVERY_CHECK
    assert all(c["verdict"] == "pass" for r in doc["records"] for c in r["checks"])
    groups = doc["metadata"]["groups"]
    assert groups["C"]["indices"] == [60, 61, 62]          # the explicit-index group
    assert groups["E"]["indices"] == groups["B"]["indices"]  # index reuse
    for name in ("console.log", "qemu.log", "device-events.jsonl", "lspci.txt", "dmesg.txt"):
        assert (run_dir / name).stat().st_size > 0, name
    assert "MSI-X: Enable+ Count=64" in (run_dir / "lspci.txt").read_text()


def test_dropped_raise_is_a_failed_check_not_a_crash(image, tmp_path):
    with RunDirs.create(tmp_path) as dirs, Lab(image, "default", dirs) as lab:
        lab.device.command("fault", kind="drop_raise", vector=1, count=1)
        final = Scenario(lab).run()
    status = judge_exit(final.results())
    assert status.code == EXIT_FAIL
    assert status.failed == ("raise_counted_once_on_cpu[1]",)
    (failure,) = [r for r in final.results() if r.verdict is Verdict.FAIL]
    assert failure.evidence["device_deltas"] == {"raised": 1, "delivered": 0}
    assert failure.evidence["count_deltas"] == {}

"""The life-cycle scenarios against the real QEMU 11.1.3 and guest, on both kernels: each
run through ``msixlab run`` must pass with every declared check judged, and its record
must show the scenario did what it says (the teardowns happened with raises flowing, the
default plan ran again after each).  The reset step of the default scenario is asserted
in test_main_job.py (both kernels)."""

from __future__ import annotations

import pytest

from agent.host.scenarios.remove_rescan import PLAN as REMOVE_RESCAN
from images import recipe

from test_scenarios import run as run_scenario

pytestmark = pytest.mark.guest


def run(tmp_path, *options) -> dict:
    """test_scenarios' run (exit 0, every declared check judged, none failed), and here
    every result a pass: no check of remove-rescan may be skipped."""
    doc = run_scenario(tmp_path, *options)
    assert all(r["verdict"] == "pass" for r in doc["results"])
    return doc


@pytest.mark.parametrize("flavor", sorted(recipe.FLAVORS))
def test_remove_rescan_and_unbind_bind_with_raises_flowing(image, flavor, tmp_path):
    doc = run(tmp_path, "--scenario", "remove-rescan", "--flavor", flavor)
    assert doc["metadata"]["kernel"] == image.kernel(flavor).version
    steps = [s["step"] for s in doc["metadata"]["steps"]]
    assert [s for s in steps if "/" not in s] == [step for step, _ in REMOVE_RESCAN]
    for label in ("rescan", "bind"):            # the whole default plan ran again
        assert f"{label}/reset" in steps and f"{label}/final" in steps
    remove, unbind = doc["metadata"]["teardowns"]
    assert (remove["command"], unbind["command"]) == ("remove_device", "unbind")
    assert remove["raises"] > 0 and unbind["raises"] > 0
    assert remove["raiser_error"] is None and unbind["raiser_error"] is None
    assert len(remove["live"]) == 10 and len(unbind["live"]) == 8     # 0+A+B+C, 0+F+3
    judged = {(r["step"], r["name"]) for r in doc["results"]}
    assert ("remove", "kernel_irqs_freed") in judged and ("unbind", "msi_irqs_gone") in judged

"""The life-cycle scenarios against the real QEMU 11.1.3 and guest, on both kernels: each
run through ``msixlab run`` must pass with every declared check judged, and its record
must show the scenario did what it says (the teardowns happened with raises flowing, the
default plan ran again after each; the NIC really went to D3hot and came back through a
reset, the guest really slept in S3 and suspend-to-idle).  The reset step of the default
scenario is asserted in test_main_job.py (both kernels)."""

from __future__ import annotations

import pytest

from agent.host.scenarios.remove_rescan import PLAN as REMOVE_RESCAN
from agent.host.scenarios.suspend import PLAN as SUSPEND
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


@pytest.mark.parametrize("flavor", sorted(recipe.FLAVORS))
def test_suspend_runtime_d3hot_s2idle_and_s3_with_groups_live(image, flavor, tmp_path):
    doc = run(tmp_path, "--scenario", "suspend", "--flavor", flavor)
    meta = doc["metadata"]
    assert meta["kernel"] == image.kernel(flavor).version
    assert [s["step"] for s in meta["steps"]] == [step for step, _ in SUSPEND]
    runtime, freeze, mem = meta["transitions"]
    assert (runtime["step"], freeze["step"], mem["step"]) == (
        "runtime-d3hot", "suspend-freeze", "suspend-mem")
    # runtime PM: the kernel put the NIC in D3hot, PMCSR D3hot -> D0 reset it once
    assert runtime["down"]["runtime_status"] == "suspended"
    assert runtime["down"]["power_state"] == "D3hot"
    assert runtime["up"]["runtime_status"] == "active"
    assert runtime["qemu_sent"]["resets"] == ["d3hot"]
    assert runtime["driver_pm"]["runtime_suspends"] == 1
    # the guest slept: suspend-to-idle woken by a key, S3 by QMP (QEMU said "suspended")
    assert freeze["result"]["errno"] == 0 and freeze["wakes"] >= 1
    assert freeze["qemu_sent"]["resets"] == ["d3hot"]
    assert mem["result"]["errno"] == 0 and mem["asleep"]["status"] == "suspended"
    assert mem["qemu_sent"]["resets"] == ["d3hot", "device_reset"]     # QEMU's wake-up
    assert mem["driver_pm"]["system_suspends"] == 2 == mem["driver_pm"]["system_resumes"]
    for transition in (runtime, freeze, mem):          # raised in D3hot, every live one
        assert len(transition["held_while_down"]) == 10     # 0+A+B+C+L but the reset's
    judged = {(r["step"], r["name"]) for r in doc["results"]}
    for step in ("runtime-d3hot", "suspend-freeze", "suspend-mem"):
        assert (step, "raise_held_in_d3hot") in judged
        assert (step, "reset_entry_restored") in judged

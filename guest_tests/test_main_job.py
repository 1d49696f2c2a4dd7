"""The main job against the real guest: the default scenario passes, and a check made to
fail by an injected device fault is seen to fail with its evidence."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.host.errors import EXIT_FAIL, EXIT_PASS
from agent.host.jobs.run import judge
from agent.host.lab.lab import Lab
from agent.host.rundirs import PROJECT_DIR, RunDirs
from agent.host.scenarios.default import PLAN, Scenario
from agent.host.verdict.routing import Verdict
from images import recipe

EVERY_CHECK = {name for _, names in PLAN for name in names}


@pytest.mark.parametrize("flavor", sorted(recipe.FLAVORS))
def test_msixlab_run_passes_and_writes_routing_json(image, flavor, tmp_path):
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--flavor", flavor,
                           "--results", str(tmp_path)],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900)
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    assert "MSI-X routing" in done.stderr and "exit 0 (pass)" in done.stderr
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "routing.json").read_text())
    assert doc["metadata"]["kernel"] == image.kernel(flavor).version
    # version 2's metadata (docs/routing.md): what decided the run, then what ran
    meta = doc["metadata"]
    assert doc["version"] == 2 and meta["job"] == "run" and meta["seed"] == 0
    assert meta["options"]["flavor"] == flavor and meta["options"]["scenario"] == "default"
    assert meta["reproduce"].startswith(f"msixlab run --flavor {flavor} ")
    assert meta["reproduce"].endswith(" --vectors 64 --cpus 2")
    assert doc["verdict"]["outcome"] == "pass" and doc["verdict"]["exit_code"] == 0
    assert doc["verdict"]["counts"]["not_judged"] == 0
    judged = {(r["step"], r["name"]) for r in doc["results"]}
    assert judged == {(step, name) for step, names in PLAN for name in names}
    assert {r["name"] for r in doc["results"]} == EVERY_CHECK
    assert all(r["verdict"] == "pass" for r in doc["results"])
    assert [s["step"] for s in doc["metadata"]["steps"]] == [step for step, _ in PLAN]
    groups = doc["metadata"]["groups"]
    assert groups["C"]["indices"] == [60, 61, 62]          # the explicit-index group
    assert groups["E"]["indices"] == groups["B"]["indices"]  # index reuse
    assert groups["L"]["indices"] == [63]                   # the table's last index
    for name in ("console.log", "qemu.log", "device-events.jsonl", "lspci.txt", "dmesg.txt"):
        assert (run_dir / name).stat().st_size > 0, name
    assert "MSI-X: Enable+ Count=64" in (run_dir / "lspci.txt").read_text()
    assert_reset_step(doc)


def assert_reset_step(doc: dict) -> None:
    """The reset step really reset the function both ways, with every live vector restored
    (its checks passed above), and recorded what QEMU sent: an FLR is a config write only
    (then one SET_IRQS per live vector), a bus reset a disable-all and a DEVICE_RESET."""
    flr, bus = doc["metadata"]["resets"]
    restored = {r["index"] for r in doc["results"]
                if r["step"] == "reset" and r["name"] == "reset_entry_restored"}
    groups = doc["metadata"]["groups"]
    live = {0} | {i for name in ("A", "C", "D", "E", "L") for i in groups[name]["indices"]}
    assert restored == live              # index 0 and every group live at the reset step
    assert (flr["method"], bus["method"]) == ("flr", "bus")
    assert flr["offered"][0] == "flr" and "bus" in flr["offered"]
    assert flr["qemu_sent"]["resets"] == ["flr"]
    assert "DEVICE_RESET" not in flr["qemu_sent"]["requests"]
    assert bus["qemu_sent"]["resets"] == ["device_reset"]
    assert bus["qemu_sent"]["set_irqs"][0] == {"start": 0, "count": 0, "nfds": 0, "flags": 0x21}
    assigned = {s["start"] for s in bus["qemu_sent"]["set_irqs"] if s["nfds"] == 1}
    assert assigned == restored                           # every live vector got its eventfd


def test_dropped_raise_is_a_failed_check_not_a_crash(image, tmp_path):
    with RunDirs.create(tmp_path) as dirs, Lab(image, "default", dirs) as lab:
        lab.device.command("fault", kind="drop_raise", vector=1, count=1)
        scenario = Scenario(lab)
        scenario.run()
    verdict = judge(scenario, [])
    assert verdict.exit_code == EXIT_FAIL and scenario.stopped_at == "raise-device"
    failed = set(verdict.failed)
    assert "raise-device/raise_counted_once_on_cpu[1]" in failed
    assert "raise-device/counts_match_raises[1]" in failed
    assert all("[1]" in name for name in failed), failed     # nothing else was blamed
    (failure,) = [r for r in scenario.results if r.verdict is Verdict.FAIL
                  and r.name == "raise_counted_once_on_cpu"]
    assert failure.evidence["device_deltas"] == {"raised": 1, "delivered": 0}
    assert failure.evidence["count_deltas"] == {}


def test_a_full_results_disk_keeps_a_failed_check_and_says_so(image, tmp_path):
    # The guest's views were saved outside the verdict's guard: on a full disk their
    # OSError escaped and a run the kernel failed (exit 1) ended as a bare 125.
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--results", str(full),
                               "--device-fault", "drop_raise:vector=1"],
                              cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run(["umount", str(full)], check=True)
    said = " ".join(done.stderr.split())
    assert done.returncode == EXIT_FAIL, done.stderr[-4000:]
    assert "exit 1 (check_failed)" in said
    assert "could not write the results" in said and "No space left on device" in said
    assert "Traceback" not in done.stderr


def test_appended_kernel_parameters_reach_the_guest_kernel(image, tmp_path):
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--append",
                           'irqaffinity=1 dyndbg="file msi.c +p"', "--results", str(tmp_path)],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900)
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    (run_dir,) = tmp_path.iterdir()
    meta = json.loads((run_dir / "routing.json").read_text())["metadata"]
    assert meta["append"] == ["irqaffinity=1", "dyndbg=file msi.c +p"]
    # the guest's own /proc/cmdline: the rig's parameters first, then the user's
    assert meta["guest_cmdline"].startswith("console=ttyS0 panic=-1 loglevel=5 ")
    assert meta["guest_cmdline"].endswith(' irqaffinity=1 dyndbg="file msi.c +p"')
    assert "--append 'irqaffinity=1 dyndbg=\"file msi.c +p\"'" in meta["reproduce"]

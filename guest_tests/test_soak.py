"""``msixlab soak`` in the real guest: a short soak passes with every number in its
summary reconciled, the same seed replays the same op log, a lost interrupt (the device
dropping raises of vector 0 on purpose) and an interrupt nobody raised (a real raise
behind the soak's back) fail it with a named check, and the agent's ``totals`` waits
bounded and checks its arguments.  With ``--nics 2``: the soak passes with ops and
interrupts on both NICs, replays its NIC choices, and a device dropping every raise of
NIC 1 (``--device-fault drop_raise:nic=1``) fails it with checks named for NIC 1 only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.host.jobs.soak import judge
from agent.host.rundirs import PROJECT_DIR
from agent.host.scenarios.soak import Soak

pytestmark = pytest.mark.guest


def test_soak_cli_passes_and_its_summary_reconciles(image, tmp_path):
    done = subprocess.run([sys.executable, "-m", "agent.host", "soak", "--seconds", "4",
                           "--seed", "11", "--results", str(tmp_path)], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "soak summary" in done.stderr and " ops, " in done.stderr   # progress lines
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("soak-")]
    record = json.loads((run_dir / "soak.json").read_text())
    summary = record["summary"]
    assert record["verdict"]["exit_code"] == 0 and record["metadata"]["seed"] == 11
    assert summary["ops"] == len(record["op_log"]) == sum(summary["ops_by_kind"].values()) > 20
    by_source = summary["raises_by_source"]
    assert summary["raises"] == sum(by_source.values())
    assert by_source["device"] and by_source["doorbell"]
    # the device saw every raise made (doorbell ones in IRQ_TOTAL) and dropped none
    device = summary["device"]
    assert device["raised"] == summary["raises"] and device["dropped"] == 0
    assert device["irq_total"] == by_source["doorbell"]
    # every raise of a live vector was counted once; an unowned one at most once
    delivered_live = by_source["device"] + by_source["doorbell"]
    assert delivered_live <= summary["interrupts"] <= summary["raises"]
    assert summary["interrupts_per_s"] > 0 and not record["failures"]
    # the result files, as for run: routing.json's verdict and a junit.xml with no failure
    routing = json.loads((run_dir / "routing.json").read_text())
    assert routing["verdict"]["exit_code"] == 0 and routing["checks"]["fail"] == 0
    # one metadata layout: soak.json's is routing.json's (docs/routing.md)
    assert (record["schema"], record["version"], routing["version"]) == ("msixlab.soak", 2, 2)
    assert record["metadata"] == routing["metadata"] and record["metadata"]["job"] == "soak"
    assert record["metadata"]["options"]["seconds"] == 4
    junit = (run_dir / "junit.xml").read_text()
    assert 'failures="0"' in junit and "no_interrupt_lost" in junit


def soak_cli(tmp_path, *words: str) -> tuple[int, dict, dict, str]:
    """``msixlab soak`` as a user runs it; (exit code, soak.json, routing.json, stderr)."""
    done = subprocess.run([sys.executable, "-m", "agent.host", "soak", *words,
                           "--results", str(tmp_path)], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=600)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("soak-")]
    return (done.returncode, json.loads((run_dir / "soak.json").read_text()),
            json.loads((run_dir / "routing.json").read_text()), done.stderr)


TWO_NICS = ("--nics", "2", "--ops", "60", "--seed", "7")


def test_two_nic_soak_passes_with_ops_and_interrupts_on_both(image, tmp_path):
    code, record, routing, stderr = soak_cli(tmp_path / "a", *TWO_NICS)
    assert code == 0, stderr[-4000:]
    summary, nics = record["summary"], record["summary"]["nics"]
    ops_by_nic = [sum(e["nic"] == nic for e in record["op_log"]) for nic in (0, 1)]
    assert min(ops_by_nic) > 10 and sum(ops_by_nic) == summary["ops"] == 60
    assert [nics[f"nic{i}"]["ops"] for i in (0, 1)] == ops_by_nic
    for name, nic in nics.items():
        # each NIC's device saw its own raises, dropped none, and its driver counted them
        assert nic["interrupts"] > 0 and nic["device"]["raised"] == nic["raises"], name
        assert nic["device"]["dropped"] == 0, name
        assert nic["raises_by_source"].get("device", 0) <= nic["interrupts"] <= nic["raises"]
    assert summary["interrupts"] == sum(n["interrupts"] for n in nics.values())
    assert summary["raises"] == sum(n["raises"] for n in nics.values())
    meta = record["metadata"]
    assert "--nics 2" in meta["reproduce"] and meta["options"]["nics"] == 2
    assert set(meta["nic_records"]) == {"nic0", "nic1"}
    assert routing["verdict"]["exit_code"] == 0 and routing["checks"]["fail"] == 0
    assert {r["step"] for r in routing["results"]} == {"nic0/soak", "nic1/soak"}
    assert "nic1: " in stderr and "nic1: ops, raises, interrupts" in stderr
    # the same seed replays the same ops on the same NICs
    code, again, _, stderr = soak_cli(tmp_path / "b", *TWO_NICS)
    assert code == 0 and again["op_log"] == record["op_log"], stderr[-2000:]


def test_raises_dropped_on_nic1_fail_the_soak_named_for_nic1(image, tmp_path):
    code, record, routing, stderr = soak_cli(tmp_path, *TWO_NICS, "--device-fault",
                                             "drop_raise:nic=1,count=0")
    assert code == 1, stderr[-4000:]
    failed = record["verdict"]["failed"]
    assert failed and all(label.startswith("nic1/") for label in failed), failed
    assert any("/no_interrupt_lost[" in label for label in failed), failed
    assert all(f["evidence"]["nic"] == 1 and f["summary"].startswith("NIC 1: ")
               for f in record["failures"])
    assert not any(label.startswith("nic0/") for label in failed)
    assert [f["nic"] for f in record["verdict"]["faults_armed"]] == [1]
    assert record["summary"]["nics"]["nic0"]["device"].get("dropped", 0) == 0
    assert routing["verdict"]["exit_code"] == 1 and routing["checks"]["fail"] == len(failed)
    assert "nic1/" in stderr and ("--device-fault=drop_raise:nic=1,count=0"
                                  in record["metadata"]["reproduce"])


def _soak(lab, seed: int, ops: int) -> Soak:
    soak = Soak(lab, seed, seconds=60, max_ops=ops)
    soak.run()
    return soak


def test_same_seed_replays_the_same_op_log(msixlab_lab):
    first = _soak(msixlab_lab.lab, seed=3, ops=40)
    msixlab_lab.prepare()                 # a fresh probe: group ids start at 1 again
    second = _soak(msixlab_lab.lab, seed=3, ops=40)
    assert not first.failures and not second.failures, first.failures + second.failures
    assert first.op_log == second.op_log and len(first.op_log) == 40
    assert any(entry["op"] == "alloc" and "indices" in entry for entry in first.op_log)


def test_lost_interrupts_fail_the_soak_with_a_named_check(msixlab_lab, msixlab_device):
    armed = msixlab_device.request("fault", kind="drop_raise", vector=0, count=0)
    soak = _soak(msixlab_lab.lab, seed=3, ops=40)
    verdict = judge(soak, [armed])
    assert verdict.exit_code == 1 and verdict.outcome == "check_failed"
    lost = [r for r in soak.failures if r.name == "no_interrupt_lost"]
    assert lost and lost[0].index == 0, soak.failures
    assert any(label.endswith("no_interrupt_lost[0]") for label in verdict.failed)
    assert len(soak.op_log) < 40          # it stopped at the first failure


def test_totals_waits_bounded_and_checks_its_arguments(msixlab_guest, msixlab_device):
    import time

    from agent.host.testkit.lab import CommandError
    group = msixlab_guest.request("alloc_group", min=2, max=2)
    a, b = group["indices"]
    msixlab_device.request("raise", vectors=[a])
    got = msixlab_guest.request("totals", want={str(a): 1}, timeout_ms=5000)
    assert got["short"] == 0 and got["totals"][str(a)] == 1 and got["totals"][str(b)] == 0
    started = time.monotonic()
    got = msixlab_guest.request("totals", want_each=1, first=a, last=b, timeout_ms=300)
    assert got["short"] == 1 and 0.25 <= time.monotonic() - started < 5   # b never raised
    for bad in ({"want": {"x": 1}}, {"want": {str(a): -1}}, {"want": {}, "want_each": 1}):
        with pytest.raises(CommandError) as err:
            msixlab_guest.request("totals", **bad)
        assert err.value.code == "EINVAL" and "totals" in err.value.message


def test_an_interrupt_nobody_raised_fails_the_soak(msixlab_lab):
    """One real raise of vector 0 from the device behind the soak's back (after its first
    second): the next reconciliation finds a count the ledger does not expect."""
    lab = msixlab_lab.lab
    soak = Soak(lab, seed=8, seconds=20)
    planted = []

    def plant(elapsed, stats):
        if not planted:
            before = int(lab.agent("totals")["totals"]["0"])
            lab.device_command("raise", vector=0)
            planted.append(lab.agent("totals", want={"0": before + 1},
                                     timeout_ms=5000)["short"])
    soak.tick = plant
    soak.run()
    assert planted == [0]                                   # the extra one was counted
    first = soak.failures[0]
    assert (first.name, first.index) in {("no_spurious_interrupt", 0),
                                         ("no_interrupt_duplicated", 0)}, soak.failures
    assert judge(soak, []).exit_code == 1 and soak.elapsed < 10

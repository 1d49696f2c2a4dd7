"""The two other paths of QEMU's vfio-user client, chosen by what the NIC advertises.

``--msix-maskable`` (VFIO_IRQ_INFO_MASKABLE) and ``--msix-noresize``
(VFIO_IRQ_INFO_NORESIZE) against the real QEMU 11.1.3 and guest: the main job passes in
each mode, and a focused test per mode shows the mode is in effect (QEMU's own trace says
what it read and sent) and that an interrupt raised at the mode's awkward moment (behind
a mask; inside a disable/re-enable) arrives exactly once."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from agent.host.errors import EXIT_PASS
from agent.host.lab.lab import Lab
from agent.host.rundirs import PROJECT_DIR, RunDirs
from images.recipe import DEFAULT_FLAVOR
from msixlab_common.deadline import wait_until

pytestmark = pytest.mark.guest
TRACE = ("vfio_user_get_irq_info", "vfio_user_set_irqs", "vfio_msix_vector_*")
COUNT_TIMEOUT_S = 10.0


def _events(run_dir, kind):
    with open(run_dir / "device-events.jsonl") as f:
        return [e for e in map(json.loads, f) if e.get("event") == kind]


@pytest.mark.parametrize("mode", ["maskable", "noresize"])
def test_main_job_passes_in_mode(image, mode, tmp_path):
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", f"--msix-{mode}",
                           "--results", str(tmp_path)],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900)
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "routing.json").read_text())
    assert doc["metadata"]["msix_modes"] == {"maskable": mode == "maskable",
                                             "noresize": mode == "noresize",
                                             "irq_info_flags": {"maskable": 3,
                                                                "noresize": 9}[mode]}
    assert all(c["verdict"] == "pass" for r in doc["records"] for c in r["checks"])
    disables = _events(run_dir, "irq_disable_all")
    # the reset step's bus reset: QEMU disables every vector before DEVICE_RESET
    resets = [r for r in doc["metadata"]["resets"]
              if {"start": 0, "count": 0, "nfds": 0, "flags": 33} in r["qemu_sent"]["set_irqs"]]
    assert [r["method"] for r in resets] == ["bus"]
    if mode == "noresize":        # groups A, B, C, D each grew the table at least once
        assert len(disables) >= 4 + len(resets)
    else:                         # MASKABLE: growth never disables; only the bus reset does
        assert len(disables) == len(resets)
    assert _events(run_dir, "error") == []      # QEMU sent nothing the device refused


def _total(lab, index):
    return lab.agent("vector", index=index)["total"]


def _wait_total(lab, index, want):
    return wait_until(lambda: _total(lab, index) >= want, COUNT_TIMEOUT_S,
                      f"the guest to count vector {index} {want} time(s)",
                      detail=lambda: f"counted {_total(lab, index)}")


def _fence(lab, index):
    """Raise ``index`` and wait until the guest counted it: what was raised before has
    had its chance to arrive (twice, if it was duplicated)."""
    before = _total(lab, index)
    lab.device.raise_vectors([index])
    _wait_total(lab, index, before + 1)


def _trace(dirs):
    return (dirs.results / "qemu-trace.log").read_text()


def test_maskable_mode_in_effect_and_a_masked_raise_arrives_once(image, tmp_path):
    with RunDirs.create(tmp_path, prefix="maskable") as dirs:
        with Lab(image, DEFAULT_FLAVOR, dirs, trace=TRACE, msix_maskable=True) as lab:
            st = lab.device.state()
            assert st["msix"]["maskable"] and st["msix"]["irq_info_flags"] == 3
            fence = lab.agent("alloc_group", min=1, max=1)["indices"][0]
            g = lab.agent("alloc_group", min=1, max=1, start=20)
            (v,) = g["indices"]
            lab.agent("free_group", group=g["group"])          # masks entry 20 in QEMU
            assert lab.qemu_table()[v]["ctrl"] & 1             # QEMU's table: masked
            before = lab.device.state()["vectors"][v]
            # The device delivers to QEMU, which holds it behind the entry's mask (the
            # freed vector has no handler in the guest to count it meanwhile).
            assert lab.device.raise_vectors([v])["results"][0]["outcome"] == "delivered"
            again = lab.agent("alloc_group", min=1, max=1, start=20)
            _wait_total(lab, v, 1)
            _fence(lab, fence)
            assert _total(lab, v) == 1                         # exactly once
            after = lab.device.state()
            d = after["vectors"][v]
            assert (d["raised"] - before["raised"], d["delivered"] - before["delivered"]) \
                == (1, 1)
            # QEMU 11.1.3 keeps the per-vector mask in its own table: it never forwards
            # MASK/UNMASK for MSI-X, so the device's mask bits stay clear.
            assert after["msix"]["requests"]["mask"] == 0
            assert after["msix"]["requests"]["unmask"] == 0
            assert not any(x["masked"] for x in after["vectors"])
            lab.agent("free_group", group=again["group"])
    trace = _trace(dirs)
    assert re.search(r"vfio_user_get_irq_info +index 2 flags 0x3 count 64", trace), trace
    assert "vfio_msix_vector_release" in trace                 # QEMU did mask vector 20
    sent = re.findall(r"vfio_user_set_irqs +index 2 start \d+ count \d+ flags (0x[0-9a-f]+)",
                      trace)
    assert sent and set(sent) <= {"0x24", "0x21"}, sorted(set(sent))   # no 0x09 / 0x11


def test_noresize_mode_in_effect_and_a_raise_inside_the_reenable_arrives_once(image,
                                                                               tmp_path):
    with RunDirs.create(tmp_path, prefix="noresize") as dirs:
        with Lab(image, DEFAULT_FLAVOR, dirs, trace=TRACE, msix_noresize=True) as lab:
            st = lab.device.state()
            assert st["msix"]["noresize"] and st["msix"]["irq_info_flags"] == 9
            g = lab.agent("alloc_group", min=1, max=1)
            (v,) = g["indices"]
            disables = lab.device.state()["msix"]["requests"]["disable_all"]
            before = lab.device.state()["vectors"][v]
            total = _total(lab, v)
            lab.device.command("fault", kind="raise_on_disable", vector=v)
            grown = lab.agent("alloc_group", min=1, max=1, start=30)  # growth: re-enable
            after = lab.device.state()
            assert after["msix"]["requests"]["disable_all"] == disables + 1
            assert after["faults"] == []                       # fired inside the window
            _wait_total(lab, v, total + 1)
            _fence(lab, grown["indices"][0])
            assert _total(lab, v) == total + 1                 # neither lost nor doubled
            d = lab.device.state()["vectors"][v]
            assert (d["raised"] - before["raised"], d["delivered"] - before["delivered"],
                    d["pending"]) == (1, 1, False)
            lab.agent("free_group", group=grown["group"])
            lab.agent("free_group", group=g["group"])
    # The device's log: the raise came after the disable and was held until vector v's
    # eventfd came back in the re-enable, then delivered once.
    log = [e for e in map(json.loads, open(dirs.results / "device-events.jsonl"))
           if e.get("vector") in (v, -1) and e["event"] in (
               "irq_disable_all", "pend", "eventfd_assign", "deliver_pending", "deliver")]
    kinds = [e["event"] for e in log]
    start = max(i for i, e in enumerate(log) if e["event"] == "pend"
                and e.get("source") == "fault")
    assert kinds[start - 1] == "irq_disable_all", kinds
    assert kinds[start + 1:start + 3] == ["eventfd_assign", "deliver_pending"], kinds
    trace = _trace(dirs)
    assert re.search(r"vfio_user_get_irq_info +index 2 flags 0x9 count 64", trace), trace
    assert re.search(r"vfio_user_set_irqs +index 2 start 0 count 0 flags 0x21", trace)
    assert re.search(r"vfio_user_set_irqs +index 2 start 0 count \d+ flags 0x24", trace)

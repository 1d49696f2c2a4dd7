"""The kernel's own VFIO selftests against the NIC (``--scenario vfio-selftests``), on the
real QEMU 11.1.3 and guest: the build from Debian's linux-source-7.3 (read only, cached,
loading against the image's libraries), a run on the default kernel where every case is
a result in routing.json, results.ktap, junit.xml and kcidb.json, the skips the rig
decides named, and the lts kernel refused by name before it boots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from agent.host.errors import EXIT_INFRA, EXIT_PASS
from agent.host.kernel import testtrees
from agent.host.kernel import vfio_selftests as vs
from agent.host.kernel.under_test import DriverBuild, KernelUnderTest
from agent.host.results import ktap
from agent.host.rundirs import PROJECT_DIR
from agent.host.scenarios.vfio_selftests import BINARIES, MSI_ONLY_REASON, NO_IOMMUFD

pytestmark = pytest.mark.guest


def run(tmp_path, *options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.host", "run", "--scenario",
                           "vfio-selftests", *options, "--results", str(tmp_path)],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900)


def test_selftests_pass_on_the_default_kernel_every_case_a_result(image, tmp_path):
    done = run(tmp_path)
    assert done.returncode == EXIT_PASS, done.stdout[-4000:] + done.stderr[-2000:]
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "routing.json").read_text())
    meta = doc["metadata"]
    assert meta["scenario"] == "vfio-selftests" and meta["iommu"] is True
    record = meta["vfio"]
    assert record["bind"]["driver"] == "vfio-pci"
    assert record["build"]["origin"] == "debian" and record["not_built"] == []
    assert record["iommu_mode"] == "vfio_type1v2_iommu"        # Debian: no CONFIG_IOMMUFD
    assert [s["step"] for s in meta["steps"]] == ["bind", *BINARIES]
    results = {(r["step"], r["name"]): r for r in doc["results"]}

    def verdict(step, name):
        return results[(step, name)]["verdict"]
    for name in ("vfio_pci_device_test.config_space_read_write",
                 "vfio_pci_device_test.validate_bars", "vfio_pci_device_test.reset",
                 "vfio_pci_irq_test.msix.enable_trigger_disable"):
        assert verdict("vfio_pci_device_test", name) == "pass", name
    msi = results[("vfio_pci_device_test", "vfio_pci_irq_test.msi.enable_trigger_disable")]
    assert msi["verdict"] == "skip" and MSI_ONLY_REASON in msi["summary"]
    assert verdict("vfio_pci_device_test", "msi_variant_skipped") == "pass"
    for mode in ("vfio_type1_iommu", "vfio_type1v2_iommu"):
        for size in ("anonymous", "anonymous_hugetlb_2mb"):      # 2 MiB pages reserved
            name = f"vfio_dma_mapping_test.{mode}_{size}.dma_map_unmap"
            assert verdict("vfio_dma_mapping_test", name) == "pass", name
        assert verdict("vfio_dma_mapping_mmio_test",
                       f"vfio_dma_mapping_mmio_test.{mode}.map_full_bar") == "pass"
    left_out = results[("vfio_dma_mapping_test",
                        "vfio_dma_map_limit_test.iommufd.overflow")]
    assert left_out["verdict"] == "skip" and left_out["summary"] == NO_IOMMUFD
    setup = results[("vfio_iommufd_setup_test", "vfio_iommufd_setup_test")]
    assert setup["verdict"] == "skip" and setup["summary"] == NO_IOMMUFD
    assert "No driver found" in results[("vfio_pci_driver_test",
                                         "vfio_pci_driver_test")]["summary"]
    assert "SR-IOV" in results[("vfio_pci_sriov_uapi_test", "vfio_pci_sriov_uapi_test")]["summary"]
    for step in BINARIES:
        assert verdict(step, "device_left_clean") == "pass", step
    assert (run_dir / "selftest-vfio_pci_device_test.log").read_text().count("\nok ") == 5

    # the selftests' cases nested in results.ktap, one subtest block per binary
    top = ktap.parse((run_dir / "results.ktap").read_text())
    by_step = {t.name: t for t in top}
    cases = {t.name: t for t in by_step["vfio_pci_device_test"].subtests}
    assert cases["vfio_pci_device_test.config_space_read_write"].ok
    assert cases["vfio_pci_irq_test.msi.enable_trigger_disable"].directive.startswith("SKIP")
    junit = ET.parse(run_dir / "junit.xml").getroot()
    assert any(case.get("name") == "vfio_pci_device_test.config_space_read_write"
               for case in junit.iter("testcase"))
    kcidb = json.loads((run_dir / "kcidb.json").read_text())
    assert any(test["misc"]["check"] == "vfio_pci_irq_test.msix.enable_trigger_disable"
               and test["status"] == "PASS" for test in kcidb["tests"])


def test_with_iommufd_every_mode_runs_on_the_minimal_kernel(image, tmp_path):
    """The rig's minimal tree (the fragment's vfio-pci section: IOMMUFD, VFIO_DEVICE_CDEV,
    the legacy container too): no variant left out, vfio_iommufd_setup_test runs."""
    tree = testtrees.ensure_test_kernel(niceness=10)
    done = run(tmp_path, "--kernel-tree", str(tree.path))
    assert done.returncode == EXIT_PASS, done.stdout[-4000:] + done.stderr[-2000:]
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "routing.json").read_text())
    record = doc["metadata"]["vfio"]
    assert record["iommu_mode"] == "iommufd" and record["build"]["origin"] == "tree"
    results = {(r["step"], r["name"]): r for r in doc["results"]}
    for name in ("vfio_cdev.bind", "vfio_cdev.attach_detatch_pt",
                 "vfio_cdev.get_info_without_bind_fails"):
        assert results[("vfio_iommufd_setup_test", name)]["verdict"] == "pass", name
    for mode in ("iommufd", "iommufd_compat_type1v2", "vfio_type1v2_iommu"):
        name = f"vfio_dma_map_limit_test.{mode}.overflow"
        assert results[("vfio_dma_mapping_test", name)]["verdict"] == "pass", name
    assert not any(r["summary"] == NO_IOMMUFD for r in doc["results"])


def test_the_lts_kernel_is_refused_by_name_before_it_boots(image, tmp_path):
    """6.12 has no VFIO selftests of its own; 7.3's test 7.3's uapi."""
    done = run(tmp_path, "--flavor", "lts")
    assert done.returncode == EXIT_INFRA, done.stdout[-3000:]
    (run_dir,) = tmp_path.iterdir()
    verdict = json.loads((run_dir / "routing.json").read_text())["verdict"]
    assert verdict["outcome"] == "kernel_unsupported" and "predates" in verdict["summary"]
    assert not (run_dir / "console.log").exists()        # refused before QEMU started


def test_the_build_reads_its_source_only_and_a_warm_cache_is_fast(image, tmp_path,
                                                                   monkeypatch):
    """A cold build of Debian's unpacked source into a fresh cache leaves every file of the
    source as it was, gives binaries that load against the image's libraries, and the
    next call finds them (well under the 5 s budget)."""
    source = vs.debian_source()                  # unpacked in the real cache once
    kernel = KernelUnderTest(label="tree", bzimage=source.path / "bzImage", release="7.3.4",
                             kdir=source.path, driver_build=DriverBuild.KDIR,
                             root_modules=())
    before = {os.path.join(d, f): os.lstat(os.path.join(d, f)).st_mtime_ns
              for d, _, files in os.walk(source.path) for f in files}
    monkeypatch.setenv("MSIXLAB_CACHE", str(tmp_path / "cache"))
    cold = vs.ensure_selftests(image, kernel)
    assert not cold.cached and set(BINARIES) <= set(cold.binaries)
    after = {os.path.join(d, f): os.lstat(os.path.join(d, f)).st_mtime_ns
             for d, _, files in os.walk(source.path) for f in files}
    assert after == before                       # nothing written into the source
    log = (cold.dir.parent / "build.log").read_text()
    assert "--list" in log and "libuuid.so.1 =>" in log
    started = time.monotonic()
    warm = vs.ensure_selftests(image, kernel)
    assert warm.cached and warm.key == cold.key and time.monotonic() - started < 5
    (warm.dir / "vfio_pci_device_test").write_bytes(b"\x7fELF damaged")
    assert not vs.entry_intact(warm.dir.parent)  # a damaged binary is never used

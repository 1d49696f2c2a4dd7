"""A kernel tree as the kernel under test: Debian's linux-source-7.3 built as the minimal
kernel (cached: see agent/host/kernel/testtrees.py), the main job and the vfio-pci scenario
on it, a tree that does not build, and `msixlab bisect` of a throwaway git repository of it
finding each planted bug: a dynamic MSI-X table regression, an oops, a restore that misses
vectors added after enable (a default bisect: the reset step is in the default scenario)
and a vfio-pci regression (a bisect with `-- --scenario vfio-pci`).

The first run fetches the source and builds it (minutes); later runs reuse the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.host.errors import EXIT_INFRA, EXIT_PASS
from agent.host.kernel import config as kconfig
from agent.host.kernel import testtrees
from agent.host.rundirs import PROJECT_DIR

# The first test fetches and builds the kernel (minutes on a fresh machine, more under
# load) inside its fixture setup, which the per-test timeout counts.
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def test_kernel(image):
    return testtrees.ensure_test_kernel(niceness=10)


@pytest.fixture(scope="module")
def fixture(test_kernel):
    """The bisect fixture, held by this module until its last test is done."""
    with testtrees.fixture_in_use(testtrees.ensure_bisect_fixture(niceness=10)) as info:
        yield info


def msixlab(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.host", *args], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=timeout)


def test_the_main_job_passes_on_the_minimal_kernel(test_kernel, tmp_path):
    done = msixlab("run", "--kernel-tree", str(test_kernel.path), "--results", str(tmp_path))
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    (run_dir,) = [d for d in tmp_path.iterdir() if (d / "routing.json").is_file()]
    meta = json.loads((run_dir / "routing.json").read_text())["metadata"]
    assert meta["kernel"] == test_kernel.tree.release()
    assert meta["kernel_under_test"]["driver_build"] == "kdir"
    assert meta["kernel_under_test"]["root_modules"] == []        # 9p and overlay built in
    assert (run_dir / "kmod" / "msixlab.ko").is_file()           # built against the tree
    assert "7.3" in meta["kernel"] and "deb13" not in meta["kernel"]


def test_the_minimal_kernel_carries_every_fragment_option(test_kernel):
    """kconfig took every option of the fragment (iommufd's VFIO container included, which
    it offers only with VFIO's own container off), so `kernel config` names nothing
    missing, not even for a scenario, and a build does not merge the fragment again."""
    assert kconfig.dropped(test_kernel.tree.config(), kconfig.load_fragment()) == []
    done = msixlab("kernel", "config", str(test_kernel.path), timeout=60)
    assert done.returncode == EXIT_PASS, done.stdout + done.stderr
    assert "missing" not in done.stdout + done.stderr


def test_the_vfio_pci_scenario_passes_on_the_minimal_kernel(fixture, tmp_path):
    """`run --kernel-tree DIR --build --scenario vfio-pci` on the fixture's base: vfio-pci
    is built in (the image has no modules for a tree's kernel, so the guest's modprobe
    fails and the driver is there all the same) and the client takes iommufd's cdev."""
    git = testtrees.reset_fixture(fixture, "base")
    done = msixlab("run", "--kernel-tree", fixture["path"], "--build", "--scenario", "vfio-pci",
                   "--results", str(tmp_path))
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    (run_dir,) = [d for d in tmp_path.iterdir() if (d / "routing.json").is_file()]
    meta = json.loads((run_dir / "routing.json").read_text())["metadata"]
    assert meta["scenario"] == "vfio-pci" and meta["kernel_under_test"]["driver_build"] == "kdir"
    bind = meta["vfio"]["bind"]
    assert bind["driver"] == "vfio-pci" and bind["missing"] == [] and bind["dev_iommu"]
    assert meta["vfio"]["path"] == "iommufd"
    assert git.tracked_changes() == []


def test_a_tree_that_does_not_build_is_a_named_125(fixture, tmp_path):
    git = testtrees.reset_fixture(fixture, "base")
    api = Path(fixture["path"]) / "drivers/pci/msi/api.c"
    original = api.read_text()
    api.write_text(original.replace("return msi_domain_alloc_irq_at(",
                                    "return msi_domain_alloc_irq_at_typo(", 1))
    try:
        done = msixlab("kernel", "build", fixture["path"], "--results", str(tmp_path))
    finally:
        git.run("checkout", "--", "drivers/pci/msi/api.c")
    assert done.returncode == EXIT_INFRA
    assert "build of" in done.stderr and "failed" in done.stderr
    assert "drivers/pci/msi/api.c:" in done.stderr and "msi_domain_alloc_irq_at_typo" in done.stderr
    (log,) = tmp_path.glob("kernel-build-*/build.log")
    assert "error:" in log.read_text()
    assert git.tracked_changes() == [] and not git.bisecting()


def test_a_kernel_without_dynamic_msix_is_a_named_125(fixture, tmp_path):
    """The driver's probe says pci_msix_can_alloc_dyn() is false: no verdict, 125."""
    git = testtrees.reset_fixture(fixture, "base")
    api = Path(fixture["path"]) / "drivers/pci/msi/api.c"
    original = api.read_text()
    anchor = "\treturn pci_msi_domain_supports(dev, MSI_FLAG_PCI_MSIX_ALLOC_DYN, DENY_LEGACY);"
    assert original.count(anchor) == 1
    api.write_text(original.replace(anchor, "\treturn false;"))
    try:
        done = msixlab("run", "--kernel-tree", fixture["path"], "--build", "--results", str(tmp_path))
    finally:
        git.run("checkout", "--", "drivers/pci/msi/api.c")
    assert done.returncode == EXIT_INFRA, done.stderr[-3000:]
    flat = " ".join(done.stderr.split())
    assert "pci_msix_can_alloc_dyn() is false" in flat and "cannot allocate MSI-X" in flat
    assert git.tracked_changes() == []


def _bisect(fixture: dict, series: str, tmp_path: Path,
            *run_options: str) -> tuple[subprocess.CompletedProcess, dict]:
    git = testtrees.reset_fixture(fixture, series)
    head = git.head()
    info = fixture["series"][series]
    done = msixlab("bisect", "--kernel-tree", fixture["path"], "--good", fixture["base"],
                   "--bad", info["tip"], "--results", str(tmp_path), "--nice", "10",
                   *(("--", *run_options) if run_options else ()))
    (summary_path,) = tmp_path.glob("bisect-*/summary.json")
    summary = json.loads(summary_path.read_text())
    # the tree is back where it started: same commit and branch, no bisect, no changes
    assert git.head() == head and git.branch() == series
    assert not git.bisecting() and git.tracked_changes() == []
    return done, summary


def _first_bad_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("first bad commit: "))
    return lines[start:]


def test_bisect_names_the_planted_msix_regression(fixture, tmp_path):
    done, summary = _bisect(fixture, "msix-regression", tmp_path)
    culprit = fixture["series"]["msix-regression"]["culprit"]
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    lines = _first_bad_lines(done.stdout)
    assert lines[0] == f"first bad commit: {culprit} PCI/MSI: Skip table writes of an empty message"
    assert any("freed_entry_masked_and_cleared" in line for line in lines[1:]), lines
    assert summary["first_bad"]["commit"] == culprit
    assert summary["good"] == fixture["base"]
    for step in summary["steps"]:
        assert step["verdict"] in ("good", "bad"), step
        assert step["build_seconds"] > 0 and step["run_seconds"] > 0
        assert (tmp_path / summary["id"] / step["commit"] / "build.log").is_file()


def test_bisect_names_the_planted_oops_as_bad_never_skip(fixture, tmp_path):
    done, summary = _bisect(fixture, "oops", tmp_path)
    culprit = fixture["series"]["oops"]["culprit"]
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    lines = _first_bad_lines(done.stdout)
    assert lines[0] == (f"first bad commit: {culprit} "
                        "PCI/MSI: Refuse managed affinity in dynamic allocation")
    assert any("NULL pointer" in line or "Oops" in line or "BUG" in line for line in lines[1:]), lines
    assert all(step["verdict"] != "skip" for step in summary["steps"]), summary["steps"]


def test_a_default_bisect_names_the_planted_restore_regression(fixture, tmp_path):
    """The restore stops at the first gap in the table, so the vectors added after enable
    past it (C from an explicit index, L at N-1) are not rewritten: the FLR passes (QEMU
    keeps its table), the bus reset leaves them masked with an empty message.  No
    --scenario: the reset step is in the default scenario."""
    done, summary = _bisect(fixture, "restore", tmp_path)
    culprit = fixture["series"]["restore"]["culprit"]
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    lines = _first_bad_lines(done.stdout)
    assert lines[0] == (f"first bad commit: {culprit} "
                        "PCI/MSI: Restore the MSI-X table as one block from entry 0")
    assert any("reset_entry_restored" in line for line in lines[1:]), lines
    assert summary["first_bad"]["commit"] == culprit and summary["run_options"] == []
    assert all(step["verdict"] in ("good", "bad") for step in summary["steps"]), summary["steps"]


def test_a_vfio_pci_bisect_names_the_planted_vfio_pci_regression(fixture, tmp_path):
    """vfio-pci gives a vector added after enable whichever table entry is free: the
    vfio-pci scenario's views disagree at the first add (vector 8 lands on entry 1).  Every
    step runs that scenario (`-- --scenario vfio-pci`)."""
    done, summary = _bisect(fixture, "vfio-pci", tmp_path, "--scenario", "vfio-pci")
    culprit = fixture["series"]["vfio-pci"]["culprit"]
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    lines = _first_bad_lines(done.stdout)
    assert lines[0] == (f"first bad commit: {culprit} "
                        "vfio/pci: Let the MSI core place MSI-X vectors added after enable")
    assert any("vfio_msi_irqs_match_allocated" in line for line in lines[1:]), lines
    assert summary["first_bad"]["commit"] == culprit
    assert summary["run_options"] == ["--scenario", "vfio-pci"]
    for step in summary["steps"]:
        assert step["verdict"] in ("good", "bad"), step
        (routing,) = (tmp_path / summary["id"] / step["commit"]).glob("run-1/*/routing.json")
        assert json.loads(routing.read_text())["metadata"]["scenario"] == "vfio-pci"

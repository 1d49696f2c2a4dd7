"""A kernel tree as the kernel under test: Debian's linux-source-7.3 built as the minimal
kernel (cached: see agent/host/kernel/testtrees.py), the main job on it, a tree that does
not build, and `msixlab bisect` of a throwaway git repository of it finding a planted
dynamic MSI-X regression and a planted oops.

The first run fetches the source and builds it (minutes); later runs reuse the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.host.errors import EXIT_INFRA, EXIT_PASS
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


def _bisect(fixture: dict, series: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    git = testtrees.reset_fixture(fixture, series)
    head = git.head()
    info = fixture["series"][series]
    done = msixlab("bisect", "--kernel-tree", fixture["path"], "--good", fixture["base"],
                   "--bad", info["tip"], "--results", str(tmp_path), "--nice", "10")
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

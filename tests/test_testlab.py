"""The pytest plugin's options, host only: LabOptions (agent/host/lab/options.py, the one
description ``msixlab run`` uses too) names every bad value, and a user's pytest with a bad
--msixlab-* option stops with a usage error before anything boots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.host.kernel.under_test import DriverBuild, KernelUnderTest
from agent.host.rundirs import RunDirs
from agent.host.testkit.lab import LabOptions
from test_kernel_tree import fake_tree


def test_default_options_are_fine(tmp_path):
    assert LabOptions().problems() == []
    # the lab the options make (nothing started): what lab_kwargs() used to hand Lab
    kernel = KernelUnderTest("default", Path("/boot/vmlinuz"), "7.3.4", Path("/k"),
                             DriverBuild.IMAGE, ())
    with RunDirs.create(tmp_path) as dirs:
        lab = LabOptions().lab(None, kernel, dirs, accel="tcg")
        assert (lab.vectors, lab.cpus, lab.accel, lab.append) == (64, 2, "tcg", ())
        lab = LabOptions(append=("irqaffinity=1",)).lab(None, kernel, dirs, accel="tcg")
        assert lab.append == ("irqaffinity=1",)


@pytest.mark.parametrize("options,says", [
    (LabOptions(vectors=0), "vectors must be 1..2048, not 0"),
    (LabOptions(vectors=4096), "vectors must be 1..2048, not 4096"),
    (LabOptions(cpus=0), "cpus must be 1..64, not 0"),
    # one message per rule: the code that uses the path names what is wrong with it
    (LabOptions(kernel=Path("/nonexistent/bzImage"), kdir=Path("/")),
     "the kernel image /nonexistent/bzImage does not exist"),
    (LabOptions(qemu=Path("/")), "--qemu /: no executable file there"),
    (LabOptions(kernel=Path("/nonexistent/bzImage")), "--kernel BZIMAGE and --kdir DIR go together"),
    (LabOptions(kernel_tree="", build=True), "--kernel-tree needs a path, not ''"),
    (LabOptions(nics=9), "--nics must be 1..8, not 9"),
    (LabOptions(accel="warp"), "--accel must be one of tcg, kvm, auto, not 'warp'"),
    (LabOptions(flavor="nosuch"), "--flavor 'nosuch': the image has"),
    (LabOptions(device_faults=({"kind": "drop_raise", "nic": 1},)), "names no NIC of this run"),
    (LabOptions(append=("loglevel=0",)), "append: 'loglevel=0' sets what the rig owns"),
])
def test_bad_options_are_named(options, says):
    assert any(says in problem for problem in options.problems()), options.problems()


def test_kernel_choices_are_consistent(tmp_path):
    """A tree, or a prebuilt kernel with its kdir: never both, never a kernel alone.  The
    paths are checked as the kernel choice uses them, so an empty directory is no tree."""
    tree = fake_tree(tmp_path / "linux")
    image = tree / "arch/x86/boot/bzImage"
    assert LabOptions(kernel_tree=tree).problems() == []
    assert LabOptions(kernel=image, kdir=tree).problems() == []
    assert any("kdir" in p for p in LabOptions(kernel=image).problems())
    # was "a kernel tree or a prebuilt kernel, not both": the command line's words won
    assert any("alternatives" in p
               for p in LabOptions(kernel_tree=tree, kernel=image, kdir=tree).problems())
    (tmp_path / "empty").mkdir()
    assert any("is not a Linux kernel source tree" in p
               for p in LabOptions(kernel_tree=tmp_path / "empty").problems())


@pytest.mark.parametrize("args,says", [
    (["--msixlab-vectors", "0"], "vectors must be 1..2048"),
    (["--msixlab-cpus", "999"], "cpus must be 1..64"),
    (["--msixlab-flavor", "nosuch"], "--msixlab-flavor 'nosuch'"),
    (["--msixlab-kernel", "/nonexistent/bzImage"], "/nonexistent/bzImage"),
    # empty paths were Path("."): the current directory as kernel tree or results root
    (["--msixlab-kernel-tree="], "--msixlab-kernel-tree needs a path"),
    (["--msixlab-qemu", ""], "--msixlab-qemu needs a path"),
    (["--msixlab-results="], "--msixlab-results needs a path"),
    (["--msixlab-append", "quiet"], "'quiet' sets what the rig owns"),
    # MSIXLAB_ACCEL went to the lab as is: QEMU's argv refused it at every boot
    (["MSIXLAB_ACCEL=warp"], "MSIXLAB_ACCEL must be one of tcg, kvm, auto, not 'warp'"),
])
def test_bad_options_stop_pytest_before_anything_boots(tmp_path, args, says):
    (tmp_path / "test_x.py").write_text("def test_x(msixlab_guest):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("MSIXLAB_ACCEL", None)
    env.update(a.split("=", 1) for a in args if a.startswith("MSIXLAB_"))
    args = [a for a in args if not a.startswith("MSIXLAB_")]
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--msixlab-results", str(tmp_path / "labs"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stdout + done.stderr           # pytest's usage error
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "labs").exists()

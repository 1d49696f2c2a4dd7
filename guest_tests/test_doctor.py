"""``msixlab doctor --json`` on a machine with the image built: the contract scripts use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.host.rundirs import PROJECT_DIR
from images import recipe


def test_doctor_json_reports_the_toolchain(image):
    done = subprocess.run([sys.executable, "-m", "agent.host", "doctor", "--json"],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    major, minor, _ = (int(x) for x in info["qemu"]["version"].split("."))
    assert (major, minor) >= (10, 1)
    assert info["qemu"]["vfio_user_pci"] is True
    assert info["qemu"]["command"] == image.qemu_command()
    assert Path(info["rootfs"]) == image.rootfs
    assert {k["flavor"] for k in info["kernels"]} == set(recipe.FLAVORS)
    for kernel in info["kernels"]:
        assert Path(kernel["image"]).is_file() and Path(kernel["headers"]).is_dir()
    assert info["accel"] == "tcg" and info["accel_reason"]
    assert Path(info["cache_dir"]).is_dir() and info["cache_size_bytes"] > 0
    assert info["missing"] == []

"""--dry-run prints the exact commands of run and shell, from one code path, and starts,
builds and leaves nothing."""

from __future__ import annotations

import glob
import shlex
import subprocess
import sys

from agent.host.rundirs import PROJECT_DIR


def dry(tmp_path, *argv):
    before = set(glob.glob("/tmp/msixlab-dry-run-*"))
    done = subprocess.run([sys.executable, "-m", "agent.host", *argv, "--dry-run",
                           "--results", str(tmp_path)], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not any(tmp_path.iterdir())                          # no results dir
    assert set(glob.glob("/tmp/msixlab-dry-run-*")) == before   # no scratch left
    return [shlex.split(line) for line in done.stdout.splitlines()]


def test_run_prints_every_device_server_then_qemu(image, tmp_path):
    *servers, qemu = dry(tmp_path, "run", "--msix-maskable", "--nics", "2", "--cpus", "4")
    assert len(servers) == 2
    for argv in servers:
        assert argv[1:4] == ["-m", "qemu_device", "serve"] and "--msix-maskable" in argv
    assert "qemu-system-x86_64" in " ".join(qemu)
    assert sum("vfio-user-pci" in word for word in qemu) == 2
    assert "4" in qemu[qemu.index("-smp") + 1]


def test_shell_without_a_nic_prints_only_qemu(image, tmp_path):
    (qemu,) = dry(tmp_path, "shell", "--no-nic")
    assert not any("vfio-user-pci" in word for word in qemu)
    assert any("msixlab.mode=shell" in word for word in qemu)


def test_soak_prints_a_device_server_per_nic(image, tmp_path):
    *servers, qemu = dry(tmp_path, "soak", "--nics", "3", "--seed", "1")
    assert len(servers) == 3
    assert [argv[argv.index("--socket") + 1].rsplit("/", 1)[-1] for argv in servers] \
        == ["nic0.sock", "nic1.sock", "nic2.sock"]
    assert sum("vfio-user-pci" in word for word in qemu) == 3

"""``msixlab shell``: a manual session on the guest, console on this terminal.

Concepts: the same guest the main job boots (the image, the kernel under test, the emulated NIC
with its device server, the driver loaded), but stage 2 starts a shell on the serial
console instead of the agent, and the console and QEMU's monitor share this terminal
(Ctrl-A c switches, Ctrl-A x quits).  The device server's control socket and QMP stay
reachable from another terminal, and their paths are printed first.  In the guest,
``python3 -m agent.guest --stdio`` speaks the agent protocol by hand.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
from pathlib import Path

from rich.console import Console

from images.image import Image
from msixlab_common.lifetime import die_with_parent

from .device_server import DeviceServer
from .dry_run import commands as dry_run_commands
from .kernel.under_test import KernelUnderTest, as_kernel
from .kmod import ensure_kmod
from .qemu_argv import build_argv
from .session import PROJECT_DIR, RunDirs, guest_spec


def shell_session(image: Image, kernel: KernelUnderTest | str, results_root: Path,
                  console: Console, *, accel: str = "tcg", vectors: int = 64, cpus: int = 2,
                  nic: bool = True, kmod: bool = True, dry_run: bool = False,
                  msix_maskable: bool = False, msix_noresize: bool = False,
                  iommu: bool = False, qemu: list[str] | None = None,
                  append: tuple[str, ...] = ()) -> int:
    """Run QEMU in the foreground on this terminal (``append``: more kernel parameters);
    returns QEMU's exit status."""
    kernel = as_kernel(image, kernel)
    if dry_run:                      # the paths printed are a throwaway run's
        for argv in dry_run_commands(image, kernel, mode="shell", accel=accel, vectors=vectors,
                                     cpus=cpus, nics=1 if nic else 0, kmod=kmod, qemu=qemu,
                                     msix_maskable=msix_maskable, msix_noresize=msix_noresize,
                                     iommu=iommu, interactive=True, append=append):
            print(shlex.join(argv))
        return 0
    kernel.check_supported()
    return _session(image, kernel, results_root, console, accel, vectors, cpus, nic, kmod,
                    {"msix_maskable": msix_maskable, "msix_noresize": msix_noresize},
                    iommu, qemu, append)


def _session(image, kernel, results_root, console, accel, vectors, cpus, nic, kmod,
             msix_modes, iommu=False, qemu=None, append=()) -> int:
    with RunDirs.create(results_root, prefix="shell") as dirs:
        device = DeviceServer.for_run(dirs, vectors, **msix_modes)
        module = None
        if kmod:
            module = ensure_kmod(image, kernel, run_dir=dirs.results)
        image.prepare_guest_bytecode(PROJECT_DIR)
        spec = guest_spec(image, kernel, dirs, mode="shell", accel=accel, cpus=cpus, qemu=qemu,
                          nic_sockets=(device.socket_path,) if nic else (),
                          kmod_dir=module, interactive=True, iommu=iommu, append=append)
        argv = build_argv(spec)
        if nic:
            device.start()
        try:
            if nic:
                console.print(f"device control: qemu-device ctl --control {device.control_path} state")
            console.print(f"QMP: {spec.qmp_socket}; artifacts: {dirs.results}")
            console.print("console below; Ctrl-A c: QEMU monitor, Ctrl-A x: quit")
            with open(dirs.results / "qemu.log", "w") as log:
                return subprocess.run(argv, stderr=log,
                                      preexec_fn=die_with_parent(signal.SIGKILL)).returncode
        finally:
            device.stop()

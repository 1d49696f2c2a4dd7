"""``--dry-run``: the exact commands a run would start, and nothing started.

Concepts: one place builds them for ``msixlab run`` and ``msixlab shell`` alike: the
device server of each NIC, then QEMU, as argv lists for a throwaway run directory (the
socket paths printed are that directory's).  Nothing is built, booted or left behind;
the image must exist already (finding it is the only thing a dry run does first).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from images.image import Image
from msixlab_common.removal import remove_tree

from agent.host.kernel.kmod import kmod_dir
from agent.host.lab.device_server import DeviceServer
from agent.host.lab.guest_spec import guest_spec
from agent.host.lab.qemu_argv import build_argv
from agent.host.rundirs import RunDirs


def commands(image: Image, kernel, *, mode: str, vectors: int, cpus: int, nics: int = 1,
             msix_maskable: bool = False, msix_noresize: bool = False, iommu: bool = False,
             qemu: list[str] | None = None, kmod: bool = True, accel: str = "tcg",
             interactive: bool = False, append: tuple[str, ...] = (),
             extra_shares: tuple = (), power_management: bool = False) -> list[list[str]]:
    """The argv of every device server (one per NIC, ``nics`` may be 0), then QEMU's
    (with the scenario's ``extra_shares``)."""
    scratch = Path(tempfile.mkdtemp(prefix="msixlab-dry-run-"))
    try:
        with RunDirs.create(scratch, prefix="dry-run") as dirs:
            devices = [DeviceServer.for_run(dirs, vectors, nic=i, msix_maskable=msix_maskable,
                                            msix_noresize=msix_noresize, pm=power_management)
                       for i in range(nics)]
            spec = guest_spec(image, kernel, dirs, mode=mode, accel=accel, cpus=cpus,
                              qemu=qemu, nic_sockets=tuple(d.socket_path for d in devices),
                              kmod_dir=kmod_dir(image, kernel, dirs.results) if kmod else None,
                              agent=mode == "agent", interactive=interactive, iommu=iommu,
                              append=append, extra_shares=tuple(extra_shares), stage=False,
                              sleep_safe=power_management)
            return [device.argv for device in devices] + [build_argv(spec)]
    finally:
        remove_tree(scratch, ignore_errors=True)

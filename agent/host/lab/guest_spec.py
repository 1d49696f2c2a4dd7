"""What to boot, as one recipe: ``guest_spec`` assembles a ``GuestSpec`` from the image,
the kernel under test (a ``KernelUnderTest``, or an image flavor's name), the QEMU to run
(the image's, unless one is given) and a run's sockets, so every boot (doctor's probe, the
ready check, the main job, a bisect step) uses the same recipe.
"""

from __future__ import annotations

from pathlib import Path

from images.image import Image

from agent.host.kernel.under_test import KernelUnderTest, as_kernel
from agent.host.lab.qemu_argv import GuestSpec, Share
from agent.host.rundirs import PROJECT_DIR, RunDirs


def guest_spec(image: Image, kernel: KernelUnderTest | str, dirs: RunDirs, *, mode: str = "ready",
               accel: str = "tcg", cpus: int = 2, memory_mb: int = 1024,
               nic_sockets: tuple[Path, ...] = (), kmod_dir: Path | None = None,
               agent: bool = False, trace: tuple[str, ...] = (),
               append: tuple[str, ...] = (), interactive: bool = False,
               iommu: bool = False, qemu: list[str] | None = None,
               extra_shares: tuple[Share, ...] = ()) -> GuestSpec:
    """The ``GuestSpec`` of one boot of ``kernel`` from ``image`` with ``dirs``' console log and
    sockets: the rootfs and the project shared over 9p (and ``kmod_dir`` when the driver is
    to be loaded, then ``extra_shares``, which the guest mounts itself), the agent's socket
    if ``agent``, and the image's QEMU unless ``qemu`` is given.  Builds the kernel's
    initramfs if it is not cached."""
    kernel = as_kernel(image, kernel)
    shares = [Share("rootfs", image.rootfs), Share("msixlab", PROJECT_DIR)]
    if kmod_dir is not None:
        shares.append(Share("kmod", kmod_dir))
    shares += list(extra_shares)
    return GuestSpec(
        qemu=list(qemu) if qemu else image.qemu_command(), kernel=kernel.bzimage,
        initramfs=kernel.initramfs(image),
        console_log=dirs.results / "console.log", qmp_socket=dirs.runtime / "qmp.sock",
        shares=tuple(shares), mode=mode, accel=accel, cpus=cpus, memory_mb=memory_mb,
        nic_sockets=nic_sockets,
        agent_socket=dirs.runtime / "agent.sock" if agent else None,
        kmod="/opt/kmod/msixlab.ko" if kmod_dir is not None else None,
        trace=trace, trace_log=dirs.results / "qemu-trace.log" if trace else None,
        append=append, interactive=interactive, iommu=iommu,
    )

"""What to boot, as one recipe: ``guest_spec`` assembles a ``GuestSpec`` from the image,
the kernel under test (a ``KernelUnderTest``, or an image flavor's name), the QEMU to run
(the image's, unless one is given) and a run's sockets, so every boot (doctor's probe, the
ready check, the main job, a bisect step) uses the same recipe.

What the guest sees of the host: the image rootfs (tag ``rootfs``), msixlab's guest files
staged in the cache (tag ``msixlab`` at /opt/msixlab, images/staging.py), the built driver
(tag ``kmod`` at /opt/kmod) and, for tests only, one more directory named by
``$MSIXLAB_GUEST_EXTRA`` (tag ``extra`` at /opt/msixlab-extra: a test's own guest-side
script or module); every share read-only.  Never the working directory, the checkout or
site-packages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from images import staging
from images.image import Image

from agent.host.kernel.under_test import KernelUnderTest, as_kernel
from agent.host.lab.qemu_argv import EXTRA_TAG, GuestSpec, Share
from agent.host.rundirs import RunDirs
from agent.host.verdict.outcome import CouldNotJudge, Outcome

#: tests only: a host directory the guest also mounts, read-only, at /opt/msixlab-extra
EXTRA_ENV = "MSIXLAB_GUEST_EXTRA"


def extra_share(environ: Mapping[str, str] = os.environ) -> Share | None:
    """The test-only share ``$MSIXLAB_GUEST_EXTRA`` names, or None when it is unset;
    ``CouldNotJudge`` (``bad_option``) when it names no directory."""
    value = environ.get(EXTRA_ENV)
    if not value:
        return None
    path = Path(value).absolute()
    if not path.is_dir():
        raise CouldNotJudge(Outcome.BAD_OPTION, f"${EXTRA_ENV}={value}: not a directory (it "
                            "names a directory of test files the guest mounts at "
                            "/opt/msixlab-extra)", path=str(path))
    return Share(EXTRA_TAG, path)


def guest_spec(image: Image, kernel: KernelUnderTest | str, dirs: RunDirs, *, mode: str = "ready",
               accel: str = "tcg", cpus: int = 2, memory_mb: int = 1024,
               nic_sockets: tuple[Path, ...] = (), kmod_dir: Path | None = None,
               agent: bool = False, trace: tuple[str, ...] = (),
               append: tuple[str, ...] = (), interactive: bool = False,
               iommu: bool = False, qemu: list[str] | None = None,
               extra_shares: tuple[Share, ...] = (), stage: bool = True,
               sleep_safe: bool = False) -> GuestSpec:
    """The ``GuestSpec`` of one boot of ``kernel`` from ``image`` with ``dirs``' console log and
    sockets: the rootfs and msixlab's staged guest files shared over 9p (and ``kmod_dir``
    when the driver is to be loaded, the test-only ``extra_share``, then ``extra_shares``,
    which the guest mounts itself), the agent's socket if ``agent``, and the image's QEMU
    unless ``qemu`` is given.  Builds the kernel's initramfs if it is not cached, and
    stages the guest's files unless ``stage`` is false (a dry run: the spec names where
    they would be); ``sleep_safe`` puts the virtio devices behind No_Soft_Reset root ports
    (qemu_argv.py)."""
    kernel = as_kernel(image, kernel)
    guest = staging.ensure(image) if stage else staging.staged_dir(image)
    shares = [Share("rootfs", image.rootfs), Share("msixlab", guest)]
    if kmod_dir is not None:
        shares.append(Share("kmod", kmod_dir))
    extra = extra_share()
    if extra is not None:
        shares.append(extra)
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
        append=append, interactive=interactive, iommu=iommu, sleep_safe=sleep_safe,
    )

"""A plain boot: start the guest, wait for its ready marker, let it power off.

Concepts: the toolchain check.  It proves the QEMU, the kernel under test, the
initramfs, the 9p rootfs overlay and the guest's own init work together, and measures
boot-to-ready (wall time from QEMU launch to the marker on the console, plus the guest's
own uptime at that point).  Every step is bounded by a watchdog.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from images.image import Image
from msixlab_common.removal import remove_tree

from agent.host.kernel.under_test import KernelUnderTest
from agent.host.lab.guest_spec import guest_spec
from agent.host.lab.hostlimits import ensure_fd_limit
from agent.host.lab.machine import Machine
from agent.host.rundirs import RunDirs

READY = r"MSIXLAB-READY kernel=(\S+) mode=(\S+) uptime=([0-9.]+)"


@dataclass(frozen=True)
class BootResult:
    """One ready boot: the kernel, its timings (see the fields), QEMU's exit code and the
    results directory (``None`` when not kept)."""
    kernel: str
    ready_seconds: float     # wall time, QEMU launch to ready marker
    guest_uptime: float      # guest's /proc/uptime at the marker
    total_seconds: float     # launch to QEMU exit
    exitcode: int | None
    results: Path | None


def boot_ready(image: Image, kernel: KernelUnderTest | str, *, accel: str = "tcg",
               timeout: float = 120.0, results_root: Path | None = None, keep: bool = True,
               qemu: list[str] | None = None, append: tuple[str, ...] = ()) -> BootResult:
    """Boot ``kernel`` (or an image flavor) in ready mode, with ``append``: more kernel
    parameters; raises on any failure or timeout."""
    ensure_fd_limit()
    root = results_root if keep and results_root else Path(tempfile.mkdtemp(prefix="msixlab-boot-"))
    dirs = RunDirs.create(root, prefix="boot")
    try:
        spec = guest_spec(image, kernel, dirs, mode="ready", accel=accel, qemu=qemu,
                          append=append)
        with Machine(spec, dirs.results / "qemu.log") as vm:
            vm.launch()
            match = vm.wait_console(READY, timeout, "the guest's ready marker (MSIXLAB-READY)")
            ready = vm.elapsed()
            vm.wait_console(r"MSIXLAB-POWEROFF", 30, "the guest's poweroff")
            vm.shutdown(grace=20)
            total = vm.elapsed()
        return BootResult(kernel=match.group(1), ready_seconds=ready,
                          guest_uptime=float(match.group(3)), total_seconds=total,
                          exitcode=vm.exitcode, results=dirs.results if keep else None)
    finally:
        dirs.cleanup()
        if not keep:
            remove_tree(root, ignore_errors=True)

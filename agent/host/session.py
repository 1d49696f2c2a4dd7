"""Where a run lives and how its guest is put together.

Concepts: a ``RunDirs`` pairs the private runtime directory (mode 0700, short path, for
the sockets of QEMU, QMP, the device server and the agent) with ``results/<run-id>/``,
where every artifact of the run is kept.  ``guest_spec`` assembles a ``GuestSpec`` from
the image, the kernel under test (a ``KernelUnderTest``, or an image flavor's name), the
QEMU to run (the image's, unless one is given) and the run's sockets, so every boot
(doctor's probe, the ready check, the main job, a bisect step) uses the same recipe.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from images.image import Image

from .kernel.under_test import KernelUnderTest, as_kernel
from .qemu_argv import GuestSpec, Share

PROJECT_DIR = Path(__file__).resolve().parents[2]


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass
class RunDirs:
    run_id: str
    results: Path    # kept: results/<run-id>/
    runtime: Path    # private, removed at the end

    @classmethod
    def create(cls, results_root: Path, prefix: str = "run") -> "RunDirs":
        run_id = new_run_id(prefix)
        results = results_root / run_id
        results.mkdir(parents=True)
        runtime = Path(tempfile.mkdtemp(prefix="msixlab-"))   # mkdtemp makes it 0700
        os.chmod(runtime, 0o700)
        return cls(run_id, results, runtime)

    def cleanup(self) -> None:
        shutil.rmtree(self.runtime, ignore_errors=True)

    def __enter__(self) -> "RunDirs":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def guest_spec(image: Image, kernel: KernelUnderTest | str, dirs: RunDirs, *, mode: str = "ready",
               accel: str = "tcg", cpus: int = 2, memory_mb: int = 1024,
               nic_sockets: tuple[Path, ...] = (), kmod_dir: Path | None = None,
               agent: bool = False, trace: tuple[str, ...] = (),
               append: tuple[str, ...] = (), interactive: bool = False,
               qemu: list[str] | None = None) -> GuestSpec:
    kernel = as_kernel(image, kernel)
    shares = [Share("rootfs", image.rootfs), Share("msixlab", PROJECT_DIR)]
    if kmod_dir is not None:
        shares.append(Share("kmod", kmod_dir))
    return GuestSpec(
        qemu=list(qemu) if qemu else image.qemu_command(), kernel=kernel.bzimage,
        initramfs=kernel.initramfs(image),
        console_log=dirs.results / "console.log", qmp_socket=dirs.runtime / "qmp.sock",
        shares=tuple(shares), mode=mode, accel=accel, cpus=cpus, memory_mb=memory_mb,
        nic_sockets=nic_sockets,
        agent_socket=dirs.runtime / "agent.sock" if agent else None,
        kmod="/opt/kmod/msixlab.ko" if kmod_dir is not None else None,
        trace=trace, trace_log=dirs.results / "qemu-trace.log" if trace else None,
        append=append, interactive=interactive,
    )

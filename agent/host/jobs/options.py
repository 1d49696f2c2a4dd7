"""The command-line options that choose the kernel under test and the QEMU.

Concepts: ``run``, ``shell`` and ``boot`` take the same choice: an image flavor
(``--flavor``, the default), a kernel tree (``--kernel-tree DIR``, built first with
``--build``), or a prebuilt kernel (``--kernel BZIMAGE --kdir DIR``); and ``--qemu PATH``
for another QEMU.  ``add_options`` declares them, ``select`` validates the combination
(a bad one is a ``KernelTreeError``: a bad option, nothing started), builds the tree when
asked, and returns the ``KernelUnderTest`` and the QEMU argv (None: the image's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from images.image import Image

from agent.host.argtypes import bounded_int, path_text
from agent.host.jobs.kernel_progress import build_with_progress
from agent.host.kernel.build import KernelTree
from agent.host.kernel.errors import KernelTreeError
from agent.host.kernel.under_test import KernelUnderTest
from agent.host.lab.qemu_binary import check_qemu
from agent.host.rundirs import new_run_id


#: ``make -jN`` bound for ``--jobs``.
MAX_JOBS = 1024


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the kernel-under-test options (``--kernel-tree``, ``--build``, ``--jobs``,
    ``--kernel``, ``--kdir``) and ``--qemu`` to ``p``."""
    group = p.add_argument_group("kernel under test (default: the image's --flavor)")
    group.add_argument("--kernel-tree", metavar="DIR", type=path_text("--kernel-tree"),
                       help="boot DIR/arch/x86/boot/bzImage, build the driver against DIR")
    group.add_argument("--build", action="store_true",
                       help="with --kernel-tree: build the tree first (incrementally)")
    group.add_argument("--jobs", type=bounded_int("--jobs", 1, MAX_JOBS), default=None,
                       metavar="N",
                       help="make -jN for --build (default: the number of CPUs)")
    group.add_argument("--kernel", metavar="BZIMAGE", type=path_text("--kernel"),
                       help="a prebuilt kernel (needs --kdir)")
    group.add_argument("--kdir", metavar="DIR", type=path_text("--kdir"),
                       help="with --kernel: the build tree it came from (.config, Module.symvers)")
    p.add_argument("--qemu", metavar="PATH", type=path_text("--qemu"),
                   help="another QEMU binary (>= 10.1, with vfio-user-pci)")


def _defaults(args) -> None:
    for name in ("kernel_tree", "build", "jobs", "kernel", "kdir", "qemu"):
        if not hasattr(args, name):
            setattr(args, name, False if name == "build" else None)


def _validate(args) -> None:
    _defaults(args)
    for name in ("kernel_tree", "kernel", "kdir", "qemu"):
        value = getattr(args, name)
        if value is not None and not str(value).strip():    # "" is not "not given"
            raise KernelTreeError(f"--{name.replace('_', '-')} needs a path, not {value!r}")
    if args.build and not args.kernel_tree:
        raise KernelTreeError("--build needs --kernel-tree DIR")
    if args.kernel_tree and (args.kernel or args.kdir):
        raise KernelTreeError("--kernel-tree and --kernel/--kdir are alternatives: give one")
    if bool(args.kernel) != bool(args.kdir):
        raise KernelTreeError("--kernel BZIMAGE and --kdir DIR go together")
    if args.jobs is not None and args.jobs < 1:
        raise KernelTreeError(f"--jobs must be at least 1, not {args.jobs}")


def select(args, image: Image, console: Console) -> tuple[KernelUnderTest, list[str] | None]:
    """The kernel under test and the QEMU argv prefix the options ask for."""
    _validate(args)
    qemu = check_qemu(args.qemu).argv if args.qemu else None
    if args.kernel_tree:
        tree = KernelTree.at(args.kernel_tree)
        if args.build:
            log_path = Path(args.results) / new_run_id("kernel-build") / "build.log"
            result = build_with_progress(tree, log_path, console, jobs=args.jobs)
            console.print(f"built {tree.path} ({tree.release()}) in {result.seconds:.1f} s; "
                          f"log {log_path}")
        return KernelUnderTest.from_tree(tree), qemu
    if args.kernel:
        return KernelUnderTest.from_prebuilt(args.kernel, args.kdir), qemu
    return KernelUnderTest.from_flavor(image, args.flavor), qemu

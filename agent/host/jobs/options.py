"""The command-line side of what to boot: argparse options in, one ``LabOptions`` out.

Concepts: ``run``, ``soak``, ``shell`` and ``boot`` take the same choice of kernel: an
image flavor (``--flavor``, the default), a kernel tree (``--kernel-tree DIR``, built
first with ``--build``), or a prebuilt kernel (``--kernel BZIMAGE --kdir DIR``); and
``--qemu PATH`` for another QEMU.  ``add_options`` declares those; ``from_args`` reads a
parsed namespace (every option a command has, defaults for those it lacks) into the one
typed description of a lab, ``LabOptions`` (lab/options.py), which owns the validation
and the kernel choice; ``select`` checks it and makes the choice, building a tree with
the progress display when asked.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.console import Console

from images.image import Image

from agent.host.argtypes import bounded_int, path_text
from agent.host.jobs.kernel_progress import build_with_progress
from agent.host.kernel.build import KernelTree
from agent.host.kernel.under_test import KernelUnderTest
from agent.host.lab.options import MAX_JOBS, LabOptions

#: ``LabOptions`` field -> the namespace attribute (``dest``) that holds it, where they differ
DESTS = {"device_faults": "device_fault"}


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


def from_args(args: argparse.Namespace, **changes: Any) -> LabOptions:
    """The ``LabOptions`` of a parsed command line: each field from the attribute of the
    same name (``device_faults`` from ``device_fault``), the field's default where the
    command has no such option or left it None; ``changes`` win.  Not checked yet
    (``LabOptions.check``)."""
    given = vars(args)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(LabOptions):
        if item.name == "flags":
            continue
        value = given.get(DESTS.get(item.name, item.name))
        if value is not None:
            values[item.name] = tuple(value) if isinstance(value, list) else value
    return LabOptions(**{**values, **changes})


def select(options: LabOptions, image: Image,
           console: Console) -> tuple[KernelUnderTest, list[str] | None]:
    """The kernel under test ``options`` name (a tree built first, with the progress
    display, when ``--build``) and the argv prefix of their QEMU (None: the image's).
    The caller checked them (``LabOptions.check``) before finding the image; the paths
    are checked again here by the code that uses them."""
    options.check(paths=False)

    def build(tree: KernelTree) -> None:
        log_path = options.build_log()
        result = build_with_progress(tree, log_path, console, jobs=options.jobs)
        console.print(f"built {tree.path} ({tree.release()}) in {result.seconds:.1f} s; "
                      f"log {log_path}")

    return options.kernel_under_test(image, build=build), options.qemu_argv()

"""``msixlab``: the command line (the only layer that prints).

Subcommands: ``doctor`` (what is here, what is missing), ``image build|clean|path``,
``boot`` (boot the guest to its ready marker and measure it), ``shell`` (a manual
session on the guest's console), ``run`` (the main job:
the default scenario against the emulated NIC; exit 0 pass, 1 check failed, 125 could
not judge), ``kernel config|build`` (the rig's kernel options; build a kernel tree) and
``bisect`` (git bisect a kernel tree with the main job).  ``run``, ``shell`` and ``boot``
take the kernel under test from ``--flavor``, ``--kernel-tree DIR [--build]`` or
``--kernel BZIMAGE --kdir DIR``, and another QEMU from ``--qemu PATH``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from images import recipe
from images.build import ensure_image, manifest
from images.cache import cache_dir, clean

from . import accel as accel_mod
from . import doctor
from .kernel import commands as kernel_commands
from .kernel import options as kernel_options
from .errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS, MsixlabError

# Wide enough for the routing table when the output is a log file rather than a terminal.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _image_with_progress():
    with console.status("image: checking the cache") as status:
        def on_step(step: str, line: str) -> None:
            status.update(f"image build, step [bold]{step}[/]: {line[:90]}")
        return ensure_image(on_step)


def cmd_doctor(args) -> int:
    info = doctor.report(args.accel)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        doctor.render(info, Console())
    return EXIT_PASS if not info["missing"] else EXIT_FAIL


def cmd_image(args) -> int:
    if args.action == "build":
        image = _image_with_progress()
        info = manifest(image)
        console.print(f"image {info['key']} at {image.rootfs}: QEMU {info['qemu_version']}, "
                      f"kernels {', '.join(k['flavor'] + ' ' + k['version'] for k in info['kernels'])}, "
                      f"{info['size_bytes'] / 2**20:.0f} MiB, built in {info['build_seconds']} s")
    elif args.action == "clean":
        for path in clean():
            console.print(f"removed {path}")
    else:
        print(cache_dir())
    return EXIT_PASS


def cmd_boot(args) -> int:
    from .boot import boot_ready
    image = _image_with_progress()
    kernel, qemu = kernel_options.select(args, image, console)
    kernel.check_supported()
    choice = accel_mod.choose(args.accel, image, args.flavor)
    results = []
    for i in range(args.count):
        result = boot_ready(image, kernel, accel=choice.accel, timeout=args.timeout,
                            results_root=Path(args.results), qemu=qemu)
        results.append(result)
        console.print(f"boot {i + 1}/{args.count}: {result.kernel} ready in "
                      f"{result.ready_seconds:.2f} s wall (guest uptime {result.guest_uptime:.2f} s), "
                      f"powered off after {result.total_seconds:.2f} s ({choice.accel})")
    summary = {
        "kernel": results[0].kernel, "flavor": kernel.flavor, "kernel_under_test": kernel.label,
        "accel": choice.accel,
        "boots": len(results),
        "ready_seconds": [round(r.ready_seconds, 3) for r in results],
        "median_ready_seconds": round(statistics.median(r.ready_seconds for r in results), 3),
        "median_guest_uptime": round(statistics.median(r.guest_uptime for r in results), 3),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        console.print(f"[green]toolchain works[/]: median boot-to-ready "
                      f"{summary['median_ready_seconds']} s over {len(results)} boot(s)")
    return EXIT_PASS


def cmd_shell(args) -> int:
    from .shell import shell_session
    image = _image_with_progress()
    kernel, qemu = kernel_options.select(args, image, console)
    choice = accel_mod.choose(args.accel, image, args.flavor)
    return shell_session(image, kernel, Path(args.results), console, accel=choice.accel,
                         vectors=args.vectors, cpus=args.cpus, nic=not args.no_nic,
                         kmod=not args.no_kmod, dry_run=args.dry_run, qemu=qemu)


def cmd_run(args) -> int:
    from .main_job import run_main_job
    return run_main_job(args, console)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="msixlab", description=__doc__.split("\n")[0])
    top.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: traces)")
    sub = top.add_subparsers(dest="command", required=True)

    def guest_options(p):
        p.add_argument("--flavor", default=recipe.DEFAULT_FLAVOR, choices=sorted(recipe.FLAVORS),
                       help="kernel flavor (default: %(default)s; env KERNEL_FLAVOR)")
        p.add_argument("--accel", choices=accel_mod.CHOICES, default=None,
                       help="accelerator (default: tcg; env MSIXLAB_ACCEL)")
        p.add_argument("--results", default="results", help="results root (default: %(default)s)")
        kernel_options.add_options(p)

    def nic_options(p):
        p.add_argument("--vectors", type=int, default=64, help="MSI-X table size of the NIC")
        p.add_argument("--cpus", type=int, default=2)
        p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")

    p = sub.add_parser("doctor", help="what msixlab has here and what it lacks")
    p.add_argument("--json", action="store_true")
    p.add_argument("--accel", choices=accel_mod.CHOICES, default=None)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("image", help="build, clean or locate the image cache")
    p.add_argument("action", choices=["build", "clean", "path"])
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("boot", help="boot the guest to its ready marker and time it")
    guest_options(p)
    p.add_argument("--count", type=int, default=1, help="boots to make (median reported)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("shell", help="a manual session: the guest's console on this terminal")
    guest_options(p)
    nic_options(p)
    p.add_argument("--no-nic", action="store_true", help="boot without the emulated NIC")
    p.add_argument("--no-kmod", action="store_true", help="do not load the guest driver")
    p.set_defaults(func=cmd_shell)

    p = sub.add_parser("run", help="the main job: the default scenario, checked")
    guest_options(p)
    nic_options(p)
    p.set_defaults(func=cmd_run)

    kernel_commands.add_parsers(sub, console)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "flavor", None) == recipe.DEFAULT_FLAVOR and os.environ.get("KERNEL_FLAVOR"):
        args.flavor = os.environ["KERNEL_FLAVOR"]
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(name)s: %(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)])
    try:
        return args.func(args)
    except MsixlabError as err:
        console.print(f"[red]error:[/] {escape(str(err))}")   # messages may hold [brackets]
        return getattr(err, "exit_code", EXIT_INFRA)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return EXIT_INFRA
    except Exception:   # a bug in msixlab is never a verdict on the kernel (bisect: 125)
        console.print_exception()
        console.print("[red]internal error: the run could not judge[/]")
        return EXIT_INFRA


if __name__ == "__main__":
    sys.exit(main())

"""``msixlab``: the command line.

Subcommands: ``doctor`` (what is here, what is missing), ``image build|clean|path``,
``boot`` (boot the guest to its ready marker and measure it), ``shell`` (a manual
session on the guest's console), ``run`` (the main job:
a scenario, ``default`` unless ``--scenario`` names another, against the emulated NIC;
exit 0 pass, 1 the kernel misbehaved, 125 could not judge), ``scenarios`` (one line each),
``soak`` (random alloc/free churn and raises at full rate for ``--seconds``, every
interrupt reconciled; same exit codes as ``run``), ``kernel config|build`` (the rig's
kernel options; build a kernel tree) and ``bisect``
(git bisect a kernel tree with the main job).  ``run``, ``soak``, ``shell`` and ``boot``
take the kernel under test from ``--flavor``, ``--kernel-tree DIR [--build]`` or
``--kernel BZIMAGE --kdir DIR``, and another QEMU from ``--qemu PATH``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from images import host_packages, recipe
from images.build import ensure_image, manifest
from images.cache import CLEAN_TIMEOUT, cache_dir, clean
from msixlab_common.lifetime import interrupt_on

from agent.host import scenarios as scenarios_mod
from agent.host.argtypes import (
    MAX_APPEND,
    bounded_float,
    bounded_int,
    cmdline_text,
    kernel_words,
    path_text,
)
from agent.host.errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS
from agent.host.jobs import doctor, progress
from agent.host.jobs import kernel as kernel_commands
from agent.host.jobs import options as kernel_options
from agent.host.lab import accel as accel_mod
from agent.host.results import provenance as version
from agent.host.rundirs import check_results_root
from agent.host.scenarios.default import MIN_TABLE
from agent.host.verdict.outcome import CouldNotJudge, Outcome, RunVerdict

# Wide enough for the routing table when the output is a log file rather than a terminal.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _image_with_progress():
    with progress.phase(console, "image: checking the cache") as shown:
        def on_step(step: str, line: str) -> None:
            shown.update(f"image build, step {step}: {line[:90]}")
        return ensure_image(on_step)


def cmd_setup(args) -> int:
    """``msixlab setup``: install the missing host packages (images/host_packages.py)."""
    return host_packages.setup(dry_run=args.dry_run)


def cmd_doctor(args) -> int:
    """``msixlab doctor``: print what is here and what is missing (JSON with --json); 1 if
    anything is missing."""
    info = doctor.report(args.accel)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        doctor.render(info, Console())
    return EXIT_PASS if not info["missing"] else EXIT_FAIL


def cmd_image(args) -> int:
    """``msixlab image build|clean|path``: build the image (with progress), remove it, or print
    the cache dir."""
    if args.action == "build":
        image = _image_with_progress()
        info = manifest(image)
        console.print(f"image {info['key']} at {image.rootfs}: QEMU {info['qemu_version']}, "
                      f"kernels {', '.join(k['flavor'] + ' ' + k['version'] for k in info['kernels'])}, "
                      f"{info['size_bytes'] / 2**20:.0f} MiB, built in {info['build_seconds']} s")
    elif args.action == "clean":
        for path in clean(timeout=args.wait):
            console.print(f"removed {path}")
    else:
        print(cache_dir())
    return EXIT_PASS


def cmd_boot(args) -> int:
    """``msixlab boot``: boot the chosen kernel to the ready marker ``--count`` times and
    print each boot's times and the median (JSON with --json).  A kernel the rig cannot use
    raises ``CouldNotJudge``."""
    from agent.host.lab.boot import boot_ready
    image = _image_with_progress()
    kernel, qemu = kernel_options.select(args, image, console)
    kernel.check_supported()
    choice = accel_mod.choose(args.accel, image, args.flavor)
    results = []
    for i in range(args.count):
        with progress.phase(console, f"boot {i + 1}/{args.count}: {kernel.label} kernel"):
            result = boot_ready(image, kernel, accel=choice.accel, timeout=args.timeout,
                                results_root=Path(args.results), qemu=qemu,
                                append=tuple(args.append))
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
    """``msixlab shell``: a manual session on the guest's console (``--dry-run`` prints the
    commands)."""
    from agent.host.jobs.shell import shell_session
    image = _image_with_progress()
    kernel, qemu = kernel_options.select(args, image, console)
    choice = accel_mod.choose(args.accel, image, args.flavor)
    return shell_session(image, kernel, Path(args.results), console, accel=choice.accel,
                         vectors=args.vectors, cpus=args.cpus, nic=not args.no_nic,
                         kmod=not args.no_kmod, dry_run=args.dry_run,
                         msix_maskable=args.msix_maskable, msix_noresize=args.msix_noresize,
                         iommu=args.iommu, qemu=qemu, append=tuple(args.append))


def cmd_scenarios(args) -> int:
    """``msixlab scenarios``: one line per scenario, name and summary."""
    width = max(len(name) for name, _ in scenarios_mod.listing())
    for name, summary in scenarios_mod.listing():
        print(f"{name:<{width}}  {summary}")
    return EXIT_PASS


def cmd_run(args) -> int:
    """``msixlab run``: the main job once (``run_main_job``), or ``--repeat N`` times."""
    from agent.host.jobs.run import run_main_job
    if args.repeat > 1 and not args.dry_run:
        from agent.host.jobs.repeat import run_repeated
        return run_repeated(args, console, run_main_job)
    with progress.phase(console, "msixlab run"):
        return run_main_job(args, console)


def cmd_soak(args) -> int:
    """``msixlab soak``: the soak in a real guest (soak_job.run_soak); its exit code."""
    from agent.host.jobs.soak import run_soak
    with progress.phase(console, "msixlab soak"):
        return run_soak(args, console)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


MAX_VECTORS = 2048     # the MSI-X table size limit (PCI spec)
MAX_NICS = 8           # root ports and device servers the rig starts
MAX_CPUS = 64          # what the rig boots and reads back per-CPU counts for
MAX_SOAK_S = 7 * 86400  # a week


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option exits 125 (could not judge), never 2: ``git bisect run``
    would take 2 for a bad commit."""

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, then a ``--flavor`` not given taken from ``$KERNEL_FLAVOR`` (else the
        default flavor): an explicit ``--flavor`` wins; a variable naming no flavor is an
        error of the parse."""
        namespace, extras = super().parse_known_args(args, namespace)
        if getattr(namespace, "flavor", "") is None:
            env_flavor = os.environ.get("KERNEL_FLAVOR")
            if env_flavor and env_flavor not in recipe.FLAVORS:
                self.error(f"KERNEL_FLAVOR must be one of {', '.join(sorted(recipe.FLAVORS))}, "
                           f"not {env_flavor!r}")
            namespace.flavor = env_flavor or recipe.DEFAULT_FLAVOR
        appended = cmdline_text(getattr(namespace, "append", None) or ())
        if len(appended) > MAX_APPEND:          # each --append was checked, not their sum
            self.error(f"--append: {len(appended)} characters in all, more than {MAX_APPEND}")
        return namespace, extras

    def error(self, message: str):
        """Print the usage and exit 125 (``bad_option``), naming the error."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_INFRA, f"{self.prog}: error: {message} "
                              f"(exit {EXIT_INFRA}: {Outcome.BAD_OPTION})\n")


def device_fault(text: str) -> dict:
    """``KIND[:key=value,...]`` -> a device fault spec (integers where they parse)."""
    kind, _, rest = text.partition(":")
    if not kind:
        raise argparse.ArgumentTypeError(f"--device-fault needs a kind, got {text!r}")
    spec: dict = {"kind": kind}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"--device-fault: {item!r} is not key=value")
        try:
            spec[key] = int(value, 0)
        except ValueError:
            spec[key] = value
    return spec


class _Version(argparse.Action):
    """``--version``: asks git only when given (not at every parse)."""
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version.describe())
        parser.exit(0)


def parser() -> argparse.ArgumentParser:
    """The ``msixlab`` argument parser: every subcommand and its options."""
    top = Parser(prog="msixlab", description=__doc__.split("\n")[0])
    top.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: traces)")
    top.add_argument("--version", action=_Version, help="the version, and the commit from a checkout")
    sub = top.add_subparsers(dest="command", required=True, parser_class=Parser)

    def guest_options(p):
        p.add_argument("--flavor", default=None, choices=sorted(recipe.FLAVORS),
                       help=f"kernel flavor (default: $KERNEL_FLAVOR, else "
                            f"{recipe.DEFAULT_FLAVOR}; the option wins over the variable)")
        p.add_argument("--accel", choices=accel_mod.CHOICES, default=None,
                       help="accelerator (default: tcg; env MSIXLAB_ACCEL)")
        p.add_argument("--results", default="results", type=path_text("--results"),
                       help="results root (default: %(default)s)")
        p.add_argument("--append", type=kernel_words("--append"), action="extend",
                       default=[], metavar="PARAMS",
                       help="more guest kernel parameters, after the rig's (repeatable; "
                            "e.g. 'irqaffinity=0 dyndbg=\"file msi.c +p\"'); the console, "
                            "loglevel, panic, init and msixlab.* ones are the rig's")
        kernel_options.add_options(p)

    def nics_option(p, what: str):
        p.add_argument("--nics", type=bounded_int("--nics", 1, MAX_NICS), default=1,
                       help=f"NICs, each with its own device server; {what} (1..{MAX_NICS})")

    def nic_options(p, min_vectors: int = 1):
        p.add_argument("--vectors", type=bounded_int("--vectors", min_vectors, MAX_VECTORS),
                       default=64, help=f"MSI-X table size of the NIC ({min_vectors}..{MAX_VECTORS})")
        p.add_argument("--cpus", type=bounded_int("--cpus", 1, MAX_CPUS), default=2,
                       help=f"guest CPUs (1..{MAX_CPUS})")
        p.add_argument("--dry-run", action="store_true",
                       help="print the exact device-server and QEMU commands; start and "
                            "build nothing (only the image is built first if missing)")
        p.add_argument("--msix-maskable", action="store_true",
                       help="the NIC advertises per-vector MSI-X masking (MASKABLE)")
        p.add_argument("--iommu", action="store_true",
                       help="QEMU's intel-iommu with interrupt remapping (intel_iommu=on): "
                            "remappable messages, the IR irqdomain hierarchy")
        p.add_argument("--msix-noresize", action="store_true",
                       help="the NIC advertises NORESIZE: QEMU re-enables every vector "
                            "on each growth (the path before dynamic MSI-X)")

    p = sub.add_parser("setup", help="install the host packages msixlab needs (apt, through "
                                     "sudo when it may), or print the command")
    p.add_argument("--dry-run", action="store_true", help="print the commands, install nothing")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("doctor", help="what msixlab has here and what it lacks")
    p.add_argument("--json", action="store_true")
    p.add_argument("--accel", choices=accel_mod.CHOICES, default=None)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("image", help="build, clean or locate the image cache")
    p.add_argument("action", choices=["build", "clean", "path"])
    p.add_argument("--wait", type=bounded_float("--wait", 0, 24 * 3600), default=CLEAN_TIMEOUT,
                   help="clean: seconds to wait for the runs and builds using an image "
                        f"(default {CLEAN_TIMEOUT})")
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("boot", help="boot the guest to its ready marker and time it")
    guest_options(p)
    p.add_argument("--count", type=bounded_int("--count", 1, 1000), default=1,
                   help="boots to make, 1..1000 (median reported)")
    p.add_argument("--timeout", type=bounded_float("--timeout", 1.0, 3600.0), default=120.0,
                   help="seconds to wait for ready, 1..3600 (default: %(default)s)")
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
    nic_options(p, min_vectors=MIN_TABLE)
    p.add_argument("--device-fault", type=device_fault, action="append", default=[],
                   metavar="KIND[:K=V,...]",
                   help="arm a fault on the device before the scenario, e.g. "
                        "drop_raise:vector=1 or errno_reply:command=DEVICE_SET_IRQS "
                        "(repeatable; checked before anything starts; reported in the "
                        "verdict; see docs/device.md); nic=I arms it on NIC I of --nics "
                        "(default 0)")
    p.add_argument("--scenario", default=scenarios_mod.DEFAULT,
                   choices=list(scenarios_mod.REGISTRY),
                   help="the scenario to run (default: %(default)s; `msixlab scenarios` "
                        "lists them)")
    nics_option(p, "the scenario runs on each in turn, then no NIC may have counted "
                   "another's raises")
    p.add_argument("--repeat", type=_positive, default=1, metavar="N",
                   help="run the main job N times to detect flaky results; exit with the "
                        "worst (1, then 125, then 0)")
    p.add_argument("--table", choices=("live", "all"), default="live",
                   help="the routing table's rows: the vectors ever live or with a failed "
                        "check, the rest counted in one line (default), or every entry")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("soak", help="random alloc/free churn and raises at full rate in a "
                                    "real guest, every interrupt reconciled (docs/soak.md)")
    guest_options(p)
    nic_options(p, min_vectors=2)
    p.add_argument("--seconds", type=bounded_float("--seconds", 1.0, MAX_SOAK_S), default=60.0,
                   help=f"how long to churn, 1..{MAX_SOAK_S:g} (default: %(default)s; a soak "
                        f"of no time would make no op and pass having tested nothing)")
    p.add_argument("--seed", type=bounded_int("--seed", 0, 2**63 - 1), default=None,
                   help="the random seed: the same seed replays the same ops "
                        "(default: a random one, printed and recorded)")
    p.add_argument("--ops", type=bounded_int("--ops", 1, 10**9), default=None,
                   help="stop after this many ops (whichever of --seconds and --ops "
                        "comes first)")
    p.add_argument("--device-fault", type=device_fault, action="append", default=[],
                   metavar="KIND[:K=V,...]",
                   help="arm a fault on the device before the soak, as for run "
                        "(nic=I: on NIC I)")
    nics_option(p, "every op is done on one of them, drawn from the seed, and every "
                   "count reconciled on every NIC")
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("scenarios", help="list the scenarios `run --scenario` takes, one line each")
    p.set_defaults(func=cmd_scenarios)
    kernel_commands.add_parsers(sub, console)
    return top


def main(argv: list[str] | None = None) -> int:
    """The ``msixlab`` entry point: parse ``argv``, set up logging, run the subcommand and
    return its exit code.  SIGTERM and SIGHUP interrupt as Ctrl-C does; any exception that
    escapes is classified (``RunVerdict.from_error``) and printed, so the code is always 0, 1
    or 125 (a bug in msixlab: 125 with its traceback)."""
    top = parser()
    args = top.parse_args(argv)
    if hasattr(args, "accel") and args.command != "doctor":   # doctor reports it instead
        try:
            accel_mod.requested_name(args.accel)
        except CouldNotJudge as err:
            top.error(str(err))
    if getattr(args, "results", None):
        try:
            check_results_root(args.results)
        except CouldNotJudge as err:
            console.print(f"[red]error ({err.outcome}):[/] {escape(str(err))}")
            return err.exit_code
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(name)s: %(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)])
    interrupt_on(signal.SIGTERM, signal.SIGHUP)      # torn down as for Ctrl-C
    try:
        return args.func(args)
    except BaseException as err:   # classified: a bug in msixlab is never a verdict (125)
        verdict = RunVerdict.from_error(err)
        if verdict.outcome is Outcome.INTERNAL_ERROR:
            console.print_exception()
        console.print(f"[red]error ({verdict.outcome}):[/] "
                      + escape(str(err) or type(err).__name__))
        return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""``msixlab kernel config|build`` and ``msixlab bisect`` (CLI layer: prints).

Concepts: thin commands over ``config``, ``build`` and ``bisect``.  ``kernel config``
prints the fragment, or checks a tree's ``.config`` and names each missing or wrong
option (exit 125: such a kernel cannot be judged).  ``kernel build`` builds a tree with
the progress display and keeps the log under ``results/``.  ``bisect`` prints one line
per step and, at the end, ``first bad commit: <sha> <subject>`` followed by the checks
that commit failed; it exits 0 when it named the first bad commit, 125 when it could
not (only skipped commits left, a bad option, an interruption).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..errors import EXIT_INFRA, EXIT_PASS
from ..session import new_run_id
from . import config as kconfig
from .bisect import Bisect
from .build import KernelTree
from .errors import KernelTreeError
from .progress import build_with_progress


def cmd_config(args, console: Console) -> int:
    """``msixlab kernel config [DIR]``: print the fragment, or check DIR's ``.config`` (or a
    config file) against it, naming every missing or wrong option: 0 when none, 125 when
    any.  ``KernelTreeError`` when there is no ``.config``."""
    if args.dir is None:
        print(kconfig.FRAGMENT.read_text(), end="")
        return EXIT_PASS
    root = Path(args.dir).expanduser().resolve()
    config = root / ".config" if root.is_dir() else root
    if not config.is_file():
        raise KernelTreeError(f"{root} has no .config (msixlab kernel build {args.dir} makes "
                              "one from tinyconfig and the fragment)", path=root)
    problems = kconfig.check(kconfig.parse_config(config.read_text(errors="replace")),
                             kconfig.load_fragment())
    for problem in problems:
        console.print(f"[red]missing:[/] {escape(str(problem))}")
    if problems:
        console.print(f"{config}: {len(problems)} option(s) the rig needs are missing or "
                      f"wrong; `msixlab kernel build {args.dir}` merges them")
        return EXIT_INFRA
    console.print(f"[green]{config} has every option the rig needs[/]")
    return EXIT_PASS


def cmd_build(args, console: Console) -> int:
    """``msixlab kernel build DIR``: configure and build the tree with progress, log under
    ``results/``; 0 when built (a failed build raises ``KernelBuildFailed``)."""
    tree = KernelTree.at(args.dir)
    log_path = Path(args.results) / new_run_id("kernel-build") / "build.log"
    result = build_with_progress(tree, log_path, console, jobs=args.jobs, niceness=args.nice)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(f"built {tree.release()} in {tree.path}: {tree.bzimage} "
                  f"({result.steps} steps, {result.seconds:.1f} s); log {log_path}")
    return EXIT_PASS


def cmd_bisect(args, console: Console) -> int:
    """``msixlab bisect``: bisect the tree with the main job and print ``first bad commit:
    <sha> <subject>`` and its failed checks; 0 when it named one, 125 when it could not
    (``BisectError`` for a refused tree or revisions)."""
    tree = KernelTree.at(args.kernel_tree)
    options = list(args.run_options)
    if options[:1] == ["--"]:
        options = options[1:]
    build = functools.partial(_build_step, console=console, jobs=args.jobs, niceness=args.nice)
    bisect = Bisect(tree, args.good, args.bad, results_root=Path(args.results), build=build,
                    repeat=args.repeat, run_options=tuple(options), qemu=args.qemu,
                    say=lambda text: console.print(escape(text)))
    summary = bisect.run()
    first = summary["first_bad"]
    if first is None:
        console.print(f"could not name the first bad commit; summary {bisect.dir / 'summary.json'}")
        return EXIT_INFRA
    print(f"first bad commit: {first['commit']} {first['subject']}", flush=True)
    for check in first["failed_checks"] or ([first["reason"]] if first["reason"] else []):
        print(f"    {check}", flush=True)
    console.print(f"summary: {bisect.dir / 'summary.json'}")
    return EXIT_PASS


def _build_step(tree: KernelTree, log_path: Path, *, console: Console, jobs, niceness):
    return build_with_progress(tree, log_path, console, jobs=jobs, niceness=niceness)


def add_parsers(sub, console: Console) -> None:
    """Add the ``kernel`` and ``bisect`` subcommands to the ``msixlab`` parser's ``sub``."""
    def bind(func):
        return lambda args: func(args, console)

    p = sub.add_parser("kernel", help="the rig's kernel config; build a kernel tree")
    actions = p.add_subparsers(dest="action", required=True)
    c = actions.add_parser("config", help="print the fragment, or check DIR/.config against it")
    c.add_argument("dir", nargs="?", metavar="DIR")
    c.set_defaults(func=bind(cmd_config))
    b = actions.add_parser("build", help="build bzImage and modules in DIR (tinyconfig + "
                           "fragment when DIR has no .config, else the fragment merged)")
    b.add_argument("dir", metavar="DIR")
    _build_options(b)
    b.set_defaults(func=bind(cmd_build))

    p = sub.add_parser("bisect", help="git bisect a kernel tree with the main job",
                       usage="%(prog)s --kernel-tree DIR --good REV --bad REV [--repeat N] "
                             "[-- RUN-OPTIONS]")
    p.add_argument("--kernel-tree", required=True, metavar="DIR")
    p.add_argument("--good", required=True, metavar="REV", help="a commit without the regression")
    p.add_argument("--bad", required=True, metavar="REV", help="a commit with it")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="runs per step; a step is bad if any run fails (default: 1)")
    p.add_argument("--qemu", metavar="PATH", help="another QEMU for every run")
    _build_options(p)
    p.add_argument("run_options", nargs=argparse.REMAINDER, metavar="-- RUN-OPTIONS",
                   help="options passed to every `msixlab run`")
    p.set_defaults(func=bind(cmd_bisect))


def _build_options(p) -> None:
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="make -jN (default: CPUs)")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="run make at nice N")
    p.add_argument("--results", default="results", help="results root (default: %(default)s)")

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
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from agent.host.argtypes import bounded_int, path_text
from agent.host.errors import EXIT_INFRA, EXIT_PASS
from agent.host.jobs.bisect import Bisect
from agent.host.jobs.kernel_progress import build_with_progress
from agent.host.jobs.options import from_args
from agent.host.jobs.run import check_options
from agent.host.kernel import config as kconfig
from agent.host.kernel.build import KernelTree
from agent.host.kernel.errors import BisectError, KernelTreeError
from agent.host.lab.options import MAX_JOBS
from agent.host.rundirs import new_run_id
from agent.host.verdict.outcome import CouldNotJudge


#: Runs per bisect step at most (``--repeat``).
MAX_REPEAT = 100


def cmd_config(args, console: Console) -> int:
    """``msixlab kernel config [DIR]``: print the fragment, or check DIR's ``.config`` (or a
    config file) against it, naming every missing or wrong option: 0 when none, 125 when
    any required one is; an option only a scenario needs (``#@ scenario:``) is named
    with its scenario and does not fail the check.  ``KernelTreeError`` when there is no ``.config``."""
    if args.dir is None:
        print(kconfig.FRAGMENT.read_text(), end="")
        return EXIT_PASS
    root = Path(args.dir).expanduser().resolve()
    config = root / ".config" if root.is_dir() else root
    if not config.is_file():
        raise KernelTreeError(f"{root} has no .config (msixlab kernel build {args.dir} makes "
                              "one from tinyconfig and the fragment)", path=root)
    fragment = kconfig.load_fragment()
    options = kconfig.parse_config(config.read_text(errors="replace"))
    problems = kconfig.check(options, fragment)
    for problem in problems:
        console.print(f"[red]missing:[/] {escape(str(problem))}")
    if problems:
        console.print(f"{config}: {len(problems)} option(s) the rig needs are missing or "
                      f"wrong; `msixlab kernel build {args.dir}` merges them")
        return EXIT_INFRA
    scenario_only = [p for p in kconfig.check(options, fragment, tuple(fragment.scenarios))
                     if p.scenario]
    for problem in scenario_only:       # other scenarios still run: named, not fatal
        console.print(f"[yellow]missing for a scenario:[/] {escape(str(problem))}")
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


#: ``msixlab run`` options a bisect step sets itself (bisect's own ``--qemu`` and
#: ``--results``), or that make its run judge nothing (``--dry-run`` exits 0: "good").
STEP_SETS = {"kernel_tree": "--kernel-tree", "kernel": "--kernel", "kdir": "--kdir",
             "qemu": "--qemu", "results": "--results", "build": "--build",
             "dry_run": "--dry-run"}


def check_run_options(run_parser: argparse.ArgumentParser, options: list[str]) -> None:
    """Refuse, before the bisect touches the tree, RUN-OPTIONS that ``msixlab run`` would
    refuse (every step would be built, then skipped), that replace what a step sets itself,
    or that make a run judge nothing (``--dry-run``, ``--help``: exit 0, so every step
    would be "good" and the --bad revision named the first bad commit).  A
    ``BisectError`` (bad option) names the option."""
    unset = object()
    given = argparse.Namespace(**{dest: unset for dest in STEP_SETS})
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            run_args = run_parser.parse_args(options, namespace=given)
    except SystemExit as exited:
        last = (said.getvalue().strip().splitlines() or [""])[-1]
        reason = re.sub(r" \(exit \d+: \w+\)$", "", last.split("error: ", 1)[-1]) \
            if exited.code else "--help prints help, it runs nothing"
        raise BisectError(f"-- RUN-OPTIONS {shlex.join(options)}: {reason}") from None
    for dest, option in STEP_SETS.items():
        if getattr(run_args, dest) is not unset:
            why = {"dry_run": "a run with it judges nothing",
                   "build": "the step builds the tree itself",
                   "qemu": "give it to bisect", "results": "give it to bisect"}.get(
                dest, "the step sets it itself")
            raise BisectError(f"-- RUN-OPTIONS: {option} cannot be a run option of a bisect "
                              f"step ({why})")
        setattr(run_args, dest, None)
    try:
        check_options(from_args(run_args), run_args.scenario)
    except (CouldNotJudge, KernelTreeError) as err:
        raise BisectError(f"-- RUN-OPTIONS {shlex.join(options)}: {err}") from err


def cmd_bisect(args, console: Console, run_parser: argparse.ArgumentParser | None = None) -> int:
    """``msixlab bisect``: bisect the tree with the main job and print ``first bad commit:
    <sha> <subject>`` and its failed checks; 0 when it named one, 125 when it could not
    (``BisectError`` for a refused tree, revisions or RUN-OPTIONS, checked against
    ``run_parser`` before anything starts)."""
    tree = KernelTree.at(args.kernel_tree)
    options = list(args.run_options)
    if options[:1] == ["--"]:
        options = options[1:]
    if run_parser is not None:
        check_run_options(run_parser, options)
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
    c.add_argument("dir", nargs="?", metavar="DIR", type=path_text("DIR"))
    c.set_defaults(func=bind(cmd_config))
    b = actions.add_parser("build", help="build bzImage and modules in DIR (tinyconfig + "
                           "fragment when DIR has no .config, else the fragment merged)")
    b.add_argument("dir", metavar="DIR", type=path_text("DIR"))
    _build_options(b)
    b.set_defaults(func=bind(cmd_build))

    p = sub.add_parser("bisect", help="git bisect a kernel tree with the main job",
                       usage="%(prog)s --kernel-tree DIR --good REV --bad REV [--repeat N] "
                             "[-- RUN-OPTIONS]")
    p.add_argument("--kernel-tree", required=True, metavar="DIR",
                   type=path_text("--kernel-tree"))
    p.add_argument("--good", required=True, metavar="REV", help="a commit without the regression")
    p.add_argument("--bad", required=True, metavar="REV", help="a commit with it")
    p.add_argument("--repeat", type=bounded_int("--repeat", 1, MAX_REPEAT), default=1,
                   metavar="N",
                   help=f"runs per step, 1..{MAX_REPEAT}; a step is bad if any run fails "
                        "(default: 1)")
    p.add_argument("--qemu", metavar="PATH", type=path_text("--qemu"),
                   help="another QEMU for every run")
    _build_options(p)
    p.add_argument("run_options", nargs=argparse.REMAINDER, metavar="-- RUN-OPTIONS",
                   help="options passed to every `msixlab run`")
    p.set_defaults(func=lambda args: cmd_bisect(args, console, sub.choices.get("run")))


def _build_options(p) -> None:
    p.add_argument("--jobs", type=bounded_int("--jobs", 1, MAX_JOBS), default=None, metavar="N",
                   help=f"make -jN, 1..{MAX_JOBS} (default: CPUs)")
    p.add_argument("--nice", type=bounded_int("--nice", 0, 19), default=0, metavar="N",
                   help="run make at nice N, 0..19")
    p.add_argument("--results", default="results", type=path_text("--results"),
                   help="results root (default: %(default)s)")

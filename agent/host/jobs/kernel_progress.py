"""The progress display of a kernel build (CLI layer: it draws on the terminal).

Concepts: kbuild prints one line per step (``  CC      mm/slub.o``).  The display counts
them against the number the previous build of the same tree took (remembered in
``<cache>/kernel/progress.json``; unknown the first time, when it shows a count and a
spinner), shows the step being run, and the elapsed time.  The full output goes to the
build log; nothing else of it reaches the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from msixlab_common import atomic

from agent.host.jobs import progress
from agent.host.kernel import build as kbuild
from agent.host.kernel.source import kernel_cache


def _memory() -> Path:
    return kernel_cache() / "progress.json"


def _remembered(tree: Path) -> int | None:
    try:
        return json.loads(_memory().read_text()).get(str(tree))
    except (OSError, ValueError):
        return None


def _remember(tree: Path, steps: int) -> None:
    path = _memory()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[str(tree)] = steps
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, known, indent=1)


def build_with_progress(tree: kbuild.KernelTree, log_path: Path, console: Console, *,
                        jobs: int | None = None, niceness: int = 0) -> kbuild.BuildResult:
    """``kbuild.build`` with a live display; the display is gone when it returns."""
    previous = _remembered(tree.path)
    with progress.bar(console, "kernel build", previous, "configuring") as shown:
        def on_line(line: str) -> None:
            match = kbuild.PROGRESS.match(line)
            if match:
                shown.advance(f"{match.group(1)} {match.group(2)}")

        result = kbuild.build(tree, log_path, jobs=jobs, on_line=on_line, niceness=niceness)
    if result.steps > 50 or previous is None:   # a from-scratch count is the useful total
        _remember(tree.path, max(result.steps, previous or 0))
    return result

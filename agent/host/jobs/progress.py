"""The one progress facade of the command line (rich): a phase, a bar, a tick, a line.

Concepts: a ``phase`` is one long step (an image build, a boot, a whole run, one of N
repeated runs, a soak): on a terminal it shows a spinner with its label and the seconds
elapsed, refreshed by rich, while whatever the step prints scrolls above it; the label
can be changed as the step goes (``update``).  A ``bar`` is a step with a count (a kernel
build's compile steps): spinner, bar, done/total (unknown the first time), elapsed time
and the current item.  Off a terminal (CI logs) neither draws anything, so logs stay
clean.  A ``tick`` is the once-a-second line of a long job (the soak), printed whether or
not there is a terminal, led by the seconds elapsed.  ``say`` prints a scenario's plain
lines.  Only the jobs and the command line use this module; nothing else draws progress.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class _Label:
    """The spinner's text, re-rendered on every refresh: label and elapsed seconds."""

    def __init__(self, label: str):
        self.label = label
        self.started = time.monotonic()

    def __rich__(self) -> Text:
        return Text.assemble((self.label, "bold"), f" · {time.monotonic() - self.started:.0f} s")


class Phase:
    """A long step shown as a spinner with its label and elapsed seconds (nothing off a
    terminal)."""
    def __init__(self, label: _Label):
        self._label = label

    def update(self, label: str) -> None:
        """Change the label shown."""
        self._label.label = label

    @property
    def elapsed(self) -> float:
        """Seconds since the phase started."""
        return time.monotonic() - self._label.started


@contextmanager
def phase(console: Console, label: str) -> Iterator[Phase]:
    """Show ``label`` with a spinner and the elapsed time while the block runs."""
    text = _Label(label)
    with console.status(text, spinner="dots"):
        yield Phase(text)


class Bar:
    """A counted step: ``advance(item)`` moves the bar one step and shows ``item``."""
    def __init__(self, progress: Progress, task):
        self._progress, self._task = progress, task

    def advance(self, item: str) -> None:
        """One more step done; ``item`` is what it was."""
        self._progress.update(self._task, advance=1, step=item[:60])


@contextmanager
def bar(console: Console, label: str, total: int | None, first: str = "") -> Iterator[Bar]:
    """Show ``label`` with a bar of ``total`` steps (None: not known yet) while the block
    runs; the display is gone when it ends."""
    columns = [SpinnerColumn(), TextColumn(f"[bold]{label}[/]"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[step]}")]
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        yield Bar(progress, progress.add_task(label, total=total, step=first))


def tick(console: Console, elapsed: float, text: str) -> None:
    """The once-a-second line of a long job: the seconds elapsed (dim), then ``text``."""
    console.print(Text.assemble((f"{elapsed:5.1f} s", "dim"), " ", text))


def say(console: Console):
    """A ``say`` for a scenario: print its plain-text line on ``console`` as text, never as
    markup (a check's summary may hold brackets), a failure in red and a NIC's heading in
    bold."""
    def _say(line: str) -> None:
        style = None
        if line.startswith("FAIL ") or " failed: stopping the scenario" in line:
            style = "red"
        elif line.startswith("NIC ") and len(line.split()) == 2:
            style = "bold"
        console.print(Text(line, style=style or ""))
    return _say

"""Progress displays for the long steps of the command line (rich).

Concepts: a ``phase`` is one long step (an image build, a boot, a whole run, one of N
repeated runs, a soak): on a terminal it shows a spinner with its label and the seconds
elapsed, refreshed by rich, while whatever the step prints scrolls above it; the label
can be changed as the step goes (``update``).  Off a terminal (CI logs) it draws nothing,
so logs stay clean.  Only the CLI layer uses this module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
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

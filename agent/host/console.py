"""Reading the guest's serial console for kernel reports (splats).

Concepts owned here:
- A *splat* is a report the kernel prints when it misbehaves: a panic, an oops, a BUG, a
  WARN, KASAN, KFENCE or UBSAN findings, a lockdep report, a hung task, a soft or hard
  lockup.  Any of them on the console makes the run's verdict "the kernel under test
  misbehaved" (exit 1), naming the first such line; the whole console is kept.
- Kernel lines are told from user-space output by the printk timestamp (``[    1.234]``,
  which the rig's kernels print: ``CONFIG_PRINTK_TIME``), so a program that prints
  "WARNING:" is not taken for the kernel; a panic line is recognised with or without it.
- ``ConsoleWatch`` reads the console file incrementally (only what was appended since
  the last look, across partial lines) and remembers the first splat it saw.
- ``kernel_started`` tells whether the guest's kernel got as far as printing (a printk
  line, its banner, or the rig's init running): a guest that stops answering after that
  is the kernel's failure; before it, the run could not judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_STAMP = r"\[\s*\d+\.\d+\]\s*(?:\[\s*[CT]\d+\]\s*)?"   # printk time, optional caller id

# (kind, pattern after the timestamp); the first that matches a line names its kind.
SPLATS: tuple[tuple[str, str], ...] = (
    ("panic", r"Kernel panic - not syncing"),
    ("hard lockup", r"(?:NMI watchdog: )?Watchdog detected hard LOCKUP"),
    ("soft lockup", r"watchdog: BUG: soft lockup"),
    ("KASAN", r"BUG: KASAN: "),
    ("KFENCE", r"BUG: KFENCE: "),
    ("UBSAN", r"UBSAN: "),
    ("BUG", r"(?:kernel BUG at |BUG: )"),
    ("oops", r"Oops(?::|\[#| -)"),
    ("lockdep", r"WARNING: (?:possible (?:circular|recursive) locking|inconsistent lock state"
                r"|suspicious RCU usage|bad unlock balance|lock held when returning"
                r"|possible irq lock inversion|held lock freed)"),
    # 6.12: "WARNING: CPU: 1 PID: 180 at file.c:38 f+0x15/0x20"; 7.3 puts the place first:
    # "WARNING: file.c:38 at f+0xc/0x20 [mod], CPU#0: python3/138"
    ("WARN", r"WARNING: (?:CPU: \d+ PID: \d+ at |at |\S+:\d+ at \S)"),
    ("hung task", r"INFO: task .{1,64} blocked for more than \d+ seconds"),
)
_TIMESTAMPED = re.compile(_STAMP + "(?:" + "|".join(f"(?P<k{i}>{p})" for i, (_, p) in
                                                    enumerate(SPLATS)) + ")")
_BARE_PANIC = re.compile(r"Kernel panic - not syncing")
_STARTED = re.compile(_STAMP + "|msixlab init: |Linux version \\d")


@dataclass(frozen=True)
class Splat:
    """The first kernel report found on a console: its kind, the line, and its 1-based line
    number."""
    kind: str       # one of SPLATS' kinds
    line: str       # the console line, stripped
    lineno: int     # 1-based line number in the console file


def find_splat(line: str) -> str | None:
    """The kind of kernel report ``line`` starts, or None."""
    match = _TIMESTAMPED.search(line)
    if match:
        for i, (kind, _) in enumerate(SPLATS):
            if match.group(f"k{i}") is not None:
                return kind
    if _BARE_PANIC.search(line):
        return "panic"
    return None


class ConsoleWatch:
    """Incremental splat scanner over a growing console file."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""
        self._lineno = 0
        self.splat: Splat | None = None
        self.kernel_started = False

    def poll(self) -> Splat | None:
        """Read what was appended; return the first splat seen so far (or None)."""
        try:
            with open(self.path, "rb") as console:
                console.seek(self._offset)
                data = console.read()
        except FileNotFoundError:
            return self.splat
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._scan(raw)
        return self.splat

    def finish(self) -> Splat | None:
        """Also judge a last line the console did not end with a newline."""
        self.poll()
        if self._partial:
            self._scan(self._partial)
            self._partial = b""
        return self.splat

    def _scan(self, raw: bytes) -> None:
        self._lineno += 1
        line = raw.decode("utf-8", errors="replace").replace("\r", "").strip()
        if not self.kernel_started and _STARTED.match(line):
            self.kernel_started = True
        if self.splat is None:
            kind = find_splat(line)
            if kind is not None:
                self.splat = Splat(kind, line, self._lineno)

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
- A *register dump* (``RIP: 0010:...``, a kernel-mode instruction pointer) is printed only
  by an oops, a BUG or a WARN in kernel code, whatever its headline says: it is a report
  too, so a report in a form the headline patterns do not know is still seen.  A panic's
  own stack dump (``dump_stack``) shows no registers.
- A *rig marker* is a line the rig's guest init prints (images/guest): ``MSIXLAB-READY``
  (stage 2 reached), and the failures ``MSIXLAB-INIT-FAILED: reason``,
  ``MSIXLAB-KMOD-FAILED: reason``, ``MSIXLAB-BAD-MODE: mode`` and
  ``MSIXLAB-AGENT-EXIT: status=N tainted=A->B kmsg=K`` (the guest agent ended; the
  kernel's taint flags before and after it ran, and how many kernel messages at
  KERN_WARNING or worse it logged meanwhile).  ``ConsoleWatch.marker`` keeps the first
  failure marker.
- The *taint flags* a kernel dump header shows (``Tainted: G      D W``) are the kernel's
  own record of what it reported: ``REPORT_TAINTS`` (a WARN, an oops, a bad page, a
  machine check, a soft lockup) mean the kernel reported something, even when the
  console line that said so has a form no pattern knows.
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
    ("register dump", r"RIP: 0010:\S"),
)
_TIMESTAMPED = re.compile(_STAMP + "(?:" + "|".join(f"(?P<k{i}>{p})" for i, (_, p) in
                                                    enumerate(SPLATS)) + ")")
_BARE_PANIC = re.compile(r"Kernel panic - not syncing")
_STARTED = re.compile(_STAMP + "|msixlab init: |Linux version \\d")
_MARKER = re.compile(r"MSIXLAB-(INIT-FAILED|KMOD-FAILED|BAD-MODE|AGENT-EXIT):\s*(.*)")
_TAINT_HEADER = re.compile(r"\bTainted: ([A-Z ]+?)\s+\d")
_PANIC_CAUSE = re.compile(r"Kernel panic - not syncing: (.*)")

#: taint bit -> letter of the kernel's reports (Documentation/admin-guide/tainted-kernels)
REPORT_TAINTS = {4: "M", 5: "B", 7: "D", 9: "W", 14: "L"}

#: what a panic says when the kernel could not hand over to, or lost, the rig's user
#: space: its init exited or was never found, or no root could be mounted from the rig's
#: initramfs.  Such a panic reports the rig's failure, not kernel code's.
USERSPACE_PANICS = re.compile(r"Attempted to kill init|No working init found"
                              r"|Requested init \S+ failed|VFS: Unable to mount root"
                              r"|Unable to mount root fs")


def report_taints(tainted: int) -> str:
    """The letters of the report bits set in a taint mask (``/proc/sys/kernel/tainted``)."""
    return "".join(letter for bit, letter in sorted(REPORT_TAINTS.items())
                   if tainted >> bit & 1)


def panic_blames_userspace(line: str) -> bool:
    """Whether a panic line's cause is the rig's user space (init gone, no root)."""
    match = _PANIC_CAUSE.search(line)
    return bool(match and USERSPACE_PANICS.match(match.group(1)))


@dataclass(frozen=True)
class Marker:
    """A rig failure marker on the console: ``kind`` (``INIT-FAILED``, ``KMOD-FAILED``,
    ``BAD-MODE``, ``AGENT-EXIT``), what follows it, and its 1-based line number."""
    kind: str
    reason: str
    lineno: int

    def fields(self) -> dict[str, str]:
        """``key=value`` words of the reason (``AGENT-EXIT``: status, tainted, kmsg)."""
        return dict(word.split("=", 1) for word in self.reason.split() if "=" in word)


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
        self.marker: Marker | None = None       # the first rig failure marker
        self.ready = False                      # MSIXLAB-READY: the rig's stage 2 ran
        self.report_taints = ""   # report letters any dump header showed (Tainted: ... W)

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
        self._scan_rig(line)
        if self.splat is None:
            kind = find_splat(line)
            if kind is not None:
                self.splat = Splat(kind, line, self._lineno)

    def _scan_rig(self, line: str) -> None:
        """Note the rig's markers and the taint letters of kernel dump headers."""
        if "MSIXLAB-READY" in line:
            self.ready = True
        match = _MARKER.search(line)
        if match and self.marker is None:
            self.marker = Marker(match.group(1), match.group(2).strip(), self._lineno)
        header = _TAINT_HEADER.search(line) if _STAMP_ONLY.match(line) else None
        if header:
            seen = set(self.report_taints) | (set(header.group(1)) & set(REPORT_TAINTS.values()))
            self.report_taints = "".join(sorted(seen))


_STAMP_ONLY = re.compile(_STAMP)

"""Lint findings on the guest driver, judged against a short list of accepted ones.

Concepts:
- A ``Finding`` is one complaint of a tool about one place: the file (as the tool names
  it, relative to agent/kmod), the line (0 when the tool names none), a *kind* and the
  text.  The kind is what an acceptance names: checkpatch's type (``MEMORY_BARRIER``) or
  the compiler's warning option (``-Wformat-truncation=``).
- ``parse_build_log`` reads every warning of a kbuild log (``kmod.build_with_warnings``):
  gcc's ``FILE:LINE:COL: warning: TEXT [-Wopt]``, and any other line that says
  ``warning`` (modpost, objtool, the linker, kbuild) as kind ``other``, so none escapes.
  checkpatch's own lines are read by ``kernel/checkpatch.py``.
- An *accepted list* (``agent/kmod/checkpatch-accepted.txt``, ``w1-accepted.txt``) has
  one entry a line, ``FILE KIND COUNT REASON``: exactly COUNT findings of KIND in FILE
  are accepted, for REASON, which is required; ``#`` starts a comment line.  A malformed
  line is a ``LintError`` naming the list and the line.
- ``judge`` returns the problems, each one line: a finding no entry accepts, and an entry
  whose count is not what was found (a new occurrence slipped in, or one was fixed and
  its entry left behind).  No problems: the driver is clean.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from agent.host.kernel.errors import KernelError

OTHER = "other"

# gcc and clang: "msixlab_main.c:326:54: warning: ... [-Wformat-truncation=]"
_GCC_WARNING = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?:\d+:)? warning: "
                          r"(?P<text>.*?)(?: \[(?P<kind>-W[^\]]+)\])?$")
_ANY_WARNING = re.compile(r"\bwarning\b", re.I)
_ENTRY = re.compile(r"^(?P<file>\S+)\s+(?P<kind>\S+)\s+(?P<count>\d+)\s+(?P<reason>\S.*)$")


class LintError(KernelError):
    """A lint tool could not run, or an accepted list is malformed (it names the file and
    line)."""


@dataclass(frozen=True)
class Finding:
    """One complaint: ``file`` (relative to the driver's directory), ``line`` (0: none
    named), ``kind`` (checkpatch type or compiler option) and ``text``."""
    file: str
    line: int
    kind: str
    text: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.kind}: {self.text}"


@dataclass(frozen=True)
class Accepted:
    """One entry of an accepted list: ``count`` findings of ``kind`` in ``file`` are
    accepted for ``reason``; ``where`` is the list's file and line, for messages."""
    file: str
    kind: str
    count: int
    reason: str
    where: str


def _driver_relative(path: str) -> str:
    """A file as the driver's build names it: ``/mnt/x.c`` (build.sh's bind mount, as
    older kbuilds print it) is ``x.c``."""
    return path[len("/mnt/"):] if path.startswith("/mnt/") else path


def parse_build_log(text: str) -> list[Finding]:
    """Every warning of a kbuild log: gcc's with their option as the kind (``-Wunknown``
    when gcc names none), any other line that says ``warning`` as kind ``other`` with the
    whole line as its text."""
    findings = []
    for raw in text.splitlines():
        line = raw.rstrip()
        match = _GCC_WARNING.match(line)
        if match:
            findings.append(Finding(_driver_relative(match["file"]), int(match["line"]),
                                    match["kind"] or "-Wunknown", match["text"]))
        elif _ANY_WARNING.search(line):
            findings.append(Finding("-", 0, OTHER, line.strip()))
    return findings


def load_accepted(path: Path) -> list[Accepted]:
    """The entries of the accepted list at ``path``; ``LintError`` naming the line of a
    malformed one (fewer than four fields, a count that is not a positive number, an entry
    given twice)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise LintError(f"cannot read the accepted list {path}: {err.strerror}") from err
    entries: list[Accepted] = []
    seen: dict[tuple[str, str], str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        match = _ENTRY.match(line.strip())
        if not match:
            raise LintError(f"{where}: expected 'FILE KIND COUNT REASON' (the reason is "
                            f"required), got {line.strip()!r}")
        count = int(match["count"])
        if count < 1:
            raise LintError(f"{where}: the count must be at least 1, got {count}")
        key = (match["file"], match["kind"])
        if key in seen:
            raise LintError(f"{where}: {key[0]} {key[1]} is already accepted at {seen[key]}")
        seen[key] = where
        entries.append(Accepted(match["file"], match["kind"], count, match["reason"], where))
    return entries


def judge(findings: list[Finding], accepted: list[Accepted]) -> list[str]:
    """The problems, one line each: every finding whose (file, kind) no entry accepts, and
    every entry whose count differs from the findings of its (file, kind)."""
    found = Counter((f.file, f.kind) for f in findings)
    entries = {(a.file, a.kind): a for a in accepted}
    problems = [f"{f} (not accepted)" for f in findings if (f.file, f.kind) not in entries]
    for key, entry in entries.items():
        if found[key] != entry.count:
            these = [str(f) for f in findings if (f.file, f.kind) == key]
            problems.append(f"{entry.where}: accepts {entry.count} {entry.kind} in {entry.file}, "
                            f"found {found[key]}" + (": " + "; ".join(these) if these else ""))
    return problems

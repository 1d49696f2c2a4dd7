"""``results.ktap``: the run in KTAP version 1 (Documentation/dev-tools/ktap.rst).

Concepts: the top level holds one test per scenario step; each step is a nested KTAP
document (indented two spaces, its own version line and plan) with one test per check,
named ``check[index]``.  A failed check's summary is its diagnostic data, and its
evidence precedes it as ``# key: json`` lines; a skipped check is ``ok ... # SKIP
reason``.  A run that ended for a reason no check holds (a kernel splat, a driver error,
could not judge) adds a last top-level test ``verdict`` that is not ok (``# ERROR`` for
could-not-judge).  The provenance (kernel release, config hash, QEMU, commit, seed,
reproduce command) is in diagnostic lines before the plan.  ``parse`` reads the subset
written here back, strictly, so the tests can hold the writer to the format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from agent.host.results.model import CheckRow, RunResult, Step

VERSION_LINE = "KTAP version 1"
INDENT = "  "
_EVIDENCE_LINES = 12


def _clean(text: str) -> str:
    """A description or diagnostic: one line, no ``#`` (KTAP reserves it)."""
    return " ".join(str(text).replace("#", "No.").split())


def _check_line(number: int, check: CheckRow) -> list[str]:
    name = _clean(check.test_name)
    if check.verdict == "pass":
        return [f"ok {number} {name}"]
    if check.verdict == "skip":
        return [f"ok {number} {name} # SKIP {_clean(check.summary)}".rstrip()]
    lines = [f"# {_clean(key)}: {_clean(json.dumps(value, sort_keys=True, default=str))[:300]}"
             for key, value in sorted(check.evidence.items())[:_EVIDENCE_LINES]]
    reason = check.summary if check.verdict == "fail" else f"{check.verdict}: {check.summary}"
    return lines + [f"not ok {number} {name} # {_clean(reason)}".rstrip(" #")]


def _step_lines(number: int, step: Step) -> list[str]:
    inner = [VERSION_LINE, f"# Subtest: {_clean(step.name)}", f"1..{len(step.checks)}"]
    for n, check in enumerate(step.checks, 1):
        inner += _check_line(n, check)
    result = "not ok" if step.failed else "ok"
    return [INDENT + line for line in inner] + [f"{result} {number} {_clean(step.name)}"]


def render(run: RunResult) -> str:
    """The whole KTAP document, newline-terminated."""
    extra = not run.checks_hold_verdict
    lines = [VERSION_LINE, f"# msixlab run {_clean(run.run_id)}"]
    lines += [f"# {label}: {_clean(value)}" for label, value in run.provenance.items()]
    lines.append(f"1..{len(run.steps) + int(extra)}")
    for number, step in enumerate(run.steps, 1):
        lines += _step_lines(number, step)
    if extra:
        directive = "ERROR " if run.verdict.exit_code == 125 else ""
        lines.append(f"not ok {len(run.steps) + 1} verdict # {directive}"
                     f"{_clean(run.verdict.outcome)}: {_clean(run.verdict.summary)}")
    counts = run.counts()
    lines.append(f"# exit {run.verdict.exit_code} ({_clean(run.verdict.outcome)}): "
                 f"pass:{counts['pass']} fail:{counts['fail']} skip:{counts['skip']}")
    return "\n".join(lines) + "\n"


# --- reading it back ------------------------------------------------------------------

@dataclass
class KtapTest:
    """One KTAP test line as ``parse`` reads it: number, ok, name, directive, and its nested
    subtests."""
    number: int
    ok: bool
    name: str
    directive: str = ""
    subtests: list["KtapTest"] = field(default_factory=list)


class KtapError(ValueError):
    """The text is not KTAP version 1 as this module writes it; names the line."""


_RESULT = re.compile(r"^(ok|not ok) (\d+)(?: ([^#]*?))?(?: # ?(.*))?$")


def parse(text: str) -> list[KtapTest]:
    """The top-level tests of a KTAP v1 document (nested ones in ``subtests``).  Checks
    version lines, plans (count and numbering), indentation, and that a parent fails
    when a subtest does."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)]
    tests, rest = _parse_level(lines, 0)
    if rest:
        raise KtapError(f"line {rest[0][0]}: unexpected {rest[0][1]!r} after the document")
    return tests


def _parse_level(lines, depth):
    prefix = INDENT * depth
    if not lines or lines[0][1] != prefix + VERSION_LINE:
        where = f"line {lines[0][0]}: {lines[0][1]!r}" if lines else "end of input"
        raise KtapError(f"expected {prefix + VERSION_LINE!r} at {where}")
    lines = lines[1:]
    plan, tests, pending = None, [], []
    while lines:
        n, line = lines[0]
        if line.startswith(prefix + INDENT + VERSION_LINE):
            pending, lines = _parse_level(lines, depth + 1)
            continue
        if not line.startswith(prefix) or (depth and line.startswith(prefix + INDENT)):
            break
        body = line[len(prefix):]
        lines = lines[1:]
        if body.startswith("#"):
            continue
        if re.fullmatch(r"1\.\.\d+", body):
            if plan is not None:
                raise KtapError(f"line {n}: a second plan")
            plan = int(body[3:])
            continue
        match = _RESULT.match(body)
        if not match:
            raise KtapError(f"line {n}: not a KTAP line: {body!r}")
        test = KtapTest(int(match[2]), match[1] == "ok", (match[3] or "").strip(),
                        (match[4] or "").strip(), pending)
        pending = []
        if test.number != len(tests) + 1:
            raise KtapError(f"line {n}: test number {test.number}, expected {len(tests) + 1}")
        if test.ok and any(not t.ok and not t.directive.startswith("SKIP") for t in test.subtests):
            raise KtapError(f"line {n}: {test.name!r} is ok but a subtest is not")
        tests.append(test)
        if depth and plan is not None and len(tests) == plan:
            break
    if plan is None or plan != len(tests):
        raise KtapError(f"depth {depth}: plan {plan} but {len(tests)} test(s)")
    return tests, lines

"""Reading what a kselftest binary says: its test list (``-l``) and its TAP output.

Concepts: the kernel's selftests built on ``kselftest_harness.h`` run every test of every
fixture variant in a child and print TAP version 13 (a KTAP v1 subset): a plan
``1..N``, then ``ok N name``, ``ok N name # SKIP reason`` or ``not ok N name``, the test
named ``fixture[.variant].test``; the harness's own progress (``#  RUN``, ``#  OK``) and
what the tests print (their ``printf``s, an assertion's ``file:line:test:Expected ...``)
come between the result lines.  A binary that gives up before its harness starts says so
in one of two ways: a skip-all plan (``1..0 # SKIP reason``) or a message and exit
status 4 (``KSFT_SKIP``) without any plan.

``parse_listing`` reads the table ``-l`` prints (fixture, variant, test columns; the
variants and tests of a fixture are listed side by side, not as pairs) into
``Fixture``s, whose ``case_names`` are the cases the harness runs: every test of every
variant.  ``parse_output`` reads a run into ``Output``: the plan, a skip-all reason and
one ``Case`` per result line with the lines printed since the previous one (its
diagnostics).  Both read strictly what they understand and keep the rest; judging is the
scenario's (vfio_selftests.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KSFT_PASS, KSFT_FAIL, KSFT_SKIP = 0, 1, 4
_LIST_HEADER = re.compile(r"^# FIXTURE\s+VARIANT\s+TEST\s*$")
_VARIANT_COLUMN = 21            # "%-20s %-25s %s": a continuation row's variant starts here
_PLAN = re.compile(r"^1\.\.(\d+)(?:\s+#\s*SKIP\b\s*(.*))?$")
_RESULT = re.compile(r"^(ok|not ok) (\d+)(?: ([^#]*?))?\s*(?:#\s*(\w+)\b\s*(.*))?$")


@dataclass
class Fixture:
    """One fixture of a ``-l`` listing: its name, variants (none: it runs once) and tests."""
    name: str
    variants: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)

    def case_names(self) -> list[str]:
        """The cases the harness runs for it: ``fixture.variant.test`` for every variant and
        test (``fixture.test`` without variants)."""
        variants = self.variants or [""]
        return [f"{self.name}.{v}.{t}" if v else f"{self.name}.{t}"
                for v in variants for t in self.tests]


class ListingError(ValueError):
    """The text is not the harness's ``-l`` table."""


def parse_listing(text: str) -> list[Fixture]:
    """The fixtures of a ``-l`` listing (the harness prints it on stderr and exits 4).  The
    table ends at the first line that is not one of its rows (a test's own ``printf``,
    flushed at exit, may follow it)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if _LIST_HEADER.match(line))
    except StopIteration:
        raise ListingError("no '# FIXTURE VARIANT TEST' header") from None
    fixtures: list[Fixture] = []
    for line in lines[start + 1:]:
        if not line.strip() or set(line.strip()) == {"-"}:
            continue
        words = line.split()
        column = len(line) - len(line.lstrip())
        if column == 0 and len(words) <= 3 and not line.startswith("#"):
            fixture = Fixture(words[0])            # a fixture's first row
            fixtures.append(fixture)
            if len(words) == 3:                    # its first variant and first test
                fixture.variants.append(words[1])
                fixture.tests.append(words[2])
            elif len(words) == 2:                  # no variants: its first test
                fixture.tests.append(words[1])
        elif column >= _VARIANT_COLUMN and fixtures and len(words) <= 2:
            fixture = fixtures[-1]
            if len(words) == 2:                    # a variant and a test
                fixture.variants.append(words[0])
                fixture.tests.append(words[1])
            elif column == _VARIANT_COLUMN:        # a variant (the tests ran out)
                fixture.variants.append(words[0])
            else:                                  # a test (the variants ran out)
                fixture.tests.append(words[0])
        else:
            break
    return fixtures


@dataclass
class Case:
    """One result line: its number, the case's name, ``ok``, the directive (``SKIP``,
    ``XFAIL``, ``XPASS``, ... or ""), its reason, and the lines printed for it."""
    number: int
    name: str
    ok: bool
    directive: str = ""
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``skip`` (a SKIP directive, whatever the ok), ``pass`` (ok) or ``fail``."""
        if self.directive.upper() == "SKIP":
            return "skip"
        return "pass" if self.ok else "fail"


@dataclass
class Output:
    """A binary's TAP output read: its ``plan`` (None without one), the reason of a
    skip-all plan, the ``cases`` in order, and the lines before the first case
    (``preamble``) and after the last (``trailer``)."""
    plan: int | None = None
    skip_all: str | None = None
    cases: list[Case] = field(default_factory=list)
    preamble: list[str] = field(default_factory=list)
    trailer: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether there was a plan and exactly that many results, numbered 1..N."""
        return (self.plan is not None and len(self.cases) == self.plan
                and [c.number for c in self.cases] == list(range(1, self.plan + 1)))


def parse_output(text: str) -> Output:
    """``text`` (stdout and stderr interleaved) read as kselftest TAP."""
    out = Output()
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("TAP version") or stripped.startswith("KTAP version"):
            continue
        plan = _PLAN.match(stripped)
        if plan and out.plan is None and not out.cases:
            out.plan = int(plan.group(1))
            if plan.group(2) is not None or out.plan == 0:
                out.skip_all = (plan.group(2) or "").strip()
            out.preamble += pending
            pending = []
            continue
        result = _RESULT.match(stripped)
        if result:
            case = Case(int(result.group(2)), (result.group(3) or "").strip(),
                        result.group(1) == "ok", (result.group(4) or "").strip(),
                        (result.group(5) or "").strip(), pending)
            if not out.cases and out.plan is None:
                out.problems.append(f"result {case.number} before any plan")
            out.cases.append(case)
            pending = []
            continue
        if stripped:
            pending.append(line)
    if out.cases:
        out.trailer = pending
    else:
        out.preamble += pending
    return out


def failure_lines(case: Case, limit: int = 12) -> list[str]:
    """The lines of a failed case that say why: the assertions' and the harness's, else
    the last ones it printed."""
    keys = ("Expected", "Assertion", "Expression", "Observed", "errno", "FAIL", "terminated",
            "Test ended", "timeout", "signal")
    why = [line.strip() for line in case.diagnostics if any(k in line for k in keys)]
    return (why or [line.strip() for line in case.diagnostics])[-limit:]

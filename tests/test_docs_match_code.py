"""Doc tables that mirror code must match it: the verdict outcomes and the checks."""

import re
from pathlib import Path

from agent.host.outcome import Outcome
from agent.host.scenario import PLAN

DOCS = Path(__file__).resolve().parents[1] / "docs"


def table_rows(path: Path, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``| header |``."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_verdict_table_is_the_outcome_enum():
    rows = table_rows(DOCS / "verdict.md", "outcome")
    documented = {row[0].strip("`"): int(row[1]) for row in rows}
    assert documented == {str(o): o.exit_code for o in Outcome}


def test_every_declared_check_is_documented():
    rows = table_rows(DOCS / "routing.md", "check")
    documented = {re.match(r"`(\w+)`", row[0]).group(1) for row in rows}
    declared = {name for _, names in PLAN for name in names}
    assert declared <= documented, sorted(declared - documented)

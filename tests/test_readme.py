"""The README's shape: a first screen, at most 150 lines, one-line command cells.

The README is the project's first screen, not its manual: it starts with the two
commands that set up a fresh machine, stays within ``MAX_LINES``, keeps every row of its
commands table on one line (the long form is docs/commands.md), names no module path of
the host agent (those move; the docs carry them), and links the four pages a newcomer
reads next (tests/test_doc_links.py checks that every link leads somewhere).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 150
# A rough bound for "one line": a commands-table row whose visible text (the cells,
# without link targets, backticks or padding) is longer than this wraps in a
# two-column table on a page of ordinary width.  The rows today reach 84.
MAX_ROW_TEXT = 90
FIRST_SCREEN_LINKS = {
    "Testing your kernel": "docs/testing-your-kernel.md",
    "Bisecting": "docs/bisecting.md",
    "Writing tests": "docs/writing-tests.md",
    "How it works": "docs/architecture.md",
}


def cells(row: str) -> list[str]:
    """The cells of one markdown table row; ``\\|`` inside a cell is a literal bar."""
    return [cell.strip().replace("\\|", "|")
            for cell in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def visible(cell: str) -> str:
    """A cell as it reads on the page: link text without its target, no backticks."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell).replace("`", "")


def table(text: str, header: str) -> list[str]:
    """The body rows of the table whose header row starts with ``| header |``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"| {header} |")), None)
    assert start is not None, f"no table with the header `| {header} |`"
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def readme_problems(text: str) -> list[str]:
    """Every way ``text`` (a README) breaks the rules above; empty when it keeps them."""
    problems = []
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        problems.append(f"{len(lines)} lines, more than {MAX_LINES}")
    # the title, a blank line, then a code block of exactly the two set-up commands
    head = lines[:8]
    if head[:3] != ["# msixlab", "", "```sh"] or "```" not in head[3:]:
        problems.append("does not start with the title and a code block")
    else:
        block = head[3:head.index("```", 3)]
        commands = [line.split("#")[0].strip() for line in block]
        if commands != ["make run", "make test"]:
            problems.append(f"starts with the commands {commands}, not exactly make run and make test")
    for row in table(text, "command"):
        if "<br" in row.lower():
            problems.append(f"a commands-table cell breaks its line: {row}")
        width = sum(len(visible(cell)) for cell in cells(row))
        if width > MAX_ROW_TEXT:
            problems.append(f"a commands-table row is {width} characters, more than one line: {row}")
    for path in re.findall(r"agent[/.]host[/.][\w./]+", text):
        problems.append(f"names the host agent's module path {path} (they move; the docs carry them)")
    first_screen = "\n## ".join(text.split("\n## ")[:2])      # up to the second heading
    for label, target in FIRST_SCREEN_LINKS.items():
        if f"[{label}]({target})" not in first_screen:
            problems.append(f"the first screen has no link [{label}]({target})")
    return problems


def test_readme_keeps_its_shape():
    assert readme_problems(README.read_text()) == []


GOOD = README.read_text()


@pytest.mark.parametrize("bad, problem", [
    (GOOD + "\n" * (MAX_LINES - GOOD.count("\n") + 1), "more than 150"),
    (GOOD.replace("make test    #", "make unit    #", 1), "not exactly make run and make test"),
    (GOOD.replace("make test    # set up everything, run every test (unit tests and real-guest tests)\n",
                  "make test    # every test\nmake bench   # benchmarks\n", 1),
     "not exactly make run and make test"),
    (GOOD.replace("| `msixlab setup` | install the host packages msixlab needs |",
                  "| `msixlab setup` | install the host packages msixlab needs with apt, as root or "
                  "through sudo, else print the command |", 1),
     "more than one line"),
    (GOOD.replace("| `msixlab setup` | install the host packages msixlab needs |",
                  "| `msixlab setup` | install the host packages<br>with apt |", 1),
     "breaks its line"),
    (GOOD.replace("the main job: one scenario on a booted guest",
                  "the main job (agent/host/jobs/run.py)", 1), "module path"),
    (GOOD.replace("[Bisecting](docs/bisecting.md)", "Bisecting", 1), "no link [Bisecting]"),
])
def test_a_readme_that_breaks_a_rule_is_caught(bad, problem):
    """Each rule can fail: a README planted with one breach is caught, by that rule."""
    assert bad != GOOD
    assert any(problem in p for p in readme_problems(bad)), readme_problems(bad)

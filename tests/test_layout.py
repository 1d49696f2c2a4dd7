"""The house: agent/host's folders read as the architecture and every import runs one way.

From the top: the command line (``cli``), the jobs (``jobs/``), the shared pytest lab
(``testkit/``), then the four parts a job puts together (``scenarios/``, ``lab/``,
``results/``, ``kernel/``), then where a run lives (``rundirs``), the verdict
(``verdict/``) and at the bottom the errors and argument types every part uses.  A module
may import from its own floor or any floor below, never above; within a floor, the four
parts keep the rules the issue set: ``verdict/`` and ``scenarios/`` import no ``lab/``,
``jobs/``, ``cli`` or ``rich``, and ``kernel/`` imports no ``lab/``.  Imports are read
from the code (every ``import`` statement, at any depth: a lazy import counts too).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "agent" / "host"

#: floor of each part, top first; a part is a folder of agent/host or a root module
FLOORS = {
    "__main__": 7, "cli": 6,
    "jobs": 5,
    "testkit": 4,
    "scenarios": 3, "lab": 3, "results": 3, "kernel": 3,
    "rundirs": 2,
    "verdict": 1,
    "errors": 0, "argtypes": 0, "__init__": 0,
}
#: pairs (part, part it must not import) over and above the floors
FORBIDDEN = {("verdict", "lab"), ("scenarios", "lab"), ("scenarios", "results"),
             ("kernel", "lab"), ("lab", "scenarios"), ("lab", "results"), ("results", "lab"),
             ("results", "scenarios"), ("kernel", "scenarios"), ("kernel", "results")}
NO_RICH = ("verdict", "scenarios", "lab", "kernel", "rundirs", "errors", "argtypes")


def part_of(module: str) -> str | None:
    """``agent.host.lab.machine`` -> ``lab``; ``agent.host.cli`` -> ``cli``; None outside."""
    if module == "agent.host":
        return "__init__"
    if not module.startswith("agent.host."):
        return None
    return module.split(".")[2]


def module_of(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports (relative imports resolved), at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_of(path, root).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def arrows(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(file, its part, imported part) for every import of another part of agent/host
    (and of rich) under ``root``."""
    out = []
    for path in sorted((root / "agent" / "host").rglob("*.py")):
        mine = part_of(module_of(path, root))
        for target in imports(path, root):
            theirs = part_of(target)
            if theirs is not None and theirs != mine and theirs in FLOORS:
                out.append((str(path.relative_to(root)), mine, theirs))
            if target.split(".")[0] == "rich":
                out.append((str(path.relative_to(root)), mine, "rich"))
    return out


def test_every_part_of_agent_host_has_a_floor():
    parts = {part_of(module_of(p)) for p in HOST.rglob("*.py")}
    assert parts <= set(FLOORS), f"put {sorted(parts - set(FLOORS))} on a floor in FLOORS"


def test_agent_host_keeps_at_most_six_modules_at_its_root():
    root = sorted(p.name for p in HOST.glob("*.py"))
    assert len(root) <= 6, root


def test_every_import_runs_down_or_sideways(root: Path = ROOT):
    upward = [(f, mine, theirs) for f, mine, theirs in set(arrows(root))
              if theirs != "rich" and FLOORS[theirs] > FLOORS[mine]]
    assert upward == [], "imports running back up: " + ", ".join(
        f"{f} -> {theirs}" for f, _, theirs in sorted(upward))


def test_parts_on_one_floor_keep_to_themselves_where_the_rules_say(root: Path = ROOT):
    crossing = sorted((f, theirs) for f, mine, theirs in set(arrows(root))
                      if (mine, theirs) in FORBIDDEN)
    assert crossing == []


def test_rich_only_in_the_command_line_jobs_and_results(root: Path = ROOT):
    users = sorted(f for f, mine, theirs in set(arrows(root))
                   if theirs == "rich" and mine in NO_RICH)
    assert users == []


def test_no_import_circle_between_modules():
    graph: dict[str, set[str]] = {}
    modules = {module_of(p) for p in HOST.rglob("*.py")}
    for path in HOST.rglob("*.py"):
        graph[module_of(path)] = {t for t in imports(path) if t in modules} - {module_of(path)}
    # a package's __init__ importing its own modules is how a package names its parts
    for name in list(graph):
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".") or t == "agent.host"}
        graph[name].discard("agent.host")
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)


@pytest.mark.parametrize("planted, rule", [
    ("agent/host/verdict/_planted.py", "from agent.host.lab import machine\n"),
    ("agent/host/scenarios/_planted.py", "import rich.console\n"),
    ("agent/host/kernel/_planted.py", "def f():\n    from agent.host.jobs import run\n"),
    ("agent/host/lab/_planted.py", "from ..scenarios import default\n"),
])
def test_the_rules_catch_a_planted_import(planted, rule, tmp_path):
    """Each rule can fail: a copy of agent/host with one planted module breaking it names
    that module."""
    shutil.copytree(HOST, tmp_path / "agent" / "host",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / planted).write_text(f'"""planted"""\n{rule}')
    failed = []
    for test in (test_every_import_runs_down_or_sideways,
                 test_parts_on_one_floor_keep_to_themselves_where_the_rules_say,
                 test_rich_only_in_the_command_line_jobs_and_results):
        try:
            test(tmp_path)
        except AssertionError as err:
            failed.append(str(err))
    assert any(planted in message for message in failed), failed


def test_the_architecture_page_names_every_folder_and_module():
    """docs/architecture.md's table of agent/host mirrors the tree: each folder has a row
    and the row names every module in it."""
    import re
    page = (ROOT / "docs" / "architecture.md").read_text()
    rows = {}
    for line in page.splitlines():
        m = re.match(r"\| `(\w+)/` \| (.*?) \| [^|]* \|$", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    folders = {p.name for p in HOST.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(rows) == folders
    for folder in sorted(folders):
        modules = {p.stem for p in (HOST / folder).glob("*.py")} - {"__init__", "__main__"}
        assert modules <= rows[folder], \
            f"{folder}/: not in docs/architecture.md: {sorted(modules - rows[folder])}"

"""Doc tables that mirror code must match it: the verdict outcomes, the checks, the
scenarios, and every command and option of ``msixlab`` (README and docs/commands.md)."""

import re
from pathlib import Path

from agent.host.scenarios import REGISTRY
from agent.host.verdict.outcome import Outcome

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
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row[0])}
    declared = {name for cls in REGISTRY.values() for _, names in cls.PLAN for name in names}
    from agent.host.scenarios import PerNic
    declared |= {name for _, names in PerNic(None, REGISTRY["default"], 2).PLAN
                 for name in names}                 # --nics adds the isolation step
    assert declared <= documented, sorted(declared - documented)


def test_every_soak_check_is_documented():
    from agent.host.scenarios.soak_plan import SOAK_CHECKS
    rows = table_rows(DOCS / "soak.md", "check")
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row[0])}
    assert set(SOAK_CHECKS) <= documented, sorted(set(SOAK_CHECKS) - documented)


def _first_column_names(path: Path, header: str) -> set[str]:
    """Every `name` in the first column of the table (``a`` / ``b`` rows give both)."""
    return {name for row in table_rows(path, header) for name in re.findall(r"`(\w+)`", row[0])}


def test_agent_command_table_is_documented():
    from agent.guest.commands import Agent
    agent = Agent(device="/nonexistent/msixlab0")
    assert _first_column_names(DOCS / "guest-agent.md", "cmd") == set(agent.commands())


def test_control_command_table_is_documented():
    from qemu_device.control import ControlContext, ControlSession
    from qemu_device.device.nic import Device
    from qemu_device.eventlog import EventBus
    from qemu_device.fdio import OsFdPort
    session = ControlSession(ControlContext(Device(fds=OsFdPort()), EventBus()), 1,
                             lambda data: None)
    assert _first_column_names(DOCS / "device.md", "cmd") == set(session._table)


def _subcommands():
    """``msixlab``'s top-level parser and its subcommands, name -> parser."""
    import argparse

    from agent.host.cli import parser
    top = parser()
    subparsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return top, subparsers.choices


def _long_options(parser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"]


def _sections(path: Path) -> dict[str, str]:
    """The text under each ``## `` heading of a markdown page, by heading."""
    sections, heading = {}, ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        sections[heading] = sections.get(heading, "") + line + "\n"
    return sections


def _names(option: str, text: str) -> bool:
    """``text`` names ``option`` itself, not only a longer one (``--kernel`` in ``--kernel-tree``)."""
    return re.search(re.escape(option) + r"(?![\w-])", text) is not None


COMMANDS_SHARED = ("Options every guest command takes", "The kernel and QEMU under test")


def test_every_msixlab_subcommand_is_in_the_readme():
    readme = (DOCS.parent / "README.md").read_text()
    _, subcommands = _subcommands()
    for name in subcommands:
        assert f"msixlab {name}" in readme, f"`msixlab {name}` is not in the README"


def test_every_subcommand_and_option_is_in_the_commands_page():
    """docs/commands.md has a section per subcommand naming each of its options (the ones
    run, soak, shell and boot share may be named in the shared sections instead)."""
    sections = _sections(DOCS / "commands.md")
    shared = "".join(sections[heading] for heading in COMMANDS_SHARED)
    top, subcommands = _subcommands()
    for option in _long_options(top):
        assert _names(option, sections["`msixlab --version`"]), f"msixlab {option} is not in docs/commands.md"
    for name, sub in subcommands.items():
        section = sections.get(f"`msixlab {name}`")
        assert section is not None, f"docs/commands.md has no section `msixlab {name}`"
        for option in _long_options(sub):
            assert _names(option, section) or _names(option, shared), \
                f"msixlab {name} {option} is not in docs/commands.md"


def test_scenario_table_is_the_registry():
    rows = table_rows(DOCS / "run.md", "scenario")
    documented = [name for row in rows for name in re.findall(r"`([\w-]+)`", row[0])]
    assert sorted(documented) == sorted(REGISTRY), (documented, sorted(REGISTRY))


def test_every_module_says_what_it_owns_in_its_docstring():
    """pydoc shows a module's docstring, not a comment above it."""
    import ast
    root = DOCS.parent
    missing, commented = [], []
    for package in ("agent", "qemu_device", "images", "msixlab_common", "bench"):
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            if not text.strip():
                continue
            if not ast.get_docstring(ast.parse(text)):
                missing.append(str(path.relative_to(root)))
            if text.startswith("# "):
                commented.append(str(path.relative_to(root)))
    assert not missing, f"modules without a docstring: {missing}"
    assert not commented, f"modules whose concepts sit in a comment above the docstring: {commented}"


def test_make_matrix_covers_every_scenario_but_hotplug():
    """Each registered scenario runs in `make matrix` unless it can only end in 125 here
    (hotplug: QEMU's device_del abort, docs/scenarios.md)."""
    from agent.host.jobs import matrix
    covered = {cell[cell.index("--scenario") + 1] for cell in matrix.cells()}
    assert covered == set(REGISTRY) - {"hotplug"}

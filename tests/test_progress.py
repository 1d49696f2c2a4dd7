"""The one progress facade (agent/host/jobs/progress.py): what it prints, on a terminal
and off one, and that nothing else in the house draws progress."""

import io
import re
from pathlib import Path

from rich.console import Console

from agent.host.jobs import progress

ROOT = Path(__file__).resolve().parents[1]


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100, color_system=None), out


def test_a_bar_counts_its_steps_on_a_terminal_and_draws_nothing_off_one():
    console, out = _console(terminal=True)
    with progress.bar(console, "kernel build", 3, "configuring") as shown:
        for item in ("CC a.o", "CC b.o", "LD vmlinux"):
            shown.advance(item)
        console.file.flush()
    assert "kernel build" in out.getvalue() and "3/3" in out.getvalue()
    console, out = _console(terminal=False)
    with progress.bar(console, "kernel build", None) as shown:
        shown.advance("CC a.o")
    assert out.getvalue() == ""


def test_a_tick_leads_with_the_seconds_and_a_phase_keeps_logs_clean():
    console, out = _console(terminal=False)
    progress.tick(console, 12.34, "80 ops, 1000 raises")
    with progress.phase(console, "msixlab run") as shown:
        shown.update("still running")
        assert shown.elapsed >= 0
    assert out.getvalue() == " 12.3 s 80 ops, 1000 raises\n"


def test_a_scenario_line_is_text_never_markup():
    console, out = _console(terminal=False)
    say = progress.say(console)
    say("FAIL raise_counted_once_on_cpu[3]: counts grew by {'0': [1]} [red]")
    assert out.getvalue() == "FAIL raise_counted_once_on_cpu[3]: counts grew by {'0': [1]} [red]\n"


def test_only_the_facade_draws_progress():
    """rich's spinners, bars and live displays are built in jobs/progress.py alone."""
    drawing = re.compile(r"\bProgress\(|\.status\(|\bLive\(")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "agent" / "host").rglob("*.py")
                 if p.name != "progress.py" and drawing.search(p.read_text())]
    assert offenders == []

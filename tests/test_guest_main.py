"""The guest agent's command line (agent/guest/__main__.py), parsed without argparse."""

import subprocess
import sys

import pytest

from agent.guest.__main__ import parse_args


def test_port_and_options():
    args = parse_args(["--port", "/dev/vport0p1", "--device", "/dev/msixlab1", "-v"])
    assert (args.port, args.stdio, args.device, args.verbose) == \
        ("/dev/vport0p1", False, "/dev/msixlab1", True)


def test_stdio_alone():
    args = parse_args(["--stdio"])
    assert (args.port, args.stdio, args.device, args.verbose) == (None, True, None, False)


@pytest.mark.parametrize("argv, reason", [
    ([], "exactly one of --port PATH and --stdio"),
    (["--port", "p", "--stdio"], "exactly one of --port PATH and --stdio"),
    (["--bogus"], "option --bogus not recognized"),
    (["--port"], "option --port requires argument"),
    (["--stdio", "extra"], "unexpected argument 'extra'"),
])
def test_usage_errors_exit_2_naming_the_reason(argv, reason, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python3 -m agent.guest") and reason in err


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0 and "--device PATH" in capsys.readouterr().out


def test_agent_imports_nothing_slow():
    """The guest starts the agent under TCG, where each heavy import costs tenths of a
    second: its import graph stays free of the modules that cost most."""
    code = ("import sys, agent.guest.__main__; "
            "print(' '.join(sorted(m for m in ('argparse', 'dataclasses', 'typing', 'ctypes', "
            "'inspect', 'asyncio') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert done.stdout.strip() == ""

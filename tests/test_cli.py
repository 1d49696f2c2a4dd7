"""The msixlab command line: the exit-status contract and option plumbing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from agent.host.session import PROJECT_DIR

from agent.host import cli
from agent.host.errors import EXIT_INFRA, HostError, WaitTimeout


@pytest.mark.parametrize("error", [RuntimeError("a bug"), HostError("QEMU died"),
                                   WaitTimeout("the guest agent's hello", 180)])
def test_anything_that_is_not_a_verdict_exits_125(monkeypatch, error):
    def broken(args):
        raise error
    monkeypatch.setattr(cli, "parser", _parser_with(broken))
    assert cli.main(["run"]) == EXIT_INFRA


def _parser_with(func):
    original = cli.parser

    def build():
        top = original()
        top._subparsers._group_actions[0].choices["run"].set_defaults(func=func)
        return top
    return build


def test_kernel_flavor_from_the_environment(monkeypatch):
    seen = {}
    monkeypatch.setenv("KERNEL_FLAVOR", "lts")
    monkeypatch.setattr(cli, "parser", _parser_with(lambda args: seen.setdefault("f", args.flavor) and 0))
    cli.main(["run"])
    assert seen["f"] == "lts"


def test_a_bad_kernel_flavor_in_the_environment_is_a_bad_option(monkeypatch, capsys):
    ran = []
    monkeypatch.setenv("KERNEL_FLAVOR", "bogus")
    monkeypatch.setattr(cli, "parser", _parser_with(lambda args: ran.append(args) or 0))
    with pytest.raises(SystemExit) as exited:
        cli.main(["run"])
    assert exited.value.code == 125 and not ran
    assert "KERNEL_FLAVOR must be one of default, lts, not 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("words", [["--count", "0"], ["--count", "-3"], ["--timeout", "0"],
                                   ["--timeout", "nan"], ["--timeout", "inf"]])
def test_boot_bounds_its_count_and_timeout(words, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.parser().parse_args(["boot", *words])
    assert exited.value.code == 125
    assert f"{words[0]} must be" in capsys.readouterr().err


def test_every_subcommand_is_wired():
    top = cli.parser()
    for argv in (["doctor", "--json"], ["image", "path"], ["boot", "--count", "2"],
                 ["shell", "--dry-run"], ["run", "--dry-run", "--vectors", "128"]):
        args = top.parse_args(argv)
        assert callable(args.func), argv


def test_msixlab_run_bad_options_start_nothing(tmp_path):
    for options in (["--vectors", "23"], ["--cpus", "0"], ["--vectors", "x"]):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--results",
                               str(tmp_path), *options], cwd=PROJECT_DIR,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 125 and "bad_option" in done.stderr, done.stderr
        assert time.monotonic() - started < 10
    assert not any(tmp_path.iterdir())




def test_msixlab_soak_options_are_checked_before_anything_starts(capsys):
    top = cli.parser()
    args = top.parse_args(["soak", "--seconds", "2.5", "--seed", "7", "--ops", "10"])
    assert (args.seconds, args.seed, args.ops, args.func) == (2.5, 7, 10, cli.cmd_soak)
    assert top.parse_args(["soak"]).seed is None          # a random seed, drawn and printed
    for options, named in ((["--seconds", "nan"], "--seconds"), (["--seconds", "-1"], "--seconds"),
                           (["--seed", "-3"], "--seed"), (["--ops", "0"], "--ops"),
                           (["--vectors", "1"], "--vectors")):
        with pytest.raises(SystemExit) as err:
            top.parse_args(["soak", *options])
        assert err.value.code == 125, options
        assert f"argument {named}" in capsys.readouterr().err, options


@pytest.mark.parametrize("argv", [
    ["run", "--kernel-tree", ""], ["run", "--qemu", ""], ["run", "--kernel", "", "--kdir", "/k"],
    ["run", "--kernel", "/b", "--kdir", " "], ["run", "--results", ""], ["soak", "--kernel-tree", " "],
    ["boot", "--results", ""], ["shell", "--qemu", ""], ["kernel", "config", ""],
    ["kernel", "build", ""], ["kernel", "build", "/t", "--results", ""],
    ["bisect", "--kernel-tree", "", "--good", "a", "--bad", "b"],
    ["bisect", "--kernel-tree", "/t", "--good", "a", "--bad", "b", "--qemu", ""]])
def test_an_empty_path_is_a_bad_option_not_the_default(argv, capsys):
    # `--kernel-tree "$TREE"` with TREE unset judged the image's kernel (or the current
    # directory) instead of refusing: a CI gate or bisect then trusted the wrong kernel.
    with pytest.raises(SystemExit) as exited:
        cli.parser().parse_args(argv)
    assert exited.value.code == 125
    assert "needs a path" in capsys.readouterr().err


def test_an_empty_path_given_programmatically_is_a_bad_option():
    import argparse

    from agent.host.kernel import options
    from agent.host.kernel.errors import KernelTreeError
    for name in ("kernel_tree", "qemu"):
        with pytest.raises(KernelTreeError, match=f"--{name.replace('_', '-')} needs a path"):
            options.select(argparse.Namespace(**{name: ""}), None, None)


@pytest.mark.parametrize("words", [["--jobs", "0"], ["--jobs", "-5"], ["--nice", "100"],
                                   ["--nice", "-1"], ["--repeat", "0"], ["--repeat", "-1"]])
def test_bisect_and_kernel_build_bound_their_numbers(words, capsys):
    for argv in (["bisect", "--kernel-tree", "/t", "--good", "a", "--bad", "b", *words],
                 ["kernel", "build", "/t", *words]):
        if words[0] == "--repeat" and argv[0] == "kernel":
            continue
        with pytest.raises(SystemExit) as exited:
            cli.parser().parse_args(argv)
        assert exited.value.code == 125, argv
        assert f"{words[0]} must be" in capsys.readouterr().err, argv


def test_a_garbage_msixlab_accel_is_a_bad_option_before_anything(monkeypatch, capsys):
    ran = []
    monkeypatch.setenv("MSIXLAB_ACCEL", "warp")
    monkeypatch.setattr(cli, "parser", _parser_with(lambda args: ran.append(args) or 0))
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--dry-run"])
    assert exited.value.code == 125 and not ran
    assert "MSIXLAB_ACCEL must be one of tcg, kvm, auto, not 'warp'" in capsys.readouterr().err


def test_a_garbage_accelerator_is_a_bad_option_where_it_is_chosen(monkeypatch):
    from agent.host import accel
    from agent.host.outcome import CouldNotJudge, Outcome
    monkeypatch.setenv("MSIXLAB_ACCEL", "warp")
    with pytest.raises(CouldNotJudge) as raised:
        accel.choose(None, None)
    assert raised.value.outcome is Outcome.BAD_OPTION     # was process_failed
    monkeypatch.setenv("MSIXLAB_ACCEL", "TCG")
    assert accel.choose(None, None).accel == "tcg"


@pytest.mark.parametrize("spec, named", [
    ("bogus", "'kind' must be one of"), ("drop_raise:vector=70000", "'vector' must be"),
    ("drop_raise:vector=1,colour=red", "unknown field 'colour'"),
    ("errno_reply:errno=5", "command"), ("errno_reply:command=NOPE", "'command' must be")])
def test_a_device_fault_the_device_would_refuse_is_refused_before_anything(spec, named,
                                                                           tmp_path):
    # It used to boot the guest, then fail to arm (exit 125 as process_failed, ~10 s).
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--results",
                           str(tmp_path), "--device-fault", spec], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 125 and "error (bad_option): --device-fault" in done.stderr
    assert named in done.stderr, done.stderr
    assert time.monotonic() - started < 10 and not any(tmp_path.iterdir())


def test_the_device_fault_examples_in_the_help_are_accepted():
    import re

    from agent.host.main_job import check_faults
    top = cli.parser()
    run = top._subparsers._group_actions[0].choices["run"]
    text = " ".join(run.format_help().split())
    examples = re.findall(r"\b(?:drop_raise|errno_reply):\S+?(?=[ ,)])", text)
    assert len(examples) == 2, text
    for example in examples:                      # errno_reply:command=SET_IRQS was refused
        check_faults([cli.device_fault(example)], 1)

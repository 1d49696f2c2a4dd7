"""The msixlab command line: the exit-status contract and option plumbing."""

from __future__ import annotations

import subprocess
from pathlib import Path
import sys
import time

import pytest

from agent.host.rundirs import PROJECT_DIR

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


@pytest.mark.parametrize("seconds", ["0", "0.5", "-1", "nan"])
def test_a_soak_of_no_time_is_a_bad_option(seconds, capsys):
    # --seconds 0 made no op and passed, having tested nothing
    with pytest.raises(SystemExit) as exited:
        cli.parser().parse_args(["soak", "--seconds", seconds])
    assert exited.value.code == 125
    assert "--seconds must be 1..604800" in capsys.readouterr().err


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

    from agent.host.jobs import options
    from agent.host.kernel.errors import KernelTreeError
    for name in ("kernel_tree", "qemu"):
        with pytest.raises(KernelTreeError, match=f"--{name.replace('_', '-')} needs a path"):
            options.from_args(argparse.Namespace(**{name: ""})).check()


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
    from agent.host.lab import accel
    from agent.host.verdict.outcome import CouldNotJudge, Outcome
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

    from agent.host.lab.options import fault_problems
    top = cli.parser()
    run = top._subparsers._group_actions[0].choices["run"]
    text = " ".join(run.format_help().split())
    examples = re.findall(r"\b(?:drop_raise|errno_reply):\S+?(?=[ ,)])", text)
    assert len(examples) == 2, text
    for example in examples:                      # errno_reply:command=SET_IRQS was refused
        assert fault_problems([cli.device_fault(example)], 1) == []


@pytest.mark.parametrize("argv", [
    ["run", "--results", "/proc/msixlab-x"], ["run", "--results", "/etc/passwd"],
    ["soak", "--results", "/etc/passwd/under-a-file"],
    ["kernel", "build", "{tree}", "--results", "/proc/msixlab-x"],
    ["bisect", "--kernel-tree", "{tree}", "--good", "HEAD~1", "--bad", "HEAD",
     "--results", "/proc/msixlab-x"]])
def test_a_results_root_that_cannot_hold_results_is_host_resource(argv, tmp_path):
    # /proc/x was internal_error (ENOENT, a traceback) for every command; kernel build and
    # bisect made their results dir with a bare mkdir.
    from test_bisect import git, make_repo
    tree, _ = make_repo(tmp_path / "linux")
    head = git(tree, "rev-parse", "HEAD")
    done = subprocess.run([sys.executable, "-m", "agent.host",
                           *(w.format(tree=tree) for w in argv)], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 125, done.stderr
    assert "error (host_resource): the results dir" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "internal_error" not in done.stderr
    assert git(tree, "rev-parse", "HEAD") == head and not (tree / ".config").exists()


def test_the_results_dir_of_a_step_or_build_is_made_or_named(tmp_path):
    from agent.host.verdict.outcome import CouldNotJudge, Outcome
    from agent.host.rundirs import check_results_root, make_results_dir
    assert make_results_dir(tmp_path / "a" / "b").is_dir()
    check_results_root(tmp_path / "not" / "yet")              # made later, nothing made now
    assert not (tmp_path / "not").exists()
    (tmp_path / "file").write_text("")
    for bad in (tmp_path / "file", tmp_path / "file" / "x"):
        with pytest.raises(CouldNotJudge) as raised:
            check_results_root(bad)
        assert raised.value.outcome is Outcome.HOST_RESOURCE and "not a directory" in str(raised.value)
    with pytest.raises(CouldNotJudge, match="the results dir /proc/msixlab-x cannot be made"):
        make_results_dir(Path("/proc/msixlab-x"))


@pytest.mark.parametrize("outcome, after", [("pass", "host_resource"),
                                            ("check_failed", "check_failed"),
                                            ("kernel_splat", "kernel_splat"),
                                            ("process_failed", "process_failed")])
def test_results_that_cannot_be_written_turn_only_a_pass_into_125(outcome, after):
    # A full results disk ate the console and the device event log the sentinel reads,
    # and the run still said pass (exit 0); or a full disk while the guest's views were
    # saved lost the verdict (a check_failed became a bare 125).
    import errno

    from agent.host.jobs.job import report_unwritten, unwritten
    from agent.host.verdict.outcome import Outcome, RunVerdict
    from rich.console import Console
    verdict = RunVerdict(Outcome(outcome), "as judged", counts={"passed": 3})
    err = OSError(errno.ENOSPC, "No space left on device", "/r/routing.json")
    assert str(unwritten(verdict, err).outcome) == after
    if after == "host_resource":
        changed = unwritten(verdict, err)
        assert changed.exit_code == 125 and changed.evidence["was"] == "pass"
        assert changed.evidence["path"] == "/r/routing.json" and changed.counts == {"passed": 3}
    said = Console(record=True, width=300)
    assert report_unwritten(said, verdict, ValueError("a writer bug")) is verdict
    assert report_unwritten(said, verdict, err).outcome is unwritten(verdict, err).outcome
    assert "could not write the results" in said.export_text()


@pytest.mark.parametrize("argv, env, want", [
    (["run", "--flavor", "default"], "lts", "default"),   # was lts: the variable won
    (["run", "--flavor", "lts"], "default", "lts"),
    (["run"], "lts", "lts"), (["run"], None, "default"), (["boot"], "lts", "lts")])
def test_an_explicit_flavor_wins_over_kernel_flavor(monkeypatch, argv, env, want):
    seen = {}
    if env is None:
        monkeypatch.delenv("KERNEL_FLAVOR", raising=False)
    else:
        monkeypatch.setenv("KERNEL_FLAVOR", env)
    build = _parser_with(lambda args: seen.setdefault("f", args.flavor) and 0)

    def parser():
        top = build()
        top._subparsers._group_actions[0].choices["boot"].set_defaults(
            func=lambda args: seen.setdefault("f", args.flavor) and 0)
        return top
    monkeypatch.setattr(cli, "parser", parser)
    cli.main(argv)
    assert seen["f"] == want


@pytest.mark.parametrize("command", ["run", "soak", "boot", "shell"])
def test_append_takes_kernel_parameters_split_as_a_shell_would(command):
    args = cli.parser().parse_args([command, "--append", 'irqaffinity=1 dyndbg="file msi.c +p"',
                                    "--append", "nokaslr"])
    assert args.append == ["irqaffinity=1", "dyndbg=file msi.c +p", "nokaslr"]
    assert cli.parser().parse_args([command]).append == []


@pytest.mark.parametrize("text, named", [
    ("loglevel=0", "'loglevel=0' sets what the rig owns"),      # would hide a WARN: false pass
    ("quiet", "'quiet' sets what the rig owns"),
    ("console=ttyS1", "'console=ttyS1' sets"), ("panic=0", "'panic=0' sets"),
    ("rdinit=/bin/sh", "'rdinit=/bin/sh' sets"), ("init=/bin/sh", "'init=/bin/sh' sets"),
    ("msixlab.mode=shell", "'msixlab.mode=shell' sets"),
    ('x="a msixlab.kmod=/evil.ko"', "'x=a msixlab.kmod=/evil.ko' sets"),  # the init splits on spaces
    ("nokaslr -- init-arg", "'--' sets"),
    ("a=\u00e9", "holds a character"), ("a=\x01", "holds a character"),
    ("'a\"b'", "holds a character"), ('dyndbg="open', "No closing quotation"),
    ("x" * 1025, "1025 characters, more than 1024"),
])
def test_append_refuses_what_the_rig_owns_or_a_command_line_cannot_carry(text, named, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.parser().parse_args(["run", "--append", text])
    assert exited.value.code == 125
    err = capsys.readouterr().err
    assert "argument --append" in err and named in err and "bad_option" in err


def test_append_bounds_what_several_add_up_to(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.parser().parse_args(["soak", "--append", "a" * 700, "--append", "b" * 700])
    assert exited.value.code == 125
    assert "--append: 1401 characters in all, more than 1024" in capsys.readouterr().err


def test_appended_parameters_follow_the_rigs_on_the_kernel_command_line():
    from pathlib import Path
    from agent.host.lab.qemu_argv import GuestSpec, build_argv, kernel_cmdline
    args = cli.parser().parse_args(["run", "--append", 'irqaffinity=1 dyndbg="file msi.c +p"'])
    spec = GuestSpec(qemu=["qemu"], kernel=Path("/k"), initramfs=Path("/i"),
                     console_log=Path("/c"), qmp_socket=Path("/q"), shares=(),
                     append=tuple(args.append))
    line = kernel_cmdline(spec)
    assert line.startswith("console=ttyS0 panic=-1 loglevel=5 ")
    assert line.endswith(' irqaffinity=1 dyndbg="file msi.c +p"')
    argv = build_argv(spec)
    assert argv[argv.index("-append") + 1] == line


@pytest.mark.parametrize("argv,words", [
    (["serve", "--socket", "s", "--vectors", "0"], "--vectors must be 1..2048, not 0"),
    (["serve", "--socket", "s", "--vectors", "4096"], "--vectors must be 1..2048, not 4096"),
    (["serve", "--socket", "s", "--table-bar", "6"], "--table-bar must be 0..5, not 6"),
    (["serve", "--socket", "s", "--pba-offset", "-8"], "--pba-offset must be 0..4294967295"),
    (["serve", "--socket", "s", "--idle-timeout", "nan"], "--idle-timeout must be 0..86400"),
    (["serve", "--socket", "s", "--max-control-clients", "x"],
     "--max-control-clients takes an integer, not 'x'"),
    (["ctl", "--control", "c", "--timeout", "inf", "state"], "--timeout must be 0.1..3600"),
])
def test_qemu_device_takes_the_same_bounded_types(argv, words, capsys):
    """qemu-device's numbers are checked by msixlab_common.argtypes, as msixlab's are: a
    bad one is the parser's error naming the option, before any socket is made."""
    from qemu_device.cli import _build_parser
    with pytest.raises(SystemExit) as err:
        _build_parser().parse_args(argv)
    assert err.value.code == 2
    assert words in capsys.readouterr().err

"""`msixlab bisect` against a real git repository of a small fake kernel tree.

The build and the run of each step are scripted here (the real ones boot a guest: see
guest_tests/test_kernel_tree.py); git, the bisect loop, the exit-code mapping, the
results layout and the reset on every ending are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.host import cli
from agent.host.jobs.bisect import Bisect, StepVerdict, combine, verdict_of
from agent.host.kernel.build import KernelTree
from agent.host.kernel.errors import BisectError, KernelBuildFailed

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": "/dev/null"}

# the make step's sleep, unique to this process so no other test run's sleep is counted
SLOW = f"300.{os.getpid() % 100000:05d}"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=ENV).stdout.strip()


def make_repo(root: Path, makefile: str = "VERSION = 7\nPATCHLEVEL = 3\n") -> tuple[Path, list[str]]:
    """A kernel-looking repository with 9 commits; commit i writes state=i."""
    (root / "arch/x86").mkdir(parents=True)
    (root / "Makefile").write_text(makefile)
    (root / "Kconfig").write_text("")
    git(root, "init", "-q", "-b", "main")
    shas = []
    for i in range(9):
        (root / "state").write_text(f"{i}\n")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", f"commit {i}")
        shas.append(git(root, "rev-parse", "HEAD"))
    return root, shas


@pytest.fixture
def repo(tmp_path) -> tuple[Path, list[str]]:
    return make_repo(tmp_path / "linux")


def state(root: Path) -> int:
    return int((root / "state").read_text())


def make_bisect(root, good, bad, tmp_path, first_bad=5, broken_builds=(), runner=None, **kw):
    calls = []

    def build(tree, log_path):
        calls.append(state(root))
        if state(root) in broken_builds:
            raise KernelBuildFailed("build failed", tree=tree.path, step="build",
                                    first_error="a.c:1:1: error: nope")

    def run(step_dir, attempt):
        bad_here = state(root) >= first_bad
        return (1, ["freed_entry_masked_and_cleared[9]"], "1 check(s) failed") if bad_here \
            else (0, [], "")

    bisect = Bisect(KernelTree.at(root), good, bad, results_root=tmp_path / "results",
                    build=build, runner=runner or run, **kw)
    return bisect, calls


def assert_untouched(root: Path, head: str, branch: str = "main"):
    assert git(root, "rev-parse", "HEAD") == head
    assert git(root, "symbolic-ref", "--short", "HEAD") == branch
    assert not (root / git(root, "rev-parse", "--git-path", "BISECT_START")).exists()
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""


def test_the_first_bad_commit_is_named_and_the_tree_reset(repo, tmp_path):
    root, shas = repo
    bisect, built = make_bisect(root, shas[0], shas[8], tmp_path)
    summary = bisect.run()
    assert summary["first_bad"]["commit"] == shas[5]
    assert summary["first_bad"]["subject"] == "commit 5"
    assert summary["first_bad"]["failed_checks"] == ["freed_entry_masked_and_cleared[9]"]
    assert_untouched(root, shas[8])
    on_disk = json.loads((bisect.dir / "summary.json").read_text())
    assert on_disk["good"] == shas[0] and on_disk["bad"] == shas[8]
    assert on_disk["first_bad"]["commit"] == shas[5]
    assert 2 <= len(on_disk["steps"]) <= 4 and len(built) == len(on_disk["steps"])
    for step in on_disk["steps"]:
        assert (bisect.dir / step["commit"] / "step.json").is_file()
        assert step["verdict"] in ("good", "bad")
        assert set(step) >= {"commit", "verdict", "failed_checks", "build_seconds", "run_seconds"}


def test_a_build_failure_is_a_skip(repo, tmp_path):
    root, shas = repo
    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, broken_builds={6})
    summary = bisect.run()
    assert summary["first_bad"]["commit"] == shas[5]
    skipped = [s for s in summary["steps"] if s["verdict"] == "skip"]
    assert skipped
    assert all("a.c:1:1: error: nope" in s["reason"] for s in skipped)
    assert_untouched(root, shas[8])


def test_only_skipped_commits_left_names_no_commit(repo, tmp_path):
    root, shas = repo
    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, broken_builds=set(range(1, 8)))
    summary = bisect.run()
    assert summary["first_bad"] is None
    assert shas[5] in summary["candidates"]
    assert_untouched(root, shas[8])


def test_a_skip_next_to_the_first_bad_commit_leaves_both_candidates(repo, tmp_path):
    root, shas = repo
    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, broken_builds={4})
    summary = bisect.run()
    assert summary["first_bad"] is None
    assert sorted(summary["candidates"]) == sorted([shas[4], shas[5]])


def test_repeat_makes_a_step_bad_if_any_run_fails(repo, tmp_path):
    root, shas = repo
    attempts = []

    def flaky(step_dir, attempt):        # the regression (from commit 3) shows on the 3rd run only
        attempts.append(attempt)
        return (1, ["x[1]"], "flaky") if state(root) >= 3 and attempt == 3 else (0, [], "")

    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, runner=flaky, repeat=3)
    assert bisect.run()["first_bad"]["commit"] == shas[3]
    assert max(attempts) == 3


def test_an_interruption_still_resets_the_tree(repo, tmp_path):
    root, shas = repo

    def interrupted(step_dir, attempt):
        raise KeyboardInterrupt

    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, runner=interrupted)
    with pytest.raises(KeyboardInterrupt):
        bisect.run()
    assert_untouched(root, shas[8])
    assert json.loads((bisect.dir / "summary.json").read_text())["first_bad"] is None


def test_a_run_killed_by_a_signal_stops_the_bisect_and_resets(repo, tmp_path):
    root, shas = repo
    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, runner=lambda d, a: (137, [], ""))
    with pytest.raises(BisectError, match="exit code 137"):
        bisect.run()
    assert_untouched(root, shas[8])


@pytest.mark.parametrize("code, verdict", [(0, StepVerdict.GOOD), (1, StepVerdict.BAD),
                                           (125, StepVerdict.SKIP), (127, StepVerdict.BAD)])
def test_exit_codes_map_as_git_bisect_run_maps_them(code, verdict):
    assert verdict_of(code) is verdict


@pytest.mark.parametrize("code", [128, 255, -9])
def test_exit_codes_git_bisect_run_aborts_on_stop_the_bisect(code):
    with pytest.raises(BisectError):
        verdict_of(code)


def test_repeated_runs_combine_bad_over_skip_over_good():
    assert combine([StepVerdict.GOOD, StepVerdict.SKIP, StepVerdict.BAD]) is StepVerdict.BAD
    assert combine([StepVerdict.GOOD, StepVerdict.SKIP]) is StepVerdict.SKIP
    assert combine([StepVerdict.GOOD, StepVerdict.GOOD]) is StepVerdict.GOOD


# --- refusals: each names the problem and leaves the tree (and results) untouched ------
def _refused(root, shas, tmp_path, good, bad, match):
    head = git(root, "rev-parse", "HEAD")
    bisect, built = make_bisect(root, good, bad, tmp_path)
    with pytest.raises(BisectError, match=match):
        bisect.run()
    assert built == []
    assert not (tmp_path / "results").exists()
    assert git(root, "rev-parse", "HEAD") == head


def test_unknown_revision(repo, tmp_path):
    root, shas = repo
    _refused(root, shas, tmp_path, "v0.0-nonexistent", shas[8], "--good 'v0.0-nonexistent' names no commit")


def test_good_equal_to_bad(repo, tmp_path):
    root, shas = repo
    _refused(root, shas, tmp_path, "main", shas[8], "are the same commit")


def test_good_not_an_ancestor_of_bad(repo, tmp_path):
    root, shas = repo
    _refused(root, shas, tmp_path, shas[6], shas[2], "is not an ancestor")


def test_tracked_changes_are_refused(repo, tmp_path):
    root, shas = repo
    (root / "state").write_text("edited\n")
    _refused(root, shas, tmp_path, shas[0], shas[8], "changes to tracked files")
    assert (root / "state").read_text() == "edited\n"


def test_a_bisect_already_under_way_is_left_alone(repo, tmp_path):
    root, shas = repo
    git(root, "bisect", "start", shas[8], shas[0])
    head = git(root, "rev-parse", "HEAD")
    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path)
    with pytest.raises(BisectError, match="already under way"):
        bisect.run()
    assert git(root, "rev-parse", "HEAD") == head
    assert (root / ".git/BISECT_START").exists()


def test_a_kernel_tree_that_is_not_a_git_repository(tmp_path):
    root = tmp_path / "linux"
    (root / "arch/x86").mkdir(parents=True)
    (root / "Makefile").write_text("VERSION = 7\n")
    (root / "Kconfig").write_text("")
    bisect, _ = make_bisect(root, "a", "b", tmp_path)
    with pytest.raises(BisectError, match="is not a git work tree"):
        bisect.run()


def test_the_cli_names_a_non_tree_dir_and_exits_125(tmp_path, capsys):
    assert cli.main(["bisect", "--kernel-tree", str(tmp_path), "--good", "a", "--bad", "b"]) == 125
    assert "not a Linux kernel source tree" in capsys.readouterr().err


def test_the_cli_passes_run_options_after_the_double_dash():
    args = cli.parser().parse_args(["bisect", "--kernel-tree", "t", "--good", "a", "--bad", "b",
                                    "--repeat", "2", "--", "--vectors", "32"])
    assert args.repeat == 2 and args.run_options[-2:] == ["--vectors", "32"]


def test_a_step_runs_msixlab_run_on_the_tree_with_the_options(repo, tmp_path):
    root, shas = repo
    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, run_options=("--vectors", "32"),
                            qemu="/opt/qemu")
    argv = bisect.run_argv(tmp_path / "r")
    assert argv[1:4] == ["-m", "agent.host", "run"]
    assert argv[argv.index("--kernel-tree") + 1] == str(root.resolve())
    assert argv[argv.index("--qemu") + 1] == "/opt/qemu" and argv[-2:] == ["--vectors", "32"]


def test_repeats_stop_at_the_first_failing_run(repo, tmp_path):
    root, shas = repo
    attempts = []

    def always_bad(step_dir, attempt):
        attempts.append(attempt)
        return 1, ["x[1]"], "bad"

    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, runner=always_bad, repeat=3)
    summary = bisect.run()
    assert summary["first_bad"]["commit"] == shas[1]
    assert set(attempts) == {1}
    assert all(step["exit_codes"] == [1] for step in summary["steps"])


def test_failed_checks_come_from_the_verdict_in_routing_json(tmp_path):
    from agent.host.jobs.bisect import failed_checks
    (tmp_path / "routing.json").write_text(json.dumps({"verdict": {
        "failed": ["freed/freed_entry_masked_and_cleared[9]"], "summary": "1 check failed"}}))
    assert failed_checks(tmp_path, "") == (["freed/freed_entry_masked_and_cleared[9]"],
                                           "1 check failed")


def test_failed_checks_fall_back_to_the_checks_then_the_output(tmp_path):
    from agent.host.jobs.bisect import failed_checks
    (tmp_path / "routing.json").write_text(json.dumps({"checks": {"failed": [
        {"name": "freed_index_reused", "index": 3, "summary": "new group got [4]"}]}}))
    assert failed_checks(tmp_path, "")[0] == ["freed_index_reused[3]: new group got [4]"]
    output = "run x: kernel 7.3.4\nthe guest kernel reported oops: [ 3.1] Oops: 0002 [#1] SMP\n"
    assert failed_checks(tmp_path / "none", output)[1].startswith("the guest kernel reported oops")


def test_sigterm_during_a_build_stops_make_and_resets_the_tree(tmp_path):
    """The real CLI, a real make (that hangs): SIGTERM ends the bisect with 125, stops make
    and its children, and leaves the tree on the commit it started from."""
    import signal
    import sys
    import time

    from agent.host.kernel import config as kconfig
    from agent.host.rundirs import PROJECT_DIR
    root, shas = make_repo(tmp_path / "linux", "VERSION = 7\nPATCHLEVEL = 3\nbzImage modules:\n"
                                              f"\t@echo '  CC      slow.o'; sleep {SLOW}\n")
    head = shas[-1]
    (root / ".config").write_text("".join(f"{k}={v}\n" for k, v in
                                          kconfig.load_fragment().options.items() if v != "n"))
    proc = subprocess.Popen([sys.executable, "-m", "agent.host", "bisect", "--kernel-tree",
                             str(root), "--good", shas[0], "--bad", head, "--results",
                             str(tmp_path / "results")], cwd=PROJECT_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any("slow.o" in p.read_text() for p in (tmp_path / "results").rglob("build.log")):
            assert time.monotonic() < deadline, "the step's build never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 125, output
    assert_untouched(root, head)
    sleeps = subprocess.run(["pgrep", "-f", "-x", f"sleep {SLOW}"], capture_output=True,
                            text=True)
    assert sleeps.stdout.strip() == "", "make's children outlived the bisect"


class ScriptedRuns(Bisect):
    """The real per-run process handling, with a scripted process in place of msixlab run:
    it leaves a console and exits with the code the test gives."""

    console = ""
    code = 125

    def run_argv(self, results):
        script = ("import pathlib, sys; d = pathlib.Path(sys.argv[1]) / 'run-x'; d.mkdir(); "
                  "(d / 'console.log').write_text(sys.argv[2]); print('could not judge: "
                  "guest-agent closed the connection'); sys.exit(int(sys.argv[3]))")
        return [sys.executable, "-c", script, str(results), self.console, str(self.code)]


def _scripted(repo, tmp_path, console: str, code: int) -> dict:
    root, shas = repo
    bisect = ScriptedRuns(KernelTree.at(root), shas[0], shas[8], results_root=tmp_path / "r",
                          build=lambda tree, log: None)
    bisect.console, bisect.code = console, code
    summary = bisect.run()
    assert_untouched(root, shas[8])
    return summary


OOPS = ("[    1.0] msixlab: loading out-of-tree module taints kernel.\n"
        "[   12.156063] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
        "[   12.157203] Oops: Oops: 0000 [#1] SMP\n")


def test_a_run_that_could_not_judge_but_oopsed_is_bad_never_a_skip(repo, tmp_path):
    summary = _scripted(repo, tmp_path, OOPS, 125)
    assert all(step["verdict"] == "bad" for step in summary["steps"])
    assert summary["first_bad"]["commit"] == repo[1][1]
    assert summary["first_bad"]["failed_checks"] == [
        "BUG: [   12.156063] BUG: kernel NULL pointer dereference, address: 0000000000000008"]


def test_a_run_that_could_not_judge_with_a_clean_console_is_a_skip(repo, tmp_path):
    summary = _scripted(repo, tmp_path, "[    1.0] msixlab: loading\nMSIXLAB-READY\n", 125)
    assert all(step["verdict"] == "skip" for step in summary["steps"])
    assert summary["first_bad"] is None
    assert all("guest-agent closed the connection" in s["reason"] for s in summary["steps"])


def test_a_second_bisect_of_the_same_tree_is_refused_while_one_runs(repo, tmp_path):
    root, shas = repo
    seen = []

    def nested(step_dir, attempt):
        second, _ = make_bisect(root, shas[0], shas[8], tmp_path / "second")
        with pytest.raises(BisectError, match="another msixlab bisect is running"):
            second.run()
        seen.append(True)
        return 0, [], ""

    bisect, _ = make_bisect(root, shas[0], shas[8], tmp_path, runner=nested)
    bisect.run()
    assert seen and not (tmp_path / "second").exists()
    assert_untouched(root, shas[8])


@pytest.mark.parametrize("options, named", [
    (["--dry-run"], "--dry-run cannot be a run option"),   # exit 0 each step: "good"
    (["--dry"], "--dry-run cannot be a run option"),       # argparse's abbreviation
    (["--help"], "--help prints help"),
    (["--kernel-tree", "/elsewhere"], "--kernel-tree cannot be a run option"),
    (["--kernel", "/b", "--kdir", "/k"], "--kernel cannot be a run option"),
    (["--res", "/elsewhere"], "--results cannot be a run option"),
    (["--qemu", "/opt/qemu"], "--qemu cannot be a run option"),
    (["--vectors", "0"], "--vectors must be"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--scenario", "cpu-hotplug", "--cpus", "1"], "needs --cpus of at least 2"),
    (["--device-fault", "bogus"], "'kind' must be one of"),
    (["--append", "loglevel=1"], "'loglevel=1' sets what the rig owns")])
def test_run_options_are_checked_before_the_tree_is_touched(repo, tmp_path, capsys, options,
                                                            named):
    # They were passed on unchecked: every step was built, then its run refused them
    # (a skip), or --dry-run exited 0 at every step and the bisect named --bad as the
    # first bad commit, exit 0.
    root, shas = repo
    head = git(root, "rev-parse", "HEAD")
    results = tmp_path / "results"
    assert cli.main(["bisect", "--kernel-tree", str(root), "--good", shas[0], "--bad", shas[8],
                     "--results", str(results), "--", *options]) == 125
    err = " ".join(capsys.readouterr().err.split())
    assert "error (bad_option): -- RUN-OPTIONS" in err and named in err, err
    assert not results.exists()
    assert_untouched(root, head)


def test_good_run_options_pass_the_check():
    from agent.host.jobs.kernel import check_run_options
    run = cli.parser()._subparsers._group_actions[0].choices["run"]
    check_run_options(run, ["--vectors", "32", "--scenario", "cpu-hotplug", "--cpus", "4",
                            "--repeat", "2", "--device-fault", "drop_raise:vector=1",
                            "--append", 'irqaffinity=1 dyndbg="file msi.c +p"'])
    check_run_options(run, [])

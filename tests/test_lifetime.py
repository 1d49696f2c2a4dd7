"""Process lifetime (issue 9, item 1): children die with their parent however it dies;
SIGTERM/SIGHUP unwind like Ctrl-C; runtime dirs are private, record their owner, and the
dirs (and processes) of dead runs are cleaned at the next start; run ids do not collide."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import stat
import subprocess
from pathlib import Path
import sys
import textwrap

import pytest

from agent.host import rundirs as session
from agent.host.rundirs import OWNER_FILE, RunDirs, clean_stale_runtime_dirs
from msixlab_common.deadline import wait_until
from msixlab_common.lifetime import die_with_parent, process_alive, process_start_time

PR_GET_PDEATHSIG = 2
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_child_dies_with_its_parent_however_the_parent_dies(how):
    parent = _run_python("""
        import subprocess, time
        from msixlab_common.lifetime import die_with_parent
        child = subprocess.Popen(["sleep", "120"], preexec_fn=die_with_parent())
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    try:
        child = int(parent.stdout.readline())
        _kill_and_see_go(parent, how, child, "sleep")
    finally:
        _reap(parent)


def _kill_and_see_go(parent: subprocess.Popen, how: int, child: int, what: str) -> None:
    """``child`` is alive; kill ``parent`` with ``how``; ``child`` must be gone in 10 s."""
    assert process_alive(child)
    parent.send_signal(how)
    parent.wait(timeout=20)
    wait_until(lambda: not process_alive(child), 10, f"{what} (pid {child}) to go")


def _reap(parent: subprocess.Popen) -> None:
    parent.kill()
    parent.wait()
    parent.stdout.close()
    parent.stderr.close()


def _fork_and_wait(body) -> int:
    """Run body() in a forked child; return its wait status."""
    pid = os.fork()
    if pid == 0:                                        # pragma: no cover (child)
        try:
            body()
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_the_child_asks_for_the_death_signal():
    preexec = die_with_parent(signal.SIGTERM)

    def child():
        preexec()
        libc = ctypes.CDLL(None, use_errno=True)
        sig = ctypes.c_int(0)
        libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
        os._exit(sig.value)
    status = _fork_and_wait(child)
    assert os.waitstatus_to_exitcode(status) == signal.SIGTERM


def test_a_child_whose_parent_is_already_gone_kills_itself():
    preexec = die_with_parent(signal.SIGTERM)           # "the parent" is this process

    def middle():                                       # the grandchild's parent is not
        status = _fork_and_wait(preexec)
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0)
    status = _fork_and_wait(middle)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_unwind_like_ctrl_c(sig):
    proc = _run_python("""
        import signal, sys, time
        from msixlab_common.lifetime import Terminated, interrupt_on
        interrupt_on(signal.SIGTERM, signal.SIGHUP)
        try:
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt as err:
            print("interrupted", type(err).__name__, err.signum, flush=True)
        finally:
            print("torn down", flush=True)
    """)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert out.split("\n")[:2] == [f"interrupted Terminated {int(sig)}", "torn down"]


def test_process_alive_tells_exited_and_reused_pids():
    me = os.getpid()
    assert process_alive(me) and process_alive(me, process_start_time(me))
    assert not process_alive(me, process_start_time(me) - 1)        # a reused pid
    assert not process_alive(2 ** 22 + 1)                          # beyond pid_max


def test_an_exited_but_unreaped_child_is_not_alive():
    child = subprocess.Popen(["true"])
    try:
        wait_until(lambda: open(f"/proc/{child.pid}/stat").read().split(") ")[1][0] == "Z",
                   10, "the child to exit (a zombie until reaped)")
        assert not process_alive(child.pid)
    finally:
        child.wait()


# -- RunDirs --------------------------------------------------------------------------------

def test_run_dirs_are_private_whatever_the_umask_and_record_their_owner(tmp_path):
    old = os.umask(0)
    try:
        dirs = RunDirs.create(tmp_path)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(dirs.runtime.stat().st_mode) == 0o700
        owner = json.loads((dirs.runtime / OWNER_FILE).read_text())
        assert owner == {"pid": os.getpid(), "start_time": process_start_time(os.getpid()),
                         "run_id": dirs.run_id}
        assert dirs.results == tmp_path / dirs.run_id and dirs.results.is_dir()
        assert len(dirs.run_id.rsplit("-", 1)[1]) == 2 * session.RUN_ID_BYTES >= 12
    finally:
        dirs.cleanup()
    assert not dirs.runtime.exists()


def test_a_run_never_takes_an_existing_results_dir(tmp_path, monkeypatch):
    ids = iter(["run-a", "run-a", "run-b"])
    monkeypatch.setattr(session, "new_run_id", lambda prefix="run": next(ids))
    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-a" / "routing.json").write_text("{}")
    with RunDirs.create(tmp_path) as dirs:
        assert dirs.run_id == "run-b"
    assert (tmp_path / "run-a" / "routing.json").read_text() == "{}"


def _runtime(root, name, owner) -> os.PathLike:
    path = root / f"msixlab-{name}"
    path.mkdir()
    (path / "nic0.sock").touch()
    if owner is not None:
        (path / OWNER_FILE).write_text(owner if isinstance(owner, str) else json.dumps(owner))
    return path


def test_stale_runtime_dirs_of_dead_runs_are_cleaned(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    me, started = os.getpid(), process_start_time(os.getpid())
    stale = _runtime(tmp_path, "dead", {"pid": dead.pid, "start_time": 1, "run_id": "r1"})
    reused = _runtime(tmp_path, "reused", {"pid": me, "start_time": started - 1})
    live = _runtime(tmp_path, "live", {"pid": me, "start_time": started, "run_id": "r3"})
    foreign = _runtime(tmp_path, "noowner", None)
    garbage = _runtime(tmp_path, "garbage", "not json")
    other = tmp_path / "unrelated"
    other.mkdir()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                               str(stale / "nic0.sock")])
    try:
        # the child must have exec'd (its command line names the stale dir) before the
        # cleaner looks, or the race makes the test flaky
        wait_until(lambda: str(stale).encode() in
                   Path(f"/proc/{orphan.pid}/cmdline").read_bytes(), 10,
                   "the orphan's command line")
        removed = clean_stale_runtime_dirs(tmp_path)
        assert sorted(removed) == sorted([stale, reused])
        assert orphan.wait(timeout=10) == -signal.SIGKILL      # left over by the dead run
    finally:
        orphan.kill()
        orphan.wait()
    for kept in (live, foreign, garbage, other):
        assert kept.exists()
    assert not stale.exists() and not reused.exists()


@pytest.mark.parametrize("builder", ["kernel_make", "driver_make"])
def test_a_build_msixlab_started_stops_when_msixlab_is_killed(builder, tmp_path):
    """A kernel tree's make (its own process group) and the driver's make against a
    tree get SIGTERM when msixlab dies by SIGKILL, and make passes it to the job it runs."""
    (tmp_path / "Makefile").write_text("all modules:\n\techo $$$$ > job.pid; exec sleep 120\n")
    call = {
        "kernel_make": """
            from agent.host.kernel import build
            build._make(SimpleNamespace(path=tree), ["all"], open(tree / "log", "w"), None,
                        300, 0, "build", tree / "log")""",
        "driver_make": """
            from agent.host.kernel import kmod
            (tree / "out").mkdir()
            kmod._make_against_kdir(SimpleNamespace(kdir=tree, release="test"),
                                    tree / "out", 300)""",
    }[builder]
    setup = f"""
        from pathlib import Path
        from types import SimpleNamespace
        tree = Path({str(tmp_path)!r})
    """
    parent = _run_python(textwrap.dedent(setup) + textwrap.dedent(call))
    pid_file = tmp_path / "job.pid"
    try:
        wait_until(lambda: pid_file.is_file() and pid_file.read_text().strip(), 30,
                   "the make job to start")
        _kill_and_see_go(parent, signal.SIGKILL, int(pid_file.read_text()), "the make job")
    finally:
        _reap(parent)


@pytest.mark.parametrize("script, timeout", [
    ("sleep 120 & echo $! > bg.pid; sleep 120", 1.0),     # times out
    ("sleep 120 >/dev/null 2>&1 & echo $! > bg.pid", 30.0),   # ends, leaving a child
])
def test_run_in_group_leaves_nothing_of_its_group_running(script, timeout, tmp_path):
    from msixlab_common.lifetime import run_in_group
    try:
        done = run_in_group(["sh", "-c", script], timeout, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert done.returncode == 0 and timeout == 30.0
    except subprocess.TimeoutExpired:
        assert timeout == 1.0
    child = int((tmp_path / "bg.pid").read_text())
    wait_until(lambda: not process_alive(child), 10, f"the background sleep (pid {child}) to go")


def test_process_status_reads_a_live_process_and_nothing_of_a_gone_one():
    from agent.host.scenarios.soak_nic import device_rss_kib
    from msixlab_common.lifetime import process_status
    status = process_status(os.getpid())
    assert status["Pid"] == str(os.getpid()) and status["VmRSS"].endswith(" kB")
    assert device_rss_kib(os.getpid()) == int(status["VmRSS"].split()[0]) > 1000
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert process_status(gone.pid) == {} and device_rss_kib(gone.pid) is None
    assert device_rss_kib(None) is None

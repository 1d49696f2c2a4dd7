"""No orphans (issue 9, item 1): `msixlab run` killed mid-run, with SIGTERM (an orderly
teardown, as for Ctrl-C) or with SIGKILL (nothing runs in msixlab any more), leaves no
QEMU and no device server of that run after a few seconds.  The run's processes are
found by its runtime dir in their command lines, never by name: other runs may be going
on in parallel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.host.errors import EXIT_INFRA
from agent.host.rundirs import OWNER_FILE, PROJECT_DIR, clean_stale_runtime_dirs
from msixlab_common.deadline import wait_until


def _runtime_dir_of(pid: int) -> Path | None:
    """The runtime dir whose owner record names msixlab's pid."""
    for path in Path("/tmp").glob("msixlab-*"):
        try:
            if json.loads((path / OWNER_FILE).read_text())["pid"] == pid:
                return path
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _processes_of(runtime: Path) -> dict[int, str]:
    """Live processes whose command line names a file in ``runtime`` (zombies have no
    command line, so an exited but unreaped process is not counted)."""
    needle = os.fsencode(str(runtime)) + b"/"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def _both_running(runtime: Path) -> dict[int, str] | None:
    procs = _processes_of(runtime)
    qemu = [c for c in procs.values() if "qemu-system" in c]
    server = [c for c in procs.values() if "qemu_device serve" in c]
    return procs if qemu and server else None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_leaves_no_qemu_and_no_device_server(image, tmp_path, sig):
    log = open(tmp_path / "msixlab.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "agent.host", "run", "--results",
                             str(tmp_path / "results")], cwd=PROJECT_DIR,
                            stdout=log, stderr=subprocess.STDOUT)
    runtime = None
    try:
        runtime = wait_until(lambda: _runtime_dir_of(proc.pid), 120,
                             "the run's runtime dir (owner.json naming msixlab)",
                             detail=lambda: f"msixlab exit {proc.poll()}")
        procs = wait_until(lambda: proc.poll() is None and _both_running(runtime), 180,
                           "QEMU and the device server of the run, mid-run",
                           detail=lambda: f"msixlab exit {proc.poll()}; seen "
                                          f"{_processes_of(runtime)}")
        assert len(procs) == 2, procs
        proc.send_signal(sig)
        code = proc.wait(timeout=90)
        wait_until(lambda: not _processes_of(runtime), 10,
                   f"no process of run {runtime} after msixlab got {sig.name}",
                   detail=lambda: str(_processes_of(runtime)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
    if sig == signal.SIGTERM:                           # an orderly teardown, as for Ctrl-C
        assert code == EXIT_INFRA, output[-3000:]
        assert "interrupted by SIGTERM" in output, output[-3000:]
        assert not runtime.exists()
    else:                                               # nothing ran in msixlab: the next
        assert code == -signal.SIGKILL                  # start cleans the dead run's dir
        assert runtime.exists()
        assert runtime in clean_stale_runtime_dirs()
        assert not runtime.exists()

"""The guest agent's selftest commands on a tree of their own: the share "mounted" (a test
mounter mounts nothing), huge pages reserved through the sysctl file, and real programs
run as a selftest would be: output interleaved, environment passed, a whole session
killed at its timeout, bad names and arguments refused."""

from __future__ import annotations

import errno
import os
import sys
import time

import pytest

from agent.guest.commands import Agent
from agent.guest.errors import GuestError, RequestError
from agent.guest.selftests import MOUNT_DIR, SelftestCommands, cut_middle


def commands(tmp_path, mounter=("true",)):
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/sys/vm/nr_hugepages").write_text("0\n")
    (tmp_path / "dev").mkdir()
    return SelftestCommands(Agent(device="/nonexistent/msixlab0", root=str(tmp_path)),
                            mounter=mounter)


def program(cmds: SelftestCommands, name: str, script: str) -> None:
    os.makedirs(cmds.dir, exist_ok=True)
    path = os.path.join(cmds.dir, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + script)
    os.chmod(path, 0o755)


def test_prepare_lists_the_binaries_and_what_the_guest_offers(tmp_path):
    cmds = commands(tmp_path)
    program(cmds, "vfio_pci_device_test", "exit 0\n")
    (tmp_path / MOUNT_DIR / "notes.txt").write_text("not a program")
    (tmp_path / "dev/vfio").mkdir()
    (tmp_path / "dev/vfio/vfio").write_text("")
    got = cmds.prepare(hugepages=4)
    assert got["binaries"] == ["vfio_pci_device_test"]
    assert got["hugepages"] == 4 and (tmp_path / "proc/sys/vm/nr_hugepages").read_text() == "4"
    assert got["dev_vfio"] is True and got["dev_iommu"] is False


def test_a_kernel_without_hugetlb_gives_no_huge_pages(tmp_path):
    cmds = commands(tmp_path)
    (tmp_path / "proc/sys/vm/nr_hugepages").unlink()
    assert cmds.prepare(hugepages=4)["hugepages"] == 0


def test_a_share_that_cannot_be_mounted_is_named(tmp_path):
    cmds = commands(tmp_path, mounter=("false",))
    with pytest.raises(GuestError) as err:
        cmds.prepare(hugepages=0)
    assert err.value.errno == errno.ENOENT and "'selftests' share" in err.value.message


def test_run_interleaves_stdout_and_stderr_and_passes_the_environment(tmp_path):
    cmds = commands(tmp_path)
    program(cmds, "t", 'echo "TAP version 13"; echo "1..1"; echo "# why $MODE" >&2; '
                       'echo "ok 1 $1"; exit 0\n')
    got = cmds.run("t", ["case_a"], {"MODE": "legacy"}, timeout_s=30)
    assert got["returncode"] == 0 and not got["timed_out"] and got["cut"] == 0
    assert got["output"].splitlines() == ["TAP version 13", "1..1", "# why legacy", "ok 1 case_a"]


def test_exit_status_and_signal_are_returned(tmp_path):
    cmds = commands(tmp_path)
    program(cmds, "skips", "echo No driver found; exit 4\n")
    program(cmds, "dies", "kill -SEGV $$\n")
    assert cmds.run("skips", None, None, timeout_s=30)["returncode"] == 4
    assert cmds.run("dies", None, None, timeout_s=30)["returncode"] == -11


def test_a_timeout_kills_the_whole_session_even_a_child_in_its_own_group(tmp_path):
    """The harness forks each test into a process group of its own; one that holds the
    output pipe open must not keep the agent waiting."""
    cmds = commands(tmp_path)
    marker = tmp_path / "child.pid"
    child = f'"{sys.executable}" -c "import os, time; os.setpgid(0, 0); time.sleep(300)"'
    program(cmds, "hangs", f'{child} &\necho $! > {marker}\necho started\nwait\n')
    started = time.monotonic()
    got = cmds.run("hangs", None, None, timeout_s=2)
    assert got["timed_out"] and got["returncode"] < 0
    assert time.monotonic() - started < 15
    assert "started" in got["output"]
    child = int(marker.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the child {child} in its own process group outlived the timeout")


def test_long_output_is_cut_in_the_middle():
    data = b"head\n" + b"x" * 1000 + b"\ntail\n"
    text, cut = cut_middle(data, limit=100)
    assert cut == len(data) - 100
    assert text.startswith("head") and text.endswith("tail\n") and f"{cut} bytes" in text
    assert cut_middle(b"short", limit=100) == ("short", 0)


@pytest.mark.parametrize("binary", ["../bin/sh", "/bin/sh", "", "a/b", ".hidden"])
def test_a_binary_outside_the_share_is_refused(tmp_path, binary):
    cmds = commands(tmp_path)
    with pytest.raises(RequestError) as err:
        cmds.run(binary, None, None, timeout_s=5)
    assert err.value.errno == errno.EINVAL


def test_a_missing_binary_is_enoent(tmp_path):
    cmds = commands(tmp_path)
    os.makedirs(cmds.dir)
    with pytest.raises(GuestError) as err:
        cmds.run("vfio_pci_device_test", None, None, timeout_s=5)
    assert err.value.errno == errno.ENOENT


@pytest.mark.parametrize("args, env", [(["a\0b"], None), ([3], None),
                                       (None, {"lower": "x"}), (None, {"OK": 3})])
def test_bad_arguments_and_environment_are_refused(tmp_path, args, env):
    cmds = commands(tmp_path)
    program(cmds, "t", "exit 0\n")
    with pytest.raises(RequestError):
        cmds.run("t", args, env, timeout_s=5)


def test_the_commands_are_in_the_agents_table():
    table = Agent(device="/nonexistent/msixlab0").commands()
    assert {"selftests_prepare", "selftest_run"} <= set(table)

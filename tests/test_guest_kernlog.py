"""The guest agent's record of what the kernel reported (agent/guest/kernlog.py): /dev/kmsg
records judged by facility and level, the taint mask read from a test tree, and the
kernel_health command and hello field built on them."""

from __future__ import annotations

import os

import pytest

from agent.guest.commands import Agent
from agent.guest.kernlog import KernelLog, parse_record


@pytest.mark.parametrize("record,parsed", [
    (b"4,812,15149643,-;WARNING: msixlab_fault.c:38 at msixlab_crash_warn+0xc/0x20\n",
     {"level": 4, "text": "WARNING: msixlab_fault.c:38 at msixlab_crash_warn+0xc/0x20"}),
    (b"1,900,1,-;BUG: kernel NULL pointer dereference\n SUBSYSTEM=pci\n",
     {"level": 1, "text": "BUG: kernel NULL pointer dereference"}),
    (b"6,1,2,-;msixlab 0000:00:03.0: probed\n",
     {"level": 6, "text": "msixlab 0000:00:03.0: probed"}),
    (b"12,5,3,-;written by user space at warning level\n", None),     # facility user
    (b"no header at all\n", None),
    (b"x,1,2,-;bad priority\n", None),
])
def test_records(record, parsed):
    assert parse_record(record) == parsed


def test_the_taint_mask_of_a_tree(tmp_path):
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/tainted").write_text("12800\n")
    log = KernelLog(str(tmp_path))
    assert log.tainted() == 12800
    assert log.warnings() == {"count": 0, "messages": [], "lost": 0, "readable": False}


def test_kmsg_records_are_read_from_where_the_log_was_opened(tmp_path):
    """A FIFO stands in for /dev/kmsg (one record per read, EAGAIN when drained)."""
    (tmp_path / "dev").mkdir()
    kmsg = tmp_path / "dev/kmsg"
    os.mkfifo(kmsg)
    writer = os.open(kmsg, os.O_RDWR | os.O_NONBLOCK)
    try:
        log = KernelLog.__new__(KernelLog)
        log.root, log._fd = str(tmp_path), os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
        os.write(writer, b"4,10,1,-;WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n")
        got = log.warnings()
        assert got["count"] == 1 and got["messages"][0]["level"] == 4
        assert log.warnings()["count"] == 0                    # read once
    finally:
        os.close(writer)


def test_hello_and_kernel_health_carry_the_taint(tmp_path):
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/tainted").write_text("0\n")
    agent = Agent(device="/nonexistent/msixlab0", root=str(tmp_path))
    assert agent.hello()["tainted"] == 0
    (tmp_path / "proc/sys/kernel/tainted").write_text("512\n")
    assert agent.commands()["kernel_health"].handler()["tainted"] == 512

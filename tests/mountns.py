"""Running a test body in a private mount namespace, so it can mount and bind freely.

Concepts: ``in_private_mount_ns(fn)`` forks; the child unshares its mount namespace
(``unshare(CLONE_NEWNS)``), makes every mount private (nothing it does propagates back to
the host), runs ``fn`` and reports its exception, if any, through a pipe; the parent
waits (bounded) and re-raises it as an ``AssertionError`` with the child's traceback.
Needs root (``CAP_SYS_ADMIN``): ``needs_mount_ns`` skips a test elsewhere.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
import traceback
from pathlib import Path

import pytest

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18

needs_mount_ns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None or shutil.which("unshare") is None,
    reason="needs root, mount(8) and unshare(1) for a private mount namespace")


def _enter_private_ns() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")


def in_private_mount_ns(fn, *args, timeout: float = 120) -> None:
    """Run ``fn(*args)`` in a forked child in its own private mount namespace; raise
    ``AssertionError`` with its traceback if it failed or ran longer than ``timeout``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child: never returns
        os.close(read_fd)
        code = 0
        try:
            _enter_private_ns()
            fn(*args)
        except BaseException:                        # noqa: BLE001 - reported to the parent
            os.write(write_fd, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the test body ran longer than {timeout:g} s")
        time.sleep(0.05)
    with os.fdopen(read_fd, "rb") as report:
        text = report.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError("in the private mount namespace:\n" + (text or f"status {status}"))


def mount(*argv: str) -> None:
    """``mount ARGV...`` (in the current, private, namespace); raises if it fails."""
    subprocess.run(["mount", *argv], check=True, capture_output=True, timeout=30)


def mounted_under(path: Path) -> list[str]:
    """Mount points this process sees at or under ``path``."""
    from msixlab_common.removal import mounts_under
    return mounts_under(path)

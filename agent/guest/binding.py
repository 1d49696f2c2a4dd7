"""Unbinding, rebinding and reloading the driver from inside the guest.

Concepts: these are the driver's teardown paths that must free every vector a test left
allocated.  ``unbind``/``bind`` write the device's address to the PCI driver's sysfs
files; ``reload`` removes the module and inserts it again.  Each waits, bounded, for the
driver's misc device to vanish or appear, so the agent can reopen it.
"""

from __future__ import annotations

import errno
import os
import time

from .driver import find_devices
from .errors import GuestError
from .sysview import run_tool

DRIVER_DIR = "sys/bus/pci/drivers/msixlab"
WAIT_S = 5.0


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as err:
        raise GuestError(err.errno or errno.EIO, f"write {value!r} to {path}: {err.strerror}") from err


def wait_devices(present: bool, root: str = "/", timeout: float | None = None) -> list[str]:
    """Wait until /dev/msixlab<N> exists (``present``) or is gone; return the devices."""
    timeout = WAIT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        devices = find_devices(os.path.join(root, "dev"))
        if bool(devices) == present:
            return devices
        if time.monotonic() > deadline:
            state = "appear" if present else "go away"
            raise GuestError(errno.ETIMEDOUT, f"/dev/msixlab<N> did not {state} within {timeout} s")
        time.sleep(0.02)


def unbind(bdf: str, root: str = "/") -> None:
    _write(os.path.join(root, DRIVER_DIR, "unbind"), bdf)
    wait_devices(False, root)


def bind(bdf: str, root: str = "/") -> str:
    _write(os.path.join(root, DRIVER_DIR, "bind"), bdf)
    return wait_devices(True, root)[0]


def module_path(root: str = "/") -> str | None:
    """The driver path the guest was booted with (msixlab.kmod= on the command line)."""
    with open(os.path.join(root, "proc/cmdline"), encoding="ascii") as f:
        for word in f.read().split():
            if word.startswith("msixlab.kmod="):
                return word.split("=", 1)[1]
    return None


def reload(path: str) -> str:
    for argv in (["rmmod", "msixlab"], ["insmod", path]):
        done = run_tool(argv)
        if done["returncode"] != 0:
            raise GuestError(errno.EIO, f"{' '.join(argv)} failed: {done['stderr'].strip()}")
    return wait_devices(True)[0]

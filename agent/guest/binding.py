"""Unbinding, rebinding and reloading the driver from inside the guest.

Concepts: these are the driver's teardown paths that must free every vector a test left
allocated.  ``unbind``/``bind`` write the device's address to the PCI driver's sysfs
files; ``reload`` removes the module and inserts it again, with the fault injection
setting the rig loads it with (``fault_injection=1``, see images/guest/stage2) unless
told otherwise.  Each waits, bounded, for the driver's misc device to vanish or appear,
so the agent can reopen it.  With several NICs bound (``msixlab run --nics N``) the
others' devices stay: ``unbind`` then waits for the one device it unbound to go
(``path``) and ``bind`` for a device that is not one of the others' (``known``).
``reset_function`` resets the bound device through its sysfs ``reset`` file; ``remove``
and ``rescan`` take the device off the bus and find it again (the driver probes anew).
"""

from __future__ import annotations

import errno
import os
import time

from msixlab_common.deadline import wait_until
from msixlab_common.errors import WaitTimeout

from .driver import find_devices
from .errors import GuestError
from .sysview import run_tool, write_sysfs

DRIVER_DIR = "sys/bus/pci/drivers/msixlab"
FAULT_INJECTION = "sys/module/msixlab/parameters/fault_injection"
WAIT_S = 5.0



def wait_devices(present: bool, root: str = "/", timeout: float | None = None,
                 known: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Wait until a /dev/msixlab<N> that is not in ``known`` exists (``present``; the new
    ones first in the list returned) or until none but ``known`` ones is left; return the
    devices."""
    timeout = WAIT_S if timeout is None else timeout
    state = "appear" if present else "go away"

    def settled() -> tuple[list[str]] | None:
        devices = find_devices(os.path.join(root, "dev"))
        new = [d for d in devices if d not in known]
        return (new + [d for d in devices if d in known],) if bool(new) == present else None

    try:
        (devices,) = wait_until(settled, timeout, f"/dev/msixlab<N> to {state}")
    except WaitTimeout as err:
        raise GuestError(errno.ETIMEDOUT, f"/dev/msixlab<N> did not {state} "
                         f"within {timeout} s") from err
    return devices


def wait_gone(path: str, timeout: float | None = None) -> None:
    """Wait until the device node ``path`` is gone; ``GuestError`` ETIMEDOUT if it stays."""
    timeout = WAIT_S if timeout is None else timeout
    try:
        wait_until(lambda: not os.path.exists(path), timeout, f"{path} to go away")
    except WaitTimeout as err:
        raise GuestError(errno.ETIMEDOUT, f"{path} did not go away within {timeout} s") from err


def unbind(bdf: str, root: str = "/", path: str | None = None) -> None:
    """Unbind ``bdf`` from the msixlab driver (sysfs) and wait, at most ``WAIT_S``, for its
    misc device ``path`` to go (without ``path``: every /dev/msixlab<N>).  ``GuestError`` if
    the write fails or the wait expires."""
    write_sysfs(os.path.join(root, DRIVER_DIR, "unbind"), bdf)
    if path is None:
        wait_devices(False, root)
    else:
        wait_gone(path)


def bind(bdf: str, root: str = "/", known: tuple[str, ...] | list[str] = ()) -> str:
    """Bind ``bdf`` to the msixlab driver (sysfs) and wait, at most ``WAIT_S``, for a misc
    device that is not in ``known`` (the other NICs' devices); return its path.
    ``GuestError`` if the write fails or the wait expires."""
    write_sysfs(os.path.join(root, DRIVER_DIR, "bind"), bdf)
    return wait_devices(True, root, known=known)[0]


def remove(bdf: str, root: str = "/", path: str | None = None) -> None:
    """Remove the PCI device ``bdf`` (its sysfs ``remove``: the driver's remove runs, MSI-X
    is disabled, the device leaves the bus) and wait, at most ``WAIT_S``, for its misc
    device ``path`` to go.  ``GuestError`` if the write fails or the wait expires."""
    write_sysfs(os.path.join(root, "sys/bus/pci/devices", bdf, "remove"), "1")
    if path is None:
        wait_devices(False, root)
    else:
        wait_gone(path)


def rescan(root: str = "/", known: tuple[str, ...] | list[str] = ()) -> str:
    """Rescan every PCI bus (``/sys/bus/pci/rescan``) and wait, at most ``WAIT_S``, for a
    misc device that is not in ``known``; return its path.  ``GuestError`` if the write
    fails or no device appears."""
    write_sysfs(os.path.join(root, "sys/bus/pci/rescan"), "1")
    return wait_devices(True, root, known=known)[0]


RESET_METHODS = ("flr", "pm", "bus")


def reset_function(bdf: str, root: str = "/", method: str | None = None) -> dict[str, object]:
    """Reset the function ``bdf`` through sysfs (``pci_reset_function``: the kernel saves
    its state, resets the function with the first method of ``reset_method`` that works,
    and restores the state, every MSI-X entry included) with the driver bound.  With
    ``method`` (one of ``RESET_METHODS``) only that method is allowed for this reset
    (``reset_method`` is set back to the kernel's default afterwards, whatever happened).
    Returns the methods the kernel offered and the seconds the reset took.  ``GuestError``
    naming the file when the device has no reset file or a method it does not offer, or a
    write fails."""
    device = os.path.join(root, "sys/bus/pci/devices", bdf)
    methods_file = os.path.join(device, "reset_method")
    try:
        with open(methods_file, encoding="ascii") as f:
            methods = f.read().split()
    except OSError:
        methods = []                   # no method at all: the reset file is missing too
    if not os.path.exists(os.path.join(device, "reset")):
        raise GuestError(errno.ENOTTY, f"{bdf} has no reset file: the kernel offers no "
                         f"reset method for it")
    if method is not None and method not in methods:
        raise GuestError(errno.ENOTTY, f"{bdf} offers reset methods {methods}, not {method!r}",
                         argument="method")
    started = time.monotonic()
    try:
        if method is not None:
            write_sysfs(methods_file, method)
        write_sysfs(os.path.join(device, "reset"), "1")
    finally:
        if method is not None:
            write_sysfs(methods_file, "default")
    return {"bdf": bdf, "reset_method": methods, "method": method or methods[0],
            "seconds": round(time.monotonic() - started, 3)}


def cmdline(root: str = "/") -> str | None:
    """The kernel's command line (/proc/cmdline, without its newline; bytes that are not
    ASCII replaced), None without one."""
    try:
        with open(os.path.join(root, "proc/cmdline"), encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def module_path(root: str = "/") -> str | None:
    """The driver path the guest was booted with (msixlab.kmod= on the command line);
    None without one (or without /proc/cmdline)."""
    for word in (cmdline(root) or "").split():
        if word.startswith("msixlab.kmod="):
            return word.split("=", 1)[1]
    return None


def fault_injection(root: str = "/") -> bool:
    """Whether the loaded driver allows MSIXLAB_IOC_CRASH (False when it is not loaded)."""
    try:
        with open(os.path.join(root, FAULT_INJECTION), encoding="ascii") as f:
            return f.read().strip() in ("Y", "1")
    except FileNotFoundError:
        return False


def _insmod(path: str, fault_injection: bool) -> dict[str, object]:
    return run_tool(["insmod", path] + (["fault_injection=1"] if fault_injection else []))


def reload(path: str, fault_injection: bool = False, fallback: str | None = None) -> str:
    """rmmod msixlab, insmod ``path`` [fault_injection=1]; returns the new device.  When
    that insmod fails (not a module, built for another kernel) and ``fallback`` names
    another module file, that one is inserted instead, so the guest keeps a driver; the
    error (EIO, ``argument``: ``path``) then says so."""
    done = run_tool(["rmmod", "msixlab"])
    if done["returncode"] != 0:
        raise GuestError(errno.EIO, f"rmmod msixlab failed: {done['stderr'].strip()}")
    done = _insmod(path, fault_injection)
    if done["returncode"] == 0:
        return wait_devices(True)[0]
    why = f"insmod {path} failed: {done['stderr'].strip()}"
    if fallback is None or fallback == path:
        raise GuestError(errno.EIO, why, argument="path")
    try:
        again = _insmod(fallback, fault_injection)
    except GuestError as err:                 # e.g. a module that oopsed while loading
        raise GuestError(errno.EIO, f"{why}; insmod {fallback}: {err}",  # blocks the name
                         argument="path") from err
    if again["returncode"] != 0:
        raise GuestError(errno.EIO, f"{why}; insmod {fallback} failed too: "
                         f"{again['stderr'].strip()}", argument="path")
    wait_devices(True)
    raise GuestError(errno.EIO, f"{why}; {fallback} was loaded again instead", argument="path")

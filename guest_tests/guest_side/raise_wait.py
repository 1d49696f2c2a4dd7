"""Run inside the guest (as root, PYTHONPATH=/opt/msixlab): how a RAISE waits.

Checks the driver's wait from a second thread while a raise is held back by the MSI-X
Function Mask: other ioctls still run (the wait does not hold the device lock), a signal
ends the wait with EINTR, freeing the vector ends it with ENOENT, unbinding the device
ends it with ENODEV (and is not blocked by it), and an undelivered raise times out.
Prints one line ``MSIXLAB-RAISE-WAIT <json>`` with what it measured; the host test
(guest_tests/test_kmod_raise_wait.py) judges it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import threading
import time

from agent.guest import binding, uapi
from agent.guest.driver import Driver, find_devices

LIBC = ctypes.CDLL(None, use_errno=True)
HOLD_S = 0.5                      # how long the main thread lets a raise wait first


def raise_ioctl(fd: int, index: int, timeout_ms: int) -> dict:
    """MSIXLAB_IOC_RAISE through libc, so EINTR is seen instead of retried."""
    number, layout = uapi.IOCTLS["MSIXLAB_IOC_RAISE"]
    buf = ctypes.create_string_buffer(bytes(layout.pack(index=index, timeout_ms=timeout_ms)),
                                      layout.size)
    start = time.monotonic()
    ret = LIBC.ioctl(fd, ctypes.c_ulong(number), buf)
    err = ctypes.get_errno() if ret < 0 else 0
    return {"errno": errno.errorcode.get(err, str(err)) if err else None,
            "seconds": round(time.monotonic() - start, 3)}


def waiting_raise(fd: int, index: int, timeout_ms: int = 5000):
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(raise_ioctl(fd, index, timeout_ms)))
    thread.start()
    time.sleep(HOLD_S)
    return thread, out


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return round(time.monotonic() - start, 3)


def main() -> None:
    signal.signal(signal.SIGUSR1, lambda *_: None)     # interrupts, does not restart
    driver = Driver(find_devices()[0])
    bdf = driver.info()["bdf"]
    result: dict = {}
    driver.function_mask(True)

    thread, out = waiting_raise(driver.fd, 0)
    result["info_during_wait_s"] = timed(driver.info)
    result["alloc_during_wait_s"] = timed(lambda: driver.alloc_group(1, 1))
    signal.pthread_kill(thread.ident, signal.SIGUSR1)
    thread.join(10)
    result["signalled"] = out

    index = driver.alloc_group(1, 1)
    thread, out = waiting_raise(driver.fd, index["indices"][0])
    driver.free_group(index["group"])
    thread.join(10)
    result["freed"] = out

    result["timed_out"] = raise_ioctl(driver.fd, 0, 300)

    fd = os.open(driver.path, os.O_RDWR)                # a file of its own, kept over unbind
    thread, out = waiting_raise(fd, 0)
    result["unbind_during_wait_s"] = timed(lambda: binding.unbind(bdf))
    thread.join(10)
    result["unbound"] = out
    os.close(fd)
    driver.close()
    driver = Driver(binding.bind(bdf))
    result["rebound_mask"] = driver.info()["msix_control"] & 0x4000
    driver.function_mask(False)
    print("MSIXLAB-RAISE-WAIT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

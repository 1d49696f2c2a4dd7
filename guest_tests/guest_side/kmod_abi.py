"""Run inside the guest (as root, PYTHONPATH=/opt/msixlab): the driver's ABI edges.

Things the one-request-at-a-time agent cannot do, measured with raw ioctls:
- how a RAISE waits, from a second thread while the raise is held back by the MSI-X
  Function Mask: other ioctls still run (the wait does not hold the device lock), a signal
  ends the wait with EINTR, freeing the vector ends it with ENOENT, unbinding the device
  ends it with ENODEV (and is not blocked by it), and an undelivered raise times out;
- a non-zero ``pad`` in any input structure is EINVAL; a per-CPU buffer shorter than
  nr_cpu_ids is EOVERFLOW; version 1's ioctl magic is ENOTTY.
Prints one line ``MSIXLAB-KMOD-ABI <json>`` with what it measured; the host test
(guest_tests/test_kmod_abi.py) judges it.
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


def ioctl(fd: int, name: str, number: int | None = None, **values) -> dict:
    """One ioctl through libc (so EINTR is seen, not retried): its errno and duration."""
    default, layout = uapi.IOCTLS[name]
    buf = ctypes.create_string_buffer(bytes(layout.pack(**values)), layout.size)
    start = time.monotonic()
    ret = LIBC.ioctl(fd, ctypes.c_ulong(default if number is None else number), buf)
    err = ctypes.get_errno() if ret < 0 else 0
    return {"errno": errno.errorcode.get(err, str(err)) if err else None,
            "seconds": round(time.monotonic() - start, 3)}


def raise_ioctl(fd: int, index: int, timeout_ms: int) -> dict:
    return ioctl(fd, "MSIXLAB_IOC_RAISE", index=index, timeout_ms=timeout_ms)


def abi_checks(fd: int, nr_cpu_ids: int) -> dict:
    """errno of each malformed request (None: accepted)."""
    cpus = ctypes.create_string_buffer(nr_cpu_ids * uapi.VECTOR_CPU.size)
    address = ctypes.addressof(cpus)
    old_info = uapi.IOCTLS["MSIXLAB_IOC_INFO"][0] & ~(0xFF << 8) | 0xB7 << 8
    cases = {
        "alloc_pad": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=1, max=1, start=uapi.ANY_INDEX,
                                                      cpu=uapi.NO_CPU, pad=1)),
        "get_group_pad": ("MSIXLAB_IOC_GET_GROUP", dict(id=0, pad=1)),
        "vector_pad": ("MSIXLAB_IOC_VECTOR", dict(index=0, pad=1)),
        "entry_pad": ("MSIXLAB_IOC_READ_ENTRY", dict(index=0, pad=1)),
        "function_mask_pad": ("MSIXLAB_IOC_FUNCTION_MASK", dict(masked=0, pad=1)),
        "function_mask_2": ("MSIXLAB_IOC_FUNCTION_MASK", dict(masked=2)),
        "vector_short_buffer": ("MSIXLAB_IOC_VECTOR", dict(index=0, cpus=address,
                                                           cpus_len=nr_cpu_ids - 1)),
        "vector_len_without_buffer": ("MSIXLAB_IOC_VECTOR", dict(index=0, cpus_len=1)),
        "vector_no_buffer": ("MSIXLAB_IOC_VECTOR", dict(index=0)),
        "vector_exact_buffer": ("MSIXLAB_IOC_VECTOR", dict(index=0, cpus=address,
                                                           cpus_len=nr_cpu_ids)),
        "crash_kind_0": ("MSIXLAB_IOC_CRASH", dict(kind=0)),
        "crash_warn_delay": ("MSIXLAB_IOC_CRASH", dict(kind=uapi.CRASH_WARN, delay_ms=1)),
    }
    out = {name: ioctl(fd, ioc, **values)["errno"] for name, (ioc, values) in cases.items()}
    out["version_1_magic"] = ioctl(fd, "MSIXLAB_IOC_INFO", number=old_info)["errno"]
    return out


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
    result: dict = {"abi": abi_checks(driver.fd, driver.info()["nr_cpu_ids"])}
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
    print("MSIXLAB-KMOD-ABI " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

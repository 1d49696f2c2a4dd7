"""Run inside the guest (as root, PYTHONPATH=/opt/msixlab; the guest sees this file through
the tests' extra share, /opt/msixlab-extra/kmod_abi.py): the driver's ABI edges.

Things the one-request-at-a-time agent cannot do, measured with raw ioctls:
- how a RAISE waits, from a second thread while the raise is held back by the MSI-X
  Function Mask: other ioctls still run (the wait does not hold the device lock), a signal
  ends the wait with EINTR, freeing the vector ends it with ENOENT, unbinding the device
  ends it with ENODEV (and is not blocked by it), and an undelivered raise times out;
- a non-zero ``pad`` in any input structure is EINVAL; a per-CPU buffer shorter than
  nr_cpu_ids is EOVERFLOW; version 1's ioctl magic is ENOTTY;
- hostile arguments (indices, counts, CPUs and ids out of range, bad or NULL addresses,
  a wrong size in the ioctl number, timeouts past the bound) each get their errno and
  leave the device as it was; a group freed twice, ``max`` = 0xffffffff, a group kept
  over its file's close; two threads on two files allocating, raising, freeing and
  reading at once, with nothing left allocated and /proc/interrupts as before.
Prints one line ``MSIXLAB-KMOD-ABI <json>`` with what it measured; the host test
(guest_tests/test_kmod_abi.py) judges it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
import subprocess
import threading
import time

from agent.guest import binding, uapi
from agent.guest.driver import Driver, find_devices
from agent.guest.errors import DriverError

LIBC = ctypes.CDLL(None, use_errno=True)
HOLD_S = 0.5                      # how long the main thread lets a raise wait first
# kernel reports in dmesg (the host's console watcher has the full list)
REPORT = re.compile(r"WARNING:|BUG[: ]|Oops|Call Trace|UBSAN|KASAN|refcount_t|"
                    r"list_(add|del) corruption|hung_task|soft lockup|lockdep|"
                    r"possible recursive locking|"
                    r"circular locking")


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
        "irq_fault_pad": ("MSIXLAB_IOC_FAIL_REQUEST_IRQ", dict(nth=1, pad=1)),
        "irq_fault_past_max": ("MSIXLAB_IOC_FAIL_REQUEST_IRQ", dict(nth=uapi.MAX_VECTORS + 1)),
        "irq_fault_disarm": ("MSIXLAB_IOC_FAIL_REQUEST_IRQ", dict(nth=0)),
    }
    out = {name: ioctl(fd, ioc, **values)["errno"] for name, (ioc, values) in cases.items()}
    out["version_1_magic"] = ioctl(fd, "MSIXLAB_IOC_INFO", number=old_info)["errno"]
    return out


def raw_ioctl(fd: int, number: int, arg) -> str | None:
    """An ioctl with a raw argument (NULL, a bad address): its errno name or None."""
    ret = LIBC.ioctl(fd, ctypes.c_ulong(number), arg)
    return errno.errorcode.get(ctypes.get_errno(), "?") if ret < 0 else None


def hostile_checks(fd: int, table: int, nr_cpu_ids: int) -> dict:
    """errno of each hostile request (None: accepted); each must leave the driver as it
    was (the caller compares the device's state before and after)."""
    top = 0xFFFFFFFE
    words = ctypes.create_string_buffer(8 * uapi.MAX_VECTORS)
    any_ = dict(start=uapi.ANY_INDEX, cpu=uapi.NO_CPU)
    cases = {
        "alloc_min_0": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=0, max=1, **any_)),
        "alloc_min_gt_max": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=3, max=2, **any_)),
        "alloc_min_gt_table": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=table + 1, max=top, **any_)),
        "alloc_start_table": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=1, max=1, start=table,
                                                               cpu=uapi.NO_CPU)),
        "alloc_start_top": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=1, max=1, start=top,
                                                             cpu=uapi.NO_CPU)),
        "alloc_start_wraps": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=2, max=2, start=table - 1,
                                                               cpu=uapi.NO_CPU)),
        "alloc_cpu_nr_cpu_ids": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=1, max=1,
                                 start=uapi.ANY_INDEX, cpu=nr_cpu_ids)),
        "alloc_cpu_top": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=1, max=1, start=uapi.ANY_INDEX,
                                                           cpu=top)),
        "alloc_unknown_flag": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=1, max=1, flags=2, **any_)),
        "alloc_managed_no_cpu": ("MSIXLAB_IOC_ALLOC_GROUP", dict(min=1, max=1,
                                 flags=uapi.GROUP_MANAGED, **any_)),
        "free_0": ("MSIXLAB_IOC_FREE_GROUP", dict(id=0)),
        "free_never": ("MSIXLAB_IOC_FREE_GROUP", dict(id=4242)),
        "free_no_group": ("MSIXLAB_IOC_FREE_GROUP", dict(id=uapi.NO_GROUP)),
        "get_group_top": ("MSIXLAB_IOC_GET_GROUP", dict(id=uapi.NO_GROUP)),
        "vector_top": ("MSIXLAB_IOC_VECTOR", dict(index=uapi.ANY_INDEX)),
        "vector_table": ("MSIXLAB_IOC_VECTOR", dict(index=table)),
        "vector_bad_buffer": ("MSIXLAB_IOC_VECTOR", dict(index=0, cpus=16,
                                                         cpus_len=nr_cpu_ids)),
        "vector_kernel_buffer": ("MSIXLAB_IOC_VECTOR", dict(index=0, cpus=0xFFFFFFFF81000000,
                                                            cpus_len=nr_cpu_ids)),
        "raise_top": ("MSIXLAB_IOC_RAISE", dict(index=uapi.ANY_INDEX)),
        "raise_unallocated": ("MSIXLAB_IOC_RAISE", dict(index=table - 1)),
        "raise_timeout_over": ("MSIXLAB_IOC_RAISE", dict(index=0, timeout_ms=60001)),
        "raise_timeout_top": ("MSIXLAB_IOC_RAISE", dict(index=0, timeout_ms=0xFFFFFFFF)),
        "entry_top": ("MSIXLAB_IOC_READ_ENTRY", dict(index=uapi.ANY_INDEX)),
        "entry_table": ("MSIXLAB_IOC_READ_ENTRY", dict(index=table)),
        "totals_count_0": ("MSIXLAB_IOC_TOTALS", dict(count=0, totals=ctypes.addressof(words))),
        "totals_count_short": ("MSIXLAB_IOC_TOTALS", dict(count=table - 1,
                                                          totals=ctypes.addressof(words))),
        "totals_count_over": ("MSIXLAB_IOC_TOTALS", dict(count=uapi.MAX_VECTORS + 1,
                                                         totals=ctypes.addressof(words))),
        "totals_count_top": ("MSIXLAB_IOC_TOTALS", dict(count=0xFFFFFFFF,
                                                        totals=ctypes.addressof(words))),
        "totals_no_buffer": ("MSIXLAB_IOC_TOTALS", dict(count=table)),
        "totals_bad_buffer": ("MSIXLAB_IOC_TOTALS", dict(count=table, totals=16)),
        "totals_bad_want": ("MSIXLAB_IOC_TOTALS", dict(count=table, want=16,
                                                       totals=ctypes.addressof(words))),
        "totals_timeout_over": ("MSIXLAB_IOC_TOTALS", dict(count=table, timeout_ms=60001,
                                                           totals=ctypes.addressof(words))),
        "totals_pad": ("MSIXLAB_IOC_TOTALS", dict(count=table, pad=1,
                                                  totals=ctypes.addressof(words))),
        "totals_max": ("MSIXLAB_IOC_TOTALS", dict(count=uapi.MAX_VECTORS,
                                                  totals=ctypes.addressof(words))),
        "crash_kind_4": ("MSIXLAB_IOC_CRASH", dict(kind=4)),
        "crash_panic_delay_over": ("MSIXLAB_IOC_CRASH", dict(kind=uapi.CRASH_PANIC,
                                                             delay_ms=10001)),
    }
    out = {name: ioctl(fd, ioc, **values)["errno"] for name, (ioc, values) in cases.items()}
    info = uapi.IOCTLS["MSIXLAB_IOC_INFO"][0]
    out["info_wrong_size"] = raw_ioctl(fd, info & ~(0x3FFF << 16) | 8 << 16, words)
    out["info_null"] = raw_ioctl(fd, info, None)
    out["alloc_null"] = raw_ioctl(fd, uapi.IOCTLS["MSIXLAB_IOC_ALLOC_GROUP"][0], None)
    return out


def own_rows(name: str) -> list[str]:
    """The /proc/interrupts lines of this device's handlers (msixlab<N>[index])."""
    with open("/proc/interrupts", encoding="ascii") as f:
        return sorted(line.split()[-1] for line in f if f" {name}[" in line)


def free_twice_and_max_top(driver: Driver) -> dict:
    """A group freed twice; max = 0xffffffff (all that is free); a group kept over the
    file's close (groups belong to the device, not to the file)."""
    group = driver.alloc_group(1, 1)
    driver.free_group(group["group"])
    out = {}
    try:
        driver.free_group(group["group"])
        out["free_twice"] = None
    except DriverError as err:
        out["free_twice"] = errno.errorcode[err.errno]
    big = driver.alloc_group(1, 0xFFFFFFFF)
    out["max_top_count"] = big["count"]
    driver.free_group(big["group"])
    other = Driver(driver.path)
    kept = other.alloc_group(2, 2)
    other.close()
    out["kept_after_close"] = [g["group"] for g in driver.list_groups()] == [0, kept["group"]]
    driver.free_group(kept["group"])
    return out


def hammer(path: str, seconds: float) -> dict:
    """Two threads, each on its own file: one allocates, raises and frees, the other reads
    every view (totals with a wait, vectors, groups, PBA); errors other than the expected
    races are collected."""
    stop = time.monotonic() + seconds
    bad: list[str] = []
    rounds = [0, 0]

    def writer() -> None:
        driver = Driver(path)
        while time.monotonic() < stop:
            group = driver.alloc_group(1, 3)
            for index in group["indices"]:
                driver.raise_vector(index, 2000)
            driver.free_group(group["group"])
            rounds[0] += 1
        driver.close()

    def reader() -> None:
        driver = Driver(path)
        while time.monotonic() < stop:
            for index in range(1, 8):
                try:
                    driver.vector(index)
                except DriverError as err:
                    if err.errno != errno.ENOENT:
                        bad.append(f"vector: {err}")
            driver.totals({1: 1 << 40}, 5)
            driver.list_groups()
            driver.read_pba()
            rounds[1] += 1
        driver.close()

    def guarded(fn) -> None:
        try:
            fn()
        except Exception as err:       # noqa: BLE001 - reported, judged by the host
            bad.append(f"{fn.__name__}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in (writer, reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return {"errors": bad, "rounds": rounds}


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
    info = driver.info()
    result: dict = {"abi": abi_checks(driver.fd, info["nr_cpu_ids"])}
    name = os.path.basename(driver.path)
    rows = own_rows(name)
    result["hostile"] = hostile_checks(driver.fd, info["table_size"], info["nr_cpu_ids"])
    result["hostile_left"] = {"rows": own_rows(name) == rows,
                              "allocated": driver.info()["allocated"]}
    result["groups"] = free_twice_and_max_top(driver)
    result["hammer"] = hammer(driver.path, 10.0)
    result["hammer_left"] = {"rows": own_rows(name) == rows,
                             "groups": [g["group"] for g in driver.list_groups()],
                             "allocated": driver.info()["allocated"]}
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
    log = subprocess.run(["dmesg"], capture_output=True, text=True, errors="replace",
                         timeout=30, check=False).stdout
    result["dmesg_reports"] = [line for line in log.splitlines() if REPORT.search(line)]
    print("MSIXLAB-KMOD-ABI " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

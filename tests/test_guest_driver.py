"""The agent's driver wrapper on the host: struct conversion and errno reporting.

No msixlab device exists on the host; /dev/null stands in as a file that rejects every
ioctl, which exercises the real fcntl path and the DriverError built from its errno.
"""

from __future__ import annotations

import errno

import pytest

from agent.guest import uapi
from agent.guest.driver import MEANINGS, Driver, find_devices
from agent.guest.errors import DriverError


def test_failed_ioctl_names_operation_code_and_meaning():
    driver = Driver("/dev/null")
    try:
        with pytest.raises(DriverError) as err:
            driver.alloc_group(2, 4, start=8, cpu=1)
    finally:
        driver.close()
    assert err.value.errno == errno.ENOTTY
    assert err.value.message.startswith("alloc_group(min=2, max=4, start=8, cpu=1")
    assert err.value.to_dict()["code"] == "ENOTTY" and err.value.source == "driver"


def test_every_uapi_errno_has_a_meaning():
    for code in ("ENOENT", "ENOSPC", "EBUSY", "EINVAL", "EPERM", "EOPNOTSUPP",
                 "ETIMEDOUT", "EINTR", "EOVERFLOW", "EIO", "EACCES", "ENODEV"):
        assert getattr(errno, code) in MEANINGS


def test_group_conversion_maps_sentinels():
    raw = uapi.GROUP.unpack(uapi.GROUP.pack(
        id=3, count=2, min=1, max=2, start=uapi.ANY_INDEX, cpu=uapi.NO_CPU,
        flags=0, indices=uapi.list_to_bits([5, 70], uapi.VEC_WORDS)))
    assert Driver._group(raw) == {"group": 3, "count": 2, "min": 1, "max": 2, "start": None,
                                  "cpu": None, "managed": False, "indices": [5, 70]}
    raw.update(start=10, cpu=1, flags=uapi.GROUP_MANAGED)
    out = Driver._group(raw)
    assert (out["start"], out["cpu"], out["managed"]) == (10, 1, True)


def test_find_devices_orders_numerically(tmp_path):
    for name in ("msixlab10", "msixlab2", "msixlabX", "other0"):
        (tmp_path / name).touch()
    assert find_devices(str(tmp_path)) == [str(tmp_path / "msixlab2"),
                                           str(tmp_path / "msixlab10")]


def test_vector_conversion_separates_requested_mask_and_effective():
    raw = uapi.VECTOR.unpack(uapi.VECTOR.pack(
        index=10, group=2, irq=36, last_cpu=uapi.NO_CPU, msg_address_lo=0xFEE01000,
        msg_data=0x29, table_address_lo=0xFEE01000, table_data=0x29, nr_cpus=3, total=7))
    both = uapi.CPU_AFFINITY | uapi.CPU_EFFECTIVE
    cpus = [{"count": 0, "flags": uapi.CPU_AFFINITY, "pad": 0},
            {"count": 7, "flags": both | uapi.CPU_REQUESTED, "pad": 0},
            {"count": 0, "flags": 0, "pad": 0}]
    out = Driver._vector(raw, cpus)
    assert out["affinity"] == {"requested": [1], "mask": [0, 1], "effective": [1]}
    assert (out["counts"], out["total"], out["last_cpu"]) == ([0, 7, 0], 7, None)
    assert out["msg"] == {"address_lo": 0xFEE01000, "address_hi": 0, "data": 0x29}
    cpus[1]["flags"] = both                              # nothing asked: requested is None
    assert Driver._vector(raw, cpus)["affinity"]["requested"] is None

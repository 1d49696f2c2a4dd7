"""The driver when the kernel runs out of interrupt vectors, in the real guest.

A 2048-entry table on 2 CPUs: x86 has about 200 vectors per CPU, so an allocation with
``max`` = the whole table stops at the CPUs' vector space long before the table's end.
That must be a partial success (``min`` 1), then ``ENOSPC`` for more, never a kernel
report; freeing gives every vector back (the table and /proc/interrupts as at boot).
"""

from __future__ import annotations

import os

import pytest

from agent.host.errors import GuestAgentError
from agent.host.lab.console import find_splat
from agent.host.lab.lab import Lab
from agent.host.rundirs import RunDirs
from images.recipe import DEFAULT_FLAVOR

TABLE = 2048
FLAVOR = os.environ.get("KERNEL_FLAVOR", DEFAULT_FLAVOR)


@pytest.fixture(scope="module")
def lab(image, tmp_path_factory):
    with RunDirs.create(tmp_path_factory.mktemp("kmod-exhaustion")) as dirs, \
            Lab(image, FLAVOR, dirs, vectors=TABLE) as lab:
        yield lab


def refused(lab, cmd, **args) -> dict:
    with pytest.raises(GuestAgentError) as info:
        lab.agent(cmd, **args)
    return info.value.error


def test_running_out_of_cpu_vectors_is_enospc_and_frees_clean(lab):
    rows = len(lab.agent("interrupts")["rows"])
    big = lab.agent("alloc_group", min=1, max=TABLE - 1)
    assert 100 < big["count"] < TABLE - 1, big["count"]   # the CPUs ran out, not the table
    assert refused(lab, "alloc_group", min=1, max=1)["code"] == "ENOSPC"
    assert refused(lab, "alloc_group", min=1, max=1, cpu=1, managed=True)["code"] == "ENOSPC"
    assert lab.agent("info")["nr_vectors"] == big["count"] + 1     # nothing half-allocated
    last = big["indices"][-1]
    assert lab.agent("raise", index=last, timeout_ms=5000)["total"] == 1
    assert lab.agent("free_group", group=big["group"])["freed"] == big["count"]
    assert lab.agent("info")["allocated"] == [0]
    assert len(lab.agent("interrupts")["rows"]) == rows
    again = lab.agent("alloc_group", min=2, max=2, cpu=1, managed=True)   # space is back
    lab.agent("free_group", group=again["group"])
    console = lab.machine.spec.console_log.read_text(errors="replace")
    assert [line for line in console.splitlines() if find_splat(line)] == []

"""The group API's error paths against the real driver in the real guest.

One guest serves the whole module; every test starts from the driver's baseline (only
group 0) and the ``baseline`` fixture frees whatever a test allocated, so no test depends
on another's leftovers.
"""

from __future__ import annotations

import pytest

from agent.host.errors import GuestAgentError
from agent.host.lab.lab import Lab
from agent.host.rundirs import RunDirs

TABLE = 64


@pytest.fixture(scope="module")
def lab(image, tmp_path_factory):
    with RunDirs.create(tmp_path_factory.mktemp("group-api")) as dirs, \
            Lab(image, "default", dirs, vectors=TABLE) as lab:
        yield lab


def dynamic_groups(lab):
    return [g for g in lab.agent("list_groups") if g["group"] != 0]


@pytest.fixture
def baseline(lab):
    assert dynamic_groups(lab) == [], "a test before this one leaked groups"
    rows = len(lab.agent("interrupts")["rows"])
    yield lab
    for group in dynamic_groups(lab):
        lab.agent("free_group", group=group["group"])
    assert len(lab.agent("interrupts")["rows"]) == rows, "IRQs leaked in /proc/interrupts"


def refused(lab, cmd, **args) -> dict:
    with pytest.raises(GuestAgentError) as info:
        lab.agent(cmd, **args)
    return info.value.error


def test_unknown_group_is_enoent(baseline):
    error = refused(baseline, "free_group", group=4242)
    assert (error["code"], error["source"]) == ("ENOENT", "driver")


def test_group_zero_cannot_be_freed(baseline):
    assert refused(baseline, "free_group", group=0)["code"] == "EPERM"


@pytest.mark.parametrize("args", [
    dict(min=3, max=2),                        # min > max
    dict(min=TABLE + 1, max=TABLE + 1),        # more than the table holds
    dict(min=1, max=1, start=TABLE),           # start beyond the table
    dict(min=3, max=3, start=TABLE - 2),       # runs off the end of the table
    dict(min=1, max=1, cpu=7),                 # no such CPU (the guest has 2)
    dict(min=1, max=1, managed=True),          # managed affinity needs a CPU
], ids=["min>max", "min>size", "start>=size", "start+min>size", "offline-cpu", "managed-no-cpu"])
def test_bad_ranges_are_einval_and_allocate_nothing(baseline, args):
    error = refused(baseline, "alloc_group", **args)
    assert error["code"] == "EINVAL", error
    assert dynamic_groups(baseline) == []


def test_explicit_start_on_a_taken_index_is_ebusy(baseline):
    taken = baseline.agent("alloc_group", min=2, max=2, start=20)
    assert taken["indices"] == [20, 21]
    assert refused(baseline, "alloc_group", min=2, max=2, start=21)["code"] == "EBUSY"
    assert [g["indices"] for g in dynamic_groups(baseline)] == [[20, 21]]


def test_no_room_is_enospc_and_all_or_nothing(baseline):
    big = baseline.agent("alloc_group", min=TABLE - 4, max=TABLE - 4)
    assert len(big["indices"]) == TABLE - 4
    routing_before = baseline.agent("routing")
    assert refused(baseline, "alloc_group", min=4, max=4)["code"] == "ENOSPC"   # 3 left
    assert baseline.agent("routing") == routing_before    # nothing half-allocated
    partial = baseline.agent("alloc_group", min=2, max=8)  # min..max: takes the 3 left
    assert partial["indices"] == list(range(TABLE - 3, TABLE))


def test_unallocated_index_is_enoent_for_raise_and_vector(baseline):
    assert refused(baseline, "raise", index=33)["code"] == "ENOENT"
    assert refused(baseline, "vector", index=33)["code"] == "ENOENT"


def test_freed_group_is_gone(baseline):
    group = baseline.agent("alloc_group", min=1, max=1)
    baseline.agent("free_group", group=group["group"])
    assert refused(baseline, "free_group", group=group["group"])["code"] == "ENOENT"
    assert refused(baseline, "vector", index=group["indices"][0])["code"] == "ENOENT"


@pytest.mark.parametrize("payload,code,names", [
    ({"cmd": "alloc_groups", "args": {}}, "ENOSYS", "alloc_group"),
    ({"cmd": "alloc_group", "args": {"max": 2}}, "EINVAL", "min"),
    ({"cmd": "alloc_group", "args": {"min": "2", "max": 2}}, "EINVAL", "min"),
    ({"cmd": "free_group", "args": {"group": 1, "extra": 0}}, "EINVAL", "extra"),
])
def test_bad_requests_name_what_was_wrong(baseline, payload, code, names):
    reply = baseline.agent_client.request(payload, timeout=10)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert reply["error"]["source"] == "request"
    assert names in reply["error"]["message"]

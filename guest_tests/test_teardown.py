"""Unbind, rebind and module unload with groups still allocated free everything: no IRQ
left in /proc/interrupts, no msi_irqs entry, no live table entry, only group 0 after."""

from __future__ import annotations

import pytest

from agent.host.lab.lab import Lab
from agent.host.rundirs import RunDirs


@pytest.fixture(scope="module")
def lab(image, tmp_path_factory):
    with RunDirs.create(tmp_path_factory.mktemp("teardown")) as dirs, \
            Lab(image, "default", dirs) as lab:
        yield lab


def allocate(lab) -> list[int]:
    indices = []
    for args in (dict(min=4, max=4), dict(min=3, max=3, start=40, cpu=1), dict(min=2, max=2)):
        indices += lab.agent("alloc_group", **args)["indices"]
    for index in indices:
        lab.agent("raise", index=index, timeout_ms=5000)
    return indices


def device_irqs(lab) -> list[dict]:
    """Every /proc/interrupts row of the NIC, found by its address (works unbound too)."""
    bdf = lab.hello["device"]["bdf"]
    rows = lab.agent("interrupts", all=True)["rows"]
    return [r for r in rows if (r["chip"] or "").endswith(bdf)
            or any(a.startswith("msixlab") for a in r["actions"])]


def assert_all_freed(lab) -> None:
    """Checked while the driver is away: nothing of the device's is left."""
    assert device_irqs(lab) == []
    assert lab.agent("lspci")["stdout"].count("MSI-X: Enable-") == 1


def assert_fresh(lab, indices: list[int]) -> None:
    """Checked after the driver is back: group 0 only, the old entries masked and clear."""
    assert [g["group"] for g in lab.agent("list_groups")] == [0]
    assert len(device_irqs(lab)) == 1
    for index in indices:
        entry = lab.agent("read_entry", index=index)
        assert entry["ctrl"] & 1, entry
        assert (entry["address_lo"], entry["address_hi"], entry["data"]) == (0, 0, 0), entry


def test_unbind_and_rebind_free_every_group(lab):
    indices = allocate(lab)
    assert len(device_irqs(lab)) == 1 + len(indices)
    lab.agent("unbind")
    assert_all_freed(lab)
    lab.agent("bind")
    assert_fresh(lab, indices)


def test_module_unload_frees_every_group(lab):
    indices = allocate(lab)
    lab.agent("reload_module")
    assert_fresh(lab, indices)
    assert not [line for line in lab.agent("dmesg", lines=200)["lines"]
                if "WARNING" in line or "BUG" in line]

"""The emulated NIC seen from a real guest (QEMU 11.1 vfio-user-pci, TCG, Debian kernel).

One lab (device server, QEMU, driver, agent) serves every test of this module: booting
is the slow part. Each test asserts on both ends: the guest's view through the agent and
the device's counters through the control socket."""

from __future__ import annotations

import re

import pytest

from agent.host.lab.lab import Lab
from agent.host.rundirs import RunDirs
from images.recipe import DEFAULT_FLAVOR

pytestmark = pytest.mark.guest
VECTORS = 64


@pytest.fixture(scope="module")
def lab(image, tmp_path_factory):
    dirs = RunDirs.create(tmp_path_factory.mktemp("device-guest"), prefix="device")
    with dirs, Lab(image, DEFAULT_FLAVOR, dirs, vectors=VECTORS) as lab:
        yield lab


def vec(lab, index):
    return lab.device.state()["vectors"][index]


def test_device_enumerates_with_msix_capability(lab):
    out = lab.agent("lspci")["stdout"]
    assert "1234:11e9" in out
    assert re.search(r"MSI-X: Enable[+-] Count=%d Masked[+-]" % VECTORS, out), out
    assert "Ethernet controller" in out
    info = lab.agent("info")
    assert (info["table_size"], info["table_bar"], info["pba_bar"]) == (VECTORS, 2, 4)


def test_guest_doorbell_write_counts_one_interrupt(lab):
    group = lab.agent("alloc_group", min=1, max=1)
    index = group["indices"][0]
    try:
        assert "MSI-X: Enable+" in lab.agent("lspci")["stdout"]
        before = vec(lab, index)
        assert before["eventfd"]
        r = lab.agent("raise", index=index, timeout_ms=5000)
        after = vec(lab, index)
        assert r["index"] == index and r["total"] >= 1
        assert after["raised"] - before["raised"] == 1
        assert after["delivered"] - before["delivered"] == 1
        assert not after["pending"]
    finally:
        lab.agent("free_group", group=group["group"])


def test_raise_without_eventfd_shows_in_guest_pba(lab):
    allocated = set(lab.agent("info")["allocated"])
    index = max(set(range(VECTORS)) - allocated)       # never given an eventfd
    assert not vec(lab, index)["eventfd"]
    lab.device.raise_vectors([index])
    try:
        assert vec(lab, index)["pending"]
        pba = lab.agent("read_pba")
        assert index in pba["pending"]
    finally:                       # deliver what is pending, so no later test inherits it
        group = lab.agent("alloc_group", min=1, max=1, start=index)
        lab.agent("free_group", group=group["group"])
        lab.device.command("reset_counters")
    assert not vec(lab, index)["pending"]

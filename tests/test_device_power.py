"""Power management of the device: the PM capability's bytes, D3hot holding raises, and the
D3hot -> D0 transition resetting the function (No_Soft_Reset clear).

The sequences replayed are the kernel's (drivers/pci/pci.c, 7.3): ``pci_set_power_state``
writes PMCSR with PowerState 3 (one 2-byte config write) after saving the state;
``pci_power_up`` writes the whole word 0 and, No_Soft_Reset being clear, restores the state
(``pci_restore_state``: MSI-X Message Control ENABLE|MASKALL, the entries, MASKALL clear)."""

import os

import pytest

from qemu_device.device.config_space import (MSIX_CAP, PCI_PM_CTRL, PCI_PM_CTRL_NO_SOFT_RESET,
                                             PCI_PM_PMC, PM_CAP)
from qemu_device.device.msix import Outcome
from qemu_device.device.nic import Device
from qemu_device.fdio import OsFdPort
from qemu_device.handlers import Endpoint
from qemu_device.testing import CONFIG, EndpointHarness, FakeFdPort, FakeQemu, find_cap


def rd(dev, off, n):
    return int.from_bytes(dev.config.read(off, n), "little")


def wr(dev, off, n, value):
    dev.config.write(off, value.to_bytes(n, "little"))


@pytest.fixture
def dev():
    events = []
    d = Device(fds=FakeFdPort(), pm=True)
    d.msix.sink = events.append
    d.events = events
    return d


def live(dev, *vectors):
    """MSI-X enabled and unmasked, each vector with an eventfd; returns the fds."""
    dev.msix.set_control(True, False)
    fds = [dev.fds.eventfd() for _ in vectors]
    for v, fd in zip(vectors, fds):
        dev.msix.assign(v, [fd])
    return fds


def restore_msix(dev):
    """What the kernel's pci_restore_state writes to Message Control."""
    wr(dev, MSIX_CAP + 2, 2, 0xC000 | 63)
    wr(dev, MSIX_CAP + 2, 2, 0x8000 | 63)


def test_the_capability_offers_d3hot_without_no_soft_reset(dev):
    assert find_cap(bytes(dev.config.data), 0x01) == PM_CAP
    assert rd(dev, PCI_PM_PMC, 2) & 0x7 == 3                 # PM 1.2
    assert rd(dev, PCI_PM_PMC, 2) & 0xFE00 == 0              # no D1, D2, no PME
    assert rd(dev, PCI_PM_CTRL, 2) & PCI_PM_CTRL_NO_SOFT_RESET == 0
    assert dev.state()["power"] == {"pm_capability": True, "state": "D0", "d3hot_entries": 0}


@pytest.mark.parametrize("off,n,write,expect", [
    (PCI_PM_PMC, 2, 0xFFFF, 0x0003),        # PMC RO: PM 1.2, no D1/D2/PME
    (PCI_PM_CTRL, 2, 0xFFFC, 0),            # PMCSR: NSR, PME_En, PME_Status, Data RO 0
    (PCI_PM_CTRL + 2, 2, 0xFFFF, 0),        # PMCSR_BSE and Data RO 0
    (PCI_PM_CTRL, 2, 0xFFFF, 3),            # only PowerState is writable
])
def test_pm_write_masks(dev, off, n, write, expect):
    wr(dev, off, n, write)
    assert rd(dev, off, n) == expect


def test_without_pm_there_is_no_capability_and_pmcsr_does_nothing():
    d = Device(fds=FakeFdPort())
    with pytest.raises(Exception, match="not found"):
        find_cap(bytes(d.config.data), 0x01)
    wr(d, PCI_PM_CTRL, 2, 3)
    assert rd(d, PCI_PM_CTRL, 2) == 0 and not d.msix.low_power
    assert d.state()["power"] == {"pm_capability": False, "state": "D0", "d3hot_entries": 0}


def test_d3hot_holds_raises_and_d0_resets_the_function(dev):
    (fd,) = live(dev, 5)
    wr(dev, PCI_PM_CTRL, 2, 0x0003)
    assert rd(dev, PCI_PM_CTRL, 2) & 3 == 3
    assert dev.state()["power"] == {"pm_capability": True, "state": "D3hot",
                                    "d3hot_entries": 1}
    assert {"event": "power_state", "vector": -1, "state": "D3hot", "before": "D0"} in dev.events
    assert dev.msix.raise_vector(5) is Outcome.PENDING and dev.fds.take(fd) == 0
    assert not dev.msix.deliverable(5)
    wr(dev, PCI_PM_CTRL, 2, 0x0000)                           # pci_power_up
    assert dev.resets == 1 and rd(dev, PCI_PM_CTRL, 2) & 3 == 0
    assert {"event": "device_reset", "vector": -1, "source": "d3hot", "resets": 1} in dev.events
    assert not dev.msix.enabled and not dev.msix.is_pending(5)   # the held raise is gone
    assert dev.msix.eventfds[5] == fd                         # QEMU's, not the function's
    restore_msix(dev)
    assert dev.fds.take(fd) == 0                              # nothing was left to deliver
    assert dev.msix.raise_vector(5) is Outcome.DELIVERED and dev.fds.take(fd) == 1
    assert (dev.msix.raised[5], dev.msix.delivered[5]) == (2, 1)


def test_a_raise_in_the_d3hot_exit_window_is_held_then_delivered_once(dev):
    (fd,) = live(dev, 7)
    dev.faults.add({"kind": "raise_on_reset", "vector": 7})
    wr(dev, PCI_PM_CTRL, 2, 0x0003)
    assert dev.resets == 0 and len(dev.faults.list()) == 1    # D0 -> D3hot is no reset
    wr(dev, PCI_PM_CTRL, 2, 0x0000)
    assert dev.faults.list() == [] and dev.msix.is_pending(7) and dev.fds.take(fd) == 0
    restore_msix(dev)
    assert dev.fds.take(fd) == 1 and not dev.msix.is_pending(7)


@pytest.mark.parametrize("state", [1, 2])
def test_unsupported_states_are_discarded(dev, state):
    wr(dev, PCI_PM_CTRL, 2, state)
    assert rd(dev, PCI_PM_CTRL, 2) & 3 == 0 and dev.state()["power"]["state"] == "D0"
    wr(dev, PCI_PM_CTRL, 2, 3)
    wr(dev, PCI_PM_CTRL, 2, state)
    assert rd(dev, PCI_PM_CTRL, 2) & 3 == 3 and dev.resets == 0
    assert [e["state"] for e in dev.events if e["event"] == "power_state"] == ["D3hot"]


@pytest.mark.parametrize("off,n,value", [
    (PCI_PM_CTRL, 1, 0x03),                  # the low byte alone
    (PCI_PM_CTRL - 4, 8, 0x03 << 32),        # a wide write covering PMCSR
    (PCI_PM_CTRL, 4, 0x03),                  # PMCSR with BSE and Data
])
def test_any_write_covering_power_state_counts(dev, off, n, value):
    wr(dev, off, n, value)
    assert dev.state()["power"]["state"] == "D3hot"


def test_writes_beside_pmcsr_and_same_state_do_nothing(dev):
    wr(dev, PCI_PM_CTRL + 1, 1, 0xFF)        # PME_Status and Data_Select: no state bits
    wr(dev, PCI_PM_PMC, 2, 0xFFFF)
    wr(dev, PCI_PM_CTRL, 2, 0)               # D0 -> D0
    assert dev.resets == 0 and not [e for e in dev.events if e["event"] == "power_state"]


def test_a_device_reset_in_d3hot_brings_the_function_to_d0(dev):
    """QEMU's system reset at an S3 wake-up sends DEVICE_RESET while the guest left the
    function in D3hot: it comes back in D0 and delivers again once MSI-X is restored."""
    (fd,) = live(dev, 3)
    wr(dev, PCI_PM_CTRL, 2, 0x0003)
    dev.msix.raise_vector(3)
    dev.reset()
    assert dev.state()["power"]["state"] == "D0" and not dev.msix.low_power
    assert not dev.msix.is_pending(3)
    restore_msix(dev)
    assert dev.msix.raise_vector(3) is Outcome.DELIVERED and dev.fds.take(fd) == 1


def test_d3hot_over_the_socket():
    device = Device(fds=OsFdPort(), pm=True)
    h = EndpointHarness(Endpoint(device))
    q = FakeQemu(h.client_sock, h.pump)
    ram = os.memfd_create("guest-ram")
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        os.ftruncate(ram, 1 << 20)
        facts = q.realize(ram, 1 << 20)
        q.enable_msix(facts["msix_cap"])
        q.use_vector(2, efd)
        pm = find_cap(q.read(CONFIG, 0, 256), 0x01)
        q.write(CONFIG, pm + 4, (3).to_bytes(2, "little"))
        assert device.state()["power"]["state"] == "D3hot"
        resets = device.resets
        q.write(CONFIG, pm + 4, (0).to_bytes(2, "little"))
        assert device.resets == resets + 1 and not device.msix.enabled
    finally:
        h.endpoint.close()
        h.close()
        os.close(ram)
        os.close(efd)


def test_raise_on_reset_skip_raises_in_the_last_of_two_resets(dev):
    """QEMU's S3 wake-up: its pre-reset write of D0 (a reset: the function was in D3hot),
    then DEVICE_RESET.  With skip=1 the raise lands in the second window and survives."""
    (fd,) = live(dev, 4)
    dev.faults.add({"kind": "raise_on_reset", "vector": 4, "skip": 1})
    wr(dev, PCI_PM_CTRL, 2, 0x0003)
    wr(dev, PCI_PM_CTRL, 2, 0x0000)                 # reset 1: skipped
    assert not dev.msix.is_pending(4) and dev.faults.list()[0]["skip"] == 0
    dev.reset()                                     # reset 2: raises
    assert dev.msix.is_pending(4) and dev.faults.list() == []
    restore_msix(dev)
    assert dev.fds.take(fd) == 1 and (dev.msix.raised[4], dev.msix.delivered[4]) == (1, 1)


@pytest.mark.parametrize("skip", [-1, 17, "1", True])
def test_raise_on_reset_skip_is_checked(dev, skip):
    with pytest.raises(Exception, match="skip"):
        dev.faults.add({"kind": "raise_on_reset", "vector": 4, "skip": skip})

"""Function reset of the device: FLR advertised and triggered through config space, the
reset state the PCI spec asks for, and a raise inside the reset window.

The FLR sequence replayed over the real socket is what QEMU 11.1.3 was seen to forward
for a guest's ``echo 1 > /sys/bus/pci/devices/BDF/reset`` (the device's event log of a
real run, docs/scenarios.md): one 2-byte config write of DevCtl with Initiate FLR, no
DEVICE_RESET and no SET_IRQS before it; then the kernel's restore writes MSI-X Message
Control with ENABLE|MASKALL and clears MASKALL."""

import os

import pytest

from qemu_device.device.config_space import (MSIX_CAP, PCI_EXP_DEVCAP, PCI_EXP_DEVCAP_FLR,
                                             PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR)
from qemu_device.device.msix import ENTRY_SIZE, Outcome
from qemu_device.device.nic import Device
from qemu_device.fdio import OsFdPort
from qemu_device.handlers import Endpoint
from qemu_device.testing import EndpointHarness, FakeQemu, FakeFdPort

CONFIG = 7
MSIX = 2


def rd(dev, off, n):
    return int.from_bytes(dev.config.read(off, n), "little")


def wr(dev, off, n, value):
    dev.config.write(off, value.to_bytes(n, "little"))


@pytest.fixture
def dev():
    events = []
    d = Device(fds=FakeFdPort())
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


def test_flr_is_advertised_and_initiate_flr_reads_zero(dev):
    assert rd(dev, PCI_EXP_DEVCAP, 4) & PCI_EXP_DEVCAP_FLR
    wr(dev, PCI_EXP_DEVCTL, 2, rd(dev, PCI_EXP_DEVCTL, 2) | PCI_EXP_DEVCTL_BCR_FLR)
    assert not rd(dev, PCI_EXP_DEVCTL, 2) & PCI_EXP_DEVCTL_BCR_FLR


@pytest.mark.parametrize("off,n,value", [
    (PCI_EXP_DEVCTL, 2, 0xA810),            # the kernel's pcie_flr(): one word
    (PCI_EXP_DEVCTL + 1, 1, 0x80),          # the high byte alone
    (PCI_EXP_DEVCTL - 4, 8, 0xA810 << 32),  # a wider write covering DevCtl
])
def test_initiate_flr_resets_the_function(dev, off, n, value):
    fds = live(dev, 3)
    dev.msix.set_control(True, True)
    dev.msix.raise_vector(3)                     # held behind MASKALL
    wr(dev, 0x04, 2, 0x0006)
    wr(dev, off, n, value)
    assert dev.resets == 1
    assert rd(dev, 0x04, 2) == 0 and rd(dev, MSIX_CAP + 2, 2) & 0xC000 == 0
    assert not dev.msix.enabled and not dev.msix.function_mask
    assert not dev.msix.is_pending(3)            # the PBA is clear
    assert dev.msix.raised[3] == 1               # counters kept
    assert dev.msix.eventfds[3] == fds[0]        # the eventfd is QEMU's, not the function's
    assert {"event": "device_reset", "vector": -1, "source": "flr", "resets": 1} in dev.events


@pytest.mark.parametrize("off,n,value", [
    (PCI_EXP_DEVCTL, 2, 0x2810),            # DevCtl without Initiate FLR
    (PCI_EXP_DEVCTL + 2, 2, 0xFFFF),        # DevSta next to it
    (PCI_EXP_DEVCTL - 1, 1, 0xFF),          # the byte before
])
def test_other_writes_do_not_reset(dev, off, n, value):
    wr(dev, off, n, value)
    assert dev.resets == 0


def test_reset_state_follows_the_spec(dev):
    live(dev, 1, 2)
    dev.msix.set_control(True, True)
    dev.msix.raise_vector(2)
    dev.msix.write_table(1 * ENTRY_SIZE + 12, b"\0\0\0\0")       # entry 1 unmasked
    dev.reset()
    table = dev.msix.read_table(0, dev.layout.table_size)
    assert all(table[v * ENTRY_SIZE + 12] & 1 for v in range(dev.layout.vectors))
    assert (dev.msix.enabled, dev.msix.function_mask) == (False, False)
    assert not any(dev.msix.pending) and not any(dev.msix.masked)
    assert (dev.msix.raised[2], dev.msix.delivered[2]) == (1, 0)


def test_a_raise_in_the_reset_window_is_held_then_delivered_once(dev):
    (fd,) = live(dev, 5)
    dev.faults.add({"kind": "raise_on_reset", "vector": 5})
    dev.faults.add({"kind": "raise_on_reset", "vector": 9})        # no eventfd
    wr(dev, PCI_EXP_DEVCTL, 2, 0xA810)
    assert dev.msix.is_pending(5) and dev.msix.is_pending(9) and dev.fds.take(fd) == 0
    assert dev.faults.list() == []
    wr(dev, MSIX_CAP + 2, 2, 0xC000 | 63)       # the kernel's restore: ENABLE|MASKALL
    assert dev.fds.take(fd) == 0
    wr(dev, MSIX_CAP + 2, 2, 0x8000 | 63)       # ... then MASKALL cleared
    assert dev.fds.take(fd) == 1 and not dev.msix.is_pending(5)
    assert dev.msix.is_pending(9)               # no eventfd: still held, counted nowhere
    assert dev.msix.raise_vector(5) is Outcome.DELIVERED and dev.fds.take(fd) == 1
    assert dev.msix.delivered[5] == 2


def test_raise_on_reset_needs_a_vector(dev):
    with pytest.raises(Exception, match="vector"):
        dev.faults.add({"kind": "raise_on_reset"})


def test_flr_over_the_socket_reaches_the_device_and_device_reset_too():
    device = Device(fds=OsFdPort())
    h = EndpointHarness(Endpoint(device))
    q = FakeQemu(h.client_sock, h.pump)
    ram = os.memfd_create("guest-ram")
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        os.ftruncate(ram, 1 << 20)
        facts = q.realize(ram, 1 << 20)
        assert device.resets == 1                               # QEMU's machine reset
        q.enable_msix(facts["msix_cap"])
        q.use_vector(4, efd)
        devctl = int.from_bytes(q.read(CONFIG, PCI_EXP_DEVCTL, 2), "little")
        q.write(CONFIG, PCI_EXP_DEVCTL, (devctl | PCI_EXP_DEVCTL_BCR_FLR).to_bytes(2, "little"))
        assert device.resets == 2 and not device.msix.enabled
        assert device.msix.eventfds[4] is not None
        q.reset()                                               # a bus reset's DEVICE_RESET
        assert device.resets == 3 and device.state()["resets"] == 3
    finally:
        h.endpoint.close()
        h.close()
        os.close(ram)
        os.close(efd)

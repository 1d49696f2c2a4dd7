"""MSI-X: layout rules, pending/PBA semantics, delivery exactly once, faults."""

import os

import pytest

from qemu_device.device.msix import MsixLayout, Outcome
from qemu_device.device.nic import Device, shared_layout
from qemu_device.errors import ConfigurationError


@pytest.fixture
def dev():
    d = Device()
    yield d
    d.msix.deassign_all()


def efd():
    return os.eventfd(0, os.EFD_NONBLOCK)


def count(fd):
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def pba_bits(dev, n=64):
    lay = dev.layout
    raw = dev.region_read(lay.pba_bar, lay.pba_offset, (n + 7) // 8)
    return {v for v in range(n) if raw[v >> 3] & (1 << (v & 7))}


def enable(dev, mask=False):
    dev.msix.set_control(True, mask)


@pytest.mark.parametrize("kw,msg", [
    ({"vectors": 0}, "vectors"), ({"vectors": 2049}, "vectors"),
    ({"table_offset": 4}, "aligned"), ({"pba_offset": 12}, "aligned"),
    ({"table_bar": 6}, "BIR"), ({"pba_bar": -1}, "BIR"),
    ({"table_bar": 4, "table_offset": 0}, "overlap"),
    ({"table_bar": 0, "table_offset": 0}, "registers"),
    ({"pba_bar": 2, "pba_offset": 0x3F8}, "overlap"),
])
def test_bad_layouts_are_refused(kw, msg):
    with pytest.raises(ConfigurationError, match=msg):
        Device(MsixLayout(**{"vectors": 64, **kw}))


@pytest.mark.parametrize("layout,sizes", [
    (MsixLayout(2048), [0x8000, 0, 0x8000, 0, 0x1000, 0]),
    (shared_layout(64), [0x8000, 0, 0, 0, 0, 0]),
    (shared_layout(2048), [0x10000, 0, 0, 0, 0, 0]),
    (MsixLayout(1, 2, 0, 2, 0x800), [0x8000, 0, 0x1000, 0, 0, 0]),
])
def test_bar_sizes_fit_table_and_pba(layout, sizes):
    d = Device(layout)
    assert d.bar_sizes == sizes
    for bar, start, end, _ in layout.extents():
        assert end <= d.bar_sizes[bar]


def test_raise_without_eventfd_pends_and_is_delivered_once_on_assign(dev):
    enable(dev)
    assert dev.msix.raise_vector(5) is Outcome.PENDING
    assert dev.msix.raise_vector(5) is Outcome.PENDING      # merges into one bit
    assert pba_bits(dev) == {5}
    fd = efd()
    dev.msix.assign(5, [fd])
    assert count(fd) == 1 and pba_bits(dev) == set()
    assert dev.msix.vector_state(5) == {"index": 5, "eventfd": True, "raised": 2,
                                        "delivered": 1, "pending": False, "dropped": 0}


@pytest.mark.parametrize("gate", ["disabled", "masked"])
def test_disabled_or_masked_function_pends_until_opened(dev, gate):
    fd = efd()
    dev.msix.assign(3, [fd])
    enable(dev, mask=(gate == "masked"))
    if gate == "disabled":
        dev.msix.set_control(False, False)
    assert dev.msix.raise_vector(3) is Outcome.PENDING
    assert count(fd) == 0 and pba_bits(dev) == {3}
    dev.msix.set_control(True, False)
    assert count(fd) == 1 and pba_bits(dev) == set()
    dev.msix.set_control(True, True)
    dev.msix.set_control(True, False)
    assert count(fd) == 0                                   # exactly once


def test_delivered_when_open(dev):
    enable(dev)
    fd = efd()
    dev.msix.assign(0, [fd])
    assert dev.msix.raise_vector(0) is Outcome.DELIVERED
    assert count(fd) == 1 and pba_bits(dev) == set()


def test_out_of_range_is_counted(dev):
    assert dev.msix.raise_vector(64) is Outcome.OUT_OF_RANGE
    assert dev.msix.errors["raise_out_of_range"] == 1


def test_pba_high_vectors_and_reset(dev):
    d = Device(MsixLayout(2048))
    d.msix.raise_vector(2047)
    raw = d.region_read(4, 0, 256)
    assert raw[255] == 0x80
    d.reset()
    assert d.region_read(4, 0, 256) == bytes(256)
    assert d.msix.raised[2047] == 1                          # counters survive a reset


def test_table_is_masked_at_reset(dev):
    lay = dev.layout
    entry = dev.region_read(lay.table_bar, lay.table_offset + 16 * 7, 16)
    assert entry[12] & 1


def test_drop_fault(dev):
    enable(dev)
    fd = efd()
    dev.msix.assign(2, [fd])
    dev.faults.add({"kind": "drop_raise", "vector": 2, "count": 1})
    assert dev.msix.raise_vector(2) is Outcome.DROPPED
    assert dev.msix.raise_vector(2) is Outcome.DELIVERED
    assert count(fd) == 1 and dev.msix.dropped[2] == 1 and dev.faults.list() == []


def test_delay_fault_uses_the_scheduler(dev):
    enable(dev)
    fd = efd()
    dev.msix.assign(4, [fd])
    timers = []
    dev.msix.scheduler = lambda delay, fn: timers.append((delay, fn))
    dev.faults.add({"kind": "delay_raise", "vector": 4, "delay_ms": 250})
    assert dev.msix.raise_vector(4) is Outcome.DELAYED
    assert count(fd) == 0 and timers[0][0] == 0.25
    timers[0][1]()
    assert count(fd) == 1


def test_counter_reset(dev):
    dev.msix.raise_vector(1)
    dev.msix.reset_counters()
    assert dev.msix.raised[1] == 0 and dev.msix.is_pending(1)

"""MSI-X: layout rules, pending/PBA semantics, delivery exactly once, per-vector masks,
the disable-all window, faults.

The device model is driven through the fd seam with ``FakeFdPort`` (fds are numbers,
eventfd writes are counted); one test per real operation uses ``OsFdPort`` and real
eventfds."""

import os

import pytest

from qemu_device.device.msix import MsixLayout, Outcome
from qemu_device.device.nic import Device, shared_layout
from qemu_device.errors import ConfigurationError, DeviceError
from qemu_device.fdio import OsFdPort


@pytest.fixture
def dev(port):
    d = Device(fds=port, maskable=True)
    yield d
    d.msix.deassign_all()


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
def test_bad_layouts_are_refused(kw, msg, port):
    with pytest.raises(ConfigurationError, match=msg):
        Device(MsixLayout(**{"vectors": 64, **kw}), fds=port)


@pytest.mark.parametrize("layout,sizes", [
    (MsixLayout(2048), [0x8000, 0, 0x8000, 0, 0x1000, 0]),
    (shared_layout(64), [0x8000, 0, 0, 0, 0, 0]),
    (shared_layout(2048), [0x10000, 0, 0, 0, 0, 0]),
    (MsixLayout(1, 2, 0, 2, 0x800), [0x8000, 0, 0x1000, 0, 0, 0]),
])
def test_bar_sizes_fit_table_and_pba(layout, sizes, port):
    d = Device(layout, fds=port)
    assert d.bar_sizes == sizes
    for bar, start, end, _ in layout.extents():
        assert end <= d.bar_sizes[bar]


def test_raise_without_eventfd_pends_and_is_delivered_once_on_assign(dev, port):
    enable(dev)
    assert dev.msix.raise_vector(5) is Outcome.PENDING
    assert dev.msix.raise_vector(5) is Outcome.PENDING      # merges into one bit
    assert pba_bits(dev) == {5}
    fd = port.eventfd()
    dev.msix.assign(5, [fd])
    assert port.take(fd) == 1 and pba_bits(dev) == set()
    assert dev.msix.vector_state(5) == {"index": 5, "eventfd": True, "masked": False,
                                        "raised": 2, "delivered": 1, "pending": False,
                                        "dropped": 0}


@pytest.mark.parametrize("gate", ["disabled", "masked"])
def test_disabled_or_masked_function_pends_until_opened(dev, port, gate):
    fd = port.eventfd()
    dev.msix.assign(3, [fd])
    enable(dev, mask=(gate == "masked"))
    if gate == "disabled":
        dev.msix.set_control(False, False)
    assert dev.msix.raise_vector(3) is Outcome.PENDING
    assert port.take(fd) == 0 and pba_bits(dev) == {3}
    dev.msix.set_control(True, False)
    assert port.take(fd) == 1 and pba_bits(dev) == set()
    dev.msix.set_control(True, True)
    dev.msix.set_control(True, False)
    assert port.take(fd) == 0                               # exactly once


def test_delivered_when_open_real_eventfd():
    """The real port: a raise is one eventfd_write on a real eventfd."""
    d = Device(fds=OsFdPort())
    d.msix.set_control(True, False)
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        d.msix.assign(0, [os.dup(fd)])
        assert d.msix.raise_vector(0) is Outcome.DELIVERED
        assert os.eventfd_read(fd) == 1 and pba_bits(d) == set()
    finally:
        d.msix.deassign_all()
        os.close(fd)


def test_replaced_and_dropped_eventfds_are_closed_once(dev, port):
    a, b = port.eventfd(), port.eventfd()
    dev.msix.assign(1, [a])
    dev.msix.assign(1, [b])                                 # replaces: a closes
    assert port.closed == [a]
    dev.msix.deassign(1, 1)
    assert port.closed == [a, b] and port.open == set()


def test_failed_eventfd_write_is_counted_and_kept_pending(dev, port):
    enable(dev)
    fd = port.eventfd()
    dev.msix.assign(2, [fd])
    port.fail_signal.add(fd)
    assert dev.msix.raise_vector(2) is Outcome.PENDING
    assert dev.msix.errors["eventfd_write_failed"] == 1 and dev.msix.delivered[2] == 0
    port.fail_signal.clear()
    dev.msix.set_control(True, True)
    dev.msix.set_control(True, False)                       # the next chance delivers
    assert port.take(fd) == 1 and pba_bits(dev) == set()


def test_masked_vector_holds_the_raise_and_unmask_delivers_once(dev, port):
    enable(dev)
    fd = port.eventfd()
    dev.msix.assign(9, [fd])
    assert dev.msix.set_masked(9, 1, True) == [9]
    assert dev.msix.raise_vector(9) is Outcome.PENDING
    assert dev.msix.raise_vector(9) is Outcome.PENDING
    assert port.take(fd) == 0 and pba_bits(dev) == {9}
    assert dev.msix.vector_state(9)["masked"] is True
    dev.msix.set_control(True, True)                        # function mask toggles do
    dev.msix.set_control(True, False)                       # not bypass the vector mask
    assert port.take(fd) == 0
    assert dev.msix.set_masked(9, 1, False) == [9]
    assert port.take(fd) == 1 and pba_bits(dev) == set()
    assert dev.msix.set_masked(9, 1, False) == []           # unmasking again: nothing
    assert port.take(fd) == 0
    assert dev.msix.raise_vector(9) is Outcome.DELIVERED
    assert dev.msix.requests == {"mask": 1, "unmask": 2, "disable_all": 0}


def test_mask_by_bool_data_touches_only_the_chosen_vectors(dev, port):
    enable(dev)
    fds = [port.eventfd() for _ in range(4)]
    dev.msix.assign(4, fds)
    assert dev.msix.set_masked(4, 4, True, bytes([1, 0, 1, 0])) == [4, 6]
    for v in range(4, 8):
        dev.msix.raise_vector(v)
    assert [port.take(fd) for fd in fds] == [0, 1, 0, 1]
    assert dev.msix.set_masked(4, 4, False, bytes([0, 0, 1, 1])) == [6]
    assert [port.take(fd) for fd in fds] == [0, 0, 1, 0]
    assert pba_bits(dev) == {4}


def test_masks_survive_eventfd_changes_and_disable_all_but_not_reset(dev, port):
    enable(dev)
    dev.msix.set_masked(3, 1, True)
    dev.msix.assign(3, [port.eventfd()])
    dev.msix.disable_all()
    dev.msix.assign(3, [port.eventfd()])
    assert dev.msix.masked[3]
    dev.reset()
    assert not any(dev.msix.masked)


def test_mask_range_is_checked(dev):
    with pytest.raises(DeviceError):
        dev.msix.set_masked(60, 8, True)


def test_raise_inside_disable_all_is_held_until_the_eventfd_returns(dev, port):
    """QEMU's NORESIZE growth: disable all, then re-enable with the same eventfds.
    A raise in between is neither lost nor duplicated."""
    enable(dev)
    fd = port.eventfd()
    dev.msix.assign(6, [fd])
    dev.faults.add({"kind": "raise_on_disable", "vector": 6})
    dev.msix.disable_all()
    assert dev.msix.raised[6] == 1 and dev.msix.is_pending(6) and port.take(fd) == 0
    assert dev.msix.raise_vector(6) is Outcome.PENDING      # a second raise merges
    fd2 = port.eventfd()
    dev.msix.assign(6, [fd2])
    assert port.take(fd2) == 1 and not dev.msix.is_pending(6)
    dev.msix.assign(6, [port.eventfd()])                    # a later re-assign: nothing
    assert dev.msix.delivered[6] == 1
    assert dev.msix.requests["disable_all"] == 1 and dev.faults.list() == []


def test_irq_info_flags_follow_the_modes(port):
    assert Device(fds=port).irq_info(2) == (1, 64)
    assert Device(fds=port, maskable=True).irq_info(2) == (3, 64)
    assert Device(fds=port, noresize=True).irq_info(2) == (9, 64)
    assert Device(fds=port, maskable=True, noresize=True).irq_info(2) == (0xB, 64)
    st = Device(fds=port, maskable=True).state()["msix"]
    assert (st["maskable"], st["noresize"], st["irq_info_flags"]) == (True, False, 3)


def test_delivered_when_open(dev, port):
    enable(dev)
    fd = port.eventfd()
    dev.msix.assign(0, [fd])
    assert dev.msix.raise_vector(0) is Outcome.DELIVERED
    assert port.take(fd) == 1 and pba_bits(dev) == set()


def test_out_of_range_is_counted(dev):
    assert dev.msix.raise_vector(64) is Outcome.OUT_OF_RANGE
    assert dev.msix.errors["raise_out_of_range"] == 1


def test_pba_high_vectors_and_reset(port):
    d = Device(MsixLayout(2048), fds=port)
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


def test_drop_fault(dev, port):
    enable(dev)
    fd = port.eventfd()
    dev.msix.assign(2, [fd])
    dev.faults.add({"kind": "drop_raise", "vector": 2, "count": 1})
    assert dev.msix.raise_vector(2) is Outcome.DROPPED
    assert dev.msix.raise_vector(2) is Outcome.DELIVERED
    assert port.take(fd) == 1 and dev.msix.dropped[2] == 1 and dev.faults.list() == []


def test_delay_fault_uses_the_scheduler(dev, port):
    enable(dev)
    fd = port.eventfd()
    dev.msix.assign(4, [fd])
    timers = []
    dev.msix.scheduler = lambda delay, fn: timers.append((delay, fn))
    dev.faults.add({"kind": "delay_raise", "vector": 4, "delay_ms": 250})
    assert dev.msix.raise_vector(4) is Outcome.DELAYED
    assert port.take(fd) == 0 and timers[0][0] == 0.25
    timers[0][1]()
    assert port.take(fd) == 1


def test_raise_on_disable_is_not_a_raise_fault(dev, port):
    enable(dev)
    fd = port.eventfd()
    dev.msix.assign(1, [fd])
    dev.faults.add({"kind": "raise_on_disable", "vector": 1})
    assert dev.msix.raise_vector(1) is Outcome.DELIVERED    # not consumed by a raise
    assert len(dev.faults.list()) == 1


def test_counter_reset(dev):
    dev.msix.raise_vector(1)
    dev.msix.reset_counters()
    assert dev.msix.raised[1] == 0 and dev.msix.is_pending(1)

"""BAR0 register map: identification, scratch, ICS doorbell, IVAR/queue kicks, counters."""

import pytest

from qemu_device.device import registers as R
from qemu_device.device.nic import Device


@pytest.fixture
def dev(port):
    d = Device(fds=port)
    d.msix.set_control(True, False)
    yield d
    d.msix.deassign_all()


def rd(dev, off, n=4):
    return int.from_bytes(dev.region_read(0, off, n), "little")


def wr(dev, off, v, n=4):
    dev.region_write(0, off, v.to_bytes(n, "little"))


def test_identification(dev):
    assert rd(dev, R.REG_ID) == 0x11E91234
    assert rd(dev, R.REG_VERSION) == 0x00010000
    assert rd(dev, R.REG_NUM_VECTORS) == 64
    assert rd(dev, R.REG_NUM_QUEUES) == R.NUM_QUEUES
    assert rd(dev, R.REG_STATUS) & R.STATUS_LINK_UP
    assert rd(dev, R.REG_STATUS) & R.STATUS_MSIX_EN
    assert rd(dev, R.REG_ID, 2) == 0x1234 and rd(dev, R.REG_ID + 2, 2) == 0x11E9
    assert rd(dev, R.REG_ID, 8) == 0x00010000_11E91234


def test_scratch_merges_partial_writes(dev):
    wr(dev, R.REG_SCRATCH, 0xAABBCCDD)
    wr(dev, R.REG_SCRATCH + 1, 0x11, 1)
    assert rd(dev, R.REG_SCRATCH) == 0xAABB11DD


def test_ics_doorbell_raises_exactly_one_interrupt(dev, port):
    fd = port.eventfd()
    dev.msix.assign(7, [fd])
    wr(dev, R.REG_ICS, 7)
    assert port.take(fd) == 1
    assert rd(dev, R.REG_RAISED + 4 * 7) == 1 and rd(dev, R.REG_DELIVERED + 4 * 7) == 1
    assert rd(dev, R.REG_LAST_VECTOR) == 7 and rd(dev, R.REG_IRQ_TOTAL) == 1
    assert rd(dev, R.REG_ICS) == 0                         # write-only


def test_ics_out_of_range_is_an_error(dev):
    wr(dev, R.REG_ICS, 64)
    assert rd(dev, R.REG_ERRORS) == 1
    assert sum(dev.msix.raised) == 0


def test_partial_doorbell_write_is_a_bad_access(dev):
    wr(dev, R.REG_ICS, 3, 2)
    assert rd(dev, R.REG_ERRORS) == 1 and dev.msix.raised[3] == 0


def test_ivar_maps_queue_kicks_to_vectors(dev):
    wr(dev, R.REG_QKICK + 4 * 5, 1)                      # IVAR[5] not valid
    assert rd(dev, R.REG_ERRORS) == 1
    wr(dev, R.REG_IVAR + 4 * 5, R.IVAR_VALID | 9 | 0x7000)
    assert rd(dev, R.REG_IVAR + 4 * 5) == R.IVAR_VALID | 9  # reserved bits dropped
    wr(dev, R.REG_QKICK + 4 * 5, 1)
    assert dev.msix.raised[9] == 1 and dev.msix.is_pending(9)
    assert rd(dev, R.REG_PENDING_COUNT) == 1


def test_ctrl_reset_and_counter_clear(dev):
    wr(dev, R.REG_SCRATCH, 5)
    wr(dev, R.REG_ICS, 1)
    wr(dev, R.REG_CTRL, R.CTRL_CNT_CLR)
    assert rd(dev, R.REG_RAISED + 4) == 0 and rd(dev, R.REG_SCRATCH) == 5
    wr(dev, R.REG_CTRL, R.CTRL_RST)
    assert rd(dev, R.REG_SCRATCH) == 0 and rd(dev, R.REG_CTRL) == 0
    assert dev.msix.enabled                                # PCI state untouched


def test_unknown_offsets_read_zero_and_ignore_writes(dev):
    wr(dev, 0x100, 0xFFFFFFFF)
    assert rd(dev, 0x100) == 0


def test_msix_in_bar0_shares_the_region(port):
    from qemu_device.device.nic import shared_layout
    d = Device(shared_layout(64), fds=port)
    d.msix.raise_vector(0)
    lay = d.layout
    assert d.region_read(0, lay.pba_offset, 1) == b"\x01"
    assert int.from_bytes(d.region_read(0, R.REG_ID, 4), "little") == 0x11E91234


def test_state_reports_the_bookkeeping_registers_as_the_guest_reads_them(dev, port):
    """Two raises held in one PBA byte and one at the table's last index: PENDING_COUNT
    counts bits (3), not bytes; LAST_VECTOR is the last doorbell; the control channel's
    ``state`` carries exactly what the guest reads."""
    dev.msix.set_control(True, True)                # function masked: raises are held
    for v in (1, 2, 63):
        wr(dev, R.REG_ICS, v)
    regs = dev.state()["registers"]
    assert rd(dev, R.REG_PENDING_COUNT) == regs["pending_count"] == 3
    assert rd(dev, R.REG_LAST_VECTOR) == regs["last_vector"] == 63
    assert rd(dev, R.REG_IRQ_TOTAL) == regs["irq_total"] == 3
    wr(dev, R.REG_ICS, 64)                          # beyond the table: a register error
    assert rd(dev, R.REG_ERRORS) == dev.state()["registers"]["errors"] == 1
    assert dev.state()["errors"]["raise_out_of_range"] == 1

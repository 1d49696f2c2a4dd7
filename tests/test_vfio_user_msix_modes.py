"""The MSI-X modes over a real socket with real eventfds: MASKABLE and NORESIZE.

FakeQemu replays what QEMU 11.1.3 was seen to send in each mode (``-trace
vfio_user_set_irqs,vfio_msix_*`` against this server, docs/device.md):
* MASKABLE: GET_IRQ_INFO reports flags 0x3, and nothing else changes: QEMU keeps
  masking MSI-X vectors in its own table and sends no MASK/UNMASK.  The per-vector
  MASK/UNMASK the spec allows (and QEMU's dropped per-IRQ masking patch sent) are
  replayed too, as the device must honour them.
* NORESIZE: flags 0x9; each first use of a vector beyond the highest used one disables
  all vectors (0x21, count 0) and re-enables 0..nr in runs (used runs with their
  eventfds, unused runs with none, at most max_msg_fds vectors per message)."""

import errno
import os

import pytest

from qemu_device.device.nic import Device
from qemu_device.device.registers import REG_ICS
from qemu_device.fdio import OsFdPort
from qemu_device.handlers import Endpoint
from qemu_device.testing import EndpointHarness, FakeQemu, FdWatch

RAM = 1 << 20


class Rig:
    def __init__(self, **modes):
        self.device = Device(fds=OsFdPort(), **modes)
        self.h = EndpointHarness(Endpoint(self.device))
        self.q = FakeQemu(self.h.client_sock, self.h.pump)
        self.efds: dict[int, int] = {}

    def boot(self):
        ram = os.memfd_create("guest-ram")
        try:
            os.ftruncate(ram, RAM)
            self.facts = self.q.realize(ram, RAM)
        finally:
            os.close(ram)
        self.q.enable_msix(self.facts["msix_cap"])
        return self

    def efd(self, v):
        if v not in self.efds:
            self.efds[v] = os.eventfd(0, os.EFD_NONBLOCK)
        return self.efds[v]

    def count(self, v):
        try:
            return os.eventfd_read(self.efds[v])
        except BlockingIOError:
            return 0

    def pba(self):
        lay = self.device.layout
        raw = self.q.read(lay.pba_bar, lay.pba_offset, 8)
        return {v for v in range(64) if raw[v >> 3] & (1 << (v & 7))}

    def doorbell(self, v):
        self.q.write32(0, REG_ICS, v, posted=True)

    def close(self):
        self.h.endpoint.close()
        self.h.close()
        for fd in self.efds.values():
            os.close(fd)


@pytest.fixture
def make():
    fds = FdWatch()
    rigs = []

    def _make(**modes):
        rigs.append(Rig(**modes))
        return rigs[-1].boot()
    yield _make
    for r in rigs:
        r.close()
    assert fds.opened() == {}, "fd leak"


@pytest.mark.parametrize("modes,flags", [({}, 1), ({"maskable": True}, 3),
                                         ({"noresize": True}, 9),
                                         ({"maskable": True, "noresize": True}, 0xB)])
def test_msix_irq_info_advertises_the_mode(make, modes, flags):
    r = make(**modes)
    assert (r.facts["msix_irq"].flags, r.facts["msix_irq"].count) == (flags, 64)


def test_maskable_with_qemu_11_1_sequence_is_the_dynamic_path(make):
    """QEMU 11.1.3 with MASKABLE: per-vector SET_IRQS with fds only; raises land."""
    r = make(maskable=True)
    for v in (0, 1, 2):
        r.q.use_vector(v, r.efd(v))
    r.doorbell(2)
    assert r.count(2) == 1
    st = r.device.state()
    assert st["msix"]["requests"] == {"mask": 0, "unmask": 0, "disable_all": 0}
    assert not any(v["masked"] for v in st["vectors"])


def test_masked_vector_holds_its_raise_in_the_pba_until_unmask(make):
    r = make(maskable=True)
    for v in (0, 5):
        r.q.use_vector(v, r.efd(v))
    r.q.mask_vectors(5)                               # NONE|MASK
    assert r.device.state()["vectors"][5]["masked"]
    r.doorbell(5)
    r.doorbell(5)
    assert r.count(5) == 0 and r.pba() == {5}         # the guest's PBA read sees it
    r.doorbell(0)
    assert r.count(0) == 1                            # other vectors unaffected
    r.q.mask_vectors(5, unmask=True)                  # NONE|UNMASK: delivered once
    assert r.count(5) == 1 and r.pba() == set()
    r.q.mask_vectors(5, unmask=True)
    assert r.count(5) == 0
    st = r.device.state()
    assert st["vectors"][5]["raised"] == 2 and st["vectors"][5]["delivered"] == 1
    assert st["msix"]["requests"] == {"mask": 1, "unmask": 2, "disable_all": 0}


def test_mask_by_bool_data_over_the_wire(make):
    r = make(maskable=True)
    for v in range(8, 12):
        r.q.use_vector(v, r.efd(v))
    r.q.mask_vectors(8, 4, which=bytes([1, 1, 0, 1]))      # BOOL|MASK
    for v in range(8, 12):
        r.doorbell(v)
    assert [r.count(v) for v in range(8, 12)] == [0, 0, 1, 0]
    r.q.mask_vectors(8, 4, unmask=True, which=bytes([0, 1, 0, 1]))
    assert [r.count(v) for v in range(8, 12)] == [0, 1, 0, 1]
    assert r.pba() == {8}


def test_mask_without_maskable_is_einval(make):
    r = make()
    r.q.mask_vectors(0, expect_error=errno.EINVAL)
    r.q.use_vector(0, r.efd(0))
    r.doorbell(0)
    assert r.count(0) == 1


def test_noresize_growth_runs_match_qemu_11_1(make):
    """The runs QEMU 11.1.3 sent when vector 40 was first used after 0..6."""
    r = make(noresize=True)
    used = {}
    for v in range(7):
        used[v] = r.efd(v)
        assert r.q.noresize_grow(used)[-1] == (0, v + 1, v + 1)
    used[40] = r.efd(40)
    assert r.q.noresize_grow(used) == [(0, 7, 7), (7, 16, 0), (23, 16, 0), (39, 1, 0),
                                       (40, 1, 1)]
    st = r.device.state()
    assert st["msix"]["requests"]["disable_all"] == 8
    assert [v["index"] for v in st["vectors"] if v["eventfd"]] == [*range(7), 40]
    r.doorbell(40)
    assert r.count(40) == 1


def test_noresize_raise_inside_the_reenable_window_arrives_exactly_once(make):
    r = make(noresize=True)
    used = {v: r.efd(v) for v in range(3)}
    r.q.noresize_grow(used)
    r.device.faults.add({"kind": "raise_on_disable", "vector": 1})
    r.doorbell(45)                                    # raised before 45 exists: pending
    used[45] = r.efd(45)
    r.q.noresize_grow(used)
    assert r.count(1) == 1 and r.count(45) == 1       # held, then delivered once each
    assert r.pba() == set()
    r.q.use_vector(1, used[1])                        # a re-use: no second delivery
    assert r.count(1) == 0
    st = r.device.state()["vectors"]
    assert (st[1]["raised"], st[1]["delivered"]) == (1, 1)
    assert (st[45]["raised"], st[45]["delivered"]) == (1, 1)


def test_noresize_and_maskable_together(make):
    r = make(maskable=True, noresize=True)
    used = {v: r.efd(v) for v in range(2)}
    r.q.noresize_grow(used)
    r.q.mask_vectors(1)
    r.doorbell(1)
    used[2] = r.efd(2)
    r.q.noresize_grow(used)                           # masks survive the re-enable
    assert r.count(1) == 0 and r.pba() == {1}
    r.q.mask_vectors(1, unmask=True)
    assert r.count(1) == 1

"""Accounting checks against the ledger: each passes on agreeing views and fails, naming
what differs, on each kind of disagreement a planted bug would cause."""

import pytest

from agent.host.verdict import accounting
from agent.host.verdict.ledger import GroupRequest, Ledger
from agent.host.verdict.routing import Verdict, build_snapshot

ADDR = {0: 0xFEE00000, 1: 0xFEE01000}


def guest(index, irq, cpu=0, counts=(0, 0), effective=None, requested=None, mask=(0, 1)):
    msg = {"address_lo": ADDR[cpu], "address_hi": 0, "data": 0x20 + index}
    return {"index": index, "group": 1, "irq": irq, "msg": msg, "table": {**msg, "ctrl": 0},
            "affinity": {"requested": None if requested is None else list(requested),
                         "mask": list(mask),
                         "effective": [cpu] if effective is None else list(effective)},
            "counts": list(counts)}


def qemu_entry(index, masked=False, cpu=0):
    if masked:
        return {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 1}
    return {"address_lo": ADDR[cpu], "address_hi": 0, "data": 0x20 + index, "ctrl": 0}


def device(index, raised=0, delivered=0, pending=False):
    return {"index": index, "eventfd": True, "raised": raised, "delivered": delivered,
            "pending": pending}


def world(live=(0, 1, 2), counts=None, cpu=0, requested=None):
    """A ledger with group A = [1, 2] and views that agree with it."""
    book = Ledger(table_size=4, cpus=2)
    book.allocated(GroupRequest("A", 1, (1, 2), 2, 2, cpu=None))
    counts = counts or {}
    snap = build_snapshot(
        guest=[guest(i, 30 + i, cpu, counts.get(i, (0, 0)), requested=requested) for i in live],
        qemu={i: qemu_entry(i, masked=i not in live, cpu=cpu) for i in range(4)},
        device=[device(i) for i in range(4)])
    return book, snap


def verdicts(results):
    return {(r.name, r.index): r.verdict for r in results}


def test_live_set_agrees():
    book, snap = world()
    results = accounting.live_set_checks(book, snap, [30, 31, 32])
    assert all(r.verdict is Verdict.PASS for r in results), results


def test_a_read_out_that_omits_index_0_fails():
    book, snap = world(live=(1, 2))
    (driver, qemu, irqs) = accounting.live_set_checks(book, snap, [31, 32])
    assert driver.verdict is Verdict.FAIL and "lacks [0]" in driver.summary
    assert qemu.verdict is Verdict.FAIL             # entry 0 is masked in this world too


def test_msi_irqs_disagreeing_or_unreadable_fails():
    book, snap = world()
    irqs = accounting.live_set_checks(book, snap, [30, 31, 99])[2]
    assert irqs.verdict is Verdict.FAIL and "[99]" in irqs.summary and "[32]" in irqs.summary
    assert accounting.live_set_checks(book, snap, None)[2].verdict is Verdict.FAIL


def test_counts_lost_and_spurious():
    book, snap = world(counts={1: (0, 1), 2: (0, 0)})
    results = {r.index: r for r in accounting.counts_match_raises(book, snap)}
    assert results[1].verdict is Verdict.FAIL and "spurious" in results[1].summary
    book.raised(2, has_eventfd=True)
    book.raised(1, has_eventfd=True)
    results = {r.index: r for r in accounting.counts_match_raises(book, snap)}
    assert results[1].verdict is Verdict.PASS
    assert results[2].verdict is Verdict.FAIL and "lost" in results[2].summary


def test_device_counters_and_irq_total():
    book, _ = world()
    book.raised(1, has_eventfd=True, doorbell=True)
    state = {"vectors": [device(i) for i in range(4)], "irq_total": 1}
    state["vectors"][1] = device(1, raised=1, delivered=1)
    assert all(r.verdict is Verdict.PASS for r in accounting.device_counters_match(book, state))
    state["vectors"][1] = device(1, raised=0, delivered=1)      # RAISED not counted
    state["irq_total"] = 2                                      # total miscounted
    bad = verdicts(accounting.device_counters_match(book, state))
    assert bad[("device_counters_match", 1)] is Verdict.FAIL
    assert bad[("irq_total_matches", None)] is Verdict.FAIL


def test_pba_that_never_clears_fails():
    book, _ = world()
    book.raised(3, has_eventfd=False)
    assert accounting.pba_matches_pending(book, [3]).verdict is Verdict.PASS
    book.allocated(GroupRequest("C", 2, (3,), 1, 1, start=3))
    result = accounting.pba_matches_pending(book, [3])
    assert result.verdict is Verdict.FAIL and "[3]" in result.summary


@pytest.mark.parametrize("indices,start,ok", [
    ((60, 61, 62), 60, True), ((7, 8, 60), 60, False), ((60, 61), 60, False)])
def test_explicit_start_is_honoured_exactly(indices, start, ok):
    request = GroupRequest("C", 3, indices, 3, 3, start=start)
    result = accounting.group_allocated_as_requested(request, {0}, 64)
    assert (result.verdict is Verdict.PASS) == ok


def test_any_index_group_within_bounds_not_live_not_outside():
    ok = GroupRequest("D", 4, (7, 8), 2, 8)
    assert accounting.group_allocated_as_requested(ok, {0}, 64).verdict is Verdict.PASS
    for indices, live in (((7,), {0}), ((7, 8), {0, 8}), ((63, 64), {0}), ((7, 7), {0})):
        bad = GroupRequest("D", 4, indices, 2, 8)
        assert accounting.group_allocated_as_requested(bad, live, 64).verdict is Verdict.FAIL


def test_group_ids_unique_and_never_reused():
    request = GroupRequest("E", 2, (5,), 1, 1)
    assert accounting.group_id_unique(request, {0, 1}, set()).verdict is Verdict.PASS
    assert accounting.group_id_unique(request, {0, 2}, set()).verdict is Verdict.FAIL
    assert accounting.group_id_unique(request, {0}, {2}).verdict is Verdict.FAIL


def test_requested_affinity_judged_against_the_request_not_the_read_back():
    book = Ledger(table_size=4, cpus=2)
    book.allocated(GroupRequest("B", 2, (1,), 1, 1, cpu=1))
    snap = build_snapshot(guest=[guest(0, 30), guest(1, 31, cpu=1, requested=(1,), mask=(1,))])
    assert [r.verdict for r in accounting.requested_affinity_honoured(book, snap)] == [Verdict.PASS]
    # the driver ignored the hint (or reports the wrong CPU as asked): the kernel's mask
    # and effect agree with each other on CPU 0, so only the request can tell
    snap = build_snapshot(guest=[guest(0, 30), guest(1, 31, cpu=0, requested=(0,), mask=(0,))])
    (result,) = accounting.requested_affinity_honoured(book, snap)
    assert result.verdict is Verdict.FAIL and "asked for [1]" in result.summary


# --- the fourth view of masking: the device's mask bits against QEMU's table ------------------

def masking_state(masked=(), maskable=False, mask=0, unmask=0, eventfds=(0, 1, 2)):
    return {"msix": {"maskable": maskable, "requests": {"mask": mask, "unmask": unmask,
                                                        "disable_all": 0}},
            "vectors": [{"index": i, "eventfd": i in eventfds, "masked": i in masked}
                        for i in range(4)]}


def test_no_forwarded_masking_and_no_device_bits_agrees():
    _, snap = world()
    for maskable in (False, True):      # QEMU 11.1.3 sends no MASK even when MASKABLE
        result = accounting.device_masks_match_qemu(snap, masking_state(maskable=maskable))
        assert result.verdict is Verdict.PASS, result


def test_a_device_that_masks_on_its_own_fails():
    _, snap = world()
    result = accounting.device_masks_match_qemu(snap, masking_state(masked=(2,), maskable=True))
    assert result.verdict is Verdict.FAIL and "masks [2]" in result.summary
    assert result.evidence["forwarded"] is False


def test_forwarded_masks_agree_with_the_table():
    """Entry 2 freed: QEMU masked it in its table and forwarded the MASK."""
    _, snap = world(live=(0, 1))
    result = accounting.device_masks_match_qemu(
        snap, masking_state(masked=(2,), maskable=True, mask=1))
    assert result.verdict is Verdict.PASS, result


@pytest.mark.parametrize("device_masked, qemu_live, missing", [
    ((), (0, 1), "QEMU's table masks [2], which the device has unmasked"),
    ((1, 2), (0, 1), "the device masks [1], which QEMU's table has unmasked"),
])
def test_forwarded_masks_that_differ_fail(device_masked, qemu_live, missing):
    _, snap = world(live=qemu_live)
    result = accounting.device_masks_match_qemu(
        snap, masking_state(masked=device_masked, maskable=True, mask=2, unmask=1))
    assert result.verdict is Verdict.FAIL and missing in result.summary, result


def bookkeeping_state(book, *, errors=None, register_errors=0, last=None, pending_count=None,
                      device_pending=None):
    """A device state whose error counters and registers agree with ``book`` unless told
    otherwise."""
    pending = book.expected_pending() if device_pending is None else set(device_pending)
    return {"vectors": [device(i, pending=i in pending) for i in range(book.table_size)],
            "errors": {"raise_out_of_range": 0, "eventfd_write_failed": 0,
                       "bad_region_access": 0, "nic_doorbell": 0, **(errors or {})},
            "registers": {"errors": register_errors,
                          "last_vector": book.last_doorbell if last is None else last,
                          "irq_total": book.doorbell_raises,
                          "pending_count": len(pending) if pending_count is None
                          else pending_count}}


def test_device_bookkeeping_agrees():
    book, _ = world()
    book.raised(2, has_eventfd=True, doorbell=True)
    book.raised(3, has_eventfd=False)
    results = accounting.device_bookkeeping_match(book, bookkeeping_state(book))
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.PASS], results
    assert book.last_doorbell == 2


@pytest.mark.parametrize("counter", ["raise_out_of_range", "eventfd_write_failed",
                                     "bad_region_access", "nic_doorbell"])
def test_any_device_error_counted_fails(counter):
    book, _ = world()
    results = verdicts(accounting.device_bookkeeping_match(
        book, bookkeeping_state(book, errors={counter: 1})))
    assert results[("device_errors_zero", None)] is Verdict.FAIL
    assert results[("device_registers_match", None)] is Verdict.PASS


def test_doorbell_error_register_fails():
    book, _ = world()
    result = accounting.device_bookkeeping_match(book, bookkeeping_state(book,
                                                                         register_errors=1))[0]
    assert result.verdict is Verdict.FAIL and "errors_register" in result.summary


@pytest.mark.parametrize("kw,words", [
    ({"last": 1}, "LAST_VECTOR 1, last doorbell raise 2"),
    ({"pending_count": 1}, "PENDING_COUNT 1, 2 raises held pending"),
    ({"device_pending": {1, 3}, "pending_count": 2}, None),     # the device's bits disagree
    ({"device_pending": {3}, "pending_count": 2}, "the device reports 1 vectors pending"),
])
def test_registers_that_disagree_fail(kw, words):
    book, _ = world()
    book.raised(2, has_eventfd=True, doorbell=True)
    book.function_mask(True)
    book.raised(1, has_eventfd=True)
    book.raised(3, has_eventfd=True)
    state = bookkeeping_state(book, **kw)
    result = accounting.device_bookkeeping_match(book, state)[1]
    if words is None:       # same count, other bits: the register agrees, the bits check judges
        assert result.verdict is Verdict.PASS
        bits = accounting.pending_bits_match_device(book, [1, 3], state)
        assert bits.verdict is Verdict.PASS
        state["vectors"][1]["pending"], state["vectors"][2]["pending"] = False, True
        bits = accounting.pending_bits_match_device(book, [1, 3], state)
        assert bits.verdict is Verdict.FAIL and "device's pending bits [2, 3]" in bits.summary
    else:
        assert result.verdict is Verdict.FAIL and words in result.summary, result.summary


def test_a_device_without_registers_fails_both():
    book, _ = world()
    results = accounting.device_bookkeeping_match(book, {"vectors": [], "errors": {}})
    assert {r.name for r in results} == {"device_errors_zero", "device_registers_match"}
    assert all(r.verdict is Verdict.FAIL for r in results)


def test_pending_bits_disagreeing_with_the_guest_pba_fail():
    book, _ = world()
    book.function_mask(True)
    book.raised(1, has_eventfd=True)
    book.raised(2, has_eventfd=True)
    state = bookkeeping_state(book)
    assert accounting.pending_bits_match_device(book, [1, 2], state).verdict is Verdict.PASS
    result = accounting.pending_bits_match_device(book, [2], state)      # a bit lost
    assert result.verdict is Verdict.FAIL and "guest-visible PBA [2]" in result.summary

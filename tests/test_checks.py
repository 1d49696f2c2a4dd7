"""Unit tests for agent.host.verdict.checks: every check on good data and on broken data."""

import pytest

from agent.host.verdict.checks import (
    affinity_honoured,
    cached_msg_matches_table,
    destination_matches_affinity,
    freed_entry_masked_and_cleared,
    freed_raise_delivered_once_on_reuse,
    kernel_irq_view_agrees,
    pending_delivered_after_alloc,
    raise_counted_once_on_cpu,
    record_checks,
    target_cpu,
)
from agent.host.verdict.routing import ApicMap, Verdict, build_snapshot

NCPUS = 2


def addr(apic, logical=False):
    return 0xFEE00000 | apic << 12 | logical << 2


def vec(index, cpu=1, counts=None, raised=0, delivered=None, irq=None, pending=False):
    """Raw views of an allocated vector whose message targets `cpu` (identity APIC map)."""
    msg = {"address_lo": addr(cpu), "address_hi": 0, "data": 0x20 + index}
    return {
        "index": index,
        "guest": {"group": 0, "index": index, "irq": irq or 40 + index, "msg": dict(msg),
                  "table": {**msg, "ctrl": 0},
                  "affinity": {"requested": None, "mask": list(range(NCPUS)),
                               "effective": [cpu]},
                  "counts": list(counts or [0] * NCPUS)},
        "qemu": {**msg, "ctrl": 0},
        "device": {"index": index, "eventfd": True, "raised": raised,
                   "delivered": raised if delivered is None else delivered,
                   "pending": pending},
    }


def free(index, raised=0, delivered=0, pending=False, eventfd=False):
    """Raw views of a freed (or never allocated) entry, as Linux leaves it."""
    return {"index": index, "guest": None,
            "qemu": {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 1},
            "device": {"index": index, "eventfd": eventfd, "raised": raised,
                       "delivered": delivered, "pending": pending}}


def snap(*vectors, apic_map=None):
    return build_snapshot(
        guest=[v["guest"] for v in vectors if v["guest"] is not None],
        qemu={v["index"]: v["qemu"] for v in vectors if v["qemu"] is not None},
        device=[v["device"] for v in vectors if v["device"] is not None],
        apic_map=apic_map)


def assert_fails(result, *words, **evidence):
    assert result.verdict is Verdict.FAIL, result
    for word in words:
        assert word in result.summary, result.summary
    for key, value in evidence.items():
        assert result.evidence[key] == value, result.evidence


# --- cached_msg_matches_table ----------------------------------------------------

def test_cached_msg_matches_table_passes():
    result = cached_msg_matches_table(snap(vec(1)).get(1))
    assert result.verdict is Verdict.PASS
    assert result.name == "cached_msg_matches_table" and result.index == 1


@pytest.mark.parametrize("view,field", [
    ("qemu", "data"), ("qemu", "address_lo"), ("qemu", "address_hi"),
    ("table", "data"), ("msg", "address_lo"),
])
def test_cached_msg_matches_table_fails_on_any_differing_field(view, field):
    v = vec(1)
    target = v["qemu"] if view == "qemu" else v["guest"][view]
    target[field] ^= 0x10
    result = cached_msg_matches_table(snap(v).get(1))
    assert_fails(result, field, fields=[field])
    assert set(result.evidence) >= {"guest_cached", "guest_table", "qemu_table"}


def test_cached_msg_matches_table_ignores_ctrl():
    v = vec(1)
    v["qemu"]["ctrl"] = 1  # masking is judged elsewhere
    assert cached_msg_matches_table(snap(v).get(1)).verdict is Verdict.PASS


@pytest.mark.parametrize("vector", [free(1), {**vec(1), "qemu": None}])
def test_cached_msg_matches_table_skips_without_views(vector):
    assert cached_msg_matches_table(snap(vector).get(1)).verdict is Verdict.SKIP


# --- destination_matches_affinity ------------------------------------------------

@pytest.mark.parametrize("requested,mask,effective,ok", [
    ([0, 1], [0, 1], [1], True),
    ([1], [1], [1], True),
    ([1], [1], [0], False),       # asked for CPU 1, landed on CPU 0
    ([1], [0, 1], [0], False),    # the kernel's mask allows 0, but CPU 1 was asked for
    ([0, 1], [0, 1], [], False),  # nowhere
    (None, [0, 1], [0], True),    # nothing asked: the kernel's mask bounds it
    (None, [1], [0], False),
])
def test_affinity_honoured(requested, mask, effective, ok):
    v = vec(1)
    v["guest"]["affinity"] = {"requested": requested, "mask": mask, "effective": effective}
    result = affinity_honoured(snap(v).get(1))
    assert (result.verdict is Verdict.PASS) == ok, result


def test_affinity_honoured_skips_freed_entries():
    assert affinity_honoured(snap(free(1)).get(1)).verdict is Verdict.SKIP


def test_destination_matches_affinity_passes():
    assert destination_matches_affinity(snap(vec(1, cpu=1)).get(1)).verdict is Verdict.PASS


def test_destination_matches_affinity_uses_apic_map():
    v = vec(1, cpu=4)  # message names APIC ID 4
    v["guest"]["affinity"]["effective"] = [2]
    record = snap(v, apic_map=ApicMap.from_apic_ids([0, 2, 4, 6])).get(1)
    assert destination_matches_affinity(record).verdict is Verdict.PASS


def test_destination_matches_affinity_fails_on_other_cpu():
    v = vec(1, cpu=1)
    v["guest"]["affinity"]["effective"] = [0]
    result = destination_matches_affinity(snap(v).get(1))
    assert_fails(result, "CPU 1 not in effective", cpu=1, effective=[0], dest_apic_id=1)


def test_destination_matches_affinity_fails_on_unknown_apic():
    record = snap(vec(1, cpu=3), apic_map=ApicMap.from_apic_ids([0, 1])).get(1)
    assert_fails(destination_matches_affinity(record), "APIC ID 3 maps to no CPU", cpu=None)


def test_destination_matches_affinity_fails_on_non_msi_message():
    v = vec(1)
    v["guest"]["msg"]["address_lo"] = 0
    assert_fails(destination_matches_affinity(snap(v).get(1)), "not an MSI address")


def test_destination_matches_affinity_skips_logical():
    v = vec(1)
    v["guest"]["msg"]["address_lo"] = addr(1, logical=True)
    assert destination_matches_affinity(snap(v).get(1)).verdict is Verdict.SKIP


def test_destination_matches_affinity_fails_a_remappable_message_whose_irte_was_not_read():
    v = vec(1)
    v["guest"]["msg"]["address_lo"] = 0xFEE00000 | 1 << 4
    assert_fails(destination_matches_affinity(snap(v).get(1)), "which was not read")


def test_destination_matches_affinity_skips_freed():
    assert destination_matches_affinity(snap(free(1)).get(1)).verdict is Verdict.SKIP


def test_record_checks_run_on_allocated_only():
    results = record_checks(snap(vec(0, cpu=0), vec(1), free(2)))
    assert [(r.name, r.index) for r in results] == [
        ("cached_msg_matches_table", 0), ("destination_matches_affinity", 0),
        ("affinity_honoured", 0),
        ("cached_msg_matches_table", 1), ("destination_matches_affinity", 1),
        ("affinity_honoured", 1)]
    assert all(r.verdict is Verdict.PASS for r in results)


def test_target_cpu_falls_back_to_single_effective_cpu():
    v = vec(1, cpu=1)
    v["guest"]["msg"]["address_lo"] = addr(0, logical=True)   # no single APIC ID
    assert target_cpu(snap(v).get(1)) == 1
    v["guest"]["affinity"]["effective"] = [0, 1]
    assert target_cpu(snap(v).get(1)) is None


def test_target_cpu_of_an_unresolved_remappable_message_is_unknown():
    v = vec(1, cpu=1)
    v["guest"]["msg"]["address_lo"] = 0xFEE00000 | 1 << 4   # a handle; its IRTE not read
    assert target_cpu(snap(v).get(1)) is None               # not the effective CPU


# --- raise_counted_once_on_cpu -----------------------------------------------------

RAISES = 3


def raise_pair(**after_overrides):
    """Vector 1 on CPU 1 and vector 0 on CPU 0, before and after 3 raises of vector 1."""
    before = snap(vec(0, cpu=0, counts=[7, 0], raised=7), vec(1, counts=[0, 5], raised=5))
    after_kw = {"counts": [0, 5 + RAISES], "raised": 5 + RAISES, **after_overrides}
    after = snap(vec(0, cpu=0, counts=[7, 0], raised=7), vec(1, **after_kw))
    return before, after


def test_raise_counted_once_on_cpu_passes():
    result = raise_counted_once_on_cpu(*raise_pair(), 1, RAISES)
    assert result.verdict is Verdict.PASS, result


def test_raise_counted_once_on_cpu_passes_with_zero_raises():
    before, _ = raise_pair()
    assert raise_counted_once_on_cpu(before, before, 1, 0).verdict is Verdict.PASS


@pytest.mark.parametrize("overrides,words,evidence", [
    ({"counts": [RAISES, 5]}, ["counts grew by"], {"count_deltas": {"0": RAISES}}),
    ({"counts": [1, 5 + RAISES]}, ["counts grew by"], {"count_deltas": {"0": 1, "1": 3}}),
    ({"counts": [0, 5 + 2 * RAISES]}, ["counts grew by"], {"count_deltas": {"1": 6}}),
    ({"counts": [0, 5 + 1]}, ["counts grew by"], {"count_deltas": {"1": 1}}),
    ({"delivered": 5 + 1}, ["device"], {"device_deltas": {"raised": 3, "delivered": 1}}),
    ({"raised": 5 + 1, "delivered": 5 + RAISES}, ["device"],
     {"device_deltas": {"raised": 1, "delivered": 3}}),
    ({"irq": 99}, ["irq changed from 41 to 99"], {}),
])
def test_raise_counted_once_on_cpu_fails(overrides, words, evidence):
    result = raise_counted_once_on_cpu(*raise_pair(**overrides), 1, RAISES)
    assert_fails(result, *words, **evidence)


def test_raise_counted_once_on_cpu_fails_on_stray_count_elsewhere():
    before, _ = raise_pair()
    after = snap(vec(0, cpu=0, counts=[8, 0], raised=7),
                 vec(1, counts=[0, 5 + RAISES], raised=5 + RAISES))
    assert_fails(raise_counted_once_on_cpu(before, after, 1, RAISES), "other vectors",
                 stray={"0": 1})


def test_raise_counted_once_on_cpu_fails_without_device_view():
    before, after = raise_pair()
    v = vec(1, counts=[0, 5 + RAISES])
    v["device"] = None
    after = snap(vec(0, cpu=0, counts=[7, 0], raised=7), v)
    assert_fails(raise_counted_once_on_cpu(before, after, 1, RAISES), "no device view")


def test_raise_counted_once_on_cpu_skips_unallocated():
    before = snap(free(1))
    assert raise_counted_once_on_cpu(before, before, 1, 1).verdict is Verdict.SKIP


# --- freed_entry_masked_and_cleared -----------------------------------------------

def freed_pair(raised_after=2, delivered_after=0, **entry):
    before = snap(vec(0, cpu=0, counts=[4, 0]), free(1, raised=6, delivered=6))
    after_entry = free(1, raised=6 + raised_after, delivered=6 + delivered_after)
    for key, value in entry.items():
        if key == "guest":
            after_entry["guest"] = value
        else:
            after_entry["qemu"][key] = value
    return before, snap(vec(0, cpu=0, counts=[4, 0]), after_entry)


def test_freed_entry_masked_and_cleared_passes():
    result = freed_entry_masked_and_cleared(*freed_pair(), 1, 2)
    assert result.verdict is Verdict.PASS, result


@pytest.mark.parametrize("pair,words", [
    (dict(ctrl=0), ["not masked"]),
    (dict(address_lo=0xFEE01000), ["not cleared"]),
    (dict(data=0x21), ["not cleared"]),
    (dict(address_hi=0x100), ["not cleared"]),
    (dict(raised_after=1), ["expected raised 2"]),
])
def test_freed_entry_masked_and_cleared_fails(pair, words):
    result = freed_entry_masked_and_cleared(*freed_pair(**pair), 1, 2)
    assert_fails(result, *words)
    assert "qemu_table" in result.evidence and "device_deltas" in result.evidence


def test_freed_entry_passes_when_device_writes_a_stale_eventfd():
    # under TCG QEMU keeps the freed vector's eventfd: the device delivers into QEMU,
    # which holds the message pending behind the mask; the guest counts nothing
    result = freed_entry_masked_and_cleared(*freed_pair(delivered_after=2), 1, 2)
    assert result.verdict is Verdict.PASS, result


def test_freed_entry_fails_when_guest_still_has_vector():
    before = snap(vec(0, cpu=0), vec(1, raised=6))
    after_views = vec(1, raised=8, delivered=6)
    after_views["qemu"] = {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 1}
    after = snap(vec(0, cpu=0), after_views)
    assert_fails(freed_entry_masked_and_cleared(before, after, 1, 2),
                 "still has a vector here (irq 41)")


def test_freed_entry_fails_when_raise_lands_on_another_vector():
    before = snap(vec(0, cpu=0, counts=[4, 0]), free(1, raised=6, delivered=6))
    after = snap(vec(0, cpu=0, counts=[5, 0]), free(1, raised=8, delivered=6))
    assert_fails(freed_entry_masked_and_cleared(before, after, 1, 2), "guest vectors counted",
                 stray={"0": 1})


def test_freed_entry_skips_without_qemu_view():
    entry = free(1)
    entry["qemu"] = None
    assert freed_entry_masked_and_cleared(snap(entry), snap(entry), 1, 0).verdict \
        is Verdict.SKIP


# --- pending_delivered_after_alloc -------------------------------------------------

def pending_pair(pending_before=True, pending_after=False, delivered_after=1,
                 counts_after=(0, 1)):
    before = snap(vec(0, cpu=0, counts=[4, 0]), free(1, raised=2, pending=pending_before))
    after = snap(vec(0, cpu=0, counts=[4, 0]),
                 vec(1, counts=list(counts_after), raised=2, delivered=delivered_after,
                     pending=pending_after))
    return before, after


def test_pending_delivered_after_alloc_passes():
    result = pending_delivered_after_alloc(*pending_pair(), 1, {1, 5})
    assert result.verdict is Verdict.PASS, result


def test_pending_delivered_after_alloc_passes_without_pba_read():
    assert pending_delivered_after_alloc(*pending_pair(), 1, None).verdict is Verdict.PASS


@pytest.mark.parametrize("pair,pba,words", [
    (dict(pending_before=False), {1}, ["device not pending before"]),
    (dict(), {0, 2}, ["PBA bit not set"]),
    (dict(pending_after=True), {1}, ["still pending after"]),
    (dict(delivered_after=0, counts_after=(0, 0)), {1}, ["delivered 0 times",
                                                        "guest counted {}"]),
    (dict(delivered_after=2, counts_after=(0, 2)), {1}, ["delivered 2 times"]),
    (dict(counts_after=(1, 0)), {1}, ["guest counted {'0': 1}, expected {1: 1}"]),
])
def test_pending_delivered_after_alloc_fails(pair, pba, words):
    result = pending_delivered_after_alloc(*pending_pair(**pair), 1, pba)
    assert_fails(result, *words)
    assert {"device_before", "device_after", "counts"} <= set(result.evidence)


def test_pending_delivered_after_alloc_fails_when_not_allocated_after():
    before, _ = pending_pair()
    after = snap(vec(0, cpu=0, counts=[4, 0]), free(1, raised=2, delivered=1))
    assert_fails(pending_delivered_after_alloc(before, after, 1, {1}), "not allocated")


def test_pending_delivered_after_alloc_fails_when_already_allocated_before():
    _, after = pending_pair()
    before = snap(vec(0, cpu=0, counts=[4, 0]), vec(1, raised=2, delivered=0, pending=True))
    assert_fails(pending_delivered_after_alloc(before, after, 1, {1}), "already allocated")


def test_pending_delivered_after_alloc_skips_without_device_view():
    entry = free(1)
    entry["device"] = None
    assert pending_delivered_after_alloc(snap(entry), snap(entry), 1, None).verdict \
        is Verdict.SKIP


# --- freed_raise_delivered_once_on_reuse --------------------------------------------

@pytest.mark.parametrize("held,counts,ok", [
    (1, [0, 1], True),      # one held raise arrives once on the target CPU
    (3, [0, 1], True),      # one pending bit: several held raises arrive once
    (0, [0, 0], True),      # nothing held, nothing arrives
    (1, [0, 0], False),     # the held raise was lost
    (1, [0, 2], False),     # delivered twice
    (0, [0, 1], False),     # something arrived that nobody raised
    (1, [1, 0], False),     # arrived on the wrong CPU
])
def test_freed_raise_delivered_once_on_reuse(held, counts, ok):
    freed = snap(free(1, raised=7, delivered=7))
    reused = snap(vec(1, cpu=1, counts=counts))
    result = freed_raise_delivered_once_on_reuse(freed, reused, 1, held)
    assert (result.verdict is Verdict.PASS) == ok, result


def test_freed_raise_on_reuse_skips_when_not_reallocated():
    assert freed_raise_delivered_once_on_reuse(snap(free(1)), snap(free(1)), 1, 1).verdict \
        is Verdict.SKIP


# --- kernel_irq_view_agrees -----------------------------------------------------------

def sysfs(index=1, msi="msix", effective=(1,), per_cpu=(0, 3)):
    return {"irq": 41, "sys": {"hwirq": index, "per_cpu_count": list(per_cpu)},
            "proc": {"effective_affinity_list": list(effective)}, "msi_irqs": msi}


@pytest.mark.parametrize("view,words", [
    (sysfs(), None),
    (sysfs(index=2), "hwirq 2 is not the index 1"),
    (sysfs(msi=None), "not 'msix'"),
    (sysfs(effective=(0,)), "effective affinity [0]"),
    (sysfs(per_cpu=(1, 3)), "kernel counted [1, 3], the driver [0, 3]"),
])
def test_kernel_irq_view_agrees(view, words):
    result = kernel_irq_view_agrees(snap(vec(1, cpu=1, counts=[0, 3])).get(1), view)
    if words is None:
        assert result.verdict is Verdict.PASS, result
    else:
        assert_fails(result, words)

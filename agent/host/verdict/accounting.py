"""Accounting checks: every view against the ledger (what the scenario asked for and did).

Concepts owned here:
- Set checks, table-wide (index None): the driver's live vectors equal the ledger's
  expected set (index 0 plus the live groups' indices); the unmasked entries of QEMU's
  table equal it too; the kernel's ``msi_irqs`` list equals the IRQs of the driver's
  vectors; the guest-visible PBA equals the indices the device should hold pending.
- Group checks (index None, evidence names the group): an allocation is exactly what was
  asked (an explicit start gives start..start+n-1; any index gives between min and max
  indices inside the table, none already live); a group id is unique among live groups
  and never one the driver gave before.
- Count checks, per index: the owner's handler counted exactly the interrupts the ledger
  expects (nothing lost, duplicated or spurious, whatever step it happened in); the
  device's raised, delivered and pending equal the ledger's; its interrupt total register
  equals all raises made.
- Device bookkeeping, table-wide: the device's error counters (failed eventfd writes,
  out-of-range raises, refused region accesses, the doorbell ERRORS register) stay zero
  on a correct run, and its LAST_VECTOR and PENDING_COUNT registers, read as the guest
  reads them, equal the last doorbell raise and the number of raises held pending.
- The fourth view of masking, table-wide: the device's per-vector mask bits equal QEMU's
  table where QEMU forwards masking, and are all clear where it does not.
- Request checks, per index: the vector runs where the scenario asked (effective affinity
  within the requested CPU, the message targeting it), judged against the request, not
  against what the kernel read back.
Each check returns CheckResults (routing.py) with evidence, never raises on bad views.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.host.verdict.checks import from_problems as _result, target_cpu
from agent.host.verdict.ledger import GroupRequest, Ledger
from agent.host.verdict.routing import CheckResult, Snapshot, Verdict


def _set_diff(name: str, what: str, seen: Iterable[int], expected: Iterable[int]) -> CheckResult:
    seen, expected = set(seen), set(expected)
    problems = []
    if seen - expected:
        problems.append(f"{what} has {sorted(seen - expected)} that should not be live")
    if expected - seen:
        problems.append(f"{what} lacks {sorted(expected - seen)}")
    return _result(name, None, problems, seen=sorted(seen), expected=sorted(expected))


# --- the live set ------------------------------------------------------------------------

def live_set_checks(ledger: Ledger, snapshot: Snapshot,
                    msi_irqs: Sequence[int] | None) -> list[CheckResult]:
    """The driver's live vectors, QEMU's unmasked entries and the kernel's msi_irqs all
    equal the expected set (QEMU's: less the vectors the kernel shut down)."""
    expected = ledger.live()
    driver = [r.index for r in snapshot.allocated()]
    qemu = [r.index for r in snapshot.records if r.qemu is not None and not r.qemu.masked]
    results = [_set_diff("live_vectors_match_driver", "the driver's read-out", driver, expected),
               _set_diff("live_vectors_match_qemu_table", "QEMU's unmasked entries", qemu,
                         ledger.unmasked_in_qemu())]
    irqs = [r.irq for r in snapshot.allocated()]
    if msi_irqs is None:
        results.append(CheckResult("msi_irqs_match_driver", None, Verdict.FAIL,
                                   "the kernel's msi_irqs list could not be read"))
    else:
        result = _set_diff("msi_irqs_match_driver", "the kernel's msi_irqs", msi_irqs, irqs)
        if len(irqs) != len(set(irqs)):
            result = CheckResult(result.name, None, Verdict.FAIL,
                                 f"the driver reports one IRQ for two vectors: {sorted(irqs)}",
                                 {"irqs": sorted(irqs)})
        results.append(result)
    return results


def pending_bits_match_device(ledger: Ledger, pba: Iterable[int],
                              device_state: Mapping[str, Any]) -> CheckResult:
    """With several raises held at once, the guest-visible PBA, the device's own pending
    bits and the ledger's held raises are one set: a bit lost, or set on a neighbour, by
    the PBA's byte handling shows as a difference."""
    pba = set(pba)
    device = {v["index"] for v in device_state.get("vectors", []) if v.get("pending")}
    expected = ledger.expected_pending()
    problems = []
    for what, seen in (("the guest-visible PBA", pba), ("the device's pending bits", device)):
        if seen != expected:
            problems.append(f"{what} {sorted(seen)}, expected {sorted(expected)}")
    return _result("pending_bits_match_device", None, problems, pba=sorted(pba),
                   device=sorted(device), expected=sorted(expected))


def pba_matches_pending(ledger: Ledger, pba: Iterable[int]) -> CheckResult:
    """The PBA the guest reads shows exactly the raises the device should hold."""
    return _set_diff("pba_matches_pending", "the guest-visible PBA", pba,
                     ledger.expected_pending())


# --- groups ---------------------------------------------------------------------------------

def group_allocated_as_requested(request: GroupRequest, live_before: set[int],
                                 table_size: int) -> CheckResult:
    """The indices an allocation returned are what was asked."""
    indices = list(request.indices)
    problems = []
    if request.start is not None:
        wanted = list(range(request.start, request.start + len(indices)))
        if indices != wanted or not request.min <= len(indices) <= request.max:
            problems.append(f"asked for {request.min}..{request.max} from index "
                            f"{request.start}, got {indices}")
    elif not request.min <= len(indices) <= request.max:
        problems.append(f"asked for {request.min}..{request.max} vectors, got {len(indices)}")
    if len(set(indices)) != len(indices):
        problems.append(f"an index appears twice in {indices}")
    outside = [i for i in indices if not 0 <= i < table_size]
    if outside:
        problems.append(f"indices {outside} are outside the {table_size}-entry table")
    taken = sorted(set(indices) & live_before)
    if taken:
        problems.append(f"indices {taken} were already live")
    return _result("group_allocated_as_requested", None, problems, group=request.label,
                   request={"min": request.min, "max": request.max, "start": request.start},
                   indices=indices)


def group_id_unique(request: GroupRequest, ids_in_use: set[int],
                    ids_retired: set[int]) -> CheckResult:
    """A new group's id is not one of a live group, nor one the driver handed out before."""
    problems = []
    if request.group in ids_in_use:
        problems.append(f"group id {request.group} is already live")
    elif request.group in ids_retired:
        problems.append(f"group id {request.group} was given before")
    return _result("group_id_unique", None, problems, group=request.label, id=request.group,
                   live_ids=sorted(ids_in_use))


# --- counts ---------------------------------------------------------------------------------

def counts_match_raises(ledger: Ledger, snapshot: Snapshot) -> list[CheckResult]:
    """Every expected vector's handler count equals what the ledger says it received."""
    results = []
    for index, expected in ledger.expected_counts().items():
        record = snapshot.get(index)
        if record is None or record.guest is None:
            results.append(CheckResult("counts_match_raises", index, Verdict.FAIL,
                                       "no guest vector at an index the ledger has live"))
            continue
        total = record.guest.total
        problems = [] if total == expected else [
            f"counted {total}, expected {expected} "
            f"({'lost' if total < expected else 'spurious or duplicated'})"]
        results.append(_result("counts_match_raises", index, problems, counted=total,
                               expected=expected, counts=list(record.guest.counts)))
    return results


def device_counters_match(ledger: Ledger, device_state: Mapping[str, Any]) -> list[CheckResult]:
    """The device's per-vector raised/delivered/pending, for every index of the table,
    and its interrupt total, equal the ledger's."""
    results = []
    seen = {v["index"]: v for v in device_state.get("vectors", [])}
    for index, (raised, delivered, pending) in ledger.expected_device().items():
        vector = seen.get(index)
        if vector is None:
            results.append(CheckResult("device_counters_match", index, Verdict.FAIL,
                                       "the device reports no such vector"))
            continue
        got = (vector.get("raised"), vector.get("delivered"), bool(vector.get("pending")))
        if got == (raised, delivered, pending) and not (raised or got[0]):
            continue                  # a never-raised index: nothing to report
        problems = [] if got == (raised, delivered, pending) else [
            f"device raised/delivered/pending {got}, expected {(raised, delivered, pending)}"]
        results.append(_result("device_counters_match", index, problems,
                               device=list(got), expected=[raised, delivered, pending]))
    total = device_state.get("irq_total")
    results.append(_result("irq_total_matches", None,
                           [] if total == ledger.doorbell_raises else
                           [f"IRQ total register {total}, doorbell raises made "
                            f"{ledger.doorbell_raises}"],
                           irq_total=total, doorbell_raises=ledger.doorbell_raises))
    return results


def device_bookkeeping_match(ledger: Ledger,
                             device_state: Mapping[str, Any]) -> list[CheckResult]:
    """The device's own error and bookkeeping counters against the ledger: every error
    counter zero (``device_errors_zero``: a raise the device lost through an error path
    and counted there is a failure even if something else hid it), LAST_VECTOR the last
    doorbell raise and PENDING_COUNT the raises held pending, both equal to the pending
    vectors the device itself reports (``device_registers_match``)."""
    errors = dict(device_state.get("errors") or {})
    registers = device_state.get("registers")
    if registers is None:
        return [CheckResult(name, None, Verdict.FAIL, "the device reports no registers")
                for name in ("device_errors_zero", "device_registers_match")]
    errors["errors_register"] = registers.get("errors")
    nonzero = {k: v for k, v in sorted(errors.items()) if v != 0}
    results = [_result("device_errors_zero", None,
                       [f"device error counters not zero: {nonzero}"] if nonzero else [],
                       errors=errors)]
    pending = ledger.expected_pending()
    reported = sorted(v["index"] for v in device_state.get("vectors", []) if v.get("pending"))
    problems = []
    if registers.get("pending_count") != len(pending):
        problems.append(f"PENDING_COUNT {registers.get('pending_count')}, "
                        f"{len(pending)} raises held pending {sorted(pending)}")
    if registers.get("pending_count") != len(reported):
        problems.append(f"PENDING_COUNT {registers.get('pending_count')}, the device reports "
                        f"{len(reported)} vectors pending {reported}")
    if registers.get("last_vector") != ledger.last_doorbell:
        problems.append(f"LAST_VECTOR {registers.get('last_vector')}, last doorbell raise "
                        f"{ledger.last_doorbell}")
    results.append(_result("device_registers_match", None, problems, registers=dict(registers),
                           expected_pending=sorted(pending), device_pending=reported,
                           last_doorbell=ledger.last_doorbell))
    return results


def device_masks_match_qemu(snapshot: Snapshot,
                            device_state: Mapping[str, Any]) -> CheckResult:
    """The fourth view of masking: the device's per-vector mask bits against QEMU's table.

    A client that forwards per-vector masking (the device advertises MASKABLE and QEMU has
    sent SET_IRQS MASK or UNMASK) must leave the device's bit of every vector it gave an
    eventfd (and of any the device masks) equal to that entry's mask bit in QEMU's table.  A client that does not (no
    MASKABLE, or QEMU 11.1.3, which keeps the masks in its own table: docs/device.md)
    must leave every device bit clear: a set bit is a device that masks on its own."""
    msix = device_state.get("msix") or {}
    requests = msix.get("requests") or {}
    forwarded = bool(msix.get("maskable")) and bool(requests.get("mask") or requests.get("unmask"))
    vectors = device_state.get("vectors", [])
    device = {v["index"] for v in vectors if v.get("masked")}
    if forwarded:
        # the vectors QEMU gave an eventfd, and any the device masks (QEMU must have)
        scope = {v["index"] for v in vectors if v.get("eventfd")} | device
        qemu = {r.index for r in snapshot.records
                if r.index in scope and r.qemu is not None and r.qemu.masked}
        problems = []
        if device - qemu:
            problems.append(f"the device masks {sorted(device - qemu)}, which QEMU's table "
                            f"has unmasked")
        if qemu - device:
            problems.append(f"QEMU's table masks {sorted(qemu - device)}, which the device "
                            f"has unmasked")
        return _result("device_masks_match_qemu_table", None, problems, forwarded=True,
                       device_masked=sorted(device), qemu_masked=sorted(qemu))
    problems = [] if not device else [
        f"the device masks {sorted(device)} though QEMU forwarded no per-vector mask"]
    return _result("device_masks_match_qemu_table", None, problems, forwarded=False,
                   maskable=bool(msix.get("maskable")), device_masked=sorted(device))


# --- requests ------------------------------------------------------------------------------

def requested_affinity_honoured(ledger: Ledger, snapshot: Snapshot) -> list[CheckResult]:
    """Vectors of a group allocated for a CPU have their effective affinity within it and
    their message targeting it."""
    results = []
    for index in sorted(ledger.live()):
        wanted = ledger.requested_cpus(index)
        if wanted is None:
            continue
        record = snapshot.get(index)
        if record is None or record.guest is None:
            results.append(CheckResult("requested_affinity_honoured", index, Verdict.FAIL,
                                       "no guest vector at an index the ledger has live"))
            continue
        effective = list(record.guest.affinity.effective)
        cpu = target_cpu(record)
        problems = []
        if not effective or not set(effective) <= set(wanted):
            problems.append(f"effective affinity {effective}, asked for {list(wanted)}")
        if cpu not in wanted:
            problems.append(f"the message targets CPU {cpu}, asked for {list(wanted)}")
        results.append(_result("requested_affinity_honoured", index, problems,
                               asked=list(wanted), effective=effective, target=cpu))
    return results

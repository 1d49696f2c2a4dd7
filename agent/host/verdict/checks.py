"""Checks: judging whether the three views of a vector agree.

Concepts owned here:
- A check is a small named function that takes records or snapshots (routing.py) and
  returns one CheckResult for one vector index: pass, fail (with evidence: what was
  seen against what was expected) or skip (with the reason it does not apply).
- Record checks judge one snapshot (``RECORD_CHECKS``): the message the guest caches,
  the table the guest reads and QEMU's table agree (cached_msg_matches_table); the
  message targets a CPU in the effective affinity (destination_matches_affinity); the
  effective affinity lies within what was asked, or the kernel's mask
  (affinity_honoured).
- Scenario checks judge a before/after pair of snapshots around a known number of
  raises: counted once on the target CPU (raise_counted_once_on_cpu); a freed entry is
  masked, cleared and delivers nothing (freed_entry_masked_and_cleared); a raise before
  allocation is held pending and delivered once after it
  (pending_delivered_after_alloc); a raise held while an index was free reaches its next
  owner once (freed_raise_delivered_once_on_reuse); the kernel's own view of an IRQ
  agrees with the driver's (kernel_irq_view_agrees).
- The checks against what the scenario asked for and did (the ledger) live in
  accounting.py; docs/routing.md tables every check, and a test keeps it complete.

Checks never raise on bad views; they fail or skip and say why.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.host.verdict.routing import (
    MSG_FIELDS,
    CheckResult,
    DestMode,
    MsiFormat,
    RoutingRecord,
    Snapshot,
    Verdict,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Judge:
    """Builds the results of one check on one index."""

    name: str
    index: int

    def passed(self) -> CheckResult:
        return self._result(Verdict.PASS, "", {})

    def failed(self, summary: str, **evidence: Any) -> CheckResult:
        return self._result(Verdict.FAIL, summary, evidence)

    def skipped(self, reason: str) -> CheckResult:
        return self._result(Verdict.SKIP, reason, {})

    def verdict(self, problems: list[str], **evidence: Any) -> CheckResult:
        """Fail naming every problem (with the evidence), or pass when there are none."""
        if problems:
            return self.failed("; ".join(problems), **evidence)
        return self.passed()

    def _result(self, verdict: Verdict, summary: str, evidence: dict) -> CheckResult:
        result = CheckResult(self.name, self.index, verdict, summary, evidence)
        level = logging.WARNING if verdict is Verdict.FAIL else logging.DEBUG
        log.log(level, "%s[%d]: %s %s", self.name, self.index, verdict, summary)
        return result


def from_problems(name: str, index: int | None, problems: list[str],
                  **evidence) -> CheckResult:
    """Check ``name`` (on vector ``index``, or None): a pass when ``problems`` is empty,
    else a failure whose summary joins them, with ``evidence``."""
    if problems:
        return CheckResult(name, index, Verdict.FAIL, "; ".join(problems), evidence)
    return CheckResult(name, index, Verdict.PASS)


def reprobe_problems(info: dict) -> list[str]:
    """What is wrong with a NIC the driver probed anew (the guest agent's ``info`` after a
    replug, rescan or bind): it must hold only its static vector (index 0, one group) and
    be able to allocate dynamically."""
    problems = []
    if info.get("allocated") != [0] or info.get("nr_groups") != 1:
        problems.append(f"after probe: allocated {info.get('allocated')}, "
                        f"{info.get('nr_groups')} groups (expected only index 0)")
    if not info.get("dyn_alloc"):
        problems.append("the re-probed device cannot allocate dynamically")
    return problems


def _deltas(before: Sequence[int], after: Sequence[int]) -> list[int]:
    """Per-CPU count increase; a CPU missing from one side counts as zero."""
    width = max(len(before), len(after))
    pad = lambda counts: list(counts) + [0] * (width - len(counts))  # noqa: E731
    return [a - b for a, b in zip(pad(after), pad(before))]


def _nonzero(deltas: Sequence[int]) -> dict[str, int]:
    return {str(cpu): n for cpu, n in enumerate(deltas) if n}


def target_cpu(record: RoutingRecord) -> int | None:
    """The CPU the vector should fire on: the decoded destination (a remappable
    message's from its IRTE), else the single effective CPU.  A remappable message whose
    IRTE was not resolved names no CPU (None): its handle says nothing of where the
    interrupt goes, and the effective affinity is where the kernel wants it, not where
    the IRTE sends it, so a stale IRTE would pass unseen."""
    if record.decoded is not None and record.decoded.cpu is not None:
        return record.decoded.cpu
    if record.decoded is not None and record.decoded.format is MsiFormat.REMAPPABLE:
        return None
    if record.guest is not None and len(record.guest.affinity.effective) == 1:
        return record.guest.affinity.effective[0]
    return None


def stray_counts(before: Snapshot, after: Snapshot, exclude: int) -> dict[str, int]:
    """Count increases on other vectors that kept their irq between the snapshots."""
    stray = {}
    for rec in after.allocated():
        old = before.get(rec.index)
        if rec.index == exclude or old is None or old.guest is None or old.irq != rec.irq:
            continue
        grew = sum(_deltas(old.guest.counts, rec.guest.counts))
        if grew:
            stray[str(rec.index)] = grew
    return stray


# --- record checks -------------------------------------------------------------------

def cached_msg_matches_table(record: RoutingRecord) -> CheckResult:
    """The guest's cached message == QEMU's table entry == the guest's live table read
    (address_lo, address_hi, data)."""
    judge = _Judge("cached_msg_matches_table", record.index)
    if record.guest is None:
        return judge.skipped("no guest vector at this index")
    if record.qemu is None:
        return judge.skipped("no QEMU table view")
    views = {"guest_cached": record.guest.msg, "guest_table": record.guest.table.message,
             "qemu_table": record.qemu.message}
    differing = [name for name in MSG_FIELDS
                 if len({getattr(msg, name) for msg in views.values()}) > 1]
    if not differing:
        return judge.passed()
    return judge.failed(f"{', '.join(differing)} differ between the views",
                        fields=differing, **{k: v.to_hex() for k, v in views.items()})


def destination_matches_affinity(record: RoutingRecord) -> CheckResult:
    """The decoded destination APIC ID names a CPU in the effective affinity (for a
    remappable message: the destination of the IRTE its handle names, which must have
    been read: an unresolved handle fails, since only the IRTE shows a stale
    destination)."""
    judge = _Judge("destination_matches_affinity", record.index)
    if record.guest is None or record.decoded is None:
        return judge.skipped("no guest vector at this index")
    decoded, affinity = record.decoded, record.guest.affinity
    if decoded.format is MsiFormat.REMAPPABLE and decoded.irte_present is None:
        return judge.failed(f"the message names IRTE {decoded.remap_handle}, which was not "
                            "read: its destination cannot be compared",
                            message=record.guest.msg.to_hex())
    if decoded.format is MsiFormat.REMAPPABLE and not decoded.irte_present:
        return judge.failed(f"the message names IRTE {decoded.remap_handle}, which is not "
                            "present", message=record.guest.msg.to_hex())
    evidence = {"message": record.guest.msg.to_hex(), "effective": list(affinity.effective),
                "requested": None if affinity.requested is None else list(affinity.requested)}
    if decoded.format is MsiFormat.NOT_MSI:
        return judge.failed("the guest's cached message is not an MSI address", **evidence)
    if decoded.dest_mode is DestMode.LOGICAL:
        return judge.skipped("logical destination mode: no single APIC ID to map")
    evidence |= {"dest_apic_id": decoded.dest_apic_id, "cpu": decoded.cpu}
    if decoded.cpu is None:
        return judge.failed(f"APIC ID {decoded.dest_apic_id} maps to no CPU", **evidence)
    if decoded.cpu not in affinity.effective:
        return judge.failed(f"destination CPU {decoded.cpu} not in effective affinity "
                            f"{list(affinity.effective)}", **evidence)
    return judge.passed()


def affinity_honoured(record: RoutingRecord) -> CheckResult:
    """The kernel put the vector where it was asked to: the effective affinity is a
    non-empty subset of the CPUs requested (by the group's allocation or a set_affinity),
    or of the kernel's affinity mask when nothing was requested."""
    judge = _Judge("affinity_honoured", record.index)
    if record.guest is None:
        return judge.skipped("no guest vector at this index")
    affinity = record.guest.affinity
    evidence = affinity.to_dict()
    if not affinity.effective:
        return judge.failed("no effective affinity", **evidence)
    outside = sorted(set(affinity.effective) - set(affinity.allowed))
    if outside:
        what = "requested" if affinity.requested is not None else "in the affinity mask"
        return judge.failed(f"effective CPUs {outside} were not {what}", **evidence)
    return judge.passed()


RECORD_CHECKS = (cached_msg_matches_table, destination_matches_affinity, affinity_honoured)


def record_checks(snapshot: Snapshot) -> list[CheckResult]:
    """Run every record check on every allocated vector of the snapshot."""
    return [check(record) for record in snapshot.allocated() for check in RECORD_CHECKS]


# --- scenario checks -------------------------------------------------------------------

def _device_deltas(before: RoutingRecord, after: RoutingRecord) -> dict[str, int] | None:
    if before.device is None or after.device is None:
        return None
    return {"raised": after.device.raised - before.device.raised,
            "delivered": after.device.delivered - before.device.delivered}


def raise_counted_once_on_cpu(before: Snapshot, after: Snapshot, index: int,
                              raises: int, *, strays: bool = True,
                              device: bool = True) -> CheckResult:
    """`raises` device-side raises of `index` between the snapshots were each counted
    exactly once, on the target CPU and on no other CPU, and the device delivered every
    one (``device``: unless they were raised before `before` and held); no other vector
    counted anything meanwhile (``strays``: unless others were raised at the same time,
    the accounting checks judge those)."""
    judge = _Judge("raise_counted_once_on_cpu", index)
    old, new = before.get(index), after.get(index)
    if old is None or new is None or old.guest is None or new.guest is None:
        return judge.skipped("vector not allocated in both snapshots")
    cpu = target_cpu(new)
    if cpu is None:
        return judge.skipped("cannot name the target CPU")
    problems = []
    if old.irq != new.irq:
        problems.append(f"irq changed from {old.irq} to {new.irq}")
    deltas = _nonzero(_deltas(old.guest.counts, new.guest.counts))
    if deltas != ({str(cpu): raises} if raises else {}):
        problems.append(f"counts grew by {deltas}, expected {{{cpu}: {raises}}}")
    device_deltas = _device_deltas(old, new)
    if device_deltas is None:
        problems.append("no device view")
    elif device and device_deltas != {"raised": raises, "delivered": raises}:
        problems.append(f"device {device_deltas}, expected raised = delivered = {raises}")
    stray = stray_counts(before, after, index) if strays else {}
    if stray:
        problems.append(f"other vectors counted {stray}")
    return judge.verdict(problems, cpu=cpu, raises=raises, count_deltas=deltas,
                         device_deltas=device_deltas, stray=stray)


def freed_entry_masked_and_cleared(before: Snapshot, after: Snapshot, index: int,
                                   raises: int) -> CheckResult:
    """`index` was freed before `before`: QEMU's entry is masked with address and data
    zero, and the `raises` between the snapshots reached the device but no guest vector
    (device raised grows by `raises`, no guest count grows).  The device may still hold
    an eventfd for the index and write it (QEMU sends nothing on free under TCG): QEMU
    then keeps the message pending behind the mask, so the device's delivered count is
    evidence here, not a verdict."""
    judge = _Judge("freed_entry_masked_and_cleared", index)
    old, new = before.get(index), after.get(index)
    if new is None or new.qemu is None:
        return judge.skipped("no QEMU table view of the entry")
    problems = []
    if new.guest is not None:
        problems.append(f"the guest still has a vector here (irq {new.irq})")
    if not new.qemu.masked:
        problems.append(f"entry not masked (ctrl {new.qemu.ctrl:#x})")
    if not new.qemu.cleared:
        problems.append("address/data not cleared")
    device = None if old is None else _device_deltas(old, new)
    if device is None:
        problems.append("no device view in both snapshots")
    elif device["raised"] != raises:
        problems.append(f"device {device}, expected raised {raises}")
    stray = stray_counts(before, after, index)
    if stray:
        problems.append(f"guest vectors counted {stray}")
    return judge.verdict(problems, qemu_table=new.qemu.to_hex(), raises=raises,
                         device_deltas=device, stray=stray,
                         device=None if new.device is None else new.device.to_dict())


def pending_delivered_after_alloc(pending: Snapshot, after: Snapshot, index: int,
                                  pba_pending: Collection[int] | None) -> CheckResult:
    """A raise of unallocated `index` before `pending` left it pending in the device and
    (when `pba_pending`, the guest's PBA read as pending indices, is given) in the PBA;
    after allocation (`after`) it was delivered exactly once, on the target CPU, and the
    pending state cleared."""
    judge = _Judge("pending_delivered_after_alloc", index)
    old, new = pending.get(index), after.get(index)
    if old is None or new is None or old.device is None or new.device is None:
        return judge.skipped("no device view of the vector in both snapshots")
    if new.guest is None:
        return judge.failed("not allocated in the guest after allocation",
                            device=new.device.to_dict())
    problems = []
    if old.guest is not None:
        problems.append(f"already allocated before (irq {old.irq})")
    if not old.device.pending:
        problems.append("device not pending before allocation")
    if pba_pending is not None and index not in pba_pending:
        problems.append("PBA bit not set before allocation")
    if new.device.pending:
        problems.append("device still pending after allocation")
    delivered = new.device.delivered - old.device.delivered
    if delivered != 1:
        problems.append(f"device delivered {delivered} times, expected once")
    cpu = target_cpu(new)
    counts = _nonzero(new.guest.counts)
    if counts != {str(cpu): 1}:
        problems.append(f"guest counted {counts}, expected {{{cpu}: 1}}")
    stray = stray_counts(pending, after, index)
    if stray:
        problems.append(f"other vectors counted {stray}")
    return judge.verdict(
        problems, cpu=cpu, counts=counts, delivered=delivered, stray=stray,
        pba_checked=pba_pending is not None,
        device_before=old.device.to_dict(), device_after=new.device.to_dict())


def freed_raise_delivered_once_on_reuse(freed: Snapshot, reused: Snapshot, index: int,
                                        held: int) -> CheckResult:
    """`held` raises of `index` while it was freed left one message pending behind the
    mask (QEMU's pending bit, as hardware's PBA): when the index is allocated again and
    unmasked, its new vector receives it exactly once (none if `held` is 0), on the
    target CPU."""
    judge = _Judge("freed_raise_delivered_once_on_reuse", index)
    old, new = freed.get(index), reused.get(index)
    if new is None or new.guest is None:
        return judge.skipped("index not allocated again")
    problems = []
    if old is not None and old.guest is not None:
        problems.append(f"index was not free before reuse (irq {old.irq})")
    expected = 1 if held else 0
    cpu = target_cpu(new)
    counts = _nonzero(new.guest.counts)
    if counts != ({str(cpu): expected} if expected else {}):
        problems.append(f"new vector counted {counts} at reuse, expected "
                        f"{ {str(cpu): expected} if expected else {} }")
    return judge.verdict(problems, held=held, cpu=cpu, counts=counts)


def kernel_irq_view_agrees(record: RoutingRecord, sysfs: Mapping[str, Any]) -> CheckResult:
    """The kernel's own view of the vector's IRQ (the guest agent's ``irq_sysfs``) agrees
    with the driver's: hwirq is the MSI-X index, the device lists the IRQ under
    ``msi_irqs`` as msix, the effective affinity is the same, and the kernel's per-CPU
    count of the IRQ equals the driver's handler counts."""
    judge = _Judge("kernel_irq_view_agrees", record.index)
    if record.guest is None:
        return judge.skipped("no guest vector at this index")
    sys_view, proc = sysfs.get("sys", {}), sysfs.get("proc", {})
    seen = {"hwirq": sys_view.get("hwirq"), "msi_irqs": sysfs.get("msi_irqs"),
            "effective": proc.get("effective_affinity_list"),
            "per_cpu_count": sys_view.get("per_cpu_count")}
    problems = []
    if seen["hwirq"] != record.index:
        problems.append(f"hwirq {seen['hwirq']!r} is not the index {record.index}")
    if seen["msi_irqs"] != "msix":
        problems.append(f"msi_irqs/{record.irq} reads {seen['msi_irqs']!r}, not 'msix'")
    if list(seen["effective"] or []) != list(record.guest.affinity.effective):
        problems.append(f"effective affinity {seen['effective']} != driver's "
                        f"{list(record.guest.affinity.effective)}")
    counts = list(record.guest.counts)
    kernel = list(seen["per_cpu_count"] or [])
    width = max(len(counts), len(kernel))
    if kernel[:width] + [0] * (width - len(kernel)) != counts + [0] * (width - len(counts)):
        problems.append(f"kernel counted {kernel}, the driver {counts}")
    return judge.verdict(problems, irq=record.irq, kernel=seen, driver_counts=counts)

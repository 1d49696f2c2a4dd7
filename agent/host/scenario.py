"""The default scenario: groups of vectors allocated, raised, freed and reused, checked.

Concepts: a scenario drives the lab through steps and collects ``CheckResult``s; each
step is logged with its wall time.  Snapshots (the three views of every vector) are taken
only when the device is quiet: after each raise the scenario waits, bounded, until the
guest has counted it (or, for a freed vector, until it is clear nothing arrives), so each
check sees exactly the effect of one action.

The default plan on an N-entry table: group A (4 vectors, any index), group B (2, any
index, affine to the last CPU), group C (3, from the explicit index N-4; index N-4 is
raised *before* C exists, so it must wait pending and arrive once at allocation), group D
(2..8, any).  Every vector, group 0 included, is raised once from the device and once by
the guest through the ICS doorbell.  Then B (a middle group) is freed, its indices raised
(nothing may arrive), and a new group E of B's size must reuse B's indices; the raise
each index got while freed was held pending behind the mask and must reach E's vector
exactly once.  Last, the kernel's own view of every IRQ (hwirq, msi_irqs, effective
affinity, per-CPU counts) must agree with the driver's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

from . import checks
from .errors import GuestAgentError, HostError
from .lab import Lab
from .routing import CheckResult, Snapshot, Verdict, pba_pending_indices

log = logging.getLogger(__name__)
Say = Callable[[str], None]
SETTLE_S = 0.5          # how long a freed vector is watched for a stray delivery
COUNT_TIMEOUT_S = 10.0  # how long a raise may take to be counted


class Scenario:
    def __init__(self, lab: Lab, say: Say = lambda text: log.info("%s", text)):
        self.lab = lab
        self.say = say
        self.results: list[CheckResult] = []
        self.steps: list[dict] = []
        self.groups: dict[str, dict] = {}

    # --- helpers ------------------------------------------------------------------------
    def _step(self, name: str, started: float, **detail) -> None:
        self.steps.append({"step": name, "seconds": round(time.monotonic() - started, 3), **detail})

    def _total(self, index: int) -> int:
        return self.lab.agent("vector", index=index)["total"]

    def _wait_total(self, index: int, want: int, timeout: float = COUNT_TIMEOUT_S) -> bool:
        """Wait, bounded, until the guest counted ``index`` ``want`` times.  A timeout is
        not an error here: the check that follows judges what arrived (a lost interrupt
        is a failed check, exit 1, not a run that could not judge)."""
        deadline = time.monotonic() + timeout
        while (total := self._total(index)) < want:
            if time.monotonic() > deadline:
                log.warning("vector %d: the guest counted %d, waited %g s for %d",
                            index, total, timeout, want)
                return False
            time.sleep(0.02)
        return True

    def _alloc(self, label: str, **args) -> dict:
        started = time.monotonic()
        group = self.lab.agent("alloc_group", **args)
        self.groups[label] = group
        self._step(f"alloc {label}", started, args=args, group=group["group"],
                   vectors=group["indices"])
        self.say(f"allocated group {label} (id {group['group']}): vectors {group['indices']}")
        return group

    def _add(self, results) -> None:
        for result in results if isinstance(results, list) else [results]:
            self.results.append(result)
            if result.verdict is Verdict.FAIL:
                self.say(f"[red]FAIL[/] {result.name}[{result.index}]: {result.summary}")

    # --- the raises ---------------------------------------------------------------------
    def raise_each(self, indices: list[int], before: Snapshot) -> Snapshot:
        """Raise each index from the device, then from the guest's doorbell; check both."""
        for index in indices:
            total = self._total(index)
            self.lab.device.raise_vectors([index])
            self._wait_total(index, total + 1)
            after = self.lab.snapshot()
            self._add(checks.raise_counted_once_on_cpu(before, after, index, 1))
            before = after
            try:
                self.lab.agent("raise", index=index, timeout_ms=int(COUNT_TIMEOUT_S * 1000))
            except GuestAgentError as err:
                if err.code != "ETIMEDOUT":
                    raise
                log.warning("vector %d: the doorbell raise was not counted in time", index)
            after = self.lab.snapshot()
            result = checks.raise_counted_once_on_cpu(before, after, index, 1)
            self._add(dataclasses.replace(result, name="doorbell_raise_counted_once_on_cpu"))
            before = after
        return before

    def raise_freed(self, indices: list[int], before: Snapshot) -> Snapshot:
        for index in indices:
            self.lab.device.raise_vectors([index])
            time.sleep(SETTLE_S)
            after = self.lab.snapshot()
            self._add(checks.freed_entry_masked_and_cleared(before, after, index, 1))
            before = after
        return before

    # --- the plan -----------------------------------------------------------------------
    def run(self) -> Snapshot:
        size = self.lab.device.state()["msix"]["table_size"]
        if size < 24:
            raise HostError(f"the default scenario needs a table of at least 24 vectors, not {size}")
        last_cpu = self.lab.cpus - 1
        early = size - 4

        started = time.monotonic()
        self.lab.device.raise_vectors([early])
        pending = self.lab.snapshot()
        pba = pba_pending_indices(self.lab.agent("read_pba")["words"])
        self._step("raise before allocation", started, index=early)
        self.say(f"raised unallocated vector {early}: device pending, PBA {sorted(pba)}")

        self._alloc("A", min=4, max=4)
        b = self._alloc("B", min=2, max=2, cpu=last_cpu)
        self._alloc("C", min=3, max=3, start=early)
        self._wait_total(early, 1)
        after_c = self.lab.snapshot()
        self._add(checks.pending_delivered_after_alloc(pending, after_c, early, pba))
        self._alloc("D", min=2, max=8)

        started = time.monotonic()
        snap = self.lab.snapshot()
        self._add(checks.record_checks(snap))
        allocated = [r.index for r in snap.allocated()]
        snap = self.raise_each(allocated, snap)
        self._step("raise every vector (device, doorbell)", started, vectors=allocated)
        self.say(f"raised {len(allocated)} vectors from the device and from the guest")

        started = time.monotonic()
        self.lab.agent("free_group", group=b["group"])
        freed = self.raise_freed(b["indices"], self.lab.snapshot())
        self._step("free B and raise its indices", started, vectors=b["indices"])
        self.say(f"freed group B, raised its indices {b['indices']}")

        e = self._alloc("E", min=len(b["indices"]), max=len(b["indices"]))
        self._add(self.index_reused(b["indices"], e["indices"]))
        time.sleep(SETTLE_S)     # let what QEMU held pending for these entries land
        snap = self.lab.snapshot()
        for index in e["indices"]:
            held = 1 if index in b["indices"] else 0
            self._add(checks.freed_raise_delivered_once_on_reuse(freed, snap, index, held))
        self._add(checks.record_checks(snap))
        snap = self.raise_each(e["indices"], snap)
        for record in snap.allocated():
            sysfs = self.lab.agent("irq_sysfs", irq=record.irq)
            self._add(checks.kernel_irq_view_agrees(record, sysfs))
        return snap.with_checks(self.results)

    @staticmethod
    def index_reused(freed: list[int], new: list[int]) -> list[CheckResult]:
        """A group allocated right after a free at any index gets the freed indices
        (the lowest free ones) back."""
        ok = sorted(new) == sorted(freed)
        return [CheckResult("freed_index_reused", index, Verdict.PASS if ok else Verdict.FAIL,
                            "" if ok else f"new group got {sorted(new)}, freed were {sorted(freed)}",
                            {} if ok else {"freed": sorted(freed), "new": sorted(new)})
                for index in new]

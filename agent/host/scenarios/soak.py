"""The soak: random alloc/free churn and raises at full rate on a started ``Lab``, every
interrupt reconciled against the raises made.

Concepts owned here:
- ``Soak``: draws ops from ``soak_plan.next_nic_op`` with one ``random.Random(seed)``
  until the time (or op) budget is spent or a check fails (fail fast), applies each to
  the guest and the device of the NIC it names, keeps every NIC's ``Ledger`` of what was
  asked and raised (each NIC's part is a ``soak_nic.NicSoak``), and records every op with
  its result in the op log (the same seed gives the same log, NIC choices included).
- *One raise in flight per vector.*  A device raise is one eventfd write; QEMU injects
  one interrupt for however many writes accumulated, and the LAPIC merges a second
  interrupt on a vector whose previous one is not yet serviced: raising a vector again
  before its last raise was counted is legitimate coalescing.  So every op raises
  distinct vectors and, before the next op, the driver waits (``totals`` with ``want``,
  one bounded wait in the guest, ``MSIXLAB_IOC_TOTALS``) until every live vector reached
  the count the ledger expects; then the totals are reconciled (soak_plan.reconcile):
  lost, duplicated or spurious is a named failed check.  Doorbell raises wait for their
  count in the driver already.  Every reconciliation covers every NIC's live vectors,
  so a raise counted on the wrong NIC fails (lost on one, spurious on the other).
- *Every second*: each NIC's device RAISED/DELIVERED/pending and IRQ_TOTAL register
  against its ledger (accounting.device_counters_match), each device server's RSS
  sampled, and a progress line.  An allocation refused with ENOSPC is judged against the
  free entries the ledger knows of and the CPUs' vector space (soak_plan.judge_enospc).
  *At the end*: every view of every NIC against its
  ledger (live set in the driver, QEMU's table and msi_irqs, counts, PBA, requested
  affinity).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from agent.host.scenarios.default import ring_doorbell
from agent.host.scenarios.soak_nic import NicSoak, SoakStats
from agent.host.scenarios.soak_plan import Op, SoakView, judge_enospc, next_nic_op
from agent.host.verdict import accounting
from agent.host.verdict.ledger import GroupRequest
from agent.host.verdict.outcome import DriverCallFailed
from agent.host.verdict.routing import CheckResult, Snapshot, Verdict

log = logging.getLogger(__name__)

DOORBELL_MS = 1000      # the driver's wait per doorbell raise
TICK_S = 1.0            # device counters, RSS and progress, this often


class Soak:
    """``run()`` soaks a started lab on its first ``nics`` NICs; ``failures``, ``passed``,
    ``op_log`` and ``stats`` (the totals; each NIC's in ``nics[i].stats``) hold what
    happened.  ``say`` prints a line (the CLI's console), ``tick`` is called every second
    with the totals (the CLI's progress)."""

    def __init__(self, lab, seed: int, seconds: float, max_ops: int | None = None,
                 say: Callable[[str], None] = lambda text: log.info("%s", text),
                 tick: Callable[[float, SoakStats], None] | None = None, nics: int = 1):
        self.lab, self.seed, self.seconds, self.max_ops = lab, seed, seconds, max_ops
        self.say, self.tick = say, tick
        self.rng = random.Random(seed)
        self.nics = [NicSoak(lab, nic, nics) for nic in range(nics)]
        self.failures: list[CheckResult] = []
        self.passed: Counter = Counter()
        self.op_log: list[dict[str, Any]] = []
        self.elapsed = 0.0
        self.final: Snapshot | None = None    # NIC 0's views at the end (routing.json)
        self.nic_records: dict[str, list] = {}  # with several NICs: each one's, at the end
        self.started = time.monotonic()
        self.step = ""

    @property
    def stats(self) -> SoakStats:
        """The totals over every NIC."""
        return SoakStats.merged([nic.stats for nic in self.nics])

    # --- bookkeeping -----------------------------------------------------------------------
    def _add(self, nic: NicSoak, results: CheckResult | Iterable[CheckResult]) -> None:
        for result in [results] if isinstance(results, CheckResult) else results:
            if result.verdict is Verdict.FAIL:
                self.failures.append(nic.named(result, self.step))
            elif result.verdict is Verdict.PASS:
                self._passed(nic, result.name)

    def _passed(self, nic: NicSoak, name: str, times: int = 1) -> None:
        self.passed[name] += times
        nic.passed[name] += times

    def results(self) -> list[CheckResult]:
        """Every failure, and one PASS per check that passed (how often, in its summary;
        per NIC with several, under ``nic<i>/soak``): what routing.json and the result
        files record of a soak.  A failure keeps its index only when it is NIC 0's and
        the final snapshot (NIC 0's) has that vector; otherwise the index moves to its
        evidence, as ``run --nics`` records other NICs' results."""
        indices = {r.index for r in self.final.records} if self.final else set()
        failures = [r if r.index is None or (r.index in indices and not r.evidence.get("nic"))
                    else dataclasses.replace(r, index=None,
                                             evidence={**r.evidence, "index": r.index})
                    for r in self.failures]
        several = len(self.nics) > 1
        return failures + [CheckResult(name, None, Verdict.PASS, f"passed {n} times",
                                       step=f"{nic.name}/soak" if several else "soak")
                           for nic in self.nics for name, n in sorted(nic.passed.items())]

    # --- running ---------------------------------------------------------------------------
    def run(self) -> None:
        """Soak until the time or op budget is spent or a check fails; every failure in
        ``failures``, the ops in ``op_log``, the numbers in ``stats``.  Errors of the
        lab (a splat, a driver error, a dead process) propagate, classified by the caller;
        so does ``Lab.check_not_stopped``'s when the failing op ran while the host had
        QEMU or a device server stopped."""
        self.step = "start"
        since = time.monotonic()        # the start of what the next failure judged
        for nic in self.nics:
            nic.start()
        self._reconcile(None, ())
        self.started = started = time.monotonic()
        next_tick = started + TICK_S
        while not self.failures:
            since = time.monotonic()
            self.elapsed = time.monotonic() - started
            done = len(self.op_log)
            if self.elapsed >= self.seconds or (self.max_ops is not None
                                                and done >= self.max_ops):
                break
            self.step = f"op{done}"
            op = next_nic_op(self.rng, self._views())
            nic = self.nics[op.nic or 0]
            entry = op.to_dict()
            self.op_log.append(entry)        # logged first: an op that raises is in the log
            entry.update(self._apply(nic, op))
            nic.stats.ops[op.kind] += 1
            if time.monotonic() >= next_tick:
                next_tick += TICK_S * max(1, int((time.monotonic() - next_tick) / TICK_S) + 1)
                self._every_second()
        self.elapsed = time.monotonic() - started
        if not self.failures:
            self.step = "final"
            since = time.monotonic()
            self._final()
        if self.failures:
            # failed while the host stopped QEMU or a device server: the guest could not
            # run, so the failure says nothing about the kernel (125)
            self.lab.check_not_stopped(since, f"{self.step} failed")

    def _views(self) -> list[SoakView]:
        """Every NIC's view for the op generator, the live cap shared by all NICs."""
        live = [len(nic.ledger.live()) for nic in self.nics]
        return [nic.view(sum(live) - own) for nic, own in zip(self.nics, live)]

    def _every_second(self) -> None:
        self.elapsed = time.monotonic() - self.started
        for nic in self.nics:
            self._add(nic, nic.every_second())
        if self.tick is not None:
            self.tick(self.elapsed, self.stats)

    def _final(self) -> None:
        """Every view of every NIC against its ledger once more, as the scenario's final
        step; a raise the device held for a live vector and delivered since the last op
        is reconciled first, and one it still holds fails ``held_raise_delivered``."""
        if any(nic.ledger.owed() for nic in self.nics):
            self._reconcile(None, ())
        self._every_second()
        for nic in self.nics:
            if nic.ledger.owed():       # what the device still holds for a live vector
                self._add(nic, nic.settle_owed(nic.target.device_command("state"),
                                               final=True)[1])
            snap, results = nic.final()
            self._add(nic, results)
            if nic.nic == 0:
                self.final = snap
            if len(self.nics) > 1:
                self.nic_records[nic.name] = [r.to_dict() for r in snap.allocated()]

    # --- the ops -----------------------------------------------------------------------------
    def _apply(self, nic: NicSoak, op: Op) -> dict[str, Any]:
        """Do one op on ``nic``; returns what the op log records of its result."""
        if op.kind == "alloc":
            return self._alloc(nic, dict(op.args))
        if op.kind == "free":
            nic.target.agent("free_group", group=op.args["group"])
            freed = nic.ledger.freed(op.args["group"])
            for index in freed.indices:
                nic.totals.pop(index, None)
            self._reconcile(nic, ())
            return {"freed": list(freed.indices)}
        vectors = list(op.args["vectors"])
        if op.kind == "raise_doorbell":
            timed_out = self._doorbell(nic, vectors)
            self._reconcile(nic, vectors)
            return {"timed_out": timed_out} if timed_out else {}
        outcomes = self._device_raise(nic, vectors, live=op.kind == "raise_device")
        self._reconcile(nic, vectors)
        return {"outcomes": outcomes} if any(o != "delivered" for o in outcomes) else {}

    def _alloc(self, nic: NicSoak, args: dict[str, Any]) -> dict[str, Any]:
        ledger = nic.ledger
        live_before, ids_before = ledger.live(), ledger.ids_in_use()
        try:
            group = nic.target.agent("alloc_group", **args)
        except DriverCallFailed as err:
            if err.code != "ENOSPC":
                raise
            nic.stats.enospc += 1        # judged: was the table or the vector space full?
            live = sum(len(other.ledger.live()) for other in self.nics)
            free = [i for i in range(ledger.table_size) if i not in live_before]
            self._add(nic, judge_enospc(args, free, ledger.table_size, live, self._spread()))
            return {"result": "ENOSPC"}
        request = GroupRequest(f"g{group['group']}", group["group"], tuple(group["indices"]),
                               args["min"], args["max"], args.get("start"), args.get("cpu"),
                               args.get("managed", False))
        self._add(nic, accounting.group_allocated_as_requested(request, live_before,
                                                               ledger.table_size))
        self._add(nic, accounting.group_id_unique(request, ids_before, ledger.retired_ids))
        if self.failures:
            return {"group": request.group, "indices": list(request.indices)}
        ledger.allocated(request)
        held = [i for i in request.indices if ledger.accounts[i].counted]
        self._reconcile(nic, held)       # a raise held for an index reaches its new owner
        return {"group": request.group, "indices": list(request.indices)}

    def _spread(self) -> int:
        """The CPUs a vector for no CPU may land on: the guest's, unless an appended
        ``irqaffinity=`` narrows the default affinity (then counted as one)."""
        append = getattr(self.lab, "append", ()) or ()
        return 1 if any("irqaffinity=" in param for param in append) else self.nics[0].ledger.cpus

    def _device_raise(self, nic: NicSoak, vectors: list[int], live: bool) -> list[str]:
        reply = nic.target.device_command("raise", vectors=vectors)
        outcomes = [r["outcome"] for r in reply["results"]]
        held = {}
        if live and "pending" in outcomes:
            held = {v["index"]: v for v in nic.target.device_command("state")["vectors"]}
        for index, outcome in zip(vectors, outcomes):
            # a dropped raise (a device fault) had an eventfd: the ledger expects it, so
            # the guest's missing count is judged as a lost interrupt
            has_eventfd = outcome in ("delivered", "dropped")
            # a live vector's raise held pending with its eventfd there (masked): owed to
            # the vector when the device delivers it (settle_owed judges when)
            owed = outcome == "pending" and held.get(index, {}).get("eventfd")
            if live and not has_eventfd and not owed:
                self._add(nic, CheckResult("live_vector_has_eventfd", index, Verdict.FAIL,
                                           f"raise of live vector {index} was {outcome}: "
                                           f"QEMU gave the device no eventfd for it"))
            nic.ledger.raised(index, has_eventfd=has_eventfd)
        if live and not self.failures:
            self._passed(nic, "live_vector_has_eventfd", len(vectors))
        nic.stats.raises["device" if live else "unowned"] += len(vectors)
        return outcomes

    def _doorbell(self, nic: NicSoak, vectors: list[int]) -> list[int]:
        # a raise not counted in time is judged by the reconciliation that follows
        timed_out = [index for index in vectors
                     if not ring_doorbell(nic.target, nic.ledger, index, DOORBELL_MS)]
        nic.stats.raises["doorbell"] += len(vectors)
        return timed_out

    def _reconcile(self, raised_on: NicSoak | None, raised: Iterable[int]) -> None:
        """Settle the raises each NIC's device held for live vectors (one ``state`` read,
        only on a NIC that has such a raise), wait (in the driver, bounded) for every live
        vector's expected count on every NIC, then judge every NIC's totals against its
        ledger; ``raised``: the indices raised (or reallocated with a held raise) on NIC
        ``raised_on`` by this op."""
        released = {}
        for nic in self.nics:
            if nic.ledger.owed():
                released[nic.nic], results = nic.settle_owed(
                    nic.target.device_command("state"))
                self._add(nic, results)
        self.judge_totals([nic.wait_totals() for nic in self.nics], raised_on, raised,
                          released)

    def judge_totals(self, totals: Sequence[Mapping[int, int]], raised_on: NicSoak | None,
                     raised: Iterable[int], released: Mapping[int, list[int]] | None = None
                     ) -> None:
        """Judge ``totals[i]`` (NIC i's totals, read now) against NIC i's ledger, every
        NIC: a count that is not where the ledger expects it fails on the NIC it was
        expected on (lost) and on the NIC it came up on (spurious), each named.
        ``released``: NIC -> the held raises its device delivered since (raised too)."""
        raised, released = list(raised), released or {}
        for nic, counted in zip(self.nics, totals, strict=True):
            mine = (raised if nic is raised_on else []) + released.get(nic.nic, [])
            self._add(nic, nic.judge(counted, mine))

"""The soak: random alloc/free churn and raises at full rate on a started ``Lab``, every
interrupt reconciled against the raises made.

Concepts owned here:
- ``Soak``: draws ops from ``soak_plan.next_op`` with a ``random.Random(seed)`` until the
  time (or op) budget is spent or a check fails (fail fast), applies each to the guest
  and the device, keeps the ``Ledger`` (ledger.py) of what was asked and raised, and
  records every op with its result in the op log (the same seed gives the same log).
- *One raise in flight per vector.*  A device raise is one eventfd write; QEMU injects
  one interrupt for however many writes accumulated, and the LAPIC merges a second
  interrupt on a vector whose previous one is not yet serviced: raising a vector again
  before its last raise was counted is legitimate coalescing.  So every op raises
  distinct vectors and, before the next op, the driver waits (``totals`` with ``want``,
  one bounded wait in the guest, ``MSIXLAB_IOC_TOTALS``) until every live vector reached
  the count the ledger expects; then the totals are reconciled (soak_plan.reconcile):
  lost, duplicated or spurious is a named failed check.  Doorbell raises wait for their
  count in the driver already.
- *Every second*: the device's per-vector RAISED/DELIVERED/pending and its IRQ_TOTAL
  register against the ledger (accounting.device_counters_match), the device server's
  RSS sampled, and a progress line.  *At the end*: every view against the ledger (live
  set in the driver, QEMU's table and msi_irqs, counts, PBA, requested affinity).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import accounting
from .ledger import GroupRequest, Ledger
from .outcome import DriverCallFailed
from .routing import CheckResult, Snapshot, Verdict
from .scenario import ring_doorbell
from .soak_plan import Op, SoakView, next_op, reconcile

log = logging.getLogger(__name__)

WAIT_MS = 5000          # how long the driver waits for a batch's counts (then: judged)
DOORBELL_MS = 1000      # the driver's wait per doorbell raise
TICK_S = 1.0            # device counters, RSS and progress, this often
LIVE_CAP = 192          # allocate while fewer vectors are live (x86 has ~200 per CPU)


@dataclass
class SoakStats:
    """What the soak did, for the progress lines and the summary."""

    ops: Counter = field(default_factory=Counter)
    raises: Counter = field(default_factory=Counter)     # device, doorbell, unowned
    interrupts: int = 0             # interrupts the guest counted, reconciled
    enospc: int = 0
    reconciliations: int = 0
    rss_kib: list[int] = field(default_factory=list)
    device: dict[str, int] = field(default_factory=dict)   # the last state read's sums

    def to_dict(self, seconds: float) -> dict[str, Any]:
        """The summary of soak.json; rates over ``seconds`` of soaking."""
        raises = sum(self.raises.values())
        return {"ops": sum(self.ops.values()), "ops_by_kind": dict(self.ops),
                "raises": raises, "raises_by_source": dict(self.raises),
                "interrupts": self.interrupts, "alloc_enospc": self.enospc,
                "reconciliations": self.reconciliations, "seconds": round(seconds, 3),
                "device": dict(self.device),
                "interrupts_per_s": round(self.interrupts / seconds, 1) if seconds else 0.0,
                "device_rss_kib": {"samples": list(self.rss_kib),
                                   "first": self.rss_kib[0] if self.rss_kib else None,
                                   "last": self.rss_kib[-1] if self.rss_kib else None,
                                   "max": max(self.rss_kib) if self.rss_kib else None}}


def device_rss_kib(pid: int | None) -> int | None:
    """VmRSS of process ``pid`` in KiB, None when it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Soak:
    """``run()`` soaks a started lab; ``failures``, ``passed``, ``op_log`` and ``stats``
    hold what happened.  ``say`` prints a line (the CLI's console), ``tick`` is called
    every second with the stats (the CLI's progress)."""

    def __init__(self, lab, seed: int, seconds: float, max_ops: int | None = None,
                 say: Callable[[str], None] = lambda text: log.info("%s", text),
                 tick: Callable[[float, SoakStats], None] | None = None):
        self.lab, self.seed, self.seconds, self.max_ops = lab, seed, seconds, max_ops
        self.say, self.tick = say, tick
        self.rng = random.Random(seed)
        self.ledger: Ledger | None = None
        self.failures: list[CheckResult] = []
        self.passed: Counter = Counter()
        self.op_log: list[dict[str, Any]] = []
        self.stats = SoakStats()
        self.totals: dict[int, int] = {}
        self.elapsed = 0.0
        self.final: Snapshot | None = None    # every view at the end (routing.json)
        self.started = time.monotonic()
        self.step = ""

    # --- bookkeeping -----------------------------------------------------------------------
    def _add(self, results: CheckResult | Iterable[CheckResult]) -> None:
        for result in [results] if isinstance(results, CheckResult) else results:
            if result.verdict is Verdict.FAIL:
                self.failures.append(CheckResult(result.name, result.index, result.verdict,
                                                 result.summary, result.evidence, self.step))
            elif result.verdict is Verdict.PASS:
                self.passed[result.name] += 1

    def results(self) -> list[CheckResult]:
        """Every failure, and one PASS per check that passed (how often, in its summary):
        what routing.json and the result files record of a soak."""
        return self.failures + [CheckResult(name, None, Verdict.PASS, f"passed {n} times",
                                            step="soak")
                                for name, n in sorted(self.passed.items())]

    def view(self) -> SoakView:
        """What the op generator may look at now: the ledger's live groups."""
        return SoakView(self.ledger.table_size, self.ledger.cpus,
                        {gid: g.indices for gid, g in self.ledger.groups.items()},
                        live_cap=min(LIVE_CAP, self.ledger.table_size))

    # --- running ---------------------------------------------------------------------------
    def run(self) -> None:
        """Soak until the time or op budget is spent or a check fails; every failure in
        ``failures``, the ops in ``op_log``, the numbers in ``stats``.  Errors of the
        lab (a splat, a driver error, a dead process) propagate, classified by the caller."""
        state = self.lab.device_command("state")
        self.ledger = Ledger(state["msix"]["table_size"], self.lab.cpus)
        self.step = "start"
        self._baseline()
        self._reconcile(())
        self.started = started = time.monotonic()
        next_tick = started + TICK_S
        while not self.failures:
            self.elapsed = time.monotonic() - started
            done = len(self.op_log)
            if self.elapsed >= self.seconds or (self.max_ops is not None
                                                and done >= self.max_ops):
                break
            self.step = f"op{done}"
            op = next_op(self.rng, self.view())
            entry = op.to_dict()
            self.op_log.append(entry)        # logged first: an op that raises is in the log
            entry.update(self._apply(op))
            self.stats.ops[op.kind] += 1
            if time.monotonic() >= next_tick:
                next_tick += TICK_S * max(1, int((time.monotonic() - next_tick) / TICK_S) + 1)
                self._every_second()
        self.elapsed = time.monotonic() - started
        if not self.failures:
            self.step = "final"
            self._final()

    def _baseline(self) -> None:
        """What the static vector (index 0) counted before the soak: the ledger counts
        from there (a lab reused between tests keeps its driver, not its counts)."""
        totals = self.lab.agent("totals")["totals"]
        for index in self.ledger.live():
            self.ledger.accounts[index].counted = totals.get(str(index), 0)
            self.totals[index] = totals.get(str(index), 0)

    def _every_second(self) -> None:
        self.elapsed = time.monotonic() - self.started
        state = self.lab.device_command("state")
        self._add(accounting.device_counters_match(self.ledger, state))
        vectors = state.get("vectors", [])
        self.stats.device = {"raised": sum(v.get("raised", 0) for v in vectors),
                             "delivered": sum(v.get("delivered", 0) for v in vectors),
                             "dropped": sum(v.get("dropped", 0) for v in vectors),
                             "irq_total": state.get("irq_total")}
        rss = device_rss_kib(self.lab.device.pid)
        if rss is not None:
            self.stats.rss_kib.append(rss)
        if self.tick is not None:
            self.tick(self.elapsed, self.stats)

    def _final(self) -> None:
        """Every view against the ledger once more, as the scenario's final step."""
        self._every_second()
        snap = self.final = self.lab.snapshot()
        irqs = [entry["irq"] for entry in self.lab.agent("msi_irqs")["irqs"]]
        self._add(accounting.live_set_checks(self.ledger, snap, irqs))
        self._add(accounting.counts_match_raises(self.ledger, snap))
        self._add(accounting.pba_matches_pending(self.ledger,
                                                 self.lab.agent("read_pba")["pending"]))
        self._add(accounting.requested_affinity_honoured(self.ledger, snap))

    # --- the ops -----------------------------------------------------------------------------
    def _apply(self, op: Op) -> dict[str, Any]:
        """Do one op; returns what the op log records of its result."""
        if op.kind == "alloc":
            return self._alloc(dict(op.args))
        if op.kind == "free":
            self.lab.agent("free_group", group=op.args["group"])
            freed = self.ledger.freed(op.args["group"])
            for index in freed.indices:
                self.totals.pop(index, None)
            self._reconcile(())
            return {"freed": list(freed.indices)}
        vectors = list(op.args["vectors"])
        if op.kind == "raise_doorbell":
            timed_out = self._doorbell(vectors)
            self._reconcile(vectors)
            return {"timed_out": timed_out} if timed_out else {}
        outcomes = self._device_raise(vectors, live=op.kind == "raise_device")
        self._reconcile(vectors)
        return {"outcomes": outcomes} if any(o != "delivered" for o in outcomes) else {}

    def _alloc(self, args: dict[str, Any]) -> dict[str, Any]:
        live_before, ids_before = self.ledger.live(), self.ledger.ids_in_use()
        try:
            group = self.lab.agent("alloc_group", **args)
        except DriverCallFailed as err:
            if err.code != "ENOSPC":
                raise
            self.stats.enospc += 1       # the table, or the CPUs' vector space, is full
            return {"result": "ENOSPC"}
        request = GroupRequest(f"g{group['group']}", group["group"], tuple(group["indices"]),
                               args["min"], args["max"], args.get("start"), args.get("cpu"),
                               args.get("managed", False))
        self._add(accounting.group_allocated_as_requested(request, live_before,
                                                          self.ledger.table_size))
        self._add(accounting.group_id_unique(request, ids_before, self.ledger.retired_ids))
        if self.failures:
            return {"group": request.group, "indices": list(request.indices)}
        self.ledger.allocated(request)
        held = [i for i in request.indices if self.ledger.accounts[i].counted]
        self._reconcile(held)            # a raise held for an index reaches its new owner
        return {"group": request.group, "indices": list(request.indices)}

    def _device_raise(self, vectors: list[int], live: bool) -> list[str]:
        reply = self.lab.device_command("raise", vectors=vectors)
        outcomes = [r["outcome"] for r in reply["results"]]
        for index, outcome in zip(vectors, outcomes):
            # a dropped raise (a device fault) had an eventfd: the ledger expects it, so
            # the guest's missing count is judged as a lost interrupt
            has_eventfd = outcome in ("delivered", "dropped")
            if live and not has_eventfd:
                self._add(CheckResult("live_vector_has_eventfd", index, Verdict.FAIL,
                                      f"raise of live vector {index} was {outcome}: QEMU "
                                      f"gave the device no eventfd for it"))
            self.ledger.raised(index, has_eventfd=has_eventfd)
        if live and not self.failures:
            self.passed["live_vector_has_eventfd"] += len(vectors)
        self.stats.raises["device" if live else "unowned"] += len(vectors)
        return outcomes

    def _doorbell(self, vectors: list[int]) -> list[int]:
        # a raise not counted in time is judged by the reconciliation that follows
        timed_out = [index for index in vectors
                     if not ring_doorbell(self.lab, self.ledger, index, DOORBELL_MS)]
        self.stats.raises["doorbell"] += len(vectors)
        return timed_out

    def _reconcile(self, raised: Iterable[int]) -> None:
        """Wait (in the driver, bounded) for every live vector's expected count, then
        judge every total against the ledger."""
        expected = self.ledger.expected_counts()
        reply = self.lab.agent("totals", want={str(i): n for i, n in expected.items()},
                               timeout_ms=WAIT_MS, timeout=WAIT_MS / 1000 + 30)
        totals = {int(index): total for index, total in reply["totals"].items()}
        self._add(reconcile(expected, self.totals, totals, raised))
        self.stats.interrupts += sum(max(0, totals.get(i, 0) - self.totals.get(i, 0))
                                     for i in expected)
        self.stats.reconciliations += 1
        self.totals = {i: totals.get(i, 0) for i in expected}

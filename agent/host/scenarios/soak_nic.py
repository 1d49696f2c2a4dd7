"""One NIC's part of a soak, and the numbers a soak keeps (``msixlab soak --nics N``).

Concepts owned here:
- ``SoakStats``: what a soak did (ops by kind, raises by source, interrupts counted,
  ENOSPC allocations, reconciliations, the device's counter sums, the device server's
  RSS samples).  Each NIC keeps its own; ``SoakStats.merged`` makes the totals.
- ``NicSoak``: one NIC as the soak sees it: its ``Ledger`` (what was asked and raised on
  it), the totals it last reconciled, its stats and passed checks, and the lab bound to
  it (``scenarios.nics.NicView``: the guest agent's commands select its driver device,
  device commands go to its device server).  ``judge`` reconciles the guest's totals
  against its ledger; ``every_second`` and ``final`` read its device, QEMU's table and
  the guest's views.  With several NICs every result it makes is *named* for it: step
  ``nic<i>/<step>``, ``NIC <i>:`` in the summary and ``nic`` in the evidence (the
  ``run --nics`` naming), so a raise made on one NIC but counted on another fails on
  both, each under its own NIC: lost on the one, spurious on the other.  With one NIC
  the results are exactly those of the single-NIC soak.
- A live vector's raise the device holds pending is *owed* (``Ledger.owed``):
  ``settle_owed`` books it counted once the device delivers it, and fails
  ``held_raise_delivered`` when the device still holds it past the vector's unmask, or
  at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from msixlab_common.lifetime import process_status

from agent.host.scenarios.nics import NicView
from agent.host.scenarios.soak_plan import SoakView, reconcile
from agent.host.verdict import accounting
from agent.host.verdict.ledger import Ledger
from agent.host.verdict.routing import CheckResult, Snapshot, Verdict

WAIT_MS = 5000          # how long the driver waits for a batch's counts (then: judged)
LIVE_CAP = 192          # allocate while fewer vectors are live on all NICs (x86 has ~200 per CPU)


@dataclass
class SoakStats:
    """What the soak (or one NIC of it) did, for the progress lines and the summary."""

    ops: Counter = field(default_factory=Counter)
    raises: Counter = field(default_factory=Counter)     # device, doorbell, unowned
    interrupts: int = 0             # interrupts the guest counted, reconciled
    enospc: int = 0
    reconciliations: int = 0
    rss_kib: list[int] = field(default_factory=list)
    device: dict[str, int] = field(default_factory=dict)   # the last state read's sums

    @classmethod
    def merged(cls, parts: Sequence[SoakStats]) -> SoakStats:
        """The totals over every NIC (one NIC: its own stats, the same object).  Every
        reconciliation covers every NIC, so their count is a NIC's, not the sum; the RSS
        samples are summed over the device servers, sample by sample."""
        if len(parts) == 1:
            return parts[0]
        device: Counter = Counter()
        for part in parts:
            device.update({k: v for k, v in part.device.items() if v is not None})
        return cls(ops=sum((p.ops for p in parts), Counter()),
                   raises=sum((p.raises for p in parts), Counter()),
                   interrupts=sum(p.interrupts for p in parts),
                   enospc=sum(p.enospc for p in parts),
                   reconciliations=max(p.reconciliations for p in parts),
                   rss_kib=[sum(s) for s in zip(*(p.rss_kib for p in parts))],
                   device=dict(device))

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
    rss = process_status(pid).get("VmRSS", "") if pid is not None else ""
    return int(rss.split()[0]) if rss[:1].isdigit() else None


class NicSoak:
    """NIC ``nic`` of ``nics`` in a soak of ``lab``.  Nothing is read until ``start()``
    (or ``begin()``, its pure part)."""

    def __init__(self, lab, nic: int, nics: int):
        self.lab, self.nic, self.several = lab, nic, nics > 1
        self.ledger: Ledger | None = None
        self.totals: dict[int, int] = {}       # index -> the total last reconciled
        self.stats = SoakStats()
        self.passed: Counter = Counter()

    @cached_property
    def target(self) -> NicView:
        """The lab bound to this NIC: agent commands to its driver, device commands to its
        server, QEMU's table at its BARs."""
        return NicView(self.lab, self.nic)

    @property
    def name(self) -> str:
        """``nic<i>``, as ``run --nics`` names the NIC's steps."""
        return f"nic{self.nic}"

    def begin(self, table_size: int, cpus: int, totals: Mapping[str, int]) -> None:
        """A fresh ledger; what the static vector (index 0) counted before the soak is
        where it counts from (a lab reused between tests keeps its driver, not its counts)."""
        self.ledger = Ledger(table_size, cpus)
        for index in self.ledger.live():
            self.ledger.accounts[index].counted = totals.get(str(index), 0)
            self.totals[index] = totals.get(str(index), 0)

    def start(self) -> None:
        """Read the NIC's table size and its vectors' totals, then ``begin``."""
        state = self.target.device_command("state")
        self.begin(state["msix"]["table_size"], self.lab.cpus,
                   self.target.agent("totals")["totals"])

    def view(self, live_elsewhere: int = 0) -> SoakView:
        """What the op generator may look at on this NIC: the ledger's live groups.  The
        CPUs' vector space is shared by every NIC, so this NIC allocates only while fewer
        than ``LIVE_CAP`` vectors are live on all of them (``live_elsewhere``: on the
        others)."""
        return SoakView(self.ledger.table_size, self.ledger.cpus,
                        {gid: g.indices for gid, g in self.ledger.groups.items()},
                        live_cap=min(LIVE_CAP - live_elsewhere, self.ledger.table_size))

    def named(self, result: CheckResult, step: str) -> CheckResult:
        """``result`` made at ``step``, named for this NIC when there are several."""
        if not self.several:
            return replace(result, step=step)
        return replace(result, step=f"{self.name}/{step}",
                       summary=f"NIC {self.nic}: {result.summary}" if result.summary else "",
                       evidence={**result.evidence, "nic": self.nic})

    # --- reconciliation ----------------------------------------------------------------
    def wait_totals(self) -> dict[int, int]:
        """The guest's totals once every live vector reached the count the ledger expects
        (the driver waits, at most ``WAIT_MS``) or the wait ended: index -> total."""
        want = {str(i): n for i, n in self.ledger.expected_counts().items()}
        reply = self.target.agent("totals", want=want, timeout_ms=WAIT_MS,
                                  timeout=WAIT_MS / 1000 + 30)
        return {int(index): total for index, total in reply["totals"].items()}

    def judge(self, totals: Mapping[int, int], raised: Iterable[int]) -> list[CheckResult]:
        """Reconcile ``totals`` (read now) against the ledger; ``raised``: the indices
        raised on this NIC since the last reconciliation.  Counts the interrupts."""
        expected = self.ledger.expected_counts()
        results = reconcile(expected, self.totals, totals, raised)
        self.stats.interrupts += sum(max(0, totals.get(i, 0) - self.totals.get(i, 0))
                                     for i in expected)
        self.stats.reconciliations += 1
        self.totals = {i: totals.get(i, 0) for i in expected}
        return results

    # --- raises the device holds for live vectors ---------------------------------------
    def settle_owed(self, state: Mapping[str, Any], final: bool = False
                    ) -> tuple[list[int], list[CheckResult]]:
        """The raises the device held pending for live vectors (``Ledger.owed``) against its
        ``state`` (read now): one it has since delivered (pending clear, one delivery more)
        is booked as counted once and returned, for the reconciliation that follows; one
        it still holds although it could deliver it (MSI-X on, no MASKALL, the vector
        unmasked with its eventfd: past the unmask that owed it), or any still held at the
        end (``final``), fails ``held_raise_delivered``."""
        msix = state.get("msix") or {}
        vectors = {v["index"]: v for v in state.get("vectors", [])}
        released, results = [], []
        for index in sorted(self.ledger.owed()):
            vector, account = vectors.get(index, {}), self.ledger.accounts[index]
            if (not vector.get("pending")
                    and vector.get("delivered") == account.delivered + 1):
                self.ledger.delivered_held(index)
                released.append(index)
                results.append(CheckResult("held_raise_delivered", index, Verdict.PASS))
                continue
            could = (msix.get("enabled") and not msix.get("function_mask")
                     and vector.get("eventfd") and not vector.get("masked"))
            if could or final:
                why = ("at the end of the soak" if not could else
                       "although it could deliver it (eventfd, unmasked, no MASKALL)")
                results.append(CheckResult(
                    "held_raise_delivered", index, Verdict.FAIL,
                    f"the device still holds live vector {index}'s raise pending {why}",
                    {"device": {k: vector.get(k) for k in ("eventfd", "masked", "pending",
                                                           "raised", "delivered")},
                     "msix": {k: msix.get(k) for k in ("enabled", "function_mask")},
                     "expected_delivered": account.delivered + 1}))
        return released, results

    # --- the device, every second, and every view at the end ----------------------------
    def every_second(self) -> list[CheckResult]:
        """The device's counters against the ledger; its sums and its server's RSS kept."""
        state = self.target.device_command("state")
        vectors = state.get("vectors", [])
        self.stats.device = {"raised": sum(v.get("raised", 0) for v in vectors),
                             "delivered": sum(v.get("delivered", 0) for v in vectors),
                             "dropped": sum(v.get("dropped", 0) for v in vectors),
                             "irq_total": state.get("irq_total")}
        rss = device_rss_kib(self.lab.devices[self.nic].pid)
        if rss is not None:
            self.stats.rss_kib.append(rss)
        return accounting.device_counters_match(self.ledger, state)

    def final(self) -> tuple[Snapshot, list[CheckResult]]:
        """Every view of the NIC against the ledger, as the scenario's final step: the live
        set in the driver, QEMU's table and msi_irqs, the counts, the PBA, the requested
        affinity.  Returns the snapshot and the results."""
        snap = self.target.snapshot()
        irqs = [entry["irq"] for entry in self.target.agent("msi_irqs")["irqs"]]
        pba = self.target.agent("read_pba")["pending"]
        return snap, [*accounting.live_set_checks(self.ledger, snap, irqs),
                      *accounting.counts_match_raises(self.ledger, snap),
                      accounting.pba_matches_pending(self.ledger, pba),
                      *accounting.requested_affinity_honoured(self.ledger, snap)]

    def summary(self, seconds: float) -> dict[str, Any]:
        """This NIC's part of soak.json's summary (with several NICs)."""
        return {**self.stats.to_dict(seconds), "checks_passed": dict(self.passed)}

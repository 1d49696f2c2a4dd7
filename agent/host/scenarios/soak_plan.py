"""The soak's pure parts: the operations a seed makes, and how counts are reconciled.

Concepts owned here:
- ``Op``: one soak operation: ``alloc`` (a group of random size, at any index or at an
  explicit start inside a free run of the table, with or without a CPU, managed or
  not), ``free`` (a live group), ``raise_device`` (a batch of distinct live vectors
  raised at once through the device's control channel), ``raise_doorbell`` (distinct
  live vectors raised one after the other by the guest driver's ICS doorbell) and
  ``raise_unowned`` (an index nobody owns, raised from the device: held pending, or by
  QEMU behind the freed entry's mask, for the index's next owner).
- ``next_op(rng, view)``: the next operation, drawn from a ``random.Random(seed)`` and
  the live groups (``SoakView``) only, so a seed replays the same sequence on a kernel
  that answers the same (the driver hands out the lowest free indices and group ids in
  order).  ``next_nic_op(rng, views)``: with several NICs (one view each) the same
  generator first draws the NIC, then its op, and the op names the NIC; with one NIC it
  is ``next_op`` and draws nothing more (a one-NIC soak makes the ops it always made).  At most one raise per vector is in flight: every raise op names distinct
  vectors, and the runner waits for each to be counted before the next op.
- ``reconcile(expected, before, totals, raised)``: the guest's per-vector totals
  against what the ledger expects, each difference named: ``no_interrupt_lost`` (a
  vector counted fewer than were raised to it), ``no_interrupt_duplicated`` (a raised
  vector counted more) and ``no_spurious_interrupt`` (a count on a vector nobody raised
  since the last reconciliation).
- ``judge_enospc(...)``: an allocation the driver refused with ``ENOSPC``, against the
  free entries the ledger knows of and the CPUs' vector space: a refusal while both
  certainly had room for the group's ``min`` is ``enospc_only_when_full`` failed.
- ``SOAK_CHECKS``: every check the soak makes (what ``make mutate`` reports on).
Pure data and arithmetic: no I/O, unit-tested on its own (tests/test_soak_plan.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.host.verdict.routing import CheckResult, Verdict

OP_KINDS = ("alloc", "free", "raise_device", "raise_doorbell", "raise_unowned")
WEIGHTS = {"alloc": 25, "free": 18, "raise_device": 37, "raise_doorbell": 15,
           "raise_unowned": 5}
MAX_GROUP = 16          # the largest group the soak asks for
MAX_DOORBELLS = 8       # doorbell raises per op (each one waits for its count)
RECONCILE_CHECKS = ("no_interrupt_lost", "no_interrupt_duplicated", "no_spurious_interrupt")
# Vectors the soak may count on finding free on any one x86 CPU of the guest.  Each CPU
# has the vectors 0x20..0xeb for devices (about 204); the legacy IRQs, the guest's other
# devices and the kernel's reservations take some, and the driver got about 193 per CPU
# in guest_tests/test_kmod_exhaustion.py (387 on 2 CPUs, 1593 on 8).  160 leaves a margin
# of 30 for what the guest's other drivers hold.
SAFE_VECTORS_PER_CPU = 160
SOAK_CHECKS = RECONCILE_CHECKS + ("live_vector_has_eventfd", "held_raise_delivered",
                                  "group_allocated_as_requested", "group_id_unique",
                                  "enospc_only_when_full")


@dataclass(frozen=True)
class Op:
    """One operation; ``args`` is JSON-ready (what the op log records); ``nic`` the NIC
    it is done on when the soak has several (None with one)."""

    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)
    nic: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The op as the op log records it: ``{"op": kind, "nic": nic, **args}``, without
        ``nic`` on a one-NIC soak."""
        nic = {} if self.nic is None else {"nic": self.nic}
        return {"op": self.kind, **nic, **self.args}


@dataclass(frozen=True)
class SoakView:
    """What the generator may look at: the table size, the CPUs and the live groups
    (group id -> its indices; group 0 is the driver's static vector)."""

    table_size: int
    cpus: int
    groups: Mapping[int, tuple[int, ...]]
    live_cap: int | None = None        # allocate only while fewer vectors are live

    def live(self) -> list[int]:
        """Every live index, ascending."""
        return sorted(i for indices in self.groups.values() for i in indices)

    def free_indices(self) -> list[int]:
        """Every index no group owns, ascending."""
        live = set(self.live())
        return [i for i in range(self.table_size) if i not in live]

    def dynamic_groups(self) -> list[int]:
        """The ids of the live groups but group 0, ascending."""
        return sorted(g for g in self.groups if g != 0)


def _free_runs(view: SoakView) -> list[tuple[int, int]]:
    """(start, length) of every run of free indices."""
    runs, start = [], None
    free = set(view.free_indices())
    for i in range(view.table_size + 1):
        if i in free and start is None:
            start = i
        elif i not in free and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def _alloc(rng: random.Random, view: SoakView) -> Op:
    free = len(view.free_indices())
    args: dict[str, Any] = {}
    runs = _free_runs(view)
    if runs and rng.random() < 0.4:                   # an explicit start in a free run
        start, length = rng.choice(runs)
        offset = rng.randrange(length)
        least = rng.randint(1, min(MAX_GROUP, length - offset))
        args.update(min=least, max=least + rng.randint(0, 3), start=start + offset)
    else:
        least = rng.randint(1, min(MAX_GROUP, free))
        args.update(min=least, max=least + rng.randint(0, 3))
    if rng.random() < 0.5:
        args["cpu"] = rng.randrange(view.cpus)
        args["managed"] = rng.random() < 0.3
    return Op("alloc", args)


def _choices(view: SoakView) -> list[str]:
    live, free = view.live(), view.free_indices()
    kinds = ["raise_device", "raise_doorbell"] if live else []
    cap = view.table_size if view.live_cap is None else view.live_cap
    if free and len(live) < cap:
        kinds.append("alloc")
    if view.dynamic_groups():
        kinds.append("free")
    if free:
        kinds.append("raise_unowned")
    return kinds


def next_op(rng: random.Random, view: SoakView) -> Op:
    """The next operation for this view, drawn from ``rng`` (the seed's generator)."""
    kinds = _choices(view)
    kind = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
    if kind == "alloc":
        return _alloc(rng, view)
    if kind == "free":
        return Op("free", {"group": rng.choice(view.dynamic_groups())})
    if kind == "raise_unowned":
        return Op("raise_unowned", {"vectors": [rng.choice(view.free_indices())]})
    live = view.live()
    most = len(live) if kind == "raise_device" else min(MAX_DOORBELLS, len(live))
    picked = sorted(rng.sample(live, rng.randint(1, most)))
    return Op(kind, {"vectors": picked})


def next_nic_op(rng: random.Random, views: Sequence[SoakView]) -> Op:
    """The next operation of a soak on ``len(views)`` NICs (``views[i]``: NIC i's live
    groups): with one NIC ``next_op`` itself; with several the NIC is drawn first, with
    the same ``rng``, and the op names it."""
    if len(views) == 1:
        return next_op(rng, views[0])
    nic = rng.randrange(len(views))
    return replace(next_op(rng, views[nic]), nic=nic)


def generate(seed: int, view: SoakView, count: int, nics: int = 1) -> list[Op]:
    """``count`` ops for ``nics`` NICs whose view never changes (the generator's own
    replay test)."""
    rng = random.Random(seed)
    return [next_nic_op(rng, [view] * nics) for _ in range(count)]


# --- ENOSPC -----------------------------------------------------------------------------------

def table_room(args: Mapping[str, Any], free: Iterable[int], table_size: int) -> bool:
    """The table had room for the group's ``min``: for an explicit ``start``, the entries
    start..start+min-1 all free (the driver takes them in order, and an entry it finds
    live is EBUSY, not ENOSPC); for any index, ``min`` free entries anywhere (the driver
    asks the kernel for each vector at any index: no contiguity needed)."""
    free = set(free)
    least, start = args["min"], args.get("start")
    if start is None:
        return len(free) >= least
    return start + least <= table_size and all(i in free for i in range(start, start + least))


def vector_room(args: Mapping[str, Any], live_in_guest: int, cpus: int) -> bool:
    """The CPUs' vector space certainly had room for the group's ``min``: with
    ``live_in_guest`` vectors the soak holds on every NIC, counted as if all sat on the one
    CPU a group for a CPU needs (worst case), or spread over the ``cpus`` CPUs any of which
    can take a group for no CPU, each CPU good for ``SAFE_VECTORS_PER_CPU``."""
    budget = SAFE_VECTORS_PER_CPU * (1 if args.get("cpu") is not None else cpus)
    return live_in_guest + args["min"] <= budget


def judge_enospc(args: Mapping[str, Any], free: Iterable[int], table_size: int,
                 live_in_guest: int, cpus: int) -> CheckResult:
    """``enospc_only_when_full`` for an allocation (``args``: min, max, start, cpu, managed)
    refused with ENOSPC: FAIL when the table (``free`` entries of ``table_size``) and the
    vector space (``live_in_guest`` soak vectors on ``cpus`` CPUs) both had room for its
    ``min``, PASS otherwise (the refusal may be right)."""
    free = sorted(free)
    table, vectors = table_room(args, free, table_size), vector_room(args, live_in_guest, cpus)
    evidence = {"request": dict(args), "free_entries": len(free),
                "live_vectors_in_guest": live_in_guest, "cpus": cpus,
                "table_room": table, "vector_room": vectors}
    if table and vectors:
        where = (f"entries {args['start']}..{args['start'] + args['min'] - 1} free"
                 if args.get("start") is not None else f"{len(free)} entries free")
        return CheckResult("enospc_only_when_full", None, Verdict.FAIL,
                           f"allocation of min {args['min']} refused with ENOSPC although "
                           f"the table had room ({where}) and the CPUs' vector space too "
                           f"({live_in_guest} soak vectors live on {cpus} CPU(s))", evidence)
    return CheckResult("enospc_only_when_full", None, Verdict.PASS,
                       "ENOSPC with the table or the CPUs' vector space possibly full",
                       evidence)


# --- reconciliation ------------------------------------------------------------------------

def reconcile(expected: Mapping[int, int], before: Mapping[int, int],
              totals: Mapping[int, int], raised: Iterable[int]) -> list[CheckResult]:
    """Every expected vector's total against the ledger: a failure per vector that lost,
    duplicated or got a spurious interrupt, one PASS per check when all agree.

    ``expected``: index -> the count the ledger expects now; ``before``: the totals of
    the previous reconciliation; ``totals``: the totals read now; ``raised``: the
    indices raised (or reallocated with a held raise) since the previous one."""
    raised = set(raised)
    failed: list[CheckResult] = []
    for index, want in sorted(expected.items()):
        got = totals.get(index)
        if got is None:
            failed.append(CheckResult("no_interrupt_lost", index, Verdict.FAIL,
                                      f"vector {index} is live but the guest reports no total",
                                      {"expected": want}))
        elif got < want:
            failed.append(CheckResult("no_interrupt_lost", index, Verdict.FAIL,
                                      f"vector {index} counted {got}, expected {want}: "
                                      f"{want - got} lost", {"counted": got, "expected": want}))
        elif got > want:
            name = "no_interrupt_duplicated" if index in raised else "no_spurious_interrupt"
            what = ("duplicated" if name == "no_interrupt_duplicated" else
                    "spurious: nobody raised it")
            failed.append(CheckResult(name, index, Verdict.FAIL,
                                      f"vector {index} counted {got}, expected {want} "
                                      f"({got - want} {what})",
                                      {"counted": got, "expected": want,
                                       "before": before.get(index, 0)}))
    names = {r.name for r in failed}
    return failed + [CheckResult(name, None, Verdict.PASS) for name in RECONCILE_CHECKS
                     if name not in names]

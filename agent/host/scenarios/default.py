"""The default scenario: groups of vectors allocated, raised, masked, moved, freed, reused
and exhausted, every step checked against the ledger.

Concepts: a scenario is a list of steps (``PLAN``), each declaring up front the checks it
runs.  The ``Ledger`` (verdict/ledger.py) keeps what the scenario asked for and did; after every
step ``_account`` compares every view with it: the driver's live vectors, QEMU's unmasked
entries and the kernel's msi_irqs against the expected set, every owner's count against
the raises made (nothing lost, duplicated or spurious), the device's counters and the
guest-visible PBA against what the device should have done.  A step raises all its
vectors (from the device in one request, through the doorbell one after the other) and
waits for all of them under one deadline; a wait that expires is
not an error of the run, the checks that follow judge what arrived.  The first step with
a failed check ends the scenario (fail fast); a declared check that did not run is a
failure, "not judged", unless an earlier failure ended the run.  The device's own
counters are judged too: no errors counted, LAST_VECTOR and PENDING_COUNT as the ledger
says.

The plan on an N-entry table (N >= 24, E = N - 4):
pending-before-alloc: raise E while nothing owns it: the device holds it (PBA bit).
alloc: A (4 + the NIC's number, any index), B (2, any, CPU = last), C (3, from E: E's
    raise arrives once), D (2..8, any), L (1, from N - 1, the table's last index); each
    exactly as asked, with a fresh group id.
raise-device / raise-doorbell: every live vector raised from the device, then by the
    guest through the ICS doorbell: each counted once, on the CPU its message names.
function-mask: MASKALL set, several vectors raised at once (two whose PBA bits share a
    byte, one in another byte, N - 1): all held pending, nothing delivered, the guest's PBA,
    the device's pending bits and PENDING_COUNT agree; MASKALL cleared: each delivered
    exactly once.
affinity-change: one of A's vectors moved to another CPU through /proc/irq/N: after the
    interrupt that completes the move, the driver's cached message and QEMU's table name
    the new destination, and the next raise lands there.
free-and-reuse: B freed and its indices raised (QEMU holds them behind the mask, nothing
    arrives); E' of B's size reuses B's indices and gets each held raise exactly once.
reset: with A, C (high, explicit start), D and E' live, the function is reset through
    sysfs by FLR and then by a bus reset (reset_step.py): every live vector's QEMU entry
    restored, the cached message equal to the table, a raise held before the reset
    discarded, raises made inside the reset window arriving once or nowhere, and a raise
    of every live vector counted once on its CPU.
exhaustion: groups of 8 until the table is full, or until VECTORS_PER_CPU per CPU when
    the CPUs run out of vectors first, each a success; a group whose min cannot be met
    fails with ENOSPC and leaves the table exactly as it was; the rest taken (as much as
    the CPUs hold), one more is ENOSPC; everything freed, a group F (4 + the NIC's
    number, CPU = last) allocated and raised.
final: the kernel's own view of every vector (sysfs, procfs) agrees with the driver's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable


from msixlab_common.deadline import Deadline

from agent.host.errors import HostError, WaitTimeout
from agent.host.scenarios import irq_fault, reset_step
from agent.host.verdict import accounting, checks
from agent.host.verdict.ledger import GroupRequest, Ledger
from agent.host.verdict.outcome import DriverCallFailed
from agent.host.verdict.routing import CheckResult, Snapshot, Verdict

log = logging.getLogger(__name__)
Say = Callable[[str], None]
STEP_TIMEOUT_S = 5.0     # how long one step's raises may take to be counted, all together
QUIET_S = 0.2            # how long a vector that must receive nothing is watched
DOORBELL_WAIT_MS = 50    # the driver's own wait per doorbell raise (the step waits after)
MIN_TABLE = 24
# The vectors a correct x86 guest kernel gives one device per CPU, for sure: a CPU has 204
# device vectors (0x20..0xeb), less the legacy, timer and other devices' ones; 186 were had
# on 1 CPU, 386 on 2 (7.3.4, TCG).  The margin keeps room for the vectors other NICs hold
# (--nics 8: 7 x 5 after their scenario) and other kernels' devices.
VECTORS_PER_CPU = 140

ACCOUNT = ("live_vectors_match_driver", "live_vectors_match_qemu_table", "msi_irqs_match_driver",
           "counts_match_raises", "device_counters_match", "irq_total_matches",
           "pba_matches_pending", "device_masks_match_qemu_table", "device_errors_zero",
           "device_registers_match")
RECORD = ("cached_msg_matches_table", "destination_matches_affinity", "affinity_honoured")
GROUP = ("group_allocated_as_requested", "group_id_unique")

PLAN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pending-before-alloc", ("device_counters_match", "irq_total_matches", "pba_matches_pending",
                              "device_errors_zero", "device_registers_match")),
    ("alloc", GROUP + ("pending_delivered_after_alloc", "requested_affinity_honoured")
     + RECORD + ACCOUNT),
    ("raise-device", ("raise_counted_once_on_cpu",) + ACCOUNT),
    ("raise-doorbell", ("doorbell_raise_counted_once_on_cpu",) + ACCOUNT),
    ("function-mask", ("raise_held_while_function_masked", "pending_bits_match_device",
                       "raise_counted_once_on_cpu") + ACCOUNT),
    ("affinity-change", ("requested_affinity_honoured", "cached_msg_matches_table",
                         "destination_matches_affinity", "raise_counted_once_on_cpu")
     + ACCOUNT),
    ("free-and-reuse", ("freed_entry_masked_and_cleared", "freed_index_reused",
                        "freed_raise_delivered_once_on_reuse") + GROUP + RECORD + ACCOUNT),
    ("reset", reset_step.CHECKS + ACCOUNT),
    ("exhaustion", ("exhausted_with_enospc", "failed_alloc_leaves_table_unchanged",
                    "raise_counted_once_on_cpu") + irq_fault.CHECKS + GROUP + ACCOUNT),
    ("final", ("kernel_irq_view_agrees", "requested_affinity_honoured") + RECORD + ACCOUNT),
)


def exhaustion_fill(table_size: int, cpus: int) -> int:
    """How many vectors the exhaustion step must get without a refusal: the whole table,
    or ``VECTORS_PER_CPU`` per CPU when that is less (x86 runs out of vectors first, and a
    refusal past that budget is the kernel being right, not wrong)."""
    return min(table_size, cpus * VECTORS_PER_CPU)


def ring_doorbell(lab, ledger: Ledger, index: int, timeout_ms: int) -> bool:
    """The guest raises ``index`` through the ICS doorbell (the agent's ``raise``) and the
    ledger records it; returns whether the driver counted it within ``timeout_ms``.  A
    timeout is not an error here (the checks that follow judge what arrived); any other
    driver error is (``DriverCallFailed``)."""
    counted = True
    try:
        lab.agent("raise", index=index, timeout_ms=timeout_ms)
    except DriverCallFailed as err:
        if err.code != "ETIMEDOUT":
            raise
        counted = False
    ledger.raised(index, has_eventfd=True, doorbell=True)
    return counted


def held_pending_choice(live: set[int], table_size: int) -> list[int]:
    """The live indices the function-mask step holds pending at once: the first two
    dynamic ones whose PBA bits share a byte, the first in another byte, and the table's
    last index (when live): PBA byte handling and the upper boundary are both exercised."""
    dynamic = sorted(live - {0, table_size - 1})
    pair = next(([i, j] for i, j in zip(dynamic, dynamic[1:]) if i >> 3 == j >> 3), dynamic[:2])
    other = [i for i in dynamic if pair and i >> 3 != pair[0] >> 3][:1]
    return sorted(set(pair + other) | ({table_size - 1} & live))


class Scenario:
    """The default scenario against a started ``Lab``; ``run()`` returns the final
    snapshot carrying every per-vector result, ``results`` holds them all.  Other
    scenarios (agent/host/scenarios/) subclass it with their own ``NAME``, ``SUMMARY``
    and ``PLAN`` (a ``step_<name>`` method per step) and reuse its helpers."""

    NAME = "default"
    SUMMARY = ("groups allocated, raised (device and doorbell), function-masked, moved, "
               "freed, reused, function-reset (FLR and bus) and exhausted, every step checked "
               "against the ledger")
    PLAN = PLAN
    MIN_CPUS = 1

    def __init__(self, lab, say: Say = lambda text: log.info("%s", text)):
        self.lab = lab
        self.say = say
        self.results: list[CheckResult] = []
        self.steps: list[dict] = []
        self.groups: dict[str, dict] = {}
        self.ledger: Ledger | None = None
        self.step = ""
        self.stopped_at: str | None = None
        self.resets: list[dict] = []     # what each reset of the reset step saw
        # the NIC this scenario runs on (a NicView's; 0 on a plain Lab): each NIC runs its
        # own plan (group sizes grow with it), so no two NICs' ledgers expect the same
        self.variant = getattr(lab, "nic", 0)

    # --- bookkeeping -----------------------------------------------------------------------
    def run_nested(self, inner: "Scenario", label: str) -> Snapshot:
        """Run ``inner`` (the default plan again, on a NIC probed anew) and keep its results,
        steps and groups under ``label/``; then judge that it ran whole and passed
        (``default_scenario_judged``).  Returns its last snapshot."""
        try:
            snap = inner.run()
        finally:
            for result in inner.results:
                self.results.append(dataclasses.replace(
                    result, step=f"{label}/{result.step}" if result.step else label))
            self.steps += [{**s, "step": f"{label}/{s['step']}"} for s in inner.steps]
            self.groups.update({f"{label}/{k}": v for k, v in inner.groups.items()})
        failed = [r.label for r in inner.results if r.verdict is Verdict.FAIL]
        problems = [f"stopped at step {inner.stopped_at}"] if inner.stopped_at else []
        problems += [f"{len(failed)} check(s) failed or not judged"] if failed else []
        self._add(checks.from_problems("default_scenario_judged", None, problems,
                                       failed=failed[:20]))
        return snap

    def _add(self, results) -> None:
        for result in results if isinstance(results, list) else [results]:
            result = dataclasses.replace(result, step=self.step)
            self.results.append(result)
            if result.verdict is Verdict.FAIL:
                self.say(f"FAIL {result.label}: {result.summary}")

    def failed(self) -> bool:
        """Whether any check so far has failed."""
        return any(r.verdict is Verdict.FAIL for r in self.results)

    def not_judged(self) -> list[CheckResult]:
        """A failure for every declared check of a step that ran none of it."""
        missing = []
        for step, names in self.PLAN:
            ran = {r.name for r in self.results if r.step == step and r.verdict is not Verdict.SKIP}
            for name in names:
                if name not in ran:
                    missing.append(CheckResult(name, None, Verdict.FAIL, "declared but not judged",
                                               {}, step))
        return missing

    # --- the guest's views --------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The three views of every vector now (``Lab.snapshot``)."""
        return self.lab.snapshot()

    def _counts(self, snap: Snapshot) -> dict[int, int]:
        return {r.index: r.guest.total for r in snap.allocated()}

    def _wait_counts(self, want: dict[int, int], what: str) -> Snapshot:
        """Wait, under one deadline, until every index in ``want`` counted at least that
        many; return the snapshot then (or at the deadline: the checks judge it)."""
        deadline = Deadline(STEP_TIMEOUT_S, what)
        while True:
            counts = {v["index"]: sum(v["counts"]) for v in self.lab.agent("routing")}
            short = {i: counts.get(i, 0) for i, n in want.items() if counts.get(i, 0) < n}
            if not short or deadline.expired():
                if short:
                    log.warning("%s: after %g s, still short: %s", what, STEP_TIMEOUT_S, short)
                return self.snapshot()
            self.lab.guard()
            time.sleep(0.01)

    def _account(self, snap: Snapshot | None = None) -> Snapshot:
        """After every step: every view against the ledger."""
        snap = snap or self.snapshot()
        self._add(accounting.live_set_checks(self.ledger, snap, self._msi_irqs()))
        self._add(accounting.counts_match_raises(self.ledger, snap))
        state = self.lab.device_command("state")
        self._add(accounting.device_counters_match(self.ledger, state))
        self._add(accounting.device_masks_match_qemu(snap, state))
        self._add(accounting.device_bookkeeping_match(self.ledger, state))
        self._add(accounting.pba_matches_pending(self.ledger, self._pba()))
        return snap

    def _msi_irqs(self) -> list[int] | None:
        return [entry["irq"] for entry in self.lab.agent("msi_irqs")["irqs"]]

    def _pba(self) -> list[int]:
        return self.lab.agent("read_pba")["pending"]

    def _device_raise(self, indices: list[int]) -> None:
        eventfds = {v["index"]: v["eventfd"] for v in self.lab.device_command("state")["vectors"]}
        self.lab.device_command("raise", vectors=list(indices))
        for index in indices:
            self.ledger.raised(index, has_eventfd=eventfds.get(index, False))

    def _alloc(self, label: str, **args) -> GroupRequest:
        live_before, ids_before = self.ledger.live(), self.ledger.ids_in_use()
        group = self.lab.agent("alloc_group", **args)
        request = GroupRequest(label, group["group"], tuple(group["indices"]), args["min"],
                               args["max"], args.get("start"), args.get("cpu"),
                               args.get("managed", False))
        self._add(accounting.group_allocated_as_requested(request, live_before,
                                                          self.ledger.table_size))
        self._add(accounting.group_id_unique(request, ids_before, self.ledger.retired_ids))
        if self.ledger.live() & set(request.indices):
            raise HostError(f"cannot account for group {label}: it got live indices "
                            f"{request.indices}")      # judged above; the ledger cannot go on
        self.ledger.allocated(request)
        self.groups[label] = {**group, "request": args}
        self.say(f"allocated group {label} (id {group['group']}): vectors {group['indices']}")
        return request

    def _free(self, label: str, request: GroupRequest) -> None:
        self.lab.agent("free_group", group=request.group)
        self.ledger.freed(request.group)
        self.groups[label]["freed"] = True

    # --- running ---------------------------------------------------------------------------
    def run(self) -> Snapshot:
        """Run the ``PLAN``'s steps in order and return the last snapshot with every check
        result.  The first step with a failed check ends the run (``stopped_at``); after a
        full run every declared check that never ran is added as a failure.  Each step's wall
        time goes to ``steps``.  Raises ``HostError`` for a table under ``MIN_TABLE``
        vectors; errors of the lab (a splat, a dead guest) propagate."""
        size = self.lab.device_command("state")["msix"]["table_size"]
        if size < MIN_TABLE:
            raise HostError(f"the default scenario needs a table of at least {MIN_TABLE} "
                            f"vectors, not {size}")
        self.ledger = self.new_ledger(size)
        snap = None
        for step, _ in self.PLAN:
            self.step = step
            started = time.monotonic()
            snap = getattr(self, "step_" + step.replace("-", "_"))()
            self.steps.append({"step": step, "seconds": round(time.monotonic() - started, 3)})
            if self.failed():
                # a step that failed while the host stopped QEMU or a device server
                # judged a guest that could not run: the run cannot judge (125)
                self.lab.check_not_stopped(started, f"step {step} failed")
                self.stopped_at = step
                self.say(f"step {step} failed: stopping the scenario")
                break
        else:
            self._add_missing()
        return snap.with_checks(self.results)

    def new_ledger(self, size: int) -> Ledger:
        """The ledger the run starts from: a device nothing has raised yet.  A scenario that
        runs the plan on a device with a history (remove-rescan) starts from its state."""
        return Ledger(size, self.lab.cpus)

    def _add_missing(self) -> None:
        self.step = ""
        for result in self.not_judged():
            self.results.append(result)
            self.say(f"FAIL {result.label}: declared but not judged")

    # --- the steps -------------------------------------------------------------------------
    def step_pending_before_alloc(self) -> Snapshot:
        """Step ``pending-before-alloc``: raise index E while nothing owns it; the device must
        hold it (PBA bit)."""
        self.early = self.ledger.table_size - 4
        self._device_raise([self.early])
        self.pending_snap = self.snapshot()
        self.pending_pba = set(self._pba())
        state = self.lab.device_command("state")
        self._add(accounting.device_counters_match(self.ledger, state))
        self._add(accounting.device_bookkeeping_match(self.ledger, state))
        self._add(accounting.pba_matches_pending(self.ledger, self.pending_pba))
        self.say(f"raised unallocated vector {self.early}: PBA {sorted(self.pending_pba)}")
        return self.pending_snap

    def step_alloc(self) -> Snapshot:
        """Step ``alloc``: allocate groups A (4 + the NIC's number), B (on the last CPU), C
        (from E, which must get its held raise once), D and L (the table's last index); each
        exactly as asked, with a fresh group id."""
        last_cpu = self.lab.cpus - 1
        size_a = 4 + self.variant
        self.a = self._alloc("A", min=size_a, max=size_a)
        self.b = self._alloc("B", min=2, max=2, cpu=last_cpu)
        self.c = self._alloc("C", min=3, max=3, start=self.early)
        self.d = self._alloc("D", min=2, max=8)
        self.last = self._alloc("L", min=1, max=1, start=self.ledger.table_size - 1)
        snap = self._wait_counts({self.early: 1}, "the pending raise of the explicit index")
        self._add(checks.pending_delivered_after_alloc(self.pending_snap, snap, self.early,
                                                       self.pending_pba))
        self._add(checks.record_checks(snap))
        self._add(accounting.requested_affinity_honoured(self.ledger, snap))
        return self._account(snap)

    def _raise_all(self, doorbell: bool) -> Snapshot:
        before = self.snapshot()
        live = sorted(self.ledger.live())
        counts = self._counts(before)
        if doorbell:
            for index in live:
                ring_doorbell(self.lab, self.ledger, index, DOORBELL_WAIT_MS)
        else:
            self._device_raise(live)
        after = self._wait_counts({i: counts.get(i, 0) + 1 for i in live},
                                  f"{len(live)} raises")
        name = "doorbell_raise_counted_once_on_cpu" if doorbell else "raise_counted_once_on_cpu"
        for index in live:
            result = checks.raise_counted_once_on_cpu(before, after, index, 1, strays=False)
            self._add(dataclasses.replace(result, name=name))
        self.say(f"raised {len(live)} vectors from the {'guest doorbell' if doorbell else 'device'}")
        return self._account(after)

    def step_raise_device(self) -> Snapshot:
        """Step ``raise-device``: raise every live vector from the device; each counted once,
        on its CPU."""
        return self._raise_all(doorbell=False)

    def step_raise_doorbell(self) -> Snapshot:
        """Step ``raise-doorbell``: raise every live vector through the ICS doorbell; each
        counted once, on its CPU."""
        return self._raise_all(doorbell=True)

    def step_function_mask(self) -> Snapshot:
        """Step ``function-mask``: with MASKALL set, several raises are held pending at once
        (two whose PBA bits share a byte, others in other bytes, the table's last index):
        nothing counted, the guest's PBA, the device's pending bits and its PENDING_COUNT
        agree; once cleared each is counted exactly once."""
        held = held_pending_choice(self.ledger.live(), self.ledger.table_size)
        self.lab.agent("function_mask", masked=True)
        self.ledger.function_mask(True)
        before = self.snapshot()
        self._device_raise(held)
        try:
            self.lab.wait_until(
                lambda: all(self.lab.device_command("state")["vectors"][i]["pending"]
                            for i in held),
                STEP_TIMEOUT_S, f"the device to hold vectors {held} pending behind MASKALL")
        except WaitTimeout as err:
            log.warning("%s", err)      # judged below
        time.sleep(QUIET_S)
        masked = self.snapshot()
        pba, state = set(self._pba()), self.lab.device_command("state")
        device = {v["index"] for v in state["vectors"] if v["pending"]}
        for index in held:
            problems = []
            grew = masked.get(index).guest.total - before.get(index).guest.total
            if grew:
                problems.append(f"counted {grew} while the function was masked")
            if index not in pba:
                problems.append(f"PBA bit {index} not set while masked: PBA {sorted(pba)}")
            if index not in device:
                problems.append("the device did not hold the raise pending")
            self._add(CheckResult("raise_held_while_function_masked", index,
                                  Verdict.FAIL if problems else Verdict.PASS, "; ".join(problems),
                                  {"pba": sorted(pba), "grew": grew} if problems else {}))
        self._add(accounting.pending_bits_match_device(self.ledger, pba, state))
        self._add(accounting.device_bookkeeping_match(self.ledger, state))
        self.say(f"held {held} pending behind MASKALL: PBA {sorted(pba)}")
        self.lab.agent("function_mask", masked=False)
        self.ledger.function_mask(False)
        after = self._wait_counts({i: before.get(i).guest.total + 1 for i in held},
                                  f"vectors {held} after MASKALL cleared")
        for index in held:
            self._add(checks.raise_counted_once_on_cpu(masked, after, index, 1, device=False,
                                                       strays=False))
        return self._account(after)

    def step_affinity_change(self) -> Snapshot:
        """Without interrupt remapping x86 moves an MSI when its next interrupt arrives
        (a pending move), so the first raise after the write may land on the old CPU: it
        is only counted (accounting); then the move must be complete, the cached message
        and QEMU's table on the new destination, and the next raise must land there."""
        index = self.a.indices[1]
        before = self.snapshot()
        current = checks.target_cpu(before.get(index))
        target = (current + 1) % self.lab.cpus if current is not None else self.lab.cpus - 1
        self.lab.agent("set_affinity", index=index, cpus=[target])
        self.ledger.retarget(index, target)
        self._device_raise([index])
        self._wait_counts({index: before.get(index).guest.total + 1},
                          f"vector {index}'s first raise after the move")
        try:
            self.lab.wait_until(lambda: self.lab.agent("vector", index=index)
                                ["affinity"]["effective"] == [target], STEP_TIMEOUT_S,
                                f"vector {index}'s effective affinity to become CPU {target}")
        except WaitTimeout as err:
            log.warning("%s", err)      # judged below
        moved = self.snapshot()
        self._add(accounting.requested_affinity_honoured(self.ledger, moved))
        self._add(checks.cached_msg_matches_table(moved.get(index)))
        # the message (under --iommu: the IRTE its handle names) against the effective
        # affinity after the move: a stale IRTE keeps the old CPU
        self._add(checks.destination_matches_affinity(moved.get(index)))
        self._device_raise([index])
        after = self._wait_counts({index: moved.get(index).guest.total + 1},
                                  f"vector {index} on CPU {target}")
        self._add(checks.raise_counted_once_on_cpu(moved, after, index, 1))
        self.say(f"moved vector {index} from CPU {current} to CPU {target}")
        return self._account(after)

    def step_free_and_reuse(self) -> Snapshot:
        """Step ``free-and-reuse``: free B and raise its indices (held behind the mask); a group
        of B's size reuses them and gets each held raise exactly once."""
        freed = list(self.b.indices)
        self._free("B", self.b)
        before = self.snapshot()
        self._device_raise(freed)
        time.sleep(QUIET_S)
        held = self.snapshot()
        for index in freed:
            self._add(checks.freed_entry_masked_and_cleared(before, held, index, 1))
        self.say(f"freed group B, raised its indices {freed}")
        e = self._alloc("E", min=len(freed), max=len(freed))
        self._add(Scenario.index_reused(freed, list(e.indices)))
        expected = self.ledger.expected_counts()
        snap = self._wait_counts({i: expected[i] for i in e.indices}, "the held raises at reuse")
        for index in e.indices:
            self._add(checks.freed_raise_delivered_once_on_reuse(
                held, snap, index, 1 if index in freed else 0))
        self._add(checks.record_checks(snap))
        return self._account(snap)

    def step_reset(self) -> Snapshot:
        """Step ``reset``: function resets with every group live (``reset_step``)."""
        return reset_step.run(self)

    def step_exhaustion(self) -> Snapshot:
        """Step ``exhaustion``: groups of 8 up to what the CPUs are sure to hold
        (``exhaustion_fill``: the whole table when it fits the vector budget), each of which
        must succeed; a group larger than the table's free entries must fail with ENOSPC and
        leave the table as it was; the rest taken (all of it, or as much as the CPUs' vector
        space holds: at least one) and one more must fail with ENOSPC; everything freed, a
        request_irq() failure unwound (the driver's fault hook), then group F (4 on the last
        CPU) allocated and raised."""
        labels, size = [], self.ledger.table_size
        fill = exhaustion_fill(size, self.lab.cpus)
        if fill < size:
            self.say(f"{self.lab.cpus} CPUs hold at least {fill} of the {size} vectors "
                     f"({VECTORS_PER_CPU} per CPU): the CPUs run out before the table")
        while len(self.ledger.live()) + 8 <= fill:
            labels.append(self._alloc(f"X{len(labels)}", min=8, max=8))
        before = self.snapshot()
        free = size - len(self.ledger.live())
        self._expect_enospc(f"X{len(labels)}", min=free + 1, max=free + 1)
        after = self.snapshot()
        self._add(self._unchanged(before, after, stale_masked_ok=fill < size))
        if free:
            labels.append(self._alloc(f"X{len(labels)}", min=1, max=free))
        self._expect_enospc("full", min=1, max=1)
        live = len(self.ledger.live())
        self.say(f"exhausted the {'table' if live == size else 'CPUs'}: {live} vectors live")
        for label, group in list(self.groups.items()):
            if not group.get("freed") and label != "static":
                self._free(label, self.ledger.groups[group["group"]])
        self._account()
        self._request_irq_fault()
        again = self._alloc("F", min=4 + self.variant, max=4 + self.variant,
                            cpu=self.lab.cpus - 1)
        before = self.snapshot()
        self._device_raise(list(again.indices))
        after = self._wait_counts({i: 1 for i in again.indices}, "the reallocated group")
        for index in again.indices:
            self._add(checks.raise_counted_once_on_cpu(before, after, index, 1, strays=False))
        return self._account(after)

    def _irq_views(self) -> irq_fault.IrqViews:
        return irq_fault.IrqViews.read(self.snapshot(), self.lab.agent("msi_irqs"),
                                       self.lab.agent("interrupts"))

    def _request_irq_fault(self) -> None:
        """The driver's fault hook fails request_irq() of vector ``NTH`` of a group of
        ``SIZE`` (min = max): ENOMEM, every IRQ view as before; a group allocated and
        freed afterwards leaves them so too (irq_fault)."""
        started = time.monotonic()
        before = self._irq_views()
        try:
            self.lab.agent("fail_request_irq", nth=irq_fault.NTH)
        except DriverCallFailed as err:
            if err.code != "EACCES":
                raise
            self._add(irq_fault.skipped("the driver was loaded without fault_injection=1"))
            return
        group, code = None, None
        try:
            group = self.lab.agent("alloc_group", min=irq_fault.SIZE, max=irq_fault.SIZE)
        except DriverCallFailed as err:
            code = err.code
        self._add(irq_fault.unwound("request_irq_failure_unwound", before, self._irq_views(),
                                    code, group))
        if group is not None:
            return                      # failed above; the run stops at this step
        again = self._alloc("R", min=irq_fault.SIZE, max=irq_fault.SIZE)
        self._free("R", again)
        self._add(irq_fault.unwound("no_leak_after_free", before, self._irq_views()))
        self.say(f"request_irq() of vector {irq_fault.NTH} of {irq_fault.SIZE} failed: "
                 f"unwound, group R {list(again.indices)} allocated and freed "
                 f"({time.monotonic() - started:.2f} s)")

    def _expect_enospc(self, label: str, **args) -> None:
        try:
            group = self.lab.agent("alloc_group", **args)
        except DriverCallFailed as err:
            ok = err.code == "ENOSPC"
            self._add(CheckResult("exhausted_with_enospc", None,
                                  Verdict.PASS if ok else Verdict.FAIL,
                                  "" if ok else f"failed with {err.code}, expected ENOSPC",
                                  {} if ok else {"args": args, "code": err.code}))
            return
        self._add(CheckResult("exhausted_with_enospc", None, Verdict.FAIL,
                              f"allocation {args} succeeded with no room left: {group['indices']}",
                              {"args": args, "group": group}))
        self.lab.agent("free_group", group=group["group"])

    @staticmethod
    def _unchanged(before: Snapshot, after: Snapshot,
                   stale_masked_ok: bool = False) -> CheckResult:
        """A failed allocation left every table entry and every vector as it was.  With
        ``stale_masked_ok`` (the allocation ran out of CPU vectors, not of table), an
        entry no vector owns may keep a new message as long as it stays masked: x86
        writes its reservation message (the shutdown vector, 0xef) to the entry whose
        vector it then cannot start, and the free does not clear it (7.3.4, 2 CPUs); a
        masked entry delivers nothing.  Such entries are named in ``stale_masked``."""
        changed, stale = [], []
        for r in after.records:
            b = before.get(r.index)
            if b is not None and b.qemu == r.qemu and b.irq == r.irq:
                continue
            if (stale_masked_ok and r.irq is None and (b is None or b.irq is None)
                    and r.qemu is not None and r.qemu.ctrl & 1
                    and (b is None or b.qemu is None or b.qemu.ctrl & 1)):
                stale.append(r.index)
            else:
                changed.append(r.index)
        evidence = {"changed": changed} if changed else {}
        if stale:
            evidence["stale_masked"] = stale
        return CheckResult("failed_alloc_leaves_table_unchanged", None,
                           Verdict.FAIL if changed else Verdict.PASS,
                           f"entries {changed} changed" if changed else "", evidence)

    def step_final(self) -> Snapshot:
        """Step ``final``: the kernel's sysfs/procfs view of every vector agrees with the
        driver's."""
        snap = self.snapshot()
        for record in snap.allocated():
            self._add(checks.kernel_irq_view_agrees(record, self.lab.agent("irq_sysfs",
                                                                           irq=record.irq)))
        self._add(checks.record_checks(snap))
        self._add(accounting.requested_affinity_honoured(self.ledger, snap))
        return self._account(snap)

    @staticmethod
    def index_reused(freed: list[int], new: list[int]) -> list[CheckResult]:
        """A group allocated right after a free at any index gets the freed indices
        (the lowest free ones) back."""
        ok = sorted(new) == sorted(freed)
        return [CheckResult("freed_index_reused", index, Verdict.PASS if ok else Verdict.FAIL,
                            "" if ok else f"new group got {sorted(new)}, freed were {sorted(freed)}",
                            {} if ok else {"freed": sorted(freed), "new": sorted(new)})
                for index in new]

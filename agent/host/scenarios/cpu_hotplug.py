"""The ``cpu-hotplug`` scenario: a CPU that vectors target goes offline, then comes back.

Concepts: the *victim* is the guest's last CPU (x86 cannot offline CPU 0).  Three groups
target it or not: N (3 vectors, CPU = victim, not managed), M (2 vectors, CPU = victim,
managed: ``irq_affinity_desc.is_managed``) and K (2 vectors, any CPU).  When the victim
goes offline (the guest agent's ``cpu_online``, /sys/devices/system/cpu/cpuN/online)
the kernel moves every non-managed vector off it (N's requested affinity is *broken*:
the kernel may put it on any online CPU and leaves it there when the CPU returns) and
shuts M's vectors down: QEMU's entry is masked, and a raise the device delivers
meanwhile is held by QEMU, coalesced, and counted once when the CPU comes back and the
kernel starts the vector again on it (the ledger's shut-down set).  Every step runs the
default scenario's accounting (verdict/ledger.py, verdict/accounting.py) and its declared checks.

The plan (victim V = cpus - 1):
alloc: N, M, K as above, each exactly as asked, on the CPUs asked.
raise-before: every live vector raised: counted once on its CPU.
cpu-offline: V offline; no non-managed vector targets V any more and QEMU's table holds
    the rewritten message; M's entries masked; every vector raised: the non-managed
    ones counted once on their new CPU, M's held (nothing counted, the device delivered).
cpu-online: V back; M's vectors started on V, the held raise counted once there; every
    vector raised again: counted once on its CPU.
final: the kernel's own view of every vector agrees with the driver's; the requests
    not broken are honoured.
"""

from __future__ import annotations

import logging
import time

from agent.host.errors import WaitTimeout
from agent.host.scenarios.default import (
    ACCOUNT,
    GROUP,
    QUIET_S,
    RECORD,
    STEP_TIMEOUT_S,
    Scenario,
)
from agent.host.verdict import accounting, checks
from agent.host.verdict.checks import from_problems
from agent.host.verdict.routing import CheckResult, RoutingRecord, Snapshot

log = logging.getLogger(__name__)

MOVED = ("cached_msg_matches_table", "destination_matches_affinity")

PLAN: tuple[tuple[str, tuple[str, ...]], ...] = (
    # nothing is raised before alloc: no device counter to judge yet (irq_total is)
    ("alloc", GROUP + ("requested_affinity_honoured",) + RECORD
     + tuple(name for name in ACCOUNT if name != "device_counters_match")),
    ("raise-before", ("raise_counted_once_on_cpu",) + ACCOUNT),
    ("cpu-offline", ("cpu_went_offline", "nonmanaged_moved_off_cpu", "managed_shut_down",
                     "raise_counted_once_on_cpu", "managed_raise_held_while_shut_down")
     + MOVED + ACCOUNT),
    ("cpu-online", ("cpu_came_online", "managed_restarted_on_cpu",
                    "held_raise_delivered_once_on_cpu", "raise_counted_once_on_cpu")
     + RECORD + ACCOUNT),
    ("final", ("kernel_irq_view_agrees", "requested_affinity_honoured") + RECORD + ACCOUNT),
)


def moved_off_cpu(record: RoutingRecord | None, index: int, cpu: int) -> CheckResult:
    """A non-managed vector no longer targets the offline ``cpu``: its effective affinity
    is non-empty and excludes it, and its message names an online CPU."""
    if record is None or record.guest is None:
        return from_problems("nonmanaged_moved_off_cpu", index, ["no guest vector at a live index"])
    effective = list(record.guest.affinity.effective)
    target = checks.target_cpu(record)
    problems = []
    if not effective or cpu in effective:
        problems.append(f"effective affinity {effective} still includes offline CPU {cpu}")
    if target is None or target == cpu:
        problems.append(f"the message targets CPU {target}, CPU {cpu} is offline")
    if record.qemu is not None and record.qemu.masked:
        problems.append("QEMU's entry is masked")
    return from_problems("nonmanaged_moved_off_cpu", index, problems, effective=effective,
                         target=target, offline=cpu)


def managed_shut_down(record: RoutingRecord | None, index: int) -> CheckResult:
    """A managed vector whose only CPU went offline is shut down: still allocated (the
    driver has it) but QEMU's entry is masked, so nothing can reach an offline CPU."""
    if record is None or record.guest is None:
        return from_problems("managed_shut_down", index, ["the driver lost a managed vector"])
    problems = []
    if record.qemu is None or not record.qemu.masked:
        problems.append("QEMU's entry is not masked"
                        + ("" if record.qemu is None else f" (ctrl {record.qemu.ctrl:#x})"))
    return from_problems("managed_shut_down", index, problems,
                         qemu=None if record.qemu is None else record.qemu.to_hex(),
                         affinity=record.guest.affinity.to_dict())


class CpuHotplug(Scenario):
    """Offline the CPU vectors target, raise meanwhile, bring it back (see the module)."""

    NAME = "cpu-hotplug"
    SUMMARY = ("the last CPU goes offline and comes back: non-managed vectors move, managed "
               "ones shut down and restart, raises meanwhile land on the new target or are "
               "held and delivered once")
    PLAN = PLAN
    MIN_CPUS = 2

    def __init__(self, lab, say=None):
        super().__init__(lab, **({"say": say} if say else {}))
        self.broken: set[int] = set()     # non-managed indices whose request was broken

    @property
    def victim(self) -> int:
        """The CPU taken offline: the guest's last (x86 cannot offline CPU 0)."""
        return self.lab.cpus - 1

    def _managed(self) -> list[int]:
        return sorted(self.m.indices)

    def _nonmanaged(self) -> list[int]:
        return sorted(self.ledger.live() - set(self.m.indices))

    def _record_subset(self, snap: Snapshot, indices, names) -> None:
        for index in indices:
            record = snap.get(index)
            if record is None:
                continue              # the accounting's live-set checks judge a lost one
            self._add([check(record) for check in checks.RECORD_CHECKS
                       if check.__name__ in names])

    def _cpu_online(self, online: bool) -> None:
        reply = self.lab.agent("cpu_online", cpu=self.victim, online=online)
        listed = self.victim in reply["online_cpus"]
        name = "cpu_came_online" if online else "cpu_went_offline"
        self._add(from_problems(name, None, [] if listed == online else
                                [f"CPU {self.victim} {'missing from' if online else 'still in'} "
                                 f"the online list {reply['online_cpus']}"],
                                online_cpus=reply["online_cpus"]))
        self.say(f"CPU {self.victim} {'online' if online else 'offline'}: online CPUs "
                 f"{reply['online_cpus']}")

    def _wait(self, condition, what: str) -> None:
        try:
            self.lab.wait_until(condition, STEP_TIMEOUT_S, what)
        except WaitTimeout as err:
            log.warning("%s", err)      # the checks that follow judge what is there

    # --- the steps -------------------------------------------------------------------------
    def step_alloc(self) -> Snapshot:
        """Step ``alloc``: groups N, M (managed) and K, each exactly as asked, on the CPUs
        asked."""
        self.n = self._alloc("N", min=3, max=3, cpu=self.victim)
        self.m = self._alloc("M", min=2, max=2, cpu=self.victim, managed=True)
        self.k = self._alloc("K", min=2, max=2)
        snap = self.snapshot()
        self._add(checks.record_checks(snap))
        self._add(accounting.requested_affinity_honoured(self.ledger, snap))
        return self._account(snap)

    def step_raise_before(self) -> Snapshot:
        """Step ``raise-before``: every live vector raised, counted once on its CPU."""
        return self._raise_all(doorbell=False)

    def _offline_settled(self) -> bool:
        snap = self.snapshot()
        moved = all(self.victim not in (snap.get(i).guest.affinity.effective or [self.victim])
                    for i in self._nonmanaged() if snap.get(i) and snap.get(i).guest)
        masked = all(snap.get(i).qemu is not None and snap.get(i).qemu.masked
                     for i in self._managed() if snap.get(i))
        return moved and masked

    def step_cpu_offline(self) -> Snapshot:
        """Step ``cpu-offline``: the victim goes offline; non-managed vectors move off it, M's
        are shut down (masked in QEMU); a raise of each is counted once on its new CPU, M's
        are held."""
        self._cpu_online(False)
        self.broken = {i for i in self._nonmanaged()
                       if self.ledger.requested_cpus(i) == (self.victim,)}
        self.ledger.shut_down(self._managed())
        self._wait(self._offline_settled, f"vectors off CPU {self.victim}, managed ones masked")
        snap = self.snapshot()
        for index in self._nonmanaged():
            self._add(moved_off_cpu(snap.get(index), index, self.victim))
        for index in self._managed():
            self._add(managed_shut_down(snap.get(index), index))
        self._record_subset(snap, self._nonmanaged(), MOVED)
        counts = self._counts(snap)
        self._device_raise(sorted(self.ledger.live()))
        after = self._wait_counts({i: counts.get(i, 0) + 1 for i in self._nonmanaged()},
                                  "raises while the CPU is offline")
        time.sleep(QUIET_S)           # a held raise must stay held
        after = self.snapshot()
        for index in self._nonmanaged():
            self._add(checks.raise_counted_once_on_cpu(snap, after, index, 1, strays=False))
        for index in self._managed():
            self._add(self._held(snap, after, index))
        self.say(f"raised {len(self.ledger.live())} vectors with CPU {self.victim} offline")
        return self._account(after)

    @staticmethod
    def _held(before: Snapshot, after: Snapshot, index: int) -> CheckResult:
        """A shut-down vector's raise: the device delivered it, QEMU holds it (masked),
        the guest counted nothing."""
        old, new = before.get(index), after.get(index)
        problems = []
        if old is None or new is None or old.guest is None or new.guest is None:
            return from_problems("managed_raise_held_while_shut_down", index,
                                 ["vector not allocated in both snapshots"])
        grew = new.guest.total - old.guest.total
        if grew:
            problems.append(f"counted {grew} while shut down")
        delivered = (None if old.device is None or new.device is None
                     else new.device.delivered - old.device.delivered)
        if delivered != 1:
            problems.append(f"the device delivered {delivered}, expected 1")
        return from_problems("managed_raise_held_while_shut_down", index, problems, grew=grew,
                             delivered=delivered)

    def _online_settled(self, want: dict[int, int]) -> bool:
        snap = self.snapshot()
        return all((r := snap.get(i)) is not None and r.guest is not None and r.qemu is not None
                   and not r.qemu.masked and r.guest.total >= n for i, n in want.items())

    def step_cpu_online(self) -> Snapshot:
        """Step ``cpu-online``: the victim comes back; M's vectors start on it and their held
        raise is counted once; then every vector is raised again."""
        before = self.snapshot()
        want = {i: before.get(i).guest.total + 1 for i in self._managed() if before.get(i)}
        self._cpu_online(True)
        self.ledger.started(self._managed())
        self._wait(lambda: self._online_settled(want),
                   f"managed vectors {self._managed()} restarted on CPU {self.victim}")
        snap = self.snapshot()
        for index in self._managed():
            self._add(self._restarted(before, snap, index))
        self._record_subset(snap, sorted(set(self.ledger.live()) - self.broken), RECORD)
        self._record_subset(snap, sorted(self.broken), MOVED)
        self._account(snap)
        return self._raise_all(doorbell=False)

    def _restarted(self, before: Snapshot, after: Snapshot, index: int) -> list[CheckResult]:
        old, new = before.get(index), after.get(index)
        if old is None or new is None or new.guest is None or old.guest is None:
            missing = ["vector not allocated in both snapshots"]
            return [from_problems("managed_restarted_on_cpu", index, missing),
                    from_problems("held_raise_delivered_once_on_cpu", index, missing)]
        effective = list(new.guest.affinity.effective)
        target = checks.target_cpu(new)
        problems = []
        if new.qemu is None or new.qemu.masked:
            problems.append("QEMU's entry is still masked")
        if effective != [self.victim] or target != self.victim:
            problems.append(f"effective {effective}, target CPU {target}: expected CPU "
                            f"{self.victim}")
        deltas = checks._nonzero(checks._deltas(old.guest.counts, new.guest.counts))
        return [from_problems("managed_restarted_on_cpu", index, problems, effective=effective,
                              target=target),
                from_problems("held_raise_delivered_once_on_cpu", index,
                              [] if deltas == {str(self.victim): 1} else
                              [f"counts grew by {deltas}, expected {{{self.victim}: 1}}"],
                              count_deltas=deltas)]

    def step_final(self) -> Snapshot:
        """Step ``final``: the kernel's sysfs/procfs view agrees with the driver's; the
        requested affinity holds except for the vectors whose affinity the offline broke."""
        snap = self.snapshot()
        for record in snap.allocated():
            self._add(checks.kernel_irq_view_agrees(record, self.lab.agent("irq_sysfs",
                                                                           irq=record.irq)))
        self._record_subset(snap, sorted(set(self.ledger.live()) - self.broken), RECORD)
        self._record_subset(snap, sorted(self.broken), MOVED)
        self._add([r for r in accounting.requested_affinity_honoured(self.ledger, snap)
                   if r.index not in self.broken])
        return self._account(snap)

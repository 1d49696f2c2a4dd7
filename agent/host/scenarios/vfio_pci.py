"""The ``vfio-pci`` scenario: the kernel's own in-tree user of dynamic MSI-X, judged.

Concepts: the run boots with the vIOMMU (``NEEDS_IOMMU``: intel-iommu with interrupt
remapping, as ``--iommu``); the guest agent takes the NIC from the msixlab driver, binds
it to vfio-pci (``driver_override``) and opens it with its VFIO client
(agent/guest/vfio.py: iommufd's device cdev where the kernel has it, else the legacy
container and group; the record says which).  Then, as QEMU does for a passed-through
device, MSI-X is enabled with vector 0 only and vectors are added one at a time, each with
its own eventfd, in an order that leaves holes; after each add every view is checked
(verdict/vfio_checks.py) and every triggered vector is raised from the device and through the
kernel's own trigger path (``SET_IRQS`` ``DATA_NONE`` then ``DATA_BOOL``): each must fire
its own eventfd once and no other.  A trigger is released (fd -1) and refilled (the same
IRQ; the raise QEMU held meanwhile arrives once), one is swapped for a new eventfd, and
MSI-X is disabled.

Could not judge (125, ``kernel_unsupported``): vfio-pci, an IOMMU group or the VFIO device
nodes missing from the kernel under test, or a kernel older than 6.5 (no dynamic MSI-X in
vfio-pci: NORESIZE set).  On 6.5 and later, with ``pci_msix_can_alloc_dyn()`` true (the
hello's ``dyn_alloc``), NORESIZE set is vfio-pci misbehaving: a failed check.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time

from msixlab_common.deadline import Deadline

from agent.host.scenarios.default import QUIET_S, STEP_TIMEOUT_S, Scenario
from agent.host.verdict import vfio_checks as vc
from agent.host.verdict.outcome import CouldNotJudge, Outcome
from agent.host.verdict.routing import CheckResult, Snapshot, Verdict

log = logging.getLogger(__name__)
MSIX_INDEX = 2
NORESIZE = 1 << 3
FIRST_DYN = (6, 5)             # vfio-pci grows MSI-X after enable from 6.5

VIEWS = ("vfio_msi_irqs_match_allocated", "vfio_handlers_match_triggers",
         "qemu_table_matches_triggers", "device_eventfds_match")
FIRE = ("device_raise_fires_own_eventfd", "kernel_trigger_none_fires_eventfd",
        "kernel_trigger_bool_fires_eventfd")
ADD = VIEWS + FIRE
PLAN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bind", ("bound_to_vfio_pci", "vfio_device_opened")),
    ("irq-info", ("irq_info_count_is_table_size", "irq_info_noresize_clear")),
    ("enable-vector-0", ADD),
    ("add-above", ADD),
    ("add-last", ADD),
    ("add-below", ADD),
    ("add-hole", ADD),
    ("release", VIEWS + ("raise_without_trigger_reaches_no_eventfd",
                         "device_raise_fires_own_eventfd")),
    ("refill", ("held_raise_delivered_once_on_refill", "refill_reuses_irq") + ADD),
    ("swap", VIEWS + FIRE),
    ("disable", ("nothing_left_after_disable", "raise_after_disable_reaches_no_eventfd")),
)


class _Unrecorded(Snapshot):
    """The scenario's final snapshot: no routing records (the msixlab driver is unbound),
    its results stay in ``Scenario.results``."""

    def with_checks(self, results) -> Snapshot:
        return Snapshot(())


def release_tuple(release: str | None) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string, None when it does not start with one."""
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def bind_nic(scenario: Scenario, record: dict) -> dict:
    """The NIC taken from the msixlab driver and bound to vfio-pci (the guest agent's
    ``vfio_bind``, kept as ``record["bind"]``); a kernel lacking what that needs (vfio-pci,
    an IOMMU group, the VFIO device nodes) is a named could-not-judge;
    ``bound_to_vfio_pci`` judged.  Returns the agent's record of the binding."""
    bound = record["bind"] = scenario.lab.agent("vfio_bind", timeout=60)
    if bound["missing"]:
        raise CouldNotJudge(Outcome.KERNEL_UNSUPPORTED, "the kernel under test lacks "
                            + "; ".join(bound["missing"]), missing=bound["missing"])
    scenario._add(CheckResult("bound_to_vfio_pci", None,
                              Verdict.PASS if bound["driver"] == "vfio-pci" else Verdict.FAIL,
                              "" if bound["driver"] == "vfio-pci" else
                              f"the NIC is bound to {bound['driver']}", {"bind": bound}))
    return bound


class VfioPci(Scenario):
    """vfio-pci's dynamic MSI-X, through a VFIO client in the guest (module docstring)."""

    NAME = "vfio-pci"
    SUMMARY = ("(adds the vIOMMU) the NIC bound to vfio-pci in the guest: MSI-X enabled "
               "with vector 0, vectors added one at a time with holes, each raised from "
               "the device and by the kernel's trigger path: its eventfd fires once; a "
               "trigger released and refilled, one swapped, MSI-X disabled: nothing left")
    PLAN = PLAN
    MIN_CPUS = 1
    NEEDS_IOMMU = True

    def __init__(self, lab, **kwargs):
        super().__init__(lab, **kwargs)
        self.allocated: set[int] = set()
        self.triggered: set[int] = set()
        self.record: dict = {"steps": []}

    # --- views and raises ------------------------------------------------------------------
    def _views(self) -> dict:
        view = self.lab.agent("vfio_view")
        table = self.lab.qemu_table(0)
        state = self.lab.device_command("state")
        self.record["steps"].append({
            "step": self.step, "allocated": sorted(self.allocated),
            "triggered": sorted(self.triggered), "kernel": view["irqs"],
            "qemu_unmasked": sorted(vc.qemu_unmasked(table)),
            "device_eventfds": sorted(vc.device_eventfds(state)),
            "device_enabled": state["msix"]["enabled"]})
        return {"view": view, "table": table, "state": state}

    def _check_views(self) -> None:
        views = self._views()
        self._add([vc.msi_irqs_match_allocated(views["view"], self.allocated),
                   vc.handlers_match_triggers(views["view"], self.triggered),
                   vc.qemu_table_matches_triggers(views["table"], self.triggered),
                   vc.device_eventfds_match(views["state"], self.allocated)])

    def _collect(self, want: dict[int, int], what: str,
                 quiet: float = QUIET_S) -> tuple[dict[int, int], int]:
        """Eventfd counts until each index in ``want`` reached its count (one deadline),
        then ``quiet`` seconds more so a late duplicate or stray is seen too (none for the
        kernel's own triggers: vfio-pci signals the eventfds before SET_IRQS returns)."""
        counts: dict[int, int] = {}
        retired = 0
        deadline = Deadline(STEP_TIMEOUT_S, what)
        quiet_until = None
        while True:
            got = self.lab.agent("vfio_eventfds")
            for key, n in got["counts"].items():
                counts[int(key)] = counts.get(int(key), 0) + n
            retired += got["retired"]
            done = all(counts.get(i, 0) >= n for i, n in want.items())
            if done and quiet_until is None:
                quiet_until = time.monotonic() + quiet
            if (quiet_until is not None and time.monotonic() >= quiet_until) or \
                    deadline.expired():
                return counts, retired
            self.lab.guard()
            time.sleep(0.02)

    def _device_fire(self, extra: set[int] = frozenset()) -> list[CheckResult]:
        """Raise every triggered index (and ``extra``) from the device: each triggered
        eventfd fires once, nothing else does."""
        raised = sorted(self.triggered | set(extra))
        self.lab.device_command("raise", vectors=raised)
        counts, retired = self._collect({i: 1 for i in self.triggered},
                                        f"{len(raised)} device raises to reach their eventfds")
        return vc.eventfds_fired("device_raise_fires_own_eventfd", counts, retired,
                                 {i: 1 for i in self.triggered}, set(raised))

    def _kernel_fire(self) -> None:
        """The kernel's own trigger path: DATA_NONE over the whole table (every triggered
        eventfd once), then DATA_BOOL with only the newest vector's bit set."""
        size = self.ledger.table_size
        self.lab.agent("vfio_kernel_trigger", start=0, count=size)
        counts, retired = self._collect({i: 1 for i in self.triggered}, "DATA_NONE triggers",
                                        quiet=0.0)
        self._add(vc.eventfds_fired("kernel_trigger_none_fires_eventfd", counts, retired,
                                    {i: 1 for i in self.triggered}, set(self.triggered)))
        newest = self.newest
        bools = [i == newest for i in range(newest + 1)]
        self.lab.agent("vfio_kernel_trigger", start=0, bools=bools)
        counts, retired = self._collect({newest: 1}, "a DATA_BOOL trigger", quiet=0.0)
        self._add(vc.eventfds_fired("kernel_trigger_bool_fires_eventfd", counts, retired,
                                    {newest: 1}, set(self.triggered)))

    def _add_vector(self, index: int) -> Snapshot:
        self.lab.agent("vfio_set_trigger", index=index, action="new")
        self.allocated.add(index)
        self.triggered.add(index)
        self.newest = index
        self.say(f"vfio-pci: vector {index} given an eventfd; triggered "
                 f"{sorted(self.triggered)}")
        self._check_views()
        self._add(self._device_fire())
        self._kernel_fire()
        return _Unrecorded(())

    # --- the steps -------------------------------------------------------------------------
    def step_bind(self) -> Snapshot:
        """Step ``bind``: the NIC to vfio-pci (a kernel without it: 125) and opened."""
        bound = bind_nic(self, self.record)
        opened = self.lab.agent("vfio_open")
        self.record.update(path=opened["path"], device=opened["record"],
                           irq_info=opened["irq_info"], info=opened["info"])
        self._add(CheckResult("vfio_device_opened", None, Verdict.PASS))
        self.say(f"vfio-pci: {bound['bdf']} opened through the {opened['path']} path "
                 f"(group {bound['iommu_group']})")
        return _Unrecorded(())

    def step_irq_info(self) -> Snapshot:
        """Step ``irq-info``: MSI-X's count is the table size and NORESIZE is clear."""
        info = self.record["irq_info"]
        kernel = self.lab.hello.get("kernel")
        if info["flags"] & NORESIZE and (release_tuple(kernel) or FIRST_DYN) < FIRST_DYN:
            raise CouldNotJudge(Outcome.KERNEL_UNSUPPORTED, f"kernel {kernel}'s vfio-pci "
                                "has no dynamic MSI-X (NORESIZE set; 6.5 added it)",
                                kernel=kernel, flags=info["flags"])
        self._add([vc.irq_count_is_table_size(info, self.ledger.table_size),
                   vc.noresize_clear(info, NORESIZE)])
        return _Unrecorded(())

    def step_enable_vector_0(self) -> Snapshot:
        """Step ``enable-vector-0``: MSI-X enabled with vector 0's eventfd only."""
        return self._add_vector(0)

    def step_add_above(self) -> Snapshot:
        """Step ``add-above``: an index above every live one (8)."""
        return self._add_vector(8)

    def step_add_last(self) -> Snapshot:
        """Step ``add-last``: the table's last index."""
        return self._add_vector(self.ledger.table_size - 1)

    def step_add_below(self) -> Snapshot:
        """Step ``add-below``: an index below the highest live one (4)."""
        return self._add_vector(4)

    def step_add_hole(self) -> Snapshot:
        """Step ``add-hole``: the hole right after vector 0 refilled (1)."""
        return self._add_vector(1)

    def step_release(self) -> Snapshot:
        """Step ``release``: vector 8's trigger released (fd -1): its handler goes, its IRQ
        stays allocated; a raise of it from the device and the kernel's DATA_NONE reach
        no eventfd, the others still fire."""
        self.released = 8
        self.lab.agent("vfio_set_trigger", index=self.released, action="release")
        self.triggered.discard(self.released)
        self._check_views()
        self.lab.agent("vfio_kernel_trigger", start=self.released, count=1)
        for result in self._device_fire(extra={self.released}):
            if result.index == self.released:
                result = dataclasses.replace(result,
                                             name="raise_without_trigger_reaches_no_eventfd")
            self._add(result)
        self.say(f"vfio-pci: vector {self.released}'s trigger released")
        return _Unrecorded(())

    def step_refill(self) -> Snapshot:
        """Step ``refill``: the released vector given a new eventfd.  vfio-pci reuses the
        IRQ it kept (no new allocation); the entry's unmask lets QEMU deliver the raise it
        held behind the mask, which fires the new eventfd exactly once."""
        index = self.released
        irq_before = self._irq_of(index)
        self.lab.agent("vfio_set_trigger", index=index, action="new")
        self.triggered.add(index)
        self.newest = index
        counts, retired = self._collect({index: 1}, f"the raise held while {index} had no "
                                        "trigger")
        self._add(vc.eventfds_fired("held_raise_delivered_once_on_refill", counts, retired,
                                    {index: 1}, set(self.triggered)))
        self._check_views()
        irq_after = self._irq_of(index)
        self._add(vc.refill_reuses_irq(index, irq_before, irq_after))
        self._add(self._device_fire())
        self._kernel_fire()
        self.say(f"vfio-pci: vector {index} refilled on IRQ {irq_after}")
        return _Unrecorded(())

    def _irq_of(self, index: int) -> int | None:
        """The IRQ the last recorded kernel view gave ``index``."""
        kernel = self.record["steps"][-1]["kernel"] if self.record["steps"] else []
        return next((k["irq"] for k in kernel if k["index"] == index), None)

    def step_swap(self) -> Snapshot:
        """Step ``swap``: the last vector's eventfd replaced by a new one: only the new one
        fires (the old one is still read: ``retired``)."""
        last = self.ledger.table_size - 1
        self.lab.agent("vfio_set_trigger", index=last, action="new")
        self.newest = last
        self._check_views()
        self._add(self._device_fire())
        self._kernel_fire()
        return _Unrecorded(())

    def step_disable(self) -> Snapshot:
        """Step ``disable``: MSI-X off (count 0): nothing of it left anywhere; a raise of
        every index used reaches no eventfd."""
        self.lab.agent("vfio_disable")
        used = set(self.allocated)
        self.allocated, self.triggered = set(), set()
        views = self._views()
        self._add(vc.nothing_left(views["view"], views["table"], views["state"]))
        self.lab.device_command("raise", vectors=sorted(used))
        counts, retired = self._collect({}, "raises after disable")
        self._add(vc.eventfds_fired("raise_after_disable_reaches_no_eventfd", counts,
                                    retired, {}, used))
        self.lab.agent("vfio_close")
        self.say("vfio-pci: MSI-X disabled, the device closed")
        return _Unrecorded(())

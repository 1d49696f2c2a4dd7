"""The checks of the ``vfio-pci`` scenario: pure functions of the views, each a ``CheckResult``.

Concepts: while the NIC is bound to vfio-pci the scenario knows two sets: ``allocated``
(every MSI-X index vfio-pci was given a trigger for since enable: vfio-pci allocates an
index the first time it gets a trigger and keeps it, released or not, until disable) and
``triggered`` (the indices holding an eventfd now).  The kernel's view (the guest agent's
``vfio_view``: each ``msi_irqs`` IRQ with its MSI-X index and /proc/interrupts handler
names ``vfio-msix[i](BDF)``), QEMU's table (an entry is unmasked iff a handler holds it)
and the device (an eventfd from QEMU for every index QEMU ever unmasked since enable)
must agree with them; every raise, from the device or the kernel's own trigger path,
must fire exactly the eventfds it targets, once each, and no other.
"""

from __future__ import annotations

import re

from agent.host.verdict.checks import from_problems
from agent.host.verdict.routing import CheckResult

HANDLER = re.compile(r"^vfio-msix\[(\d+)\]")


def _sorted(indices: set) -> list:
    """Indices in order; an IRQ whose index the kernel did not say (None) comes last."""
    return sorted(indices, key=lambda i: (i is None, i or 0))


def _sets(name: str, seen: set[int], want: set[int], what: str) -> CheckResult:
    problems = []
    if seen - want:
        problems.append(f"{what} has {_sorted(seen - want)} beyond {_sorted(want)}")
    if want - seen:
        problems.append(f"{what} lacks {_sorted(want - seen)} of {_sorted(want)}")
    return from_problems(name, None, problems, seen=_sorted(seen), expected=_sorted(want))


def kernel_indices(view: dict) -> set[int]:
    """The MSI-X indices of the device's msi_irqs (None for an IRQ with no index)."""
    return {entry["index"] for entry in view["irqs"]}


def handler_indices(view: dict) -> set[int]:
    """The indices with a ``vfio-msix[i]`` handler in /proc/interrupts."""
    return {int(m.group(1)) for entry in view["irqs"] for action in entry["actions"]
            if (m := HANDLER.match(action))}


def msi_irqs_match_allocated(view: dict, allocated: set[int]) -> CheckResult:
    """The kernel's msi_irqs hold exactly the indices vfio-pci allocated (released ones
    too: vfio-pci frees none before disable)."""
    return _sets("vfio_msi_irqs_match_allocated", kernel_indices(view), allocated,
                 "the device's msi_irqs")


def handlers_match_triggers(view: dict, triggered: set[int]) -> CheckResult:
    """/proc/interrupts names a ``vfio-msix[i]`` handler for exactly the triggered indices."""
    return _sets("vfio_handlers_match_triggers", handler_indices(view), triggered,
                 "/proc/interrupts' vfio-msix handlers")


def qemu_unmasked(table: dict[int, dict]) -> set[int]:
    """QEMU's unmasked table entries."""
    return {index for index, entry in table.items() if not entry["ctrl"] & 1}


def qemu_table_matches_triggers(table: dict[int, dict], triggered: set[int]) -> CheckResult:
    """QEMU's table has exactly the triggered entries unmasked (a released one is masked:
    free_irq shuts it down)."""
    return _sets("qemu_table_matches_triggers", qemu_unmasked(table), triggered,
                 "QEMU's unmasked table entries")


def device_eventfds(state: dict) -> set[int]:
    """The indices the device holds an eventfd from QEMU for."""
    return {v["index"] for v in state["vectors"] if v["eventfd"]}


def device_eventfds_match(state: dict, allocated: set[int]) -> CheckResult:
    """The device holds QEMU's eventfd for exactly the indices vfio-pci allocated (QEMU
    sets one on a vector's first unmask and, under TCG, keeps it until MSI-X is off)."""
    return _sets("device_eventfds_match", device_eventfds(state), allocated,
                 "the device's eventfds")


def eventfds_fired(name: str, counts: dict[int, int], retired: int, want: dict[int, int],
                   watched: set[int]) -> list[CheckResult]:
    """One result per watched index: its eventfd fired exactly ``want[i]`` times (0 when
    absent); a swapped-out eventfd that fired fails every result of the call."""
    results = []
    for index in sorted(watched | set(want)):
        got, expected = counts.get(index, 0), want.get(index, 0)
        problems = [f"eventfd fired {got} times, expected {expected}"] if got != expected else []
        if retired:
            problems.append(f"a swapped-out eventfd fired {retired} times")
        results.append(from_problems(name, index, problems, got=got, expected=expected,
                                     retired=retired))
    return results


def refill_reuses_irq(index: int, before: int | None, after: int | None) -> CheckResult:
    """A released vector given a trigger again keeps the IRQ vfio-pci kept for it."""
    return from_problems("refill_reuses_irq", index,
                         [] if before is not None and after == before else
                         [f"IRQ {before} before the release, {after} now"],
                         before=before, after=after)


def noresize_clear(irq_info: dict, noresize_flag: int) -> CheckResult:
    """GET_IRQ_INFO on MSI-X has NORESIZE clear: vfio-pci grows MSI-X after enable."""
    flags = irq_info["flags"]
    return from_problems("irq_info_noresize_clear", None,
                         [f"NORESIZE set (flags {flags:#x})"] if flags & noresize_flag else [],
                         flags=flags)


def irq_count_is_table_size(irq_info: dict, table_size: int) -> CheckResult:
    """GET_IRQ_INFO's MSI-X count is the table size."""
    count = irq_info["count"]
    return from_problems("irq_info_count_is_table_size", None,
                         [f"count {count}, the table has {table_size}"] if count != table_size
                         else [], count=count, table_size=table_size)


def nothing_left(view: dict, table: dict[int, dict], state: dict) -> CheckResult:
    """After disable: no msi_irqs, no vfio-msix handler, no unmasked QEMU entry, the
    device's MSI-X off and no eventfd of QEMU's left on it."""
    problems = []
    if view["irqs"]:
        problems.append(f"msi_irqs still holds IRQs {[e['irq'] for e in view['irqs']]}")
    if state["msix"]["enabled"] and qemu_unmasked(table):
        problems.append(f"QEMU's entries {sorted(qemu_unmasked(table))} still unmasked")
    if state["msix"]["enabled"]:
        problems.append("the device still sees MSI-X enabled")
    if device_eventfds(state):
        problems.append(f"the device still holds eventfds for {sorted(device_eventfds(state))}")
    return from_problems("nothing_left_after_disable", None, problems,
                         irqs=view["irqs"], device_eventfds=sorted(device_eventfds(state)))

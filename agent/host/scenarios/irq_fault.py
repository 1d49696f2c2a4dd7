"""The driver's request_irq() failure path, judged: all or nothing, and no leak after.

Concepts owned here:
- *IRQ views*: what the kernel and QEMU show of the device's interrupts, the views a
  half-unwound allocation would change: QEMU's MSI-X table (every entry as far as it is
  in effect: a masked entry is "masked", whatever message it holds), the driver's
  allocated indices and their Linux IRQs, the device's ``msi_irqs`` directory and its
  rows of /proc/interrupts (``IrqViews``).
- ``unwound``: a group whose nth vector failed request_irq() (the driver's fault hook,
  ``fail_request_irq``) must fail with ENOMEM and leave every IRQ view exactly as it was
  (``request_irq_failure_unwound``); a group allocated and freed after it must leave
  them so too (``no_leak_after_free``): a vector the error path forgot to free would
  still be in msi_irqs, or hold its index so the later group gets another one.
Pure comparison: the scenario reads the views (scenario.Scenario._request_irq_fault);
unit-tested on its own (tests/test_irq_fault.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.host.verdict.checks import from_problems
from agent.host.verdict.routing import CheckResult, Snapshot, TableEntry, Verdict

CHECKS = ("request_irq_failure_unwound", "no_leak_after_free")
NTH = 2          # the vector of the group whose request_irq() fails
SIZE = 3         # the group: min = max = SIZE, so one failure fails the whole group
ERRNO_CODE = "ENOMEM"


@dataclass(frozen=True)
class IrqViews:
    """The device's interrupts as the table, the driver, msi_irqs and /proc/interrupts
    show them at one moment."""
    table: Mapping[int, Any]              # index -> QEMU's table entry, as in effect
    driver: Mapping[int, int | None]      # allocated index -> its Linux IRQ
    msi_irqs: Sequence[Mapping[str, Any]]
    interrupts: Sequence[Mapping[str, Any]]

    @classmethod
    def read(cls, snap: Snapshot, msi_irqs: Mapping[str, Any],
             interrupts: Mapping[str, Any]) -> IrqViews:
        """The views from a snapshot and the agent's ``msi_irqs`` and ``interrupts``."""
        return cls({r.index: in_effect(r.qemu) for r in snap.records},
                   {r.index: r.irq for r in snap.allocated()},
                   list(msi_irqs.get("irqs", [])), list(interrupts.get("rows", [])))

    def differences(self, other: IrqViews) -> dict[str, Any]:
        """What changed from ``self`` to ``other``, by view (empty: nothing)."""
        out: dict[str, Any] = {}
        entries = sorted(i for i in set(self.table) | set(other.table)
                         if self.table.get(i) != other.table.get(i))
        if entries:
            out["table_entries"] = {i: {"before": self.table.get(i),
                                        "after": other.table.get(i)} for i in entries}
        if dict(self.driver) != dict(other.driver):
            out["driver"] = {"before": dict(self.driver), "after": dict(other.driver)}
        if list(self.msi_irqs) != list(other.msi_irqs):
            out["msi_irqs"] = {"before": [e.get("irq") for e in self.msi_irqs],
                               "after": [e.get("irq") for e in other.msi_irqs]}
        if list(self.interrupts) != list(other.interrupts):
            out["interrupts"] = {"before": list(self.interrupts),
                                 "after": list(other.interrupts)}
        return out


def in_effect(entry: TableEntry | None) -> dict[str, str] | str | None:
    """A table entry as far as it is in effect: ``"masked"`` for a masked one (its message
    cannot be delivered), else its words.  The kernel (7.3.4) frees a vector that was
    allocated but never started (its request_irq() failed) leaving its early-activation
    message (vector 0xef, the shutdown vector) behind the mask, where a started vector's
    free clears it: both are a masked entry, and only that is compared."""
    if entry is None:
        return None
    return "masked" if entry.masked else entry.to_hex()


def unwound(name: str, before: IrqViews, after: IrqViews, code: str | None = ERRNO_CODE,
            group: Mapping[str, Any] | None = None) -> CheckResult:
    """``name`` (one of ``CHECKS``): FAIL when the allocation that had to fail did not
    (``group``: what it got) or failed with another error than ``ENOMEM`` (``code``), or
    when a view changed from ``before`` to ``after``; PASS otherwise."""
    problems = []
    if group is not None:
        problems.append(f"the allocation whose vector {NTH} failed request_irq() succeeded "
                        f"with {group.get('indices')}")
    elif code != ERRNO_CODE:
        problems.append(f"the allocation whose vector {NTH} failed request_irq() failed "
                        f"with {code}, expected {ERRNO_CODE}")
    changed = before.differences(after)
    if changed:
        problems.append(f"changed: {', '.join(changed)}")
    return from_problems(name, None, problems, changed=changed, code=code,
                         **({"group": dict(group)} if group is not None else {}))


def skipped(why: str) -> list[CheckResult]:
    """Both checks skipped (``why``: fault injection is off)."""
    return [CheckResult(name, None, Verdict.SKIP, why) for name in CHECKS]

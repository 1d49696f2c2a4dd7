"""The default scenario's ``reset`` step: function resets with every group live.

Concepts: the kernel must rebuild on a function reset the MSI-X state it did not create at
enable time (``pci_reset_function`` saves the state, resets, and
``__pci_restore_msix_state`` rewrites every descriptor, those added after enable too).
The step resets the NIC through sysfs twice, once per method in ``METHODS``:
- ``flr``: the kernel's first choice (the device advertises FLR).  QEMU passes the
  guest's Initiate-FLR config write to the device server and sends nothing else: its
  emulated MSI-X table keeps every entry, so only the device is reset.
- ``bus``: a secondary bus reset of the root port.  QEMU resets its own table (every
  entry masked), disables every vector (SET_IRQS count 0), sends DEVICE_RESET, and after
  the kernel's restore gives each vector its eventfd again as the guest unmasks it: the
  restore alone brings the vectors back.
Around each reset: an index the device holds pending (no eventfd) must be discarded by the
reset (the PBA is clear after it); a live vector and an unallocated index are raised
inside the reset window (the device's ``raise_on_reset`` fault): the live one must arrive
exactly once after the restore, the other must be counted nowhere.  Then every live
vector's QEMU entry (message and mask) must equal the one before, the driver's cached
message must equal the table, and a raise of every live vector must arrive once on its
CPU.  What QEMU sent the device for each reset goes to ``Scenario.resets`` (routing.json
``metadata.resets``).  ``restore_through`` runs the same raises and checks around any
``Transition`` that resets the function with every group live: the suspend scenario's
runtime D3hot and system sleep (scenarios/suspend.py) use it too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from agent.host.errors import HostError
from agent.host.verdict import checks
from agent.host.verdict.routing import CheckResult, Snapshot, Verdict

METHODS = ("flr", "bus")
CHECKS = ("function_reset_reached_device", "reset_entry_restored", "cached_msg_matches_table",
          "held_raise_discarded_by_reset", "raise_during_reset_delivered_once",
          "raise_counted_once_on_cpu")
MAX_LOGGED_SET_IRQS = 64


def event_log(lab) -> str | None:
    """The event log path of the lab's NIC (a ``NicView``'s own NIC), None if unknown."""
    view_nic = getattr(lab, "nic", None)
    if isinstance(view_nic, int) and hasattr(lab, "lab"):
        server = lab.lab.devices[view_nic]
    else:
        server = getattr(lab, "device", None)
    path = getattr(server, "event_log", None)
    return str(path) if path is not None else None


def _log_size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def qemu_sent(path: str | None, offset: int) -> dict | None:
    """What the device server received from QEMU and did from byte ``offset`` of its event
    log on: requests by command, every SET_IRQS (start, count, fds, flags; the first
    ``MAX_LOGGED_SET_IRQS``) and the resets by source (``flr`` or ``device_reset``)."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read().splitlines()
    except OSError as err:
        return {"error": f"cannot read {path}: {err.strerror}"}
    commands: dict[str, int] = {}
    set_irqs, resets = [], []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "rx":
            commands[event.get("cmd")] = commands.get(event.get("cmd"), 0) + 1
            if event.get("cmd") == "DEVICE_SET_IRQS" and len(set_irqs) < MAX_LOGGED_SET_IRQS:
                set_irqs.append({k: event.get(k) for k in ("start", "count", "nfds", "flags")})
        elif event.get("event") == "device_reset":
            resets.append(event.get("source"))
    return {"requests": commands, "set_irqs": set_irqs, "resets": resets}


def _spare_indices(state: dict, live: set[int]) -> tuple[int, int]:
    """Two indices nothing owns and the device holds no eventfd for, highest first."""
    spare = [v["index"] for v in reversed(state["vectors"])
             if v["index"] not in live and not v["eventfd"]]
    if len(spare) < 2:
        raise HostError("the reset step needs two unallocated table entries without an "
                        f"eventfd; free ones: {spare}")
    return spare[0], spare[1]


def reached_device(before: dict, after: dict, method: str, resets: int = 1) -> CheckResult:
    """The sysfs reset (or another transition) reset the function: the device counted
    exactly ``resets`` resets and its armed ``raise_on_reset`` faults fired."""
    grew = after["resets"] - before["resets"]
    armed = [f for f in after.get("faults", []) if f.get("kind") == "raise_on_reset"]
    problems = [] if grew == resets else [f"the device was reset {grew} times, expected "
                                          f"{resets}"]
    if armed:
        problems.append(f"{len(armed)} raise_on_reset faults never fired")
    return CheckResult("function_reset_reached_device", None,
                       Verdict.FAIL if problems else Verdict.PASS, "; ".join(problems),
                       {"method": method, "resets": grew} if problems else {})


def entry_restored(before: Snapshot, after: Snapshot, index: int,
                   moved: bool = False) -> CheckResult:
    """QEMU's table entry of live ``index`` after the reset and restore has the message and
    the mask it had before; for a vector the kernel had to ``moved`` (its CPU went
    offline on the way), the message it caches after instead."""
    old, new = before.get(index), after.get(index)
    if old is None or new is None or old.qemu is None or new.qemu is None:
        return CheckResult("reset_entry_restored", index, Verdict.SKIP,
                           "no QEMU table view on both sides", {})
    problems = []
    if moved and new.guest is not None:
        if new.guest.msg != new.qemu.message:
            problems.append(f"message {new.qemu.message.to_hex()}, the kernel's (the vector "
                            f"was moved off an offline CPU) {new.guest.msg.to_hex()}")
    elif old.qemu.message != new.qemu.message:
        problems.append(f"message {new.qemu.message.to_hex()}, before the reset "
                        f"{old.qemu.message.to_hex()}")
    if old.qemu.masked != new.qemu.masked:
        problems.append(f"{'masked' if new.qemu.masked else 'unmasked'} after the reset, "
                        f"{'masked' if old.qemu.masked else 'unmasked'} before")
    return CheckResult("reset_entry_restored", index, Verdict.FAIL if problems else Verdict.PASS,
                       "; ".join(problems),
                       {"before": old.qemu.to_dict(), "after": new.qemu.to_dict()}
                       if problems else {})


def _off_boot_cpu(record) -> bool:
    """Whether the vector of ``record`` was on a CPU other than CPU 0 (the one CPU that
    stays online through S3)."""
    return bool(record is not None and record.guest is not None
                and set(record.guest.affinity.effective) - {0})


def held_discarded(state: dict, pba: set[int], index: int, delivered_before: int) -> CheckResult:
    """The raise the device held pending for ``index`` before the reset was discarded by
    it: the device's pending bit and the guest's PBA bit clear, nothing delivered."""
    vector = state["vectors"][index]
    problems = []
    if vector["pending"]:
        problems.append("the device still holds it pending")
    if index in pba:
        problems.append("the guest's PBA read still shows it")
    if vector["delivered"] != delivered_before:
        problems.append(f"delivered {vector['delivered'] - delivered_before} times")
    return CheckResult("held_raise_discarded_by_reset", index,
                       Verdict.FAIL if problems else Verdict.PASS, "; ".join(problems),
                       {"pba": sorted(pba)} if problems else {})


@dataclass(frozen=True)
class Transition:
    """One way through a function reset with every group live, for ``restore_through``:
    ``name`` (messages), ``perform(during)`` does it and returns what the record keeps (a
    sysfs reset: the method, the methods offered, the seconds; a suspend: what the guest
    said), optionally with ``held_while_down``: live indices raised while the function
    could not deliver (in D3hot), which the reset must discard too (``during``, the live
    index raised inside the reset window, must not be one of them: its one raise is
    judged on its own); ``qemu_table_reset``: whether
    QEMU resets its emulated MSI-X table on the way (a bus reset, the system reset of an
    S3 wake-up) and so discards what it held behind its masks; ``resets``: how many
    times the device is reset on the way (QEMU's S3 wake-up: twice, its pre-reset write
    of D0 to a function in D3hot, then DEVICE_RESET); the raise inside the reset window
    comes in the last one; ``offlines_cpus``: the transition takes every CPU but CPU 0
    down and back (S3), so the kernel moves the vectors off them and may leave them on
    CPU 0: such a vector's entry is judged against the message the kernel holds after,
    not the one before."""
    name: str
    perform: Callable[[int], dict]
    qemu_table_reset: bool
    resets: int = 1
    offlines_cpus: bool = False


def reset_once(sc, method: str) -> Snapshot:
    """One sysfs reset of ``method`` with the raises around it; returns the snapshot after
    the restore (the caller raises every vector and accounts)."""
    def perform(during: int) -> dict:
        done = sc.lab.agent("reset_function", method=method)
        return {"method": method, "offered": done.get("reset_method"),
                "seconds": done.get("seconds")}
    return restore_through(sc, Transition(f"{method} reset", perform, method == "bus"),
                           sc.resets)


def restore_through(sc, transition: Transition, record: list) -> Snapshot:
    """``transition`` with the raises around it and the restore checks after it: an index
    the device holds pending is raised before (the reset must discard it), a live vector
    and an unallocated index are raised inside the reset window (the device's
    ``raise_on_reset`` fault: the live one must arrive once after the restore); then the
    reset reached the device once, the held raises were discarded, every live vector's
    QEMU entry is as before and its cached message equals the table.  What the transition
    returned, the raises and what QEMU sent the device go to ``record``.  Returns the
    snapshot after the restore (the caller raises every vector and accounts)."""
    lab, ledger = sc.lab, sc.ledger
    state = lab.device_command("state")
    live = ledger.live()
    during = max(live)
    stale, stray = _spare_indices(state, live)
    sc._device_raise([stale])                        # held: no eventfd for it
    for index in (during, stray):
        lab.device_command("fault", kind="raise_on_reset", vector=index,
                           skip=transition.resets - 1)
    before = sc.snapshot()
    path = event_log(lab)
    offset = _log_size(path)
    done = dict(transition.perform(during))
    held = done.get("held_while_down", [])
    for _ in range(transition.resets):
        ledger.function_reset(qemu_table_reset=transition.qemu_table_reset)
    for index in (during, stray):
        ledger.raised(index, has_eventfd=False)       # inside the window: MSI-X is off
    ledger.msix_restored()
    after = sc._wait_counts({during: before.get(during).guest.total + 1},
                            f"vector {during}'s raise made during the {transition.name}")
    state_after = lab.device_command("state")
    pba = set(sc._pba())
    sc._add(reached_device(state, state_after, transition.name, transition.resets))
    for index in [stale, *held]:
        sc._add(held_discarded(state_after, pba, index, state["vectors"][index]["delivered"]))
    once = checks.raise_counted_once_on_cpu(before, after, during, 1)
    sc._add(dataclasses.replace(once, name="raise_during_reset_delivered_once"))
    for index in sorted(live):
        sc._add(entry_restored(before, after, index,
                               transition.offlines_cpus and _off_boot_cpu(before.get(index))))
        sc._add(checks.cached_msg_matches_table(after.get(index)))
    record.append({**done, "raised_during": [during, stray], "discarded": stale,
                   "qemu_sent": qemu_sent(path, offset)})
    sc.say(f"{transition.name}: {len(live)} live vectors restored, raise during it "
           f"on {during} and {stray}")
    return after


def run(sc) -> Snapshot:
    """The ``reset`` step: for each of ``METHODS``, a reset (``reset_once``), then every
    live vector raised from the device and the accounting."""
    snap = None
    for method in METHODS:
        reset_once(sc, method)
        snap = sc._raise_all(doorbell=False)
    return snap

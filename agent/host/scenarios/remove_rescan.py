"""The ``remove-rescan`` scenario: the NIC is taken away from its driver with groups live
and the device raising at full rate, twice (sysfs remove then rescan, driver unbind then
bind), and the default scenario runs again on it after each.

Concepts: the guest's own PCI remove and unbind reach the driver's remove path and the
kernel's MSI-X teardown without QEMU's ``device_del`` (which aborts QEMU 11.1.3: the
``hotplug`` scenario).  While the guest tears the device down, a second control client of
the device server raises every live vector in a loop (``Raiser``): interrupts may arrive
while handlers are freed and MSI-X is disabled.  After the teardown: the driver's device
node is gone, its remove freed every vector it had (the console line), nothing of the
device is left in /proc/interrupts, ``msi_irqs`` or /sys/kernel/irq, no error or
mis-routed interrupt was counted (the ERR and MIS rows), and no kernel report appeared
(the sentinel ends the run on one).  Then the NIC comes back (``rescan`` / ``bind``): the
driver probes it with only its static vector and MSI-X enabled anew, and the default
scenario's whole plan runs with a ledger that starts from the device's state (the raises
of the teardown that the device still holds pending reach their next owner once); its
results are kept under ``rescan/<step>`` and ``bind/<step>``.

The plan:
alloc: A (4, any), B (2, CPU = last), C (3, at an explicit high start); each as asked;
    every vector raised, counted once on its CPU; accounting.
remove: sysfs remove while raising; the teardown checks.
rescan: sysfs rescan; the NIC probes again; the default plan on it.
unbind: a group at an explicit high start added to what the default plan left live; driver
    unbind while raising; the teardown checks.
bind: driver bind; the NIC probes again; the default plan on it.
"""

from __future__ import annotations

import logging
import re
import threading

from msixlab_common.deadline import Deadline

from agent.host.errors import GuestAgentError
from agent.host.scenarios.default import ACCOUNT, GROUP, RECORD, Scenario
from agent.host.verdict import checks
from agent.host.verdict.checks import from_problems
from agent.host.verdict.ledger import Ledger
from agent.host.verdict.routing import Snapshot

log = logging.getLogger(__name__)

REMOVED = re.compile(r"msixlab\d+: removed, freed (\d+) vectors")
RAISE_MAX_S = 30.0            # the raiser stops by itself after this, whatever happens
TEARDOWN = ("driver_device_gone", "remove_freed_every_vector", "no_interrupts_left",
            "msi_irqs_gone", "kernel_irqs_freed", "raises_during_teardown_counted_nowhere")
BACK = ("nic_probed_again", "default_scenario_judged")

PLAN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("alloc", GROUP + RECORD + ("raise_counted_once_on_cpu",) + ACCOUNT),
    ("remove", TEARDOWN),
    ("rescan", BACK),
    ("unbind", TEARDOWN),
    ("bind", BACK),
)


class Raiser(threading.Thread):
    """Raises ``indices`` from the device in a loop, through its own control client, until
    ``stop()`` or ``RAISE_MAX_S``; ``raises`` counts the raises the device accepted and
    ``error`` keeps what ended it early."""

    def __init__(self, client, indices: list[int]):
        super().__init__(name="msixlab-raiser", daemon=True)
        self.client = client
        self.indices = list(indices)
        self.raises = 0
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        """The loop: one control ``raise`` of every index at a time, each answered before the
        next; a refused raise or a broken channel ends it (``error``)."""
        deadline = Deadline(RAISE_MAX_S, "the teardown's raises")
        try:
            self.client.connect(5.0)
            while not self._halt.is_set() and not deadline.expired():
                reply = self.client.request({"cmd": "raise", "vectors": self.indices}, 10.0)
                if not reply.get("ok"):
                    self.error = f"raise refused: {reply.get('error')}"
                    return
                self.raises += len(self.indices)
        except Exception as err:         # ends the loop; reported, never hides the teardown
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.client.close()

    def stop(self) -> int:
        """Stop raising, wait for the loop (bounded) and return the raises made."""
        self._halt.set()
        self.join(15.0)
        return self.raises


def seeded_ledger(size: int, cpus: int, state: dict, since: dict) -> Ledger:
    """A ledger for a device with a history: every index's raised and delivered counts and
    pending bit, and the doorbell total, as the device's ``state`` shows them now.  The
    static vector (index 0, live from the probe on) must have counted exactly what the
    device delivered to it since the teardown ended (``since``, the state then): a raise
    of the teardown that the device held pending reaches it once when the probe gives
    index 0 its eventfd."""
    book = Ledger(size, cpus)
    for vector in state["vectors"]:
        account = book.accounts[vector["index"]]
        account.raised, account.delivered = vector["raised"], vector["delivered"]
        account.pending = vector["pending"]
    book.accounts[0].counted = (state["vectors"][0]["delivered"]
                                - since["vectors"][0]["delivered"])
    book.doorbell_raises = state["irq_total"]
    return book


class _Again(Scenario):
    """The default plan on a NIC that comes back: the ledger starts from the device."""

    since: dict = {}            # the device's state when the teardown ended

    def new_ledger(self, size: int) -> Ledger:
        return seeded_ledger(size, self.lab.cpus, self.lab.device_command("state"), self.since)


def _named_counts(interrupts: dict) -> dict[str, int]:
    return {row["name"]: sum(row["counts"]) for row in interrupts.get("other", [])
            if row["name"] in ("ERR", "MIS", "SPU")}


class RemoveRescan(Scenario):
    """Remove and rescan, then unbind and bind, with groups live and raises flowing."""

    NAME = "remove-rescan"
    SUMMARY = ("the NIC is removed (sysfs remove, then driver unbind) with groups live and "
               "the device raising: remove frees everything, nothing is left or counted; "
               "rescan / bind: it probes again and the default scenario passes on it")
    PLAN = PLAN
    MIN_CPUS = 1

    def step_alloc(self) -> Snapshot:
        """Step ``alloc``: A, B (on the last CPU) and C (at an explicit high start), as
        asked; every vector raised once; accounting."""
        self.teardowns: list[dict] = []      # what each teardown saw (routing.json)
        self._alloc("A", min=4, max=4)
        self._alloc("B", min=2, max=2, cpu=self.lab.cpus - 1)
        self._alloc("C", min=3, max=3, start=self.ledger.table_size - 4)
        self._add(checks.record_checks(self.snapshot()))
        return self._raise_all(doorbell=False)

    def _device(self):
        view_nic = getattr(self.lab, "nic", None)
        if isinstance(view_nic, int) and hasattr(self.lab, "lab"):
            return self.lab.lab.devices[view_nic]
        return self.lab.device

    def _teardown(self, command: str) -> Snapshot:
        """The teardown ``command`` (``remove_device`` or ``unbind``) with every live vector
        raised meanwhile, then the teardown checks; returns the snapshot from before it (the
        driver's views are gone after it)."""
        before = self.snapshot()
        info = self.lab.agent("info")
        live, bdf = list(info["allocated"]), info["bdf"]
        irqs = [v["irq"] for v in self.lab.agent("routing")]
        named_before = _named_counts(self.lab.agent("interrupts", all=True))
        raiser = Raiser(self._device().second_client("device-raiser"), live)
        raiser.start()
        try:
            self.lab.agent(command)
        finally:
            raised = raiser.stop()
        self.after_teardown = self.lab.device_command("state")
        self._add(from_problems("driver_device_gone", None, []))  # the command failed otherwise
        self._judge_teardown(bdf, live, irqs, named_before, raiser)
        self.say(f"{command}: {len(live)} vectors live, {raised} raises during it")
        self.teardowns.append({"command": command, "bdf": bdf, "live": live,
                               "raises": raised, "raiser_error": raiser.error})
        return before

    def _judge_teardown(self, bdf, live, irqs, named_before, raiser) -> None:
        interrupts = self.lab.agent("interrupts", all=True)
        rows = [row for row in interrupts["rows"] if row["irq"] in irqs or any(
            a.startswith("msixlab") for a in row["actions"])]
        remain = [f"{len(rows)} rows of the device remain"] if rows else []
        self._add(from_problems("no_interrupts_left", None, remain, rows=rows))
        freed = [int(m.group(1)) for line in self.lab.agent("dmesg", lines=400)["lines"]
                 if (m := REMOVED.search(line))]
        wrong = [] if freed and freed[-1] == len(live) else [
            f"remove freed {freed[-1] if freed else None} vectors, {len(live)} were live"]
        self._add(from_problems("remove_freed_every_vector", None, wrong, freed=freed[-1:],
                                live=live))
        try:
            left = self.lab.agent("msi_irqs")["irqs"]
        except GuestAgentError as err:
            if err.code != "ENOENT":      # the device itself is gone after a remove
                raise
            left = []
        listed = [f"msi_irqs of {bdf} still lists {left}"] if left else []
        self._add(from_problems("msi_irqs_gone", None, listed, irqs=left))
        still = []
        for irq in irqs:
            try:
                view = self.lab.agent("irq_sysfs", irq=irq)
            except GuestAgentError as err:
                if err.code != "ENOENT":  # ENOENT: the IRQ is gone, as it should be
                    raise
                continue
            if "msixlab" in (view["sys"].get("actions") or "") or bdf in str(view["sys"]):
                still.append(irq)
        held = [f"/sys/kernel/irq still holds {still} for the device"] if still else []
        self._add(from_problems("kernel_irqs_freed", None, held, irqs=still))
        named_after = _named_counts(interrupts)
        grew = {k: named_after[k] - v for k, v in named_before.items()
                if named_after.get(k, v) != v}
        problems = [f"{k} grew by {n}" for k, n in grew.items()]
        if raiser.raises == 0:
            problems.append(f"no raise was made during the teardown ({raiser.error})")
        self._add(from_problems("raises_during_teardown_counted_nowhere", None, problems,
                                grew=grew, raises=raiser.raises))

    def _back(self, command: str, label: str) -> Snapshot:
        """``rescan`` or ``bind``: the NIC probes again with only its static vector and MSI-X
        enabled anew; then the default plan on it, results under ``label/<step>``."""
        info = self.lab.agent(command)
        problems = checks.reprobe_problems(info)
        if not self.lab.device_command("state")["msix"]["enabled"]:
            problems.append("MSI-X is not enabled at the device after the probe")
        self._add(from_problems("nic_probed_again", None, problems, info=info))
        self.say(f"{command}: the NIC probed again at {info.get('bdf')}")
        return self._again(label)

    def _again(self, label: str) -> Snapshot:
        inner = _Again(self.lab, say=self.say)
        inner.since = self.after_teardown
        return self.run_nested(inner, label)

    def step_remove(self) -> Snapshot:
        """Step ``remove``: sysfs remove with groups live and raises flowing."""
        return self._teardown("remove_device")

    def step_rescan(self) -> Snapshot:
        """Step ``rescan``: the NIC comes back and the default plan passes on it."""
        return self._back("rescan", "rescan")

    def step_unbind(self) -> Snapshot:
        """Step ``unbind``: a group at an explicit high start joins what the default plan
        left live; driver unbind with raises flowing."""
        size = self.lab.device_command("state")["msix"]["table_size"]
        self.lab.agent("alloc_group", min=3, max=3, start=size - 4)
        return self._teardown("unbind")

    def step_bind(self) -> Snapshot:
        """Step ``bind``: the NIC is bound again and the default plan passes on it."""
        return self._back("bind", "bind")

"""The ``suspend`` scenario: the NIC goes through D3hot with groups live, at run time and
inside system sleep, and the reset step's restore checks follow each time.

Concepts: the device's PM capability offers D3hot with No_Soft_Reset clear, so the way
back to D0 resets the function (qemu_device/device/nic.py) and only the kernel's
restore (``pci_restore_state``: MSI-X Message Control, then every descriptor's entry,
dynamically allocated ones included) brings the vectors back.  Three *transitions*, each
run by ``reset_step.restore_through`` (the same raises around it and the same checks
after it as a function reset):
- ``runtime-d3hot``: the NIC's ``power/control`` set to ``auto``: once its driver is idle
  the kernel saves its state and puts it in D3hot; ``on`` brings it back (QEMU passes both
  PMCSR writes through and resets nothing of its own);
- ``suspend-freeze``: suspend-to-idle: the guest's own PCI PM puts the NIC in D3hot and
  the keyboard (QMP ``send-key``) wakes it;
- ``suspend-mem``: S3 (``mem`` with ``deep``): QEMU reports ``suspended``, and its
  ``system_wakeup`` resets the whole machine on the way back: it writes D0 to the NIC
  (a first reset), disables every vector, sends DEVICE_RESET (a second) and resets its
  emulated MSI-X table, as for a bus reset; S3 also takes every CPU but 0 down and up,
  so the kernel moves the vectors off them (and a group that asked for those CPUs only
  keeps its new CPU: ``broken``).
While the NIC is down every live vector is raised: the device must hold each
(``raise_held_in_d3hot``) and the reset on the way up must discard them
(``held_raise_discarded_by_reset``).  Each transition must have reached D3hot
(``low_power_state_reached``), come back (``resumed_from_low_power``), and run the
driver's suspend and resume callbacks once each, its vectors enabled again
(``driver_pm_callbacks_ran``).  The run gives the NIC its PM capability (the device
server's ``--pm``, off for the other scenarios: with it a bus reset fails on QEMU 11.1.3)
and places the virtio devices to survive system sleep (``NEEDS_POWER_MANAGEMENT``,
agent/host/lab/qemu_argv.py's ``sleep_safe``).  A kernel without runtime PM, or that offers
neither S3 nor a suspend-to-idle the rig can wake (a keyboard), is could-not-judge (125,
``kernel_unsupported``); one that offers only one of them runs without the other step
(``skipped`` in the record).  What each transition saw goes to ``transitions`` (routing.json
``metadata.transitions``).  The guest is talked to again only once the agent's sleeping
child printed ``MSIXLAB-RESUMED`` (a request sent earlier can be lost in the resume).

The plan:
alloc: A (4, any), B (2, CPU = last), C (3, at N-4), L (1, at N-1); as asked; every
    vector raised, counted once on its CPU; accounting.
runtime-d3hot, suspend-freeze, suspend-mem: the transition and its restore checks, then
    every vector raised, counted once on its CPU; accounting (S3 last: see ``STEPS``).
final: the kernel's own view of every vector agrees with the driver's.
"""

from __future__ import annotations

import logging
import time

from msixlab_common.deadline import Deadline

from agent.host.errors import GuestAgentError, WaitTimeout
from agent.host.scenarios import reset_step
from agent.host.scenarios.default import ACCOUNT, GROUP, RECORD, Scenario
from agent.host.scenarios.reset_step import Transition
from agent.host.verdict import checks
from agent.host.verdict.checks import from_problems
from agent.host.verdict.outcome import CouldNotJudge, GuestUnresponsive, Outcome
from agent.host.verdict.routing import CheckResult, Snapshot

log = logging.getLogger(__name__)

TRANSITION = ("low_power_state_reached", "raise_held_in_d3hot", "resumed_from_low_power",
              "driver_pm_callbacks_ran")
# S3 comes last: after QEMU 11.1.3's S3 wake-up the guest's ACPI PM registers are no
# longer mapped (a second S3 and the ACPI power-off never reach QEMU: docs/scenarios.md)
STEPS = {"runtime-d3hot": "runtime", "suspend-freeze": "freeze", "suspend-mem": "mem"}
PLAN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("alloc", GROUP + RECORD + ("raise_counted_once_on_cpu",) + ACCOUNT),
    *((step, TRANSITION + reset_step.CHECKS + ACCOUNT) for step in STEPS),
    ("final", ("kernel_irq_view_agrees",) + RECORD + ACCOUNT),
)
DOWN_WAIT_S = 30.0      # for the guest to reach D3hot / sleep (a loaded TCG host is slow)
WAKE_WAIT_S = 15.0      # for one wake-up to bring the NIC out of D3hot
WAKE_TRIES = 3          # wake-ups before the guest counts as not resuming
RESULT_WAIT_S = 60      # for the agent's sleep_result once the guest is up
RESUME_WAIT_S = 60.0    # from the NIC's D0 to the guest all back (tasks thawed)
WAKE_KEY = [{"type": "qcode", "data": "shift"}]
RESUMED_MARKER = "MSIXLAB-RESUMED"     # what the guest agent's sleeping child prints


def low_power_reached(state: dict, extra: list[str], what: str) -> CheckResult:
    """``low_power_state_reached``: the device saw its function enter D3hot (and whatever
    ``extra`` problems the transition's own view adds)."""
    power = state.get("power", {})
    problems = list(extra)
    if power.get("state") != "D3hot":
        problems.insert(0, f"the device is in {power.get('state')} during {what}, not D3hot")
    return from_problems("low_power_state_reached", None, problems, power=power)


def held_in_d3hot(before: dict, after: dict, indices: list[int]) -> list[CheckResult]:
    """``raise_held_in_d3hot``: a raise of each live index while the function is in D3hot
    is held pending by the device, none delivered."""
    results = []
    for index in indices:
        old, new = before["vectors"][index], after["vectors"][index]
        problems = []
        if new["delivered"] != old["delivered"]:
            problems.append(f"delivered {new['delivered'] - old['delivered']} times in D3hot")
        if not new["pending"]:
            problems.append("not held pending by the device")
        results.append(from_problems("raise_held_in_d3hot", index, problems,
                                     delivered=new["delivered"] - old["delivered"],
                                     pending=new["pending"]))
    return results


def callbacks_ran(before: dict, after: dict, kind: str) -> list[CheckResult]:
    """``driver_pm_callbacks_ran``: the driver's ``kind`` (runtime or system) suspend and
    resume callbacks each ran exactly once, the other kind's not at all, and its vectors
    are enabled again."""
    other = "system" if kind == "runtime" else "runtime"
    problems = []
    for name in ("suspends", "resumes"):
        grew = after[f"{kind}_{name}"] - before[f"{kind}_{name}"]
        if grew != 1:
            problems.append(f"{kind} {name[:-1]} ran {grew} times, expected once")
        if after[f"{other}_{name}"] != before[f"{other}_{name}"]:
            problems.append(f"{other} {name[:-1]} ran too")
    if after["irqs_disabled"]:
        problems.append("the driver's vectors are still disabled after the resume")
    return [from_problems("driver_pm_callbacks_ran", None, problems, before=before,
                          after=after)]


class Suspend(Scenario):
    """Runtime D3hot, suspend-to-idle and S3 with groups live, each judged like a reset."""

    NAME = "suspend"
    SUMMARY = ("(gives the NIC a PM capability) groups live through runtime D3hot "
               "(power/control auto, then on), suspend-to-idle (woken by a key) and S3 "
               "(woken by QMP system_wakeup): raises held in D3hot and discarded by the "
               "reset on the way up, then the reset step's restore checks after each")
    PLAN = PLAN
    MIN_CPUS = 1
    NEEDS_POWER_MANAGEMENT = True

    # --- what the kernel offers ----------------------------------------------------------
    def run(self) -> Snapshot:
        """The plan, less the sleep step the kernel does not offer (``suspend-mem`` without
        S3, ``suspend-freeze`` without suspend-to-idle or a keyboard to wake it);
        could-not-judge (125) when it offers neither."""
        self.transitions: list[dict] = []     # what each transition saw (routing.json)
        self.broken: set[int] = set()         # indices whose requested CPUs S3 took down
        offered = self.lab.agent("sleep_states")
        skipped = ([] if offered["s3"] else ["suspend-mem"]) + (
            [] if offered["s2idle"] and offered["keyboard_wakeup"] is not None
            else ["suspend-freeze"])
        if len(skipped) == 2:
            raise CouldNotJudge(Outcome.KERNEL_UNSUPPORTED, f"kernel "
                                f"{self.lab.hello.get('kernel')} offers no system sleep this "
                                f"rig can wake it from: /sys/power/state {offered['states']}, "
                                f"mem_sleep {offered['mem_sleep']}, keyboard wakeup "
                                f"{offered['keyboard_wakeup']} (CONFIG_SUSPEND, "
                                f"CONFIG_SERIO_I8042?)", offered=offered)
        for step in skipped:
            self.transitions.append({"step": step, "skipped": "not offered", "offered": offered})
            self.say(f"[yellow]{step} skipped: the kernel does not offer it[/]")
        self.PLAN = tuple((s, names) for s, names in PLAN if s not in skipped)
        return super().run()

    # --- the steps -------------------------------------------------------------------------
    def step_alloc(self) -> Snapshot:
        """Step ``alloc``: A, B (on the last CPU), C (at N-4) and L (at N-1), as asked; every
        vector raised once; accounting."""
        size = self.ledger.table_size
        self._alloc("A", min=4, max=4)
        self._alloc("B", min=2, max=2, cpu=self.lab.cpus - 1)
        self._alloc("C", min=3, max=3, start=size - 4)
        self._alloc("L", min=1, max=1, start=size - 1)
        self._add(checks.record_checks(self.snapshot()))
        return self._raise_all(doorbell=False)

    def step_runtime_d3hot(self) -> Snapshot:
        """Step ``runtime-d3hot``: runtime suspend (D3hot) and resume of the NIC."""
        return self._transition("runtime-d3hot", self._runtime, qemu_table_reset=False)

    def step_suspend_freeze(self) -> Snapshot:
        """Step ``suspend-freeze``: suspend-to-idle, woken by a key."""
        return self._transition("suspend-freeze", lambda: self._sleep("freeze"),
                                qemu_table_reset=False)

    def step_suspend_mem(self) -> Snapshot:
        """Step ``suspend-mem``: S3, woken by QMP ``system_wakeup``."""
        snap = self._transition("suspend-mem", lambda: self._sleep("mem"),
                                qemu_table_reset=True, resets=2, offlines_cpus=True)
        # S3 took every CPU but 0 down: a vector that asked for those CPUs only had its
        # affinity broken (moved to CPU 0, left there), as with cpu-hotplug's group N
        self.broken |= {i for i in self.ledger.live()
                        if 0 not in (self.ledger.requested_cpus(i) or (0,))}
        self.lab.poweroff_grace = 0.0    # the guest's ACPI power-off no longer reaches QEMU
        return snap

    def step_final(self) -> Snapshot:
        """Step ``final``: the kernel's sysfs/procfs view of every vector agrees with the
        driver's, and the record checks, but the requested affinity of the vectors whose
        CPUs S3 took down (``broken``: the kernel moved them and leaves them moved)."""
        snap = self.snapshot()
        for record in snap.allocated():
            self._add(checks.kernel_irq_view_agrees(record, self.lab.agent("irq_sysfs",
                                                                           irq=record.irq)))
            self._add([check(record) for check in checks.RECORD_CHECKS
                       if record.index not in self.broken
                       or check is not checks.affinity_honoured])
        return self._account(snap)

    def _transition(self, step: str, down_and_up, qemu_table_reset: bool,
                    resets: int = 1, offlines_cpus: bool = False) -> Snapshot:
        """One transition through ``reset_step.restore_through``, then every vector raised
        and the accounting."""
        def perform(during: int) -> dict:
            kind = "runtime" if step == "runtime-d3hot" else "system"
            self.spared = during            # raised inside the reset window, not while down
            pm_before = self.lab.agent("pm_stats")
            record = {"step": step, **down_and_up()}
            pm_after = self.lab.agent("pm_stats")
            self._add(callbacks_ran(pm_before, pm_after, kind))
            record["driver_pm"] = pm_after
            return record
        reset_step.restore_through(self, Transition(step, perform, qemu_table_reset, resets,
                                                    offlines_cpus), self.transitions)
        return self._raise_all(doorbell=False)

    def _raise_while_down(self, what: str, extra: list[str]) -> list[int]:
        """The NIC is down: check that it is in D3hot, raise every live vector but the one
        the reset's own raise targets (``spared``) from the device (each must be held:
        the function sends nothing in D3hot) and judge it.  Returns the indices raised,
        for the reset to discard."""
        before = self.lab.device_command("state")
        self._add(low_power_reached(before, extra, what))
        live = sorted(self.ledger.live() - {self.spared})
        self.lab.device_command("raise", vectors=live)
        for index in live:
            self.ledger.raised(index, has_eventfd=False)     # held: D3hot sends nothing
        after = self.lab.device_command("state")
        self._add(held_in_d3hot(before, after, live))
        self.say(f"{what}: the NIC in {after['power']['state']}, {len(live)} vectors raised")
        return live

    def _device_power(self) -> str | None:
        return self.lab.device_command("state").get("power", {}).get("state")

    def _wait_device(self, state: str, timeout: float, what: str) -> bool:
        try:
            self.lab.wait_until(lambda: self._device_power() == state, timeout, what)
            return True
        except WaitTimeout as err:
            log.warning("%s", err)
            return False

    # --- runtime D3hot -----------------------------------------------------------------
    def _runtime(self) -> dict:
        """power/control auto (the NIC runtime-suspends: D3hot), the raises, then on."""
        down = self._runtime_pm("auto")
        extra = ([] if down.get("runtime_status") == "suspended" else
                 [f"runtime_status {down.get('runtime_status')}, not suspended"])
        held = self._raise_while_down("runtime D3hot", extra)
        up = self._runtime_pm("on")
        problems = [] if up.get("runtime_status") == "active" else [
            f"runtime_status {up.get('runtime_status')} after power/control on"]
        if self._device_power() != "D0":
            problems.append(f"the device is in {self._device_power()} after the resume")
        self._add(from_problems("resumed_from_low_power", None, problems, power=up))
        return {"down": down, "up": up, "held_while_down": held}

    def _runtime_pm(self, control: str) -> dict:
        """The agent's ``runtime_pm``: the NIC's power view once runtime_status followed
        ``control``, or, when it did not within ``DOWN_WAIT_S`` (ETIMEDOUT), the view then
        (judged by the checks that follow).  No runtime PM at all is could-not-judge."""
        try:
            return self.lab.agent("runtime_pm", control=control, timeout_s=int(DOWN_WAIT_S))
        except GuestAgentError as err:
            self._unsupported(err, "runtime PM")
            if err.code != "ETIMEDOUT":
                raise
            log.warning("%s", err)
            return {**err.error.get("power", {}), "error": err.error.get("message")}

    def _unsupported(self, err: GuestAgentError, what: str) -> None:
        if err.code in ("ENOTSUP", "EOPNOTSUPP"):
            raise CouldNotJudge(Outcome.KERNEL_UNSUPPORTED, f"the guest has no {what}: "
                                f"{err.error.get('message')}", error=err.error) from err

    # --- system sleep ------------------------------------------------------------------
    def _sleep(self, state: str) -> dict:
        """The guest sleeps in ``state`` (the agent's child writes it), the NIC must reach
        D3hot, the raises, the wake-up (QMP system_wakeup for S3, a key for
        suspend-to-idle), and how the sleep ended."""
        try:
            started = self.lab.agent("system_sleep", state=state)
        except GuestAgentError as err:
            self._unsupported(err, f"{state} sleep")
            raise
        asleep = self._wait_asleep(state, started["seq"])
        extra = [] if asleep["ok"] else [asleep["why"]]
        held = self._raise_while_down(f"{state} sleep", extra) if asleep["ok"] else []
        if not asleep["ok"]:
            self._add(low_power_reached(self.lab.device_command("state"), extra,
                                        f"{state} sleep"))
        wakes = self._wake(state)           # also when it never got there: it may be asleep
        resumed = self._wait_resumed(started["seq"], state)
        result = self.lab.agent("sleep_result", timeout_s=RESULT_WAIT_S)
        problems = []
        if result.get("errno"):
            problems.append(f"writing {state} to /sys/power/state failed: errno "
                            f"{result['errno']} ({result.get('message')}); suspend_stats "
                            f"{result.get('stats')}")
        if self._device_power() != "D0":
            problems.append(f"the device is in {self._device_power()} after the resume")
        self._add(from_problems("resumed_from_low_power", None, problems, result=result))
        self.say(f"{state} sleep: woken after {wakes} wake-up(s), the write returned after "
                 f"{result.get('boottime_s')} s (boot-time clock)")
        return {"started": started, "asleep": asleep, "wakes": wakes,
                "resumed_after_s": resumed, "result": result, "held_while_down": held}

    def _wait_asleep(self, state: str, seq: int) -> dict:
        """Wait (bounded) until the NIC is in D3hot and, for S3, QEMU reports the guest
        ``suspended``; says why not when it never is, or when the sleep already ended
        (the kernel refused it: the resumed marker of sleep ``seq`` is on the console)."""
        deadline = Deadline(DOWN_WAIT_S, f"the guest to enter {state} sleep")
        while True:
            power = self._device_power()
            status = self.lab.qmp("query-status").get("status")
            if power == "D3hot" and (state != "mem" or status == "suspended"):
                return {"ok": True, "status": status, "power": power}
            ended = self._resumed(seq)
            if ended or deadline.expired():
                return {"ok": False, "status": status, "power": power,
                        "why": ("the sleep ended" if ended else f"after {DOWN_WAIT_S:g} s")
                        + f" with QEMU saying {status} and the device in {power}"}
            self.lab.guard()
            time.sleep(0.05)

    def _resumed(self, seq: int) -> bool:
        """Whether the agent's sleeping child printed the resumed marker of sleep ``seq``."""
        text = self.lab.machine.spec.console_log.read_text(errors="replace")
        return f"{RESUMED_MARKER}: seq={seq} " in text

    def _wait_resumed(self, seq: int, state: str) -> float:
        """Wait (bounded) for the agent's sleeping child to print that the guest is all
        back (``MSIXLAB-RESUMED: seq=N``, agent/guest/power.py): before that a request to
        the agent may be lost in the guest's resume.  Returns the seconds waited; a guest
        that never says so stopped answering (exit 1)."""
        started = time.monotonic()
        try:
            self.lab.wait_until(lambda: self._resumed(seq), RESUME_WAIT_S,
                                f"the guest's {RESUMED_MARKER} marker after the {state} sleep")
        except WaitTimeout as err:
            raise GuestUnresponsive(f"the guest did not finish resuming from {state} sleep: "
                                    f"{err}") from err
        return round(time.monotonic() - started, 3)

    def _wake(self, state: str) -> int:
        """Wake the guest (``WAKE_TRIES`` times at most, each awaited ``WAKE_WAIT_S``) until
        the NIC is out of D3hot; returns the wake-ups sent.  S3 is woken only while QEMU
        says ``suspended``; a key press does no harm to a guest that is awake.  A guest
        that does not come back stopped answering (exit 1)."""
        for attempt in range(1, WAKE_TRIES + 1):
            if state == "mem":
                if self.lab.qmp("query-status").get("status") == "suspended":
                    self.lab.qmp("system_wakeup")
            else:
                self.lab.qmp("send-key", keys=WAKE_KEY)
            if self._wait_device("D0", WAKE_WAIT_S, f"the NIC out of D3hot after wake-up "
                                                    f"{attempt} from {state}"):
                return attempt
        raise GuestUnresponsive(f"the guest did not resume from {state} sleep after "
                                f"{WAKE_TRIES} wake-ups: the NIC stayed in D3hot")

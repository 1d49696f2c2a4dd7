"""The ``hotplug`` scenario: the NIC is unplugged while groups are allocated, its device
server is replaced by a new process, the NIC is plugged back and the default scenario
runs again on it.

Concepts: QMP ``device_del`` of ``nic0`` asks the guest to eject it (the root port's
hot-plug); the driver's remove must free every vector (nothing of the device left in
/proc/interrupts, /dev/msixlab<N> gone; the guest agent's ``await_device``).  The host
then stops the device server and starts a new process on the same socket
(``Lab.restart_device_server``), ``device_add`` brings the NIC back on the same root
port, the driver probes it again (group ids and the table start afresh), and the default
scenario's whole plan runs on the new device with a fresh ledger; its results are kept
under the step names ``again/<step>``, each judged as the default scenario judges it.

The plan:
alloc: A (4, any), B (2, CPU = last): as asked; every view against the ledger.
raise: every live vector raised: counted once on its CPU.
unplug: device_del; QEMU removes the NIC, the driver's device node goes, the guest's
    /proc/interrupts holds nothing of the driver, and the console shows the driver's
    remove freed every live vector.
replug: a new device server process; device_add; the driver probes: only the static
    vector (group 0, index 0) live, nothing else.
again: the default scenario on the new NIC, every declared check judged.

QEMU 11.1.3 aborts on ``device_del`` of the vfio-user NIC (``memory_region_del_subregion:
Assertion `subregion->container == mr' failed``), whether the driver is bound or not and
wherever the MSI-X structures live, so on it the scenario ends at ``unplug`` as
could-not-judge (125, ``process_failed``: QEMU died, not because of the guest), and the
verdict names the defect and the upstream patch that fixes it ("vfio-user: Do not delete
the subregion"), so a user knows it is QEMU's: a QEMU built with it runs the scenario
through ``msixlab run --scenario hotplug --qemu PATH`` (docs/scenarios.md).
"""

from __future__ import annotations

import logging
import re

from agent.host.errors import WaitTimeout
from agent.host.scenarios.default import ACCOUNT, GROUP, RECORD, Scenario
from agent.host.verdict import checks
from agent.host.verdict.checks import from_problems
from agent.host.verdict.outcome import CouldNotJudge, Outcome
from agent.host.verdict.routing import Snapshot

log = logging.getLogger(__name__)

UNPLUG_TIMEOUT_S = 60.0       # pciehp/ACPI eject under a loaded TCG host
REMOVED = re.compile(r"msixlab\d+: removed, freed (\d+) vectors")
QEMU_DEFECT = re.compile(r"memory_region_del_subregion: Assertion .subregion->container == mr. "
                         r"failed")
UPSTREAM_FIX = "vfio-user: Do not delete the subregion"


def name_qemu_defect(err: CouldNotJudge, qemu_log: str) -> CouldNotJudge:
    """``err`` (QEMU died, or its channel broke, during the unplug) restated as QEMU's known
    device_del defect when ``qemu_log`` shows its assertion; ``err`` itself otherwise."""
    found = QEMU_DEFECT.search(qemu_log)
    if not found:
        return err
    return CouldNotJudge(
        Outcome.PROCESS_FAILED,
        f"QEMU aborted on device_del of the vfio-user NIC ({found.group(0)}): a known QEMU "
        f"defect, not the kernel's: vfio_user_msix_teardown deletes the PBA overlay "
        f"subregion its container has already dropped. The upstream patch \"{UPSTREAM_FIX}\" "
        f"fixes it (posted 2025-10-10, not in QEMU 11.1.3); run this scenario with a QEMU "
        f"built with it: msixlab run --scenario hotplug --qemu PATH",
        **err.evidence, qemu_defect=found.group(0), upstream_patch=UPSTREAM_FIX)

PLAN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("alloc", GROUP + RECORD + tuple(n for n in ACCOUNT if n != "device_counters_match")),
    ("raise", ("raise_counted_once_on_cpu",) + ACCOUNT),
    ("unplug", ("nic_removed_from_qemu", "driver_device_gone", "no_interrupts_left",
                "remove_freed_every_vector")),
    ("replug", ("device_server_restarted", "nic_probed_again")),
    ("again", ("default_scenario_judged",)),
)


class Hotplug(Scenario):
    """Unplug with groups allocated, a new device server, replug, the default plan again."""

    NAME = "hotplug"
    SUMMARY = ("the NIC is unplugged (QMP device_del) with groups allocated: remove frees "
               "everything; a new device server process; device_add: it probes and the "
               "default scenario runs again (QEMU 11.1.3 aborts on device_del: 125)")
    PLAN = PLAN
    MIN_CPUS = 1

    def step_alloc(self) -> Snapshot:
        """Step ``alloc``: groups A and B (on the last CPU), as asked; every view against the
        ledger."""
        self.a = self._alloc("A", min=4, max=4)
        self.b = self._alloc("B", min=2, max=2, cpu=self.lab.cpus - 1)
        snap = self.snapshot()
        self._add(checks.record_checks(snap))
        return self._account(snap)

    def step_raise(self) -> Snapshot:
        """Step ``raise``: every live vector raised, counted once on its CPU."""
        return self._raise_all(doorbell=False)

    def step_unplug(self) -> Snapshot:
        """Step ``unplug``: ``device_del`` of nic0; QEMU removes it, the driver's device node
        goes, no interrupt row of the driver remains, and the driver's remove freed every
        live vector (from dmesg).  A QEMU that dies on its device_del defect ends the run
        as could-not-judge naming it (``name_qemu_defect``)."""
        try:
            return self._unplug()
        except CouldNotJudge as err:
            try:
                qemu_log = self.lab.machine.qemu_log.read_text(errors="replace")
            except (AttributeError, OSError):
                raise err from None
            named = name_qemu_defect(err, qemu_log)
            if named is err:
                raise
            raise named from err

    def _unplug(self) -> Snapshot:
        snap = self.snapshot()
        live = len(self.ledger.live())
        self.lab.qmp("device_del", id="nic0")
        try:
            self.lab.wait_until(lambda: not self.lab.nic_present(), UNPLUG_TIMEOUT_S,
                                "QEMU to remove nic0 after device_del")
            gone = True
        except WaitTimeout as err:
            log.warning("%s", err)
            gone = False
        self._add(from_problems("nic_removed_from_qemu", None, [] if gone else
                                [f"query-pci still shows the NIC {UNPLUG_TIMEOUT_S:g} s "
                                 "after device_del"]))
        self.lab.agent("await_device", present=False, timeout_s=int(UNPLUG_TIMEOUT_S),
                       timeout=UNPLUG_TIMEOUT_S + 10)
        self._add(from_problems("driver_device_gone", None, []))  # await_device failed otherwise
        rows = [row for row in self.lab.agent("interrupts", all=True)["rows"]
                if any(a.startswith("msixlab") for a in row["actions"])]
        left = [f"{len(rows)} rows of the driver remain"] if rows else []
        self._add(from_problems("no_interrupts_left", None, left, rows=rows))
        lines = [m.group(1) for line in self.lab.agent("dmesg", lines=400)["lines"]
                 if (m := REMOVED.search(line))]
        freed = int(lines[-1]) if lines else None
        self._add(from_problems("remove_freed_every_vector", None,
                                [] if freed == live else
                                [f"remove freed {freed} vectors, {live} were live"],
                                freed=freed, live=live))
        self.say(f"unplugged the NIC with {live} vectors live: remove freed {freed}")
        return snap

    def step_replug(self) -> Snapshot:
        """Step ``replug``: a new device server process, ``device_add`` on the same root port;
        the driver probes it with only the static vector live and dynamic MSI-X available."""
        old_pid, new_pid = self.lab.restart_device_server()
        self._add(from_problems("device_server_restarted", None,
                                [] if new_pid and new_pid != old_pid
                                else [f"pid {old_pid} -> {new_pid}"], old=old_pid, new=new_pid))
        self.lab.qmp("device_add", driver="vfio-user-pci", id="nic0", bus="rp0",
                             socket={"type": "unix", "path": str(self.lab.device.socket_path)})
        info = self.lab.agent("await_device", present=True, timeout_s=int(UNPLUG_TIMEOUT_S),
                              timeout=UNPLUG_TIMEOUT_S + 10)
        problems = checks.reprobe_problems(info)
        self._add(from_problems("nic_probed_again", None, problems, info=info))
        self.say(f"new device server (pid {old_pid} -> {new_pid}); NIC probed again at "
                 f"{info.get('bdf')}")
        return self.snapshot()

    def step_again(self) -> Snapshot:
        """Step ``again``: the default scenario on the new NIC, its results kept under
        ``again/<step>``."""
        return self.run_nested(Scenario(self.lab, say=self.say), "again")

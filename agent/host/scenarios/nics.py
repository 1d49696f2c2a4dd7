"""``msixlab run --nics N``: the chosen scenario on each of N NICs, then isolation.

Concepts: every NIC has its own device server (``Lab.devices``), its own vfio-user-pci
device in QEMU (id ``nic<i>``, behind root port ``rp<i>``) and its own driver device in
the guest.  A ``NicView`` is the lab as a scenario sees it, bound to one NIC: the guest
agent's commands go to that NIC's driver (``select_nic`` by the address QEMU gives it),
device commands to its server, QEMU's table read at its BARs.  ``PerNic`` runs the
scenario on NIC 0, then NIC 1, ..., each with its own ledger, keeping every result under
the step name ``nic<i>/<step>``; then the ``isolation`` step judges, for every NIC, that
its counts still equal its own ledger after the other NICs' raises: a raise on one NIC
is never counted on another; and that the guest agent, selecting it again, reads its own
driver: the driver's live vectors equal its own ledger's.  Every NIC runs its own plan
(the default scenario's groups grow with the NIC's number: ``Scenario.variant``), so no
two NICs' ledgers expect the same vectors, and a read-out or a raise on the wrong NIC
cannot match.  The returned snapshot is NIC 0's; ``nic_records`` keeps
every NIC's final records (routing.json's metadata ``nic_records``).
"""

from __future__ import annotations

import dataclasses

from agent.host.scenarios.default import Scenario
from agent.host.verdict import accounting
from agent.host.verdict.routing import CheckResult, Snapshot, Verdict


class NicView:
    """The lab bound to NIC ``nic``: what a scenario uses of a ``Lab``."""

    def __init__(self, lab, nic: int):
        self.lab, self.nic, self.cpus = lab, nic, lab.cpus

    def agent(self, cmd: str, timeout: float = 30.0, **args):
        """Select this NIC's driver device in the guest, then run agent command ``cmd``."""
        self.lab.select_nic(self.nic)
        return self.lab.agent(cmd, timeout, **args)

    def device_command(self, cmd: str, **fields):
        """Send control command ``cmd`` to this NIC's device server."""
        return self.lab.device_command_on(self.lab.devices[self.nic], cmd, **fields)

    def snapshot(self) -> Snapshot:
        """The three views of this NIC's vectors."""
        self.lab.select_nic(self.nic)
        return self.lab.snapshot(nic=self.nic)

    def guard(self) -> None:
        """``Lab.guard``: raise the run's ending if it has ended."""
        self.lab.guard()

    def check_not_stopped(self, since: float, what: str) -> None:
        """``Lab.check_not_stopped``, with the NIC named."""
        self.lab.check_not_stopped(since, f"NIC {self.nic}: {what}")

    def wait_until(self, condition, timeout: float, what: str, detail=None):
        """``Lab.wait_until``, with the NIC named in what is waited for."""
        return self.lab.wait_until(condition, timeout, f"NIC {self.nic}: {what}", detail)


class PerNic(Scenario):
    """``inner`` (a scenario class) on each NIC of the lab in turn, then isolation."""

    def __init__(self, lab, inner: type[Scenario], nics: int, say=None):
        super().__init__(lab, **({"say": say} if say else {}))
        self.inner_cls, self.nics = inner, nics
        self.NAME, self.SUMMARY = inner.NAME, inner.SUMMARY
        self.PLAN = tuple((f"nic{i}/{step}", names) for i in range(nics)
                          for step, names in inner.PLAN) + (
            ("isolation", ("raise_not_counted_on_other_nic", "nic_reads_its_own_driver")),)
        self.nic_records: dict[str, list] = {}

    def run(self) -> Snapshot:
        """Run the scenario on each NIC in turn (results under ``nic<i>/<step>``), stopping at
        the first NIC whose run stopped; then the ``isolation`` step checks every NIC's
        counts still match its own ledger.  Returns NIC 0's snapshot; ``nic_records`` keeps
        every NIC's."""
        inners, first = [], None
        for nic in range(self.nics):
            self.say(f"NIC {nic}")
            inner = self.inner_cls(NicView(self.lab, nic), say=self.say)
            inners.append(inner)
            try:
                snap = inner.run()
            finally:
                self._keep(nic, inner)
            first = first or snap
            self.nic_records[f"nic{nic}"] = [r.to_dict() for r in snap.allocated()]
            if inner.stopped_at:
                self.stopped_at = f"nic{nic}/{inner.stopped_at}"
                return first
        self.step = "isolation"
        for nic, inner in enumerate(inners):
            snap = NicView(self.lab, nic).snapshot()
            for result in accounting.counts_match_raises(inner.ledger, snap):
                self._add(CheckResult("raise_not_counted_on_other_nic", None, result.verdict,
                                      f"NIC {nic} index {result.index}: {result.summary}"
                                      if result.verdict is Verdict.FAIL else "",
                                      {**result.evidence, "nic": nic, "index": result.index}))
            live = accounting.live_set_checks(inner.ledger, snap, [])[0]
            self._add(CheckResult("nic_reads_its_own_driver", None, live.verdict,
                                  f"NIC {nic}: {live.summary}" if live.summary else "",
                                  {**live.evidence, "nic": nic}))
        self.steps.append({"step": "isolation", "seconds": 0.0})
        self._add_missing()
        return first

    def _keep(self, nic: int, inner: Scenario) -> None:
        """NIC ``nic``'s results under ``nic<i>/<step>``; only NIC 0's keep their index
        (the returned snapshot is NIC 0's), the others' carry it in their evidence."""
        for result in inner.results:
            step = f"nic{nic}/{result.step}" if result.step else f"nic{nic}"
            if nic:
                result = dataclasses.replace(result, index=None,
                                             evidence={**result.evidence, "nic": nic,
                                                       "index": result.index})
            self.results.append(dataclasses.replace(result, step=step))
        self.steps += [{**s, "step": f"nic{nic}/{s['step']}"} for s in inner.steps]
        self.groups.update({f"nic{nic}/{k}": v for k, v in inner.groups.items()})

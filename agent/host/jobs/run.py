"""``msixlab run``: the main job on the default guest, ending in one classified verdict.

Concepts: the job skeleton (jobs/job.py) with a scenario as its work: the options and
the scenario's needs checked before anything starts, a lab, the scenario (``default``
unless ``--scenario`` names another; per NIC with ``--nics``), and however it ended
turned into one ``RunVerdict`` (verdict/outcome.py): every declared check passed (0),
the kernel under test misbehaved (1: a failed or not-judged check, a kernel splat, a
driver error where success was needed, a guest that stopped answering), or the run could
not judge (125, with the reason's class).  The verdict is computed before any artifact
is written and survives a failure to write them.  Everything goes to
``results/<run-id>/``: routing.json (with the verdict, every check result and the
metadata), the console, QEMU's and the device's logs, and the guest's views (lspci,
dmesg, /proc/interrupts, groups), as far as the guest could still give them.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.console import Console

from agent.host import scenarios
from agent.host.errors import MsixlabError
from agent.host.jobs import progress
from agent.host.jobs.job import Job, Setup, report_unwritten, run_job
from agent.host.jobs.options import from_args
from agent.host.lab.lab import Lab
from agent.host.lab.options import LabOptions
from agent.host.results import write_all as write_result_files
from agent.host.results.routing_json import write_routing_json
from agent.host.results.terminal import render
from agent.host.rundirs import RunDirs
from agent.host.scenarios.default import Scenario
from agent.host.verdict.outcome import Outcome, RunVerdict
from agent.host.verdict.routing import Snapshot, Verdict


def judge(scenario: Scenario, faults: list) -> RunVerdict:
    """The verdict of a scenario that ran to its end (or stopped at a failed step)."""
    results = list(scenario.results)
    failed = tuple(r.label for r in results if r.verdict is Verdict.FAIL)
    not_judged = sum(1 for r in results if r.summary == "declared but not judged")
    counts = {"declared": sum(len(names) for _, names in scenario.PLAN),
              "results": len(results),
              "passed": sum(r.verdict is Verdict.PASS for r in results),
              "failed": len(failed), "not_judged": not_judged,
              "skipped": sum(r.verdict is Verdict.SKIP for r in results)}
    if failed:
        where = f" (stopped at step {scenario.stopped_at})" if scenario.stopped_at else ""
        return RunVerdict(Outcome.CHECK_FAILED, f"{len(failed)} check(s) failed{where}: "
                          + ", ".join(failed[:8]) + (" ..." if len(failed) > 8 else ""),
                          failed, faults=tuple(faults), counts=counts)
    if not counts["passed"]:
        return RunVerdict(Outcome.INTERNAL_ERROR, "no check was judged", faults=tuple(faults),
                          counts=counts)
    return RunVerdict(Outcome.PASS, f"all {counts['passed']} check results passed, "
                      f"every one of the {counts['declared']} declared checks judged",
                      faults=tuple(faults), counts=counts)


def check_options(options: LabOptions,
                  name: str = scenarios.DEFAULT) -> tuple[type[Scenario], LabOptions]:
    """Refuse, before anything starts, options ``msixlab run --scenario name`` cannot run
    with (the options' own problems, ``LabOptions.check``, then the scenario's needs);
    returns the scenario's class and the options it runs with (a scenario that needs
    the vIOMMU, vfio-pci, adds it itself, as suspend adds the NIC's PM capability and
    sleep-safe virtio devices)."""
    scenario_cls = scenarios.get(name)
    options = options.check()
    scenarios.check_options(scenario_cls, options.cpus, options.nics)
    if getattr(scenario_cls, "NEEDS_IOMMU", False):
        options = dataclasses.replace(options, iommu=True)
    if getattr(scenario_cls, "NEEDS_POWER_MANAGEMENT", False):
        options = dataclasses.replace(options, power_management=True)
    return scenario_cls, options


class RunJob(Job):
    """``msixlab run``: one scenario (per NIC with ``--nics``) on a fresh lab."""

    name = "run"
    prefix = "run"

    def __init__(self, options: LabOptions, scenario: str = scenarios.DEFAULT, *,
                 show_all: bool = False, dry_run: bool = False):
        super().__init__(options, dry_run=dry_run)
        self.scenario_name, self.show_all = scenario, show_all
        self.scenario_cls: type[Scenario] = scenarios.get(scenario)
        self.lab: Lab | None = None
        self.runner: Any = None            # the Scenario (or PerNic) made by attach()
        self.final: Snapshot | None = None
        self.irq_info_flags: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunJob":
        """The job a parsed ``msixlab run`` command line asks for (not checked yet)."""
        return cls(from_args(args), args.scenario, show_all=args.table == "all",
                   dry_run=args.dry_run)

    def check(self) -> None:
        """The options and the scenario's needs (``check_options``)."""
        self.scenario_cls, self.options = check_options(self.options, self.scenario_name)

    def own_options(self) -> dict[str, Any]:
        return {"scenario": self.scenario_cls.NAME}

    def dry_run_shares(self, image, kernel) -> tuple:
        """What the scenario shares with the guest besides the rig's (the VFIO selftests'
        build): (tag, path) pairs."""
        return tuple(getattr(self.scenario_cls, "dry_run_shares",
                             lambda image, kernel: ())(image, kernel))

    @property
    def scenario(self) -> str:
        return self.scenario_cls.NAME

    def announce(self, setup: Setup) -> str:
        return (f"run {setup.dirs.run_id}: scenario {self.scenario_cls.NAME}, "
                f"kernel {setup.kernel.release} ({setup.kernel.label}), "
                f"QEMU {setup.image.qemu_version}, {setup.accel}, {self.options.vectors} "
                f"vectors{self.options.modes_text()}; results in {setup.dirs.results}")

    def attach(self, lab: Lab, console: Console) -> None:
        say, nics = progress.say(console), self.options.nics
        self.lab = lab
        self.runner = (self.scenario_cls(lab, say=say) if nics == 1 else
                       scenarios.PerNic(lab, self.scenario_cls, nics, say=say))

    def work(self) -> None:
        self.irq_info_flags = self.lab.device_command("state")["msix"]["irq_info_flags"]
        self.final = self.runner.run()

    def judge(self, faults: list) -> RunVerdict:
        return judge(self.runner, faults)

    def own_metadata(self, lab: Lab) -> dict[str, Any]:
        runner = self.runner
        modes = dict(lab.msix_modes)
        if self.irq_info_flags is not None:
            modes["irq_info_flags"] = self.irq_info_flags
        return {"msix_modes": modes,
                "nic_records": getattr(runner, "nic_records", None),
                "vfio": getattr(runner, "record", None),
                "steps": runner.steps, "groups": runner.groups,
                "resets": getattr(runner, "resets", None) or None,
                "teardowns": getattr(runner, "teardowns", None),
                "transitions": getattr(runner, "transitions", None)}

    def finish(self, console: Console, dirs: RunDirs, verdict: RunVerdict,
               metadata: dict[str, Any], lab: Lab) -> int:
        """Print the routing table and the verdict, then write routing.json and the result
        files; a write failure is reported and keeps the verdict's exit code unless it was
        a pass (``unwritten``: 125, ``host_resource``)."""
        snapshot = self.final or Snapshot(()).with_checks([])
        render(console, snapshot, verdict, self.runner.results, show_all=self.show_all)
        try:
            write_routing_json(dirs.results / "routing.json", snapshot, metadata,
                               lab.apic_map, verdict=verdict, results=self.runner.results)
            write_result_files(dirs.results)   # results.ktap, junit.xml, kcidb.json, report.html
        except (OSError, MsixlabError) as err:
            verdict = report_unwritten(console, verdict, err)
        console.print(f"wall time {metadata['wall_seconds']:.1f} s; artifacts in {dirs.results}")
        return verdict.exit_code


def run_main_job(args: argparse.Namespace, console: Console) -> int:
    """``msixlab run``: the ``RunJob`` of the command line through the job skeleton
    (``run_job``); its exit code: 0 every declared check passed, 1 the kernel under test
    misbehaved, 125 the run could not judge.  ``--dry-run`` prints the commands instead."""
    return run_job(RunJob.from_args(args), console)

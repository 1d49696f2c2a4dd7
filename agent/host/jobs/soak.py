"""``msixlab soak``: the soak (scenarios/soak.py) in a real guest, ending in one classified verdict.

Concepts: the job skeleton (jobs/job.py), as ``msixlab run``: the options are checked
before anything starts, the image is found, a lab is booted (with ``--nics N`` NICs),
device faults are armed on purpose if asked (each on the NIC its ``nic=`` names), the
soak is the work, and however it ended becomes one ``RunVerdict`` (verdict/outcome.py): exit 0 when every check passed, 1 when a
check failed (a lost, duplicated or spurious interrupt, a device counter or a view that
disagrees with the ledger) or the kernel misbehaved otherwise, 125 when the run could
not judge. A progress line every second, a summary at the end, each with every NIC's own
numbers besides the totals when there are several. Everything goes to
``results/soak-<id>/``: ``soak.json`` (results/soak_json.py: the metadata, in routing.json's
layout, with the options and seed; the verdict, summary, failed checks and the op log:
the same seed replays the same ops), routing.json (the final views and
the check results) with the result files built from it as for ``run`` (results.ktap,
junit.xml, kcidb.json, report.html), the console, QEMU's and the device's logs, and the
guest's views as far as it could give them.
"""

from __future__ import annotations

import argparse
import logging
import secrets
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.host.errors import MsixlabError
from agent.host.jobs import progress
from agent.host.jobs.job import Job, Setup, report_unwritten, run_job
from agent.host.jobs.options import from_args
from agent.host.lab.lab import Lab
from agent.host.lab.options import LabOptions
from agent.host.results import write_all as write_result_files
from agent.host.results.routing_json import write_routing_json
from agent.host.results.soak_json import write_soak_json
from agent.host.rundirs import RunDirs
from agent.host.scenarios.soak import Soak
from agent.host.scenarios.soak_nic import SoakStats
from agent.host.verdict.outcome import Outcome, RunVerdict
from agent.host.verdict.routing import Snapshot

log = logging.getLogger(__name__)
MAX_SEED = 2**63 - 1


def judge(soak: Soak, faults: list) -> RunVerdict:
    """The verdict of a soak that ran to its end or stopped at its first failure."""
    failed = tuple(r.label for r in soak.failures)
    counts = {"passed": sum(soak.passed.values()), "failed": len(failed),
              "checks": len(set(soak.passed) | {r.name for r in soak.failures})}
    if failed:
        return RunVerdict(Outcome.CHECK_FAILED, f"{len(failed)} check(s) failed (stopped at "
                          f"{soak.failures[0].step}): " + ", ".join(failed[:8])
                          + (" ..." if len(failed) > 8 else ""), failed,
                          faults=tuple(faults), counts=counts)
    if not soak.stats.reconciliations:
        return RunVerdict(Outcome.INTERNAL_ERROR, "no count was reconciled",
                          faults=tuple(faults), counts=counts)
    return RunVerdict(Outcome.PASS, f"{sum(soak.stats.ops.values())} ops, "
                      f"{sum(soak.stats.raises.values())} raises, every count reconciled "
                      f"({counts['passed']} check results passed)", faults=tuple(faults),
                      counts=counts)


def _progress_line(console: Console, soak: Soak):
    def tick(elapsed: float, stats: SoakStats) -> None:
        ledgers = [nic.ledger for nic in soak.nics if nic.ledger]
        live = sum(len(ledger.live()) for ledger in ledgers)
        rate = stats.interrupts / elapsed if elapsed else 0.0
        rss = f", device RSS {stats.rss_kib[-1] / 1024:.1f} MiB" if stats.rss_kib else ""
        per_nic = "" if len(soak.nics) == 1 else "; " + "; ".join(
            f"{nic.name}: {_counts(nic.stats)}" for nic in soak.nics)
        progress.tick(console, elapsed, f"{_counts(stats)} ({rate:.0f}/s), {live} vectors live "
                      f"in {sum(len(ledger.groups) for ledger in ledgers)} groups, "
                      f"{len(soak.failures)} failures{rss}{per_nic}")
    return tick


def _counts(stats: SoakStats) -> str:
    return (f"{sum(stats.ops.values())} ops, {sum(stats.raises.values())} raises, "
            f"{stats.interrupts} interrupts")


def _summary_table(summary: dict[str, Any], verdict: RunVerdict) -> Table:
    table = Table(title="soak summary", show_header=False)
    rss = summary["device_rss_kib"]
    def split(counts: dict[str, int]) -> str:
        return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))

    rows = [("ops", f"{summary['ops']} ({split(summary['ops_by_kind'])})"),
            ("raises", f"{summary['raises']} ({split(summary['raises_by_source'])})"),
            ("interrupts counted", f"{summary['interrupts']} in {summary['seconds']} s "
                                   f"({summary['interrupts_per_s']}/s)"),
            ("reconciliations", str(summary["reconciliations"])),
            ("alloc ENOSPC", str(summary["alloc_enospc"])),
            ("device RSS KiB", f"first {rss['first']}, last {rss['last']}, max {rss['max']}"
                               + (" (summed over the device servers)" if "nics" in summary
                                  else "")),
            *((f"{name}: ops, raises, interrupts",
               f"{nic['ops']}, {nic['raises']}, {nic['interrupts']} (device RSS KiB last "
               f"{nic['device_rss_kib']['last']})")
              for name, nic in summary.get("nics", {}).items()),
            ("failures", str(len(verdict.failed))),
            ("verdict", f"{verdict.outcome} (exit {verdict.exit_code})")]
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


class SoakJob(Job):
    """``msixlab soak``: the soak on a fresh lab, for ``seconds`` or ``ops`` ops."""

    name = "soak"
    prefix = "soak"

    def __init__(self, options: LabOptions, *, seconds: float = 60.0, ops: int | None = None,
                 seed: int | None = None, dry_run: bool = False):
        super().__init__(options, dry_run=dry_run)
        self.seconds, self.ops = seconds, ops
        self._seed = seed if seed is not None else secrets.randbelow(MAX_SEED)
        self.soak: Soak | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, **changes: Any) -> "SoakJob":
        """The job a parsed ``msixlab soak`` command line asks for (a random seed when it
        names none; ``changes`` win); not checked yet."""
        given = {"seconds": args.seconds, "ops": args.ops, "seed": args.seed,
                 "dry_run": args.dry_run, **changes}
        return cls(from_args(args), **given)

    @property
    def seed(self) -> int:
        return self._seed

    def own_options(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "ops": self.ops}

    def announce(self, setup: Setup) -> str:
        options = self.options
        return (f"soak {setup.dirs.run_id}: seed {self.seed}, {self.seconds:g} s"
                + (f" or {self.ops} ops" if self.ops is not None else "")
                + f", kernel {setup.kernel.release} ({setup.kernel.label}), {setup.accel}, "
                f"{options.vectors} vectors, {options.cpus} CPUs"
                + (f", {options.nics} NICs" if options.nics > 1 else "")
                + f"; results in {setup.dirs.results}")

    def attach(self, lab: Lab, console: Console) -> None:
        self.soak = Soak(lab, self.seed, self.seconds, self.ops, say=progress.say(console),
                         nics=self.options.nics)
        self.soak.tick = _progress_line(console, self.soak)

    def work(self) -> None:
        self.soak.run()

    def judge(self, faults: list) -> RunVerdict:
        return judge(self.soak, faults)

    def own_metadata(self, lab: Lab) -> dict[str, Any]:
        several = len(self.soak.nics) > 1
        return {"steps": [], **({"nic_records": self.soak.nic_records} if several else {})}

    def finish(self, console: Console, dirs: RunDirs, verdict: RunVerdict,
               metadata: dict[str, Any], lab: Lab) -> int:
        """Print the failures, the summary and the verdict, then write soak.json, and
        routing.json with the final views and the result files built from it as for
        ``run`` (results.ktap, junit.xml, kcidb.json, report.html); a write failure is
        reported and keeps the verdict's exit code unless it was a pass (then 125,
        ``host_resource``: ``job.unwritten``)."""
        soak = self.soak
        for failure in soak.failures[:20]:
            console.print(f"[red]FAIL[/] {escape(failure.label)}: {escape(failure.summary)}")
        summary = soak.stats.to_dict(soak.elapsed)
        if len(soak.nics) > 1:
            summary["nics"] = {nic.name: nic.summary(soak.elapsed) for nic in soak.nics}
        console.print(_summary_table(summary, verdict))
        console.print(f"[{'green' if verdict.exit_code == 0 else 'red'}]{verdict.outcome}[/] "
                      f"(exit {verdict.exit_code}): {escape(verdict.summary)}")
        try:
            write_soak_json(dirs.results / "soak.json", metadata, verdict=verdict.to_dict(),
                            summary=summary, checks_passed=dict(soak.passed),
                            failures=[r.to_dict() for r in soak.failures], op_log=soak.op_log)
            results = soak.results()
            snapshot = (soak.final or Snapshot(())).with_checks(results)
            write_routing_json(dirs.results / "routing.json", snapshot, metadata, lab.apic_map,
                               verdict=verdict, results=results)
            write_result_files(dirs.results)
        except (OSError, MsixlabError) as err:
            verdict = report_unwritten(console, verdict, err)
        console.print(f"reproduce: {metadata['reproduce']}; artifacts in {dirs.results}")
        return verdict.exit_code


def run_soak(args: argparse.Namespace, console: Console) -> int:
    """``msixlab soak``: the ``SoakJob`` of the command line through the job skeleton
    (``run_job``); its exit code (0 pass, 1 the kernel misbehaved, 125 could not judge)."""
    return run_job(SoakJob.from_args(args), console)

"""``msixlab soak``: the soak (scenarios/soak.py) in a real guest, ending in one classified verdict.

Concepts: as ``msixlab run`` (jobs/run.py): the options are checked before anything
starts, the image is found, a lab is booted (with ``--nics N`` NICs), device faults are
armed on purpose if asked (each on the NIC its ``nic=`` names), and however the soak
ended becomes one ``RunVerdict`` (verdict/outcome.py): exit 0 when every check passed, 1 when a
check failed (a lost, duplicated or spurious interrupt, a device counter or a view that
disagrees with the ledger) or the kernel misbehaved otherwise, 125 when the run could
not judge. A progress line every second, a summary at the end, each with every NIC's own
numbers besides the totals when there are several. Everything goes to
``results/soak-<id>/``: ``soak.json`` (verdict, options, seed, summary, failed checks
and the op log: the same seed replays the same ops), routing.json (the final views and
the check results) with the result files built from it as for ``run`` (results.ktap,
junit.xml, kcidb.json, report.html), the console, QEMU's and the device's logs, and the
guest's views as far as it could give them.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from msixlab_common import atomic

from images.build import ensure_image

from agent.host.errors import MsixlabError
from agent.host.jobs import options as kernel_options
from agent.host.jobs import progress
from agent.host.jobs.run import (
    check_faults,
    config_hash,
    option_words,
    print_dry_run,
    report_unwritten,
    run_in_lab,
)
from agent.host.lab import accel as accel_mod
from agent.host.lab.lab import Lab
from agent.host.results import write_all as write_result_files
from agent.host.results.provenance import what_ran
from agent.host.results.routing_json import write_routing_json
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


def reproduce_command(args, seed: int) -> str:
    """The ``msixlab soak`` command line that replays this soak (with its seed and every
    option that decides what it does, as ``run``'s)."""
    ops = ["--ops", str(args.ops)] if args.ops is not None else []
    return shlex.join(["msixlab", "soak", "--seconds", f"{args.seconds:g}", "--seed", str(seed),
                       *ops, *option_words(args)])


def run_soak(args, console: Console) -> int:
    """``msixlab soak``: boot, soak, judge, write the results; returns the exit code
    (0 pass, 1 the kernel misbehaved, 125 could not judge)."""
    check_faults(args.device_fault, args.nics)
    image = ensure_image()
    kernel, qemu = kernel_options.select(args, image, console)
    if args.dry_run:
        return print_dry_run(args, image, kernel, qemu)
    seed = args.seed if args.seed is not None else secrets.randbelow(MAX_SEED)
    choice = accel_mod.choose(args.accel, image, args.flavor)
    dirs = RunDirs.create(Path(args.results), prefix="soak")
    console.print(f"soak {dirs.run_id}: seed {seed}, {args.seconds:g} s"
                  + (f" or {args.ops} ops" if args.ops is not None else "")
                  + f", kernel {kernel.release} ({kernel.label}), {choice.accel}, "
                  f"{args.vectors} vectors, {args.cpus} CPUs"
                  + (f", {args.nics} NICs" if args.nics > 1 else "")
                  + f"; results in {dirs.results}")
    lab = Lab(image, kernel, dirs, accel=choice.accel, vectors=args.vectors, cpus=args.cpus,
              qemu=qemu, msix_maskable=args.msix_maskable, msix_noresize=args.msix_noresize,
              iommu=args.iommu, nics=args.nics, append=tuple(args.append))
    soak = Soak(lab, seed, args.seconds, args.ops, say=progress.say(console), nics=args.nics)
    soak.tick = _progress_line(console, soak)
    started = time.monotonic()
    with dirs:
        try:
            verdict = run_in_lab(lab, console, args.device_fault, soak.run,
                                 lambda faults: judge(soak, faults))
        finally:
            lab.stop()
    record = {
        "run_id": dirs.run_id, "kind": "soak", "scenario": "soak", "flavor": kernel.flavor,
        "vectors": args.vectors, "cpus": args.cpus, "nics": args.nics,
        "accel": choice.accel, "steps": [],
        "seed": seed, "verdict": verdict.to_dict(),
        "options": {"seconds": args.seconds, "ops": args.ops, "vectors": args.vectors,
                    "cpus": args.cpus, "nics": args.nics, "flavor": kernel.flavor,
                    "kernel_under_test": kernel.as_json(), "accel": choice.accel,
                    "msix_maskable": args.msix_maskable, "msix_noresize": args.msix_noresize,
                    "iommu": args.iommu, "device_faults": list(args.device_fault),
                    "append": list(args.append)},
        "kernel": lab.hello.get("kernel"), "guest_cmdline": lab.hello.get("cmdline"),
        "qemu": image.qemu_version,
        "kernel_under_test": kernel.as_json(), "config_hash": config_hash(kernel.config),
        "timings": {k: round(v, 3) for k, v in lab.timings.items()},
        "boot_stalls": lab.boot_stalls,
        "wall_seconds": round(time.monotonic() - started, 3),
        "msixlab_commit": what_ran(), "reproduce": reproduce_command(args, seed),
    }
    return _finish(console, dirs, soak, verdict, record, lab)


def _finish(console: Console, dirs: RunDirs, soak: Soak, verdict: RunVerdict,
            record: dict[str, Any], lab: Lab) -> int:
    """Print the failures, the summary and the verdict, then write soak.json, and
    routing.json with the final views and the result files built from it as for
    ``run`` (results.ktap, junit.xml, kcidb.json, report.html); a write failure is
    reported and keeps the verdict's exit code unless it was a pass (then 125,
    ``host_resource``: ``main_job.unwritten``)."""
    for failure in soak.failures[:20]:
        console.print(f"[red]FAIL[/] {escape(failure.label)}: {escape(failure.summary)}")
    summary = soak.stats.to_dict(soak.elapsed)
    if len(soak.nics) > 1:
        summary["nics"] = {nic.name: nic.summary(soak.elapsed) for nic in soak.nics}
        record["nic_records"] = soak.nic_records
    record.update(summary=summary, checks_passed=dict(soak.passed),
                  failures=[r.to_dict() for r in soak.failures], op_log=soak.op_log)
    console.print(_summary_table(summary, verdict))
    console.print(f"[{'green' if verdict.exit_code == 0 else 'red'}]{verdict.outcome}[/] "
                  f"(exit {verdict.exit_code}): {escape(verdict.summary)}")
    try:
        atomic.write_json(dirs.results / "soak.json", record, indent=1)
        results = soak.results()
        snapshot = (soak.final or Snapshot(())).with_checks(results)
        metadata = {k: v for k, v in record.items() if k not in ("op_log", "failures")}
        write_routing_json(dirs.results / "routing.json", snapshot, metadata, lab.apic_map,
                           verdict=verdict, results=results)
        write_result_files(dirs.results)
    except (OSError, MsixlabError) as err:
        verdict = report_unwritten(console, verdict, err)
    console.print(f"reproduce: {record['reproduce']}; artifacts in {dirs.results}")
    return verdict.exit_code

"""``msixlab run``: the main job on the default guest, ending in one classified verdict.

Concepts: build or find the image, bring up a lab, run the default scenario, and turn
however it ended into one ``RunVerdict`` (outcome.py): every declared check passed (0),
the kernel under test misbehaved (1: a failed or not-judged check, a kernel splat, a
driver error where success was needed, a guest that stopped answering), or the run could
not judge (125, with the reason's class).  The verdict is computed before any artifact
is written and survives a failure to write them.  Everything goes to
``results/<run-id>/``: routing.json (with the verdict, every check result and the
metadata), the console, QEMU's and the device's logs, and the guest's lspci, dmesg,
/proc/interrupts and groups, as far as the guest could still give them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from images.build import ensure_image
from qemu_device.errors import QemuDeviceError
from qemu_device.faults import FaultTable

from . import accel as accel_mod
from . import dry_run
from . import scenarios
from .errors import MsixlabError
from .kernel import options as kernel_options
from .lab import Lab
from .qemu_argv import cmdline_text
from .outcome import CouldNotJudge, Outcome, RunVerdict
from .report import render, write_routing_json
from .results import write_all as write_result_files
from .routing import Snapshot, Verdict
from .scenario import Scenario
from .session import RunDirs
from .version import what_ran

log = logging.getLogger(__name__)


def print_dry_run(args, image, kernel, qemu) -> int:
    """``--dry-run`` of ``run`` and ``soak``: print every device server's command (one per
    NIC of ``--nics``) and QEMU's; returns 0."""
    for argv in dry_run.commands(image, kernel, mode="agent", vectors=args.vectors,
                                 cpus=args.cpus, nics=getattr(args, "nics", 1), qemu=qemu,
                                 msix_maskable=args.msix_maskable,
                                 msix_noresize=args.msix_noresize,
                                 iommu=getattr(args, "iommu", False),
                                 append=tuple(getattr(args, "append", ())),
                                 power_management=_power_management(args)):
        print(shlex.join(argv))
    return 0


def _power_management(args) -> bool:
    """Whether the chosen scenario takes the NIC through D3hot and the guest through
    system sleep (``NEEDS_POWER_MANAGEMENT``): the NIC then has its PM capability and the
    virtio devices must survive the sleep (qemu_argv.py)."""
    name = getattr(args, "scenario", scenarios.DEFAULT)
    return getattr(scenarios.REGISTRY.get(name), "NEEDS_POWER_MANAGEMENT", False)


def _modes_text(args) -> str:
    modes = [m for m, on in (("maskable", args.msix_maskable),
                             ("noresize", args.msix_noresize)) if on]
    iommu = ", intel-iommu with interrupt remapping" if getattr(args, "iommu", False) else ""
    return (f", MSI-X {'+'.join(modes)}" if modes else "") + iommu


GUEST_VIEWS = (("lspci.txt", "lspci", {}), ("dmesg.txt", "dmesg", {"lines": 400}),
               ("interrupts.json", "interrupts", {}), ("groups.json", "list_groups", {}))


def _save_guest_views(lab: Lab) -> None:
    """Best effort: a guest that crashed gives nothing, and that is recorded.  A file that
    cannot be written raises ``OSError`` (``run_in_lab`` keeps the verdict)."""
    for name, cmd, args in GUEST_VIEWS:
        try:
            result = lab.agent(cmd, timeout=10, **args)
        except Exception as err:     # the run's verdict is already decided
            result = {"error": str(err).splitlines()[0] if str(err) else type(err).__name__}
        if name.endswith(".txt"):
            text = result.get("stdout") if "stdout" in result else "\n".join(result.get("lines", []))
            lab.save(name, (text or json.dumps(result)) + "\n")
        else:
            lab.save(name, json.dumps(result, indent=2) + "\n")


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


def check_faults(faults: list[dict], nics: int) -> None:
    """Refuse, before anything starts, a ``--device-fault`` the device server would refuse
    once the guest is up (an unknown kind, a field that kind does not take, a value out of
    range: checked by the device's own ``FaultTable``), or whose ``nic`` key (the NIC to
    arm it on; NIC 0 without one) is not an integer 0..``nics``-1 (exit 125, bad option)."""
    for spec in faults:
        nic = spec.get("nic", 0)
        if isinstance(nic, bool) or not isinstance(nic, int) or not 0 <= nic < nics:
            raise CouldNotJudge(Outcome.BAD_OPTION, f"--device-fault {spec.get('kind')}: "
                                f"nic={nic!r} names no NIC of this run (0..{nics - 1}, "
                                f"--nics {nics})", fault=dict(spec), nics=nics)
        try:
            FaultTable().add({k: v for k, v in spec.items() if k != "nic"})
        except QemuDeviceError as err:
            raise CouldNotJudge(Outcome.BAD_OPTION, f"--device-fault {spec.get('kind')}: "
                                f"{err.message}",
                                fault=dict(spec)) from err


def check_options(args) -> type[Scenario]:
    """Refuse, before anything starts, options ``msixlab run`` cannot run with (the
    scenario's needs, the device faults); returns the scenario's class."""
    scenario_cls = scenarios.get(getattr(args, "scenario", scenarios.DEFAULT))
    nics = getattr(args, "nics", 1)
    scenarios.check_options(scenario_cls, args.cpus, nics)
    if getattr(scenario_cls, "NEEDS_IOMMU", False):
        args.iommu = True                  # vfio-pci needs the vIOMMU: it adds it itself
    check_faults(getattr(args, "device_fault", []), nics)
    return scenario_cls


def _arm(lab: Lab, spec: dict) -> dict:
    """Arm one fault on the NIC its ``nic`` key names (NIC 0 without one); the armed
    fault as its device server returned it, with ``nic`` when the lab has several."""
    nic = spec.get("nic", 0)
    armed = lab.device_command_on(lab.devices[nic], "fault",
                                  **{k: v for k, v in spec.items() if k != "nic"})
    return {**armed, "nic": nic} if len(lab.devices) > 1 else armed


def _faults(lab: Lab, armed: list) -> list:
    """Every fault armed on a device during the run: those this run armed (even if
    already used up) and any still armed, by NIC and id (``nic`` in each with several
    NICs)."""
    several, current = len(lab.devices) > 1, []
    for nic, device in enumerate(lab.devices):
        try:
            faults = list(device.command("faults", timeout=3))
        except Exception:            # a dead device server has no faults to report
            continue
        current += [{**f, "nic": nic} if several else f for f in faults]
    by_id = {(f.get("nic", 0), f.get("id")): f for f in armed}
    by_id.update({(f.get("nic", 0), f.get("id")): f for f in current})
    return list(by_id.values())


def run_in_lab(lab: Lab, console: Console, faults: list[dict], work: Callable[[], object],
               judge_run: Callable[[list], RunVerdict]) -> RunVerdict:
    """Start ``lab``, arm ``faults`` on its devices (each on the NIC its ``nic`` key names,
    NIC 0 without one; each printed as armed on purpose), run
    ``work()``, then return ``judge_run(every fault armed)``; however it ends (Ctrl-C
    included) the result is one classified verdict.  The guest's views are saved unless
    the run was interrupted.  The caller stops the lab.  ``msixlab run`` and
    ``msixlab soak`` both run this way."""
    armed: list = []
    try:
        lab.start()
        console.print(f"guest agent up after {lab.timings['boot_to_agent_s']:.1f} s "
                      f"(kernel {lab.hello.get('kernel')})")
        for spec in faults:
            armed.append(_arm(lab, spec))
            console.print("[yellow]device fault armed on purpose:[/] " + escape(str(armed[-1])))
        work()
        lab.guard()          # a splat while the last views were read
        lab.check_kernel_health()     # taint gained, a report the console missed
        verdict = judge_run(_faults(lab, armed))
    except BaseException as err:   # classified, never lost (Ctrl-C included)
        verdict = RunVerdict.from_error(err, _faults(lab, armed))
        if verdict.outcome is Outcome.INTERNAL_ERROR:
            log.exception("internal error")
    if lab.kernel_health is not None and "kernel_health" not in verdict.evidence:
        verdict = dataclasses.replace(verdict, evidence={**verdict.evidence,
                                                         "kernel_health": lab.kernel_health})
    if verdict.outcome is not Outcome.INTERRUPTED and lab.machine is not None:
        try:
            _save_guest_views(lab)
        except OSError as err:            # the verdict survives; a pass cannot
            verdict = unwritten(verdict, err)
    return verdict


def unwritten(verdict: RunVerdict, err: OSError) -> RunVerdict:
    """The verdict of a run whose results could not be written (``err``: a full disk, a
    read-only or vanished results directory).  A pass becomes ``host_resource`` (125): the
    console and the device's event log the sentinel judged from are written to the same
    directory, so a kernel report or a device error may never have reached them.  A
    kernel that misbehaved (1) was seen misbehaving, and a 125 is a 125: both stand."""
    if verdict.outcome is not Outcome.PASS:
        return verdict
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return RunVerdict(Outcome.HOST_RESOURCE, f"the results could not be written ({text}): "
                      "the console and device log this pass rests on may be incomplete",
                      evidence={"error": text, "path": getattr(err, "filename", None),
                                "was": str(verdict.outcome)},
                      faults=verdict.faults, counts=verdict.counts)


def config_hash(config: Path | None) -> str | None:
    """sha256 (first 16 hex digits) of the kernel's .config, or None without one."""
    if config is None:
        return None
    try:
        return hashlib.sha256(Path(config).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def option_words(args) -> list[str]:
    """The command-line words of the options a run or a soak was given that decide what
    it does (kernel paths absolute): kernel (or flavor) and QEMU, vectors, CPUs, MSI-X
    modes, IOMMU, NICs, armed device faults and extra kernel parameters (``--append``)."""
    faults = [f"--device-fault={spec['kind']}:" + ",".join(f"{k}={v}" for k, v in spec.items()
                                                           if k != "kind")
              for spec in getattr(args, "device_fault", [])]
    modes = [f"--msix-{mode}" for mode in ("maskable", "noresize")
             if getattr(args, f"msix_{mode}", False)]
    modes += ["--iommu"] if getattr(args, "iommu", False) else []
    modes += ["--nics", str(args.nics)] if getattr(args, "nics", 1) > 1 else []
    kernel = ["--flavor", args.flavor]
    if getattr(args, "kernel_tree", None):
        kernel = ["--kernel-tree", str(Path(args.kernel_tree).resolve())]
    elif getattr(args, "kernel", None):
        kernel = ["--kernel", str(Path(args.kernel).resolve()), "--kdir",
                  str(Path(args.kdir).resolve())]
    if getattr(args, "qemu", None):
        kernel += ["--qemu", str(Path(args.qemu).resolve())]
    append = getattr(args, "append", ())
    modes += ["--append", cmdline_text(append)] if append else []
    return [*kernel, "--vectors", str(args.vectors), "--cpus", str(args.cpus), *modes,
            *faults]


def reproduce_command(args) -> str:
    """The ``msixlab run`` command line that repeats a run with ``args`` (kernel paths
    absolute)."""
    name = getattr(args, "scenario", scenarios.DEFAULT)
    chosen = ["--scenario", name] if name != scenarios.DEFAULT else []
    return shlex.join(["msixlab", "run", *chosen, *option_words(args)])


def run_main_job(args, console: Console) -> int:
    """``msixlab run``: run one scenario (``--scenario``, per NIC with ``--nics``) on a fresh
    lab and return the verdict's exit code: 0 every declared check passed, 1 the kernel
    under test misbehaved, 125 the run could not judge.  Bad options, the image, the kernel
    and the accelerator are dealt with first: a problem there raises (a ``MsixlabError``
    the CLI classifies) before anything boots; ``--dry-run`` prints the commands instead.
    Once the lab exists every exception (Ctrl-C included) becomes the ``RunVerdict``; the
    lab is always stopped.  The verdict is printed, then routing.json and the other result
    files are written to ``results/<run-id>/`` (a write failure is reported; it turns a
    pass into ``host_resource``, 125, and keeps any other verdict: ``unwritten``)."""
    scenario_cls = check_options(args)
    nics = getattr(args, "nics", 1)
    image = ensure_image()
    kernel, qemu = kernel_options.select(args, image, console)
    if args.dry_run:
        return print_dry_run(args, image, kernel, qemu)
    choice = accel_mod.choose(args.accel, image, args.flavor)
    dirs = RunDirs.create(Path(args.results))
    console.print(f"run {dirs.run_id}: scenario {scenario_cls.NAME}, "
                  f"kernel {kernel.release} ({kernel.label}), "
                  f"QEMU {image.qemu_version}, {choice.accel}, {args.vectors} vectors"
                  f"{_modes_text(args)}; results in {dirs.results}")
    started = time.monotonic()
    lab = Lab(image, kernel, dirs, accel=choice.accel, vectors=args.vectors, cpus=args.cpus,
              qemu=qemu, msix_maskable=args.msix_maskable, msix_noresize=args.msix_noresize,
              iommu=getattr(args, "iommu", False), nics=nics,
              append=tuple(getattr(args, "append", ())),
              power_management=_power_management(args))
    modes = dict(lab.msix_modes)
    scenario = (scenario_cls(lab, say=console.print) if nics == 1 else
                scenarios.PerNic(lab, scenario_cls, nics, say=console.print))
    final: Snapshot | None = None

    def work() -> None:
        nonlocal final
        modes["irq_info_flags"] = lab.device_command("state")["msix"]["irq_info_flags"]
        final = scenario.run()

    with dirs:
        try:
            verdict = run_in_lab(lab, console, getattr(args, "device_fault", []), work,
                                 lambda faults: judge(scenario, faults))
        finally:
            lab.stop()
    metadata = {
        "run_id": dirs.run_id, "scenario": scenario_cls.NAME,
        "kernel": lab.hello.get("kernel"), "flavor": kernel.flavor,
        "kernel_under_test": kernel.as_json(), "config_hash": config_hash(kernel.config),
        "qemu_binary": qemu[-1] if qemu else None,
        "accel": choice.accel, "qemu": image.qemu_version, "vectors": args.vectors,
        "cpus": args.cpus, "iommu": getattr(args, "iommu", False), "nics": nics,
        "append": list(getattr(args, "append", ())),
        "guest_cmdline": lab.hello.get("cmdline"),
        "nic_records": getattr(scenario, "nic_records", None),
        "vfio": getattr(scenario, "record", None),
        "device": lab.hello.get("device"), "msix_modes": modes,
        "timings": {k: round(v, 3) for k, v in lab.timings.items()},
        "boot_stalls": lab.boot_stalls,
        "wall_seconds": round(time.monotonic() - started, 3),
        "steps": scenario.steps, "groups": scenario.groups,
        "resets": getattr(scenario, "resets", None) or None,
        "teardowns": getattr(scenario, "teardowns", None),
        "transitions": getattr(scenario, "transitions", None),
        "msixlab_commit": what_ran(), "seed": 0,
        "reproduce": reproduce_command(args),
    }
    return _finish(console, dirs, verdict, final, scenario, metadata, lab,
                   show_all=getattr(args, "table", "live") == "all")


def _finish(console: Console, dirs: RunDirs, verdict: RunVerdict, final: Snapshot | None,
            scenario: Scenario, metadata: dict, lab: Lab, show_all: bool = False) -> int:
    """Print the verdict, then write routing.json; a write failure is reported and keeps
    the verdict's exit code unless it was a pass (``unwritten``: 125, ``host_resource``)."""
    snapshot = final or Snapshot(()).with_checks([])
    render(console, snapshot, verdict, scenario.results, show_all=show_all)
    try:
        write_routing_json(dirs.results / "routing.json", snapshot, metadata, lab.apic_map,
                           verdict=verdict, results=scenario.results)
        write_result_files(dirs.results)   # results.ktap, junit.xml, kcidb.json, report.html
    except (OSError, MsixlabError) as err:
        verdict = report_unwritten(console, verdict, err)
    console.print(f"wall time {metadata['wall_seconds']:.1f} s; artifacts in {dirs.results}")
    return verdict.exit_code


def report_unwritten(console: Console, verdict: RunVerdict, err: BaseException) -> RunVerdict:
    """Say that the results could not be written (``err``) and return the verdict that
    stands: ``unwritten``'s for an ``OSError``, else (a bug in a writer) the one printed."""
    after = unwritten(verdict, err) if isinstance(err, OSError) else verdict
    if after is verdict:
        console.print(f"[red]could not write the results ({escape(str(err))}); the verdict "
                      f"above stands[/]")
    else:
        console.print(f"[red]could not write the results ({escape(str(err))}): exit "
                      f"{after.exit_code} ({after.outcome}), not {verdict.outcome}: "
                      f"{escape(after.summary)}[/]")
    return after

"""One job skeleton for ``msixlab run`` and ``msixlab soak``: options, lab, work, judge, record.

Concepts owned here:
- ``Job``: what a job puts into the skeleton: its name (``run``, ``soak``: the command
  and ``metadata.job``), its own checks and options besides the lab's, the line it starts
  with, the work it does in the lab, how it judges what happened, the metadata of its own
  and how it shows and writes its results.  jobs/run.py's ``RunJob`` and jobs/soak.py's
  ``SoakJob`` are the two; a bisect step runs ``msixlab run`` as a process of its own, so
  it runs this skeleton too.
- ``run_job(job, console)``, the skeleton:
  1. *options*: the job's ``LabOptions`` (lab/options.py) and its own checked before
     anything starts (a bad one raises: 125, ``bad_option``);
  2. the image, the kernel under test (a tree built first with ``--build``) and the QEMU;
     ``--dry-run`` prints the commands there and stops; the accelerator;
  3. *lab*: the run's directories and the ``Lab`` the options describe;
  4. *work*: ``run_in_lab``: the lab started, the device faults armed on purpose, the
     job's work, the kernel's health read;
  5. *judge*: however that ended (Ctrl-C included), one ``RunVerdict``; the lab stopped;
  6. *record*: ``metadata()``, one layout for routing.json and soak.json
     (results/metadata.py: the options, what ran, the reproduce line, then the job's
     own), and the job shows and writes its results (a write failure turns a pass into
     ``host_resource``, 125, and keeps any other verdict: ``unwritten``).
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
from typing import Any

from rich.console import Console
from rich.markup import escape

from images.build import ensure_image
from images.image import Image

from agent.host.jobs import dry_run
from agent.host.jobs.options import select
from agent.host.kernel.under_test import KernelUnderTest
from agent.host.lab.lab import Lab
from agent.host.lab.options import LabOptions
from agent.host.lab.qemu_argv import Share
from agent.host.results.metadata import identity
from agent.host.results.provenance import reproduce_command, what_ran
from agent.host.rundirs import RunDirs
from agent.host.verdict.outcome import Outcome, RunVerdict

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a job's options resolved to on this host, and where the run lives."""
    image: Image
    kernel: KernelUnderTest
    qemu: list[str] | None
    accel: str
    dirs: RunDirs


class Job:
    """A job in the skeleton (module docstring); subclasses fill in the parts that differ."""

    #: the command, ``metadata.job`` and the prefix of the run's directory
    name = "job"
    prefix = "run"

    def __init__(self, options: LabOptions, *, dry_run: bool = False):
        self.options, self.dry_run = options, dry_run

    # --- 1. options -----------------------------------------------------------------
    def check(self) -> None:
        """Refuse, before anything starts, what the job cannot run with: the options'
        problems (``LabOptions.check``); a job adds its own."""
        self.options = self.options.check()

    def own_options(self) -> dict[str, Any]:
        """The job's options besides the lab's, recorded in ``metadata.options``."""
        return {}

    def dry_run_shares(self, image: Image, kernel: KernelUnderTest) -> tuple:
        """The 9p shares (tag, path) the work adds to the guest, for ``--dry-run``."""
        return ()

    @property
    def seed(self) -> int:
        """The seed the job draws from (0: nothing drawn at random)."""
        return 0

    @property
    def scenario(self) -> str:
        """``metadata.scenario``: the scenario the job runs."""
        return self.name

    def identity(self) -> dict[str, Any]:
        """What decides what the job does: ``job``, ``options`` and ``seed`` of
        ``metadata``, which ``reproduce_command`` turns back into a command line."""
        return identity(self.name, {**self.options.record(), **self.own_options()},
                        self.seed)

    def reproduce(self) -> str:
        """The command line that repeats the job."""
        return reproduce_command(self.identity())

    # --- 3. to 5.: lab, work, judge -------------------------------------------------
    def announce(self, setup: Setup) -> str:
        """The line printed once the run's directory exists."""
        raise NotImplementedError

    def attach(self, lab: Lab, console: Console) -> None:
        """Make the job's work for ``lab`` (nothing runs yet)."""
        raise NotImplementedError

    def work(self) -> None:
        """The job's work, in the started lab."""
        raise NotImplementedError

    def judge(self, faults: list) -> RunVerdict:
        """The verdict of work that ended (or stopped at a failure), ``faults`` armed."""
        raise NotImplementedError

    # --- 6. record ------------------------------------------------------------------
    def own_metadata(self, lab: Lab) -> dict[str, Any]:
        """The job's own part of ``metadata`` (docs/routing.md)."""
        return {}

    def metadata(self, setup: Setup, lab: Lab, wall_seconds: float) -> dict[str, Any]:
        """The run's metadata, one layout for routing.json and soak.json: what decided it
        (``identity``), its reproduce line and what ran, then the job's own."""
        ident, kernel, options = self.identity(), setup.kernel, self.options
        return {
            "job": ident["job"], "run_id": setup.dirs.run_id, "scenario": self.scenario,
            "options": ident["options"], "seed": ident["seed"],
            "reproduce": reproduce_command(ident), "msixlab_commit": what_ran(),
            "kernel": lab.hello.get("kernel"), "flavor": kernel.flavor,
            "kernel_under_test": kernel.as_json(), "config_hash": config_hash(kernel.config),
            "qemu": setup.image.qemu_version,
            "qemu_binary": setup.qemu[-1] if setup.qemu else None, "accel": setup.accel,
            "vectors": options.vectors, "cpus": options.cpus, "nics": options.nics,
            "iommu": options.iommu, "append": list(options.append),
            "guest_cmdline": lab.hello.get("cmdline"), "device": lab.hello.get("device"),
            "msix_modes": dict(lab.msix_modes),
            "timings": {k: round(v, 3) for k, v in lab.timings.items()},
            "boot_stalls": lab.boot_stalls, "wall_seconds": round(wall_seconds, 3),
            **self.own_metadata(lab),
        }

    def finish(self, console: Console, dirs: RunDirs, verdict: RunVerdict,
               metadata: dict[str, Any], lab: Lab) -> int:
        """Show the results, write them to ``dirs.results``; the exit code."""
        raise NotImplementedError


def run_job(job: Job, console: Console) -> int:
    """Run ``job`` through the skeleton (module docstring) and return its exit code: 0
    every check passed, 1 the kernel under test misbehaved, 125 the run could not judge.
    Until the lab exists a problem raises (a ``MsixlabError`` the CLI classifies); from
    then on every exception becomes the verdict, and the lab is always stopped."""
    job.check()
    options = job.options
    image = ensure_image()
    kernel, qemu = select(options, image, console)
    if job.dry_run:
        return print_dry_run(options, image, kernel, qemu, job.dry_run_shares(image, kernel))
    accel = options.choose_accel(image).accel
    setup = Setup(image, kernel, qemu, accel, RunDirs.create(Path(options.results),
                                                             prefix=job.prefix))
    console.print(job.announce(setup))
    started = time.monotonic()
    lab = options.lab(image, kernel, setup.dirs, accel=accel, qemu=qemu)
    job.attach(lab, console)
    with setup.dirs:
        try:
            verdict = run_in_lab(lab, console, list(options.device_faults), job.work,
                                 job.judge)
        finally:
            lab.stop()
    metadata = job.metadata(setup, lab, time.monotonic() - started)
    return job.finish(console, setup.dirs, verdict, metadata, lab)


def print_dry_run(options: LabOptions, image: Image, kernel: KernelUnderTest,
                  qemu: list[str] | None, shares: tuple[tuple[str, Path], ...] = ()) -> int:
    """``--dry-run``: print every device server's command (one per NIC) and QEMU's, with
    the 9p ``shares`` (tag, path) the work adds; returns 0."""
    for argv in dry_run.commands(image, kernel, mode="agent", vectors=options.vectors,
                                 cpus=options.cpus, nics=options.nics, qemu=qemu,
                                 msix_maskable=options.msix_maskable,
                                 msix_noresize=options.msix_noresize,
                                 iommu=options.iommu, append=options.append,
                                 power_management=options.power_management,
                                 extra_shares=tuple(Share(tag, path) for tag, path in shares)):
        print(shlex.join(argv))
    return 0


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
    the run was interrupted.  The caller stops the lab."""
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


def config_hash(config: Path | None) -> str | None:
    """sha256 (first 16 hex digits) of the kernel's .config, or None without one."""
    if config is None:
        return None
    try:
        return hashlib.sha256(Path(config).read_bytes()).hexdigest()[:16]
    except OSError:
        return None

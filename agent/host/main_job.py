"""``msixlab run``: the main job on the default guest.

Concepts: build or find the image, bring up a lab, run the default scenario, write every
artifact to ``results/<run-id>/`` (routing.json, console, QEMU and device logs, the
guest's lspci, /proc/interrupts and dmesg), print the routing table, and exit with the
verdict: 0 every check passed, 1 a check failed (named), 125 the run could not judge.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from images.build import ensure_image

from . import accel as accel_mod
from .device_server import DeviceServer
from .errors import EXIT_INFRA, MsixlabError
from .kernel import options as kernel_options
from .kmod import kmod_dir
from .lab import Lab
from .qemu_argv import build_argv
from .report import render, write_routing_json
from .scenario import Scenario
from .session import RunDirs, guest_spec


def _dry_run(args, console: Console, image, kernel, qemu) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="msixlab-dry-run-"))
    dirs = RunDirs.create(scratch, prefix="dry-run")
    try:
        device = DeviceServer.for_run(dirs, args.vectors)
        spec = guest_spec(image, kernel, dirs, mode="agent", cpus=args.cpus, qemu=qemu,
                          nic_sockets=(device.socket_path,),
                          kmod_dir=kmod_dir(image, kernel, dirs.results), agent=True)
        print(shlex.join(device.argv))
        print(shlex.join(build_argv(spec)))
    finally:
        dirs.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _save_guest_views(lab: Lab) -> None:
    for name, cmd, args in (("lspci.txt", "lspci", {}), ("dmesg.txt", "dmesg", {"lines": 400}),
                            ("interrupts.json", "interrupts", {}),
                            ("groups.json", "list_groups", {})):
        try:
            result = lab.agent(cmd, **args)
        except MsixlabError as err:
            result = {"error": str(err)}
        if name.endswith(".txt"):
            text = result.get("stdout") if "stdout" in result else "\n".join(result.get("lines", []))
            lab.save(name, (text or json.dumps(result)) + "\n")
        else:
            lab.save(name, json.dumps(result, indent=2) + "\n")


def run_main_job(args, console: Console) -> int:
    image = ensure_image()
    kernel, qemu = kernel_options.select(args, image, console)
    if args.dry_run:
        return _dry_run(args, console, image, kernel, qemu)
    choice = accel_mod.choose(args.accel, image, args.flavor)
    dirs = RunDirs.create(Path(args.results))
    console.print(f"run {dirs.run_id}: kernel {kernel.release} ({kernel.label}), "
                  f"QEMU {image.qemu_version}, {choice.accel}, {args.vectors} vectors; "
                  f"results in {dirs.results}")
    started = time.monotonic()
    try:
        with dirs, Lab(image, kernel, dirs, accel=choice.accel, vectors=args.vectors,
                       cpus=args.cpus, qemu=qemu) as lab:
            console.print(f"guest agent up after {lab.timings['boot_to_agent_s']:.1f} s "
                          f"(kernel {lab.hello.get('kernel')})")
            scenario = Scenario(lab, say=console.print)
            final = scenario.run()
            _save_guest_views(lab)
            metadata = {
                "run_id": dirs.run_id, "kernel": lab.hello.get("kernel"), "flavor": kernel.flavor,
                "kernel_under_test": kernel.as_json(),
                "accel": choice.accel, "qemu": image.qemu_version, "vectors": args.vectors,
                "cpus": args.cpus, "device": lab.hello.get("device"),
                "timings": {k: round(v, 3) for k, v in lab.timings.items()},
                "wall_seconds": round(time.monotonic() - started, 3),
                "steps": scenario.steps, "groups": scenario.groups,
            }
            write_routing_json(dirs.results / "routing.json", final, metadata, lab.apic_map)
    except MsixlabError as err:
        console.print(f"[red]could not judge:[/] {escape(str(err))}")
        console.print(f"artifacts: {dirs.results}")
        return getattr(err, "exit_code", EXIT_INFRA)
    status = render(console, final)
    console.print(f"wall time {time.monotonic() - started:.1f} s; routing.json and logs in {dirs.results}")
    return status.code

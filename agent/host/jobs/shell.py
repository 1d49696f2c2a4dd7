"""``msixlab shell``: a manual session on the guest, console on this terminal.

Concepts: the same guest the main job boots (the image, the kernel under test, the emulated NIC
with its device server, the driver loaded), but stage 2 starts a shell on the serial
console instead of the agent, and the console and QEMU's monitor share this terminal
(Ctrl-A c switches, Ctrl-A x quits).  The device server's control socket and QMP stay
reachable from another terminal, and their paths are printed first.  Once the guest's
driver has enabled MSI-X on the NIC (``guest_up_hints``, a thread polling the device's
``state``), the session prints how to raise a vector from the device and where QEMU's copy
of the table is (its guest-physical address, from QMP ``query-pci``).  In the guest,
``msixlab-guest`` (agent/guest/human.py) allocates, frees, raises and shows the routing
table for a person; ``python3 -m agent.guest --stdio`` speaks the agent protocol by hand.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, TextIO

from qemu.qmp.legacy import QEMUMonitorProtocol

from rich.console import Console

from images.image import Image
from msixlab_common.lifetime import die_with_parent

from agent.host.jobs.dry_run import commands as dry_run_commands
from agent.host.kernel.kmod import ensure_kmod
from agent.host.kernel.under_test import KernelUnderTest, as_kernel
from agent.host.lab.device_server import DeviceServer
from agent.host.lab.guest_spec import guest_spec
from agent.host.lab.qemu_argv import build_argv
from agent.host.lab.qemu_view import find_nic_bars
from agent.host.rundirs import RunDirs


def shell_session(image: Image, kernel: KernelUnderTest | str, results_root: Path,
                  console: Console, *, accel: str = "tcg", vectors: int = 64, cpus: int = 2,
                  nic: bool = True, kmod: bool = True, dry_run: bool = False,
                  msix_maskable: bool = False, msix_noresize: bool = False,
                  iommu: bool = False, qemu: list[str] | None = None,
                  append: tuple[str, ...] = ()) -> int:
    """Run QEMU in the foreground on this terminal (``append``: more kernel parameters);
    returns QEMU's exit status."""
    kernel = as_kernel(image, kernel)
    if dry_run:                      # the paths printed are a throwaway run's
        for argv in dry_run_commands(image, kernel, mode="shell", accel=accel, vectors=vectors,
                                     cpus=cpus, nics=1 if nic else 0, kmod=kmod, qemu=qemu,
                                     msix_maskable=msix_maskable, msix_noresize=msix_noresize,
                                     iommu=iommu, interactive=True, append=append):
            print(shlex.join(argv))
        return 0
    kernel.check_supported()
    return _session(image, kernel, results_root, console, accel, vectors, cpus, nic, kmod,
                    {"msix_maskable": msix_maskable, "msix_noresize": msix_noresize},
                    iommu, qemu, append)


def _session(image, kernel, results_root, console, accel, vectors, cpus, nic, kmod,
             msix_modes, iommu=False, qemu=None, append=()) -> int:
    with RunDirs.create(results_root, prefix="shell") as dirs:
        device = DeviceServer.for_run(dirs, vectors, **msix_modes)
        module = None
        if kmod:
            module = ensure_kmod(image, kernel, run_dir=dirs.results)
        spec = guest_spec(image, kernel, dirs, mode="shell", accel=accel, cpus=cpus, qemu=qemu,
                          nic_sockets=(device.socket_path,) if nic else (),
                          kmod_dir=module, interactive=True, iommu=iommu, append=append)
        argv = build_argv(spec)
        if nic:
            device.start()
        try:
            if nic:
                console.print(f"device control: qemu-device ctl --control {device.control_path} state")
            console.print(f"QMP: {spec.qmp_socket}; artifacts: {dirs.results}")
            console.print("console below; Ctrl-A c: QEMU monitor, Ctrl-A x: quit")
            stop = threading.Event()
            if nic:
                threading.Thread(target=guest_up_hints, daemon=True,
                                 args=(device.state, device.control_path, spec.qmp_socket,
                                       sys.stdout, stop)).start()
            with open(dirs.results / "qemu.log", "w") as log:
                try:
                    return subprocess.run(argv, stderr=log,
                                          preexec_fn=die_with_parent(signal.SIGKILL)).returncode
                finally:
                    stop.set()
        finally:
            device.stop()


HINTS_WAIT_S = 600.0        # a guest that takes longer to load its driver gets no hints


def guest_up_hints(state: Callable[[], dict], control: Path, qmp_socket: Path, out: TextIO,
                   stop: threading.Event, wait_s: float = HINTS_WAIT_S) -> bool:
    """Once the NIC's MSI-X is enabled (the guest's driver probed), print how to raise a
    vector from the device and where QEMU's MSI-X table is; the terminal is raw while QEMU
    owns it, so lines end in CR LF.  Gives up, printing nothing, when ``stop`` is set or
    after ``wait_s`` seconds.  Returns whether it printed."""
    table = None
    waited = 0.0
    while not stop.is_set() and waited < wait_s:
        try:
            msix = state()["msix"]
        except Exception:                   # the server is busy or gone: try again
            msix = {}
        if msix.get("enabled"):
            table = msix
            break
        stop.wait(0.5)
        waited += 0.5
    if table is None:
        return False
    where = _table_address(qmp_socket, table)
    lines = ["", "msixlab: the guest's driver enabled MSI-X. From another terminal:",
             f"  raise vector 5 from the device:  qemu-device ctl --control {control} raise 5",
             f"  the device's view:               qemu-device ctl --control {control} state",
             f"  QEMU's view of the table:        qmp-shell -H {qmp_socket}, then "
             + (f"xp /4wx {where:#x}+16*INDEX" if where is not None else "info pci (the NIC's "
                f"BAR{table['table_bar']} + {table['table_offset']:#x}), xp /4wx ADDR+16*INDEX"),
             "  in the guest:                    msixlab-guest alloc 3; msixlab-guest show", ""]
    out.write("\r\n".join(lines))
    out.flush()
    return True


def _table_address(qmp_socket: Path, msix: dict) -> int | None:
    """The MSI-X table's guest-physical address, from QMP query-pci (None if QMP does not
    answer within a few seconds: the hint then says how to find it)."""
    qmp = QEMUMonitorProtocol(str(qmp_socket))
    try:
        qmp.connect(negotiate=True)
        qmp.settimeout(5.0)
        bars = find_nic_bars(qmp.cmd("query-pci"))
        return bars[msix["table_bar"]] + msix["table_offset"]
    except Exception:                       # QMP busy (a person's qmp-shell), no BAR yet
        return None
    finally:
        qmp.close()

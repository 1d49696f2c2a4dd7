"""The QEMU command line for one msixlab guest, as an argv list.

Concepts: a ``GuestSpec`` says what to boot (image QEMU, kernel, initramfs, shares, mode),
how (accelerator, CPUs, memory) and what to attach (vfio-user NICs, the agent's
virtio-serial port, QMP, the serial console).  ``build_argv`` turns it into argv, never a
shell string; option values are escaped the way QEMU's option parser wants (a comma is
doubled).  vfio-user needs guest RAM that the device server can map: a shared memfd.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

AGENT_PORT = "org.msixlab.agent"


def escape(value: object) -> str:
    """Escape a value for a QEMU ``key=value,...`` option."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class Share:
    tag: str
    path: Path
    readonly: bool = True


@dataclass(frozen=True)
class GuestSpec:
    qemu: list[str]                  # argv prefix running the image's QEMU
    kernel: Path
    initramfs: Path
    console_log: Path
    qmp_socket: Path
    shares: tuple[Share, ...]
    mode: str = "ready"
    accel: str = "tcg"
    cpus: int = 2
    memory_mb: int = 1024
    nic_sockets: tuple[Path, ...] = ()
    agent_socket: Path | None = None
    kmod: str | None = None          # guest path of the driver to load
    append: tuple[str, ...] = ()
    trace: tuple[str, ...] = ()      # QEMU trace patterns, e.g. "vfio_msix*"
    trace_log: Path | None = None
    interactive: bool = False        # console (and the HMP monitor, Ctrl-A c) on stdio
    extra: tuple[str, ...] = field(default=())


def kernel_cmdline(spec: GuestSpec) -> str:
    words = ["console=ttyS0", "panic=-1", "loglevel=5", "rdinit=/init",
             f"msixlab.mode={spec.mode}"]
    if spec.kmod:
        words.append(f"msixlab.kmod={spec.kmod}")
    return " ".join(words + list(spec.append))


def _accel(spec: GuestSpec) -> list[str]:
    if spec.accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if spec.accel == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    raise ValueError(f"unknown accelerator {spec.accel!r} (expected 'tcg' or 'kvm')")


def _shares(spec: GuestSpec) -> list[str]:
    argv = []
    for share in spec.shares:
        opts = f"local,id=fs_{share.tag},path={escape(share.path)},security_model=none"
        if share.readonly:
            opts += ",readonly=on"
        argv += ["-fsdev", opts, "-device", f"virtio-9p-pci,fsdev=fs_{share.tag},mount_tag={share.tag}"]
    return argv


def _nics(spec: GuestSpec) -> list[str]:
    argv = []
    for i, sock in enumerate(spec.nic_sockets):
        argv += ["-device", f"pcie-root-port,id=rp{i},chassis={i + 1},slot={i + 1}"]
        device = {"driver": "vfio-user-pci", "id": f"nic{i}", "bus": f"rp{i}",
                  "socket": {"type": "unix", "path": str(sock)}}
        argv += ["-device", json.dumps(device)]
    return argv


def _console(spec: GuestSpec) -> list[str]:
    if spec.interactive:
        return ["-chardev", "stdio,id=console0,mux=on,signal=off",
                "-serial", "chardev:console0", "-mon", "chardev=console0,mode=readline"]
    return ["-chardev", f"file,id=console0,path={escape(spec.console_log)}",
            "-serial", "chardev:console0"]


def _agent(spec: GuestSpec) -> list[str]:
    if spec.agent_socket is None:
        return []
    return [
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=agent0,path={escape(spec.agent_socket)},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}",
    ]


def build_argv(spec: GuestSpec) -> list[str]:
    mem = f"{spec.memory_mb}M"
    argv = list(spec.qemu) + [
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", "q35,memory-backend=mem0",
        "-object", f"memory-backend-memfd,id=mem0,size={mem},share=on",
        "-m", mem, "-smp", str(spec.cpus),
        *_accel(spec),
        "-kernel", str(spec.kernel), "-initrd", str(spec.initramfs),
        "-append", kernel_cmdline(spec),
        *_console(spec),
        "-qmp", f"unix:{escape(spec.qmp_socket)},server=on,wait=off",
        *_shares(spec), *_agent(spec), *_nics(spec),
    ]
    if spec.trace:
        for pattern in spec.trace:
            argv += ["-trace", pattern]
        if spec.trace_log:
            argv += ["-D", str(spec.trace_log)]
    return argv + list(spec.extra)

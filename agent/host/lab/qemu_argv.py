"""The QEMU command line for one msixlab guest, as an argv list.

Concepts: a ``GuestSpec`` says what to boot (image QEMU, kernel, initramfs, shares, mode),
how (accelerator, CPUs, memory, an intel-iommu with interrupt remapping) and what to
attach (vfio-user NICs, the agent's
virtio-serial port, QMP, the serial console).  ``build_argv`` turns it into argv, never a
shell string; option values are escaped the way QEMU's option parser wants (a comma is
doubled).  vfio-user needs guest RAM that the device server can map: a shared memfd.
With ``sleep_safe`` every virtio device (the 9p shares, the agent's virtio-serial) sits
behind a PCIe root port of its own with No_Soft_Reset set (``x-pcie-pm-no-soft-reset``),
so it keeps its state across system sleep: on the root bus it has no PM capability, the
guest's virtio core resets it on resume (and QEMU's system reset at an S3 wake-up resets
it too), and 9p has no restore, so the guest's root filesystem would hang
(docs/scenarios.md, suspend).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from agent.host.argtypes import cmdline_text

AGENT_PORT = "org.msixlab.agent"
EXTRA_TAG = "extra"         # the tests' extra share: images/guest/init mounts it when named


def escape(value: object) -> str:
    """Escape a value for a QEMU ``key=value,...`` option."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class Share:
    """A host directory shared with the guest over 9p under ``tag`` (read-only unless told)."""
    tag: str
    path: Path
    readonly: bool = True


@dataclass(frozen=True)
class GuestSpec:
    """Everything one QEMU boot needs: the QEMU argv prefix, kernel, initramfs, console log,
    QMP socket, 9p shares, the guest's mode, accelerator, CPUs, memory in MiB, the NICs'
    vfio-user sockets, the agent's socket, the driver to load, extra kernel arguments, QEMU
    trace patterns and their log, an interactive console, the intel-iommu, the virtio
    devices' sleep-safe placement, and extra QEMU arguments."""
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
    iommu: bool = False              # intel-iommu with interrupt remapping
    sleep_safe: bool = False         # virtio devices behind No_Soft_Reset root ports
    extra: tuple[str, ...] = field(default=())


def kernel_cmdline(spec: GuestSpec) -> str:
    """The guest kernel's command line for ``spec``: serial console, ``panic=-1`` (reboot at
    once, which ``-no-reboot`` turns into QEMU exiting), the msixlab mode and driver,
    ``msixlab.extra=1`` with the tests' extra share, ``intel_iommu=on`` with the IOMMU,
    then ``spec.append``."""
    # loglevel=5: messages up to KERN_WARNING reach the console, so a WARN's "WARNING:"
    # line (KERN_WARNING) is there for the console watcher, not only in dmesg.
    # no_timer_check: on a loaded host a TCG guest can fail the IO-APIC timer check and
    # panic at boot ("IO-APIC + timer doesn't work!"): the host's load, not the kernel.
    # With interrupt remapping the same check goes through the remapped IO-APIC and the
    # kernel panics instead of trying another timer route, so it is needed there too.
    words = ["console=ttyS0", "panic=-1", "loglevel=5", "no_timer_check", "rdinit=/init",
             f"msixlab.mode={spec.mode}"]
    if spec.kmod:
        words.append(f"msixlab.kmod={spec.kmod}")
    if any(share.tag == EXTRA_TAG for share in spec.shares):
        words.append("msixlab.extra=1")
    if spec.iommu:
        words.append("intel_iommu=on")
    return " ".join(words) + (" " + cmdline_text(spec.append) if spec.append else "")


def _accel(spec: GuestSpec) -> list[str]:
    if spec.accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if spec.accel == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    raise ValueError(f"unknown accelerator {spec.accel!r} (expected 'tcg' or 'kvm')")


# Root ports of the sleep-safe virtio devices: pcie.0 slots from here on (the NICs' root
# ports keep the first free slots, so NIC 0 stays at bus 1) and chassis numbers apart
# from the NICs' (1..8).
SLEEP_SAFE_SLOT = 0x10
SLEEP_SAFE_CHASSIS = 32


def _virtio(spec: GuestSpec, device: str, taken: list[str]) -> list[str]:
    """``-device`` for the virtio device ``device``: on the root bus, or with
    ``spec.sleep_safe`` behind a root port of its own (No_Soft_Reset); ``taken`` lists
    the root ports made so far and grows."""
    if not spec.sleep_safe:
        return ["-device", device]
    k = len(taken)
    port = f"rpsleep{k}"
    taken.append(port)
    return ["-device", f"pcie-root-port,id={port},chassis={SLEEP_SAFE_CHASSIS + k},"
            f"slot={SLEEP_SAFE_CHASSIS + k},addr={SLEEP_SAFE_SLOT + k:#x}",
            "-device", f"{device},bus={port},x-pcie-pm-no-soft-reset=on"]


def _shares(spec: GuestSpec, ports: list[str]) -> list[str]:
    argv = []
    for share in spec.shares:
        opts = f"local,id=fs_{share.tag},path={escape(share.path)},security_model=none"
        if share.readonly:
            opts += ",readonly=on"
        argv += ["-fsdev", opts] + _virtio(
            spec, f"virtio-9p-pci,fsdev=fs_{share.tag},mount_tag={share.tag}", ports)
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


def _agent(spec: GuestSpec, ports: list[str]) -> list[str]:
    if spec.agent_socket is None:
        return []
    return [
        *_virtio(spec, "virtio-serial-pci,id=vser0", ports),
        "-chardev", f"socket,id=agent0,path={escape(spec.agent_socket)},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}",
    ]


def _iommu(spec: GuestSpec) -> list[str]:
    """QEMU's intel-iommu with interrupt remapping, before every other device (a device
    created before it would not sit behind it); caching-mode lets a vfio device's DMA
    follow the guest's IOMMU mappings."""
    if not spec.iommu:
        return []
    return ["-device", "intel-iommu,intremap=on,caching-mode=on"]


def _machine(spec: GuestSpec) -> str:
    # with KVM, interrupt remapping needs the IOAPIC in QEMU (split irqchip); TCG has it
    split = ",kernel-irqchip=split" if spec.iommu and spec.accel == "kvm" else ""
    return f"q35,memory-backend=mem0{split}"


def build_argv(spec: GuestSpec) -> list[str]:
    """QEMU's argv for ``spec``: an argv list (never a shell string), option values escaped for
    QEMU."""
    mem = f"{spec.memory_mb}M"
    ports: list[str] = []
    argv = list(spec.qemu) + [
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", _machine(spec),
        "-object", f"memory-backend-memfd,id=mem0,size={mem},share=on",
        "-m", mem, "-smp", str(spec.cpus),
        *_accel(spec),
        "-kernel", str(spec.kernel), "-initrd", str(spec.initramfs),
        "-append", kernel_cmdline(spec),
        *_console(spec),
        "-qmp", f"unix:{escape(spec.qmp_socket)},server=on,wait=off",
        *_iommu(spec), *_shares(spec, ports), *_agent(spec, ports), *_nics(spec),
    ]
    if spec.trace:
        for pattern in spec.trace:
            argv += ["-trace", pattern]
        if spec.trace_log:
            argv += ["-D", str(spec.trace_log)]
    return argv + list(spec.extra)

"""What the rest of the guest kernel shows about the device's interrupts.

Concepts: ``parse_interrupts`` turns /proc/interrupts text into rows (per-CPU counts,
chip, hwirq = MSI-X index for per-device MSI-X domains, handler, action names);
``device_rows`` keeps the rows of one device (chip names it by BDF, or an action is one
of the driver's).  ``irq_sysfs`` collects /sys/kernel/irq/N, /proc/irq/N and the
device's msi_irqs/N entry for one IRQ; ``msi_irqs`` lists every entry of the device's
msi_irqs/ directory (the kernel's own list of its MSI IRQs).  ``write_affinity`` writes
a CPU list to /proc/irq/N/smp_affinity_list.  ``set_cpu_online`` takes a CPU offline or
brings it back (/sys/devices/system/cpu/cpuN/online) and ``online_cpus`` reads the
online list (/sys/devices/system/cpu/online).  ``run_tool`` runs a guest program (lspci,
dmesg) as an argv list with a timeout.  All take a root directory so tests can use a tree.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess

from .errors import GuestError

_HWIRQ = re.compile(r"^(\d+)-(\S+)$")


def parse_interrupts(text: str) -> dict[str, object]:
    """Parse /proc/interrupts: {"cpus": ["CPU0", ...], "rows": [...], "other": [...]}.

    Numbered rows give {"irq", "counts", "chip", "hwirq", "handler", "actions"};
    named rows (NMI, LOC, ERR ...) give {"name", "counts", "description"}.
    """
    lines = text.splitlines()
    if not lines or not lines[0].split() or not lines[0].split()[0].startswith("CPU"):
        raise ValueError("not /proc/interrupts text: no CPU header line")
    cpus = lines[0].split()
    rows, other = [], []
    for line in lines[1:]:
        head, sep, rest = line.partition(":")
        if not sep or not head.strip():
            continue
        tokens = rest.split()
        counts = []
        while tokens and len(counts) < len(cpus) and tokens[0].isdigit():
            counts.append(int(tokens.pop(0)))
        name = head.strip()
        if not name.isdigit():
            other.append({"name": name, "counts": counts, "description": " ".join(tokens)})
            continue
        row: dict[str, object] = {"irq": int(name), "counts": counts, "chip": None,
                               "hwirq": None, "handler": None, "actions": []}
        if tokens:
            row["chip"] = tokens.pop(0)
        if tokens and (match := _HWIRQ.match(tokens[0])):
            tokens.pop(0)
            row["hwirq"], row["handler"] = int(match.group(1)), match.group(2)
        actions = " ".join(tokens)
        row["actions"] = [a.strip() for a in actions.split(",") if a.strip()]
        rows.append(row)
    return {"cpus": cpus, "rows": rows, "other": other}


def device_rows(parsed: dict[str, object], bdf: str | None,
                name: str | None = None) -> list[dict[str, object]]:
    """The rows of one device: the chip ends with its BDF, or an action is named
    ``<name>[<index>]`` (the driver names its handlers after /dev/<name>)."""
    action_prefix = f"{name}[" if name else None
    out = []
    for row in parsed["rows"]:
        chip = row["chip"] or ""
        by_chip = bdf is not None and "MSI" in chip and chip.endswith(bdf)
        by_action = action_prefix is not None and any(
            a.startswith(action_prefix) for a in row["actions"])
        if by_chip or by_action:
            out.append(row)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"<{errno.errorcode.get(err.errno, err.errno)}>"


def _int_list(text: str | None) -> list[int] | None:
    """'0-2,5' (cpu list) -> [0, 1, 2, 5]."""
    if text is None or text.startswith("<"):
        return None
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def irq_sysfs(irq: int, bdf: str | None = None, root: str = "/") -> dict[str, object]:
    """IRQ ``irq`` as the kernel shows it: /sys/kernel/irq/N (hwirq and per-CPU counts as
    numbers), /proc/irq/N's affinity lists and node, and with ``bdf`` the device's
    msi_irqs/N (``None`` once freed).  ``GuestError`` (ENOENT) if the IRQ does not exist."""
    sys_dir = os.path.join(root, "sys/kernel/irq", str(irq))
    proc_dir = os.path.join(root, "proc/irq", str(irq))
    if not os.path.isdir(sys_dir) and not os.path.isdir(proc_dir):
        raise GuestError(errno.ENOENT, f"irq_sysfs: IRQ {irq} does not exist "
                         f"(no {sys_dir} or {proc_dir})", argument="irq")
    sys = {name: _read(os.path.join(sys_dir, name))
           for name in ("chip_name", "hwirq", "name", "type", "wakeup", "actions",
                        "per_cpu_count")}
    per_cpu = sys["per_cpu_count"]
    out: dict[str, object] = {
        "irq": irq,
        "sys": {**sys,
                "hwirq": int(sys["hwirq"]) if (sys["hwirq"] or "").isdigit() else sys["hwirq"],
                "per_cpu_count": [int(x) for x in per_cpu.split(",")]
                if per_cpu and not per_cpu.startswith("<") else per_cpu},
        "proc": {
            "smp_affinity_list": _int_list(_read(os.path.join(proc_dir, "smp_affinity_list"))),
            "effective_affinity_list":
                _int_list(_read(os.path.join(proc_dir, "effective_affinity_list"))),
            "node": _read(os.path.join(proc_dir, "node")),
        },
    }
    if bdf is not None:
        msi = os.path.join(root, "sys/bus/pci/devices", bdf, "msi_irqs", str(irq))
        out["msi_irqs"] = _read(msi)   # "msix" while allocated, None once freed
    return out


def msi_irqs(bdf: str, root: str = "/") -> dict[str, object]:
    """The device's /sys/bus/pci/devices/<bdf>/msi_irqs/ entries, by IRQ number.

    ``{"bdf", "irqs": [{"irq": N, "mode": "msix"|"msi"}...]}``; the directory exists only
    while MSI or MSI-X is enabled, so a device without it has no entries.
    """
    device = os.path.join(root, "sys/bus/pci/devices", bdf)
    if not os.path.isdir(device):
        raise GuestError(errno.ENOENT, f"msi_irqs: no PCI device {bdf} ({device})")
    directory = os.path.join(device, "msi_irqs")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        names = []
    except OSError as err:
        raise GuestError(err.errno or errno.EIO, f"msi_irqs: {directory}: {err.strerror}") from err
    irqs = sorted(int(name) for name in names if name.isdigit())
    return {"bdf": bdf,
            "irqs": [{"irq": irq, "mode": _read(os.path.join(directory, str(irq)))}
                     for irq in irqs]}


def write_sysfs(path: str, value: str) -> None:
    """Write ``value`` to the sysfs (or procfs) file ``path``; a refusal is a ``GuestError``
    with the kernel's errno, naming the file and the value."""
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as err:
        raise GuestError(err.errno or errno.EIO, f"write {value!r} to {path}: "
                         f"{err.strerror}") from err


def write_affinity(irq: int, cpus: list[int], root: str = "/") -> None:
    """Ask the kernel to route IRQ ``irq`` to ``cpus`` (/proc/irq/N/smp_affinity_list)."""
    path = os.path.join(root, "proc/irq", str(irq), "smp_affinity_list")
    text = ",".join(str(cpu) for cpu in cpus)
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(text + "\n")
    except OSError as err:
        raise GuestError(err.errno or errno.EIO, f"set_affinity: write {text!r} to {path}: "
                         f"{err.strerror}", argument="cpus") from err


def parse_cpu_list(text: str) -> list[int]:
    """``0-2,5`` -> [0, 1, 2, 5] (the kernel's CPU list format); empty text -> []."""
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def online_cpus(root: str = "/") -> list[int]:
    """The online CPU numbers (sysfs); ``GuestError`` if the list cannot be read or parsed."""
    path = os.path.join(root, "sys/devices/system/cpu/online")
    try:
        with open(path, encoding="ascii") as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError) as err:
        raise GuestError(getattr(err, "errno", None) or errno.EIO,
                         f"cpu_online: cannot read {path}: {err}") from err


def set_cpu_online(cpu: int, online: bool, root: str = "/") -> None:
    """Write 1 or 0 to /sys/devices/system/cpu/cpuN/online: the kernel runs the CPU
    hotplug state machine (IRQs move off an offlined CPU, managed ones shut down)
    before the write returns.  A CPU without the file (CPU 0 on x86, an absent CPU)
    is ENOENT, a refusal by the kernel keeps its errno."""
    path = os.path.join(root, f"sys/devices/system/cpu/cpu{cpu}/online")
    try:
        fd = os.open(path, os.O_WRONLY)       # never create: an absent file is ENOENT
        try:
            os.write(fd, b"1\n" if online else b"0\n")
        finally:
            os.close(fd)
    except OSError as err:
        what = "bring online" if online else "take offline"
        raise GuestError(err.errno or errno.EIO, f"cpu_online: cannot {what} CPU {cpu} "
                         f"({path}): {err.strerror}", argument="cpu") from err


def run_tool(argv: list[str], timeout: float = 10.0) -> dict[str, object]:
    """Run a guest program; a missing program or a timeout is a GuestError."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=timeout, check=False)
    except FileNotFoundError as err:
        raise GuestError(errno.ENOENT, f"{argv[0]}: not installed in the guest") from err
    except subprocess.TimeoutExpired as err:
        raise GuestError(errno.ETIMEDOUT, f"{' '.join(argv)}: no exit within {timeout} s") from err
    return {"argv": argv, "returncode": proc.returncode, "stdout": proc.stdout,
            "stderr": proc.stderr}

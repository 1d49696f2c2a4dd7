"""The guest agent's VFIO commands: the NIC bound to vfio-pci and driven through vfio.py.

Concepts: ``VfioCommands`` holds one VFIO session of the agent: the device's address, the
open ``vfio.Device`` and the eventfds by table index.  ``vfio_bind`` takes the NIC from
the msixlab driver, loads vfio-pci (modprobe) and binds it through ``driver_override``;
what the kernel lacks (vfio-pci, an IOMMU group, the VFIO device nodes) is *reported*
(``missing``), never raised, so the host can call it could-not-judge.  ``vfio_open``
opens the device (iommufd's cdev where the kernel has it, else the legacy group) and
returns GET_IRQ_INFO of MSI-X.  ``vfio_set_trigger`` gives one vector a new eventfd
(a swap when it had one) or releases it (fd -1); ``vfio_kernel_trigger`` makes the
kernel signal triggers (DATA_NONE or DATA_BOOL); ``vfio_eventfds`` reads (and resets)
every eventfd's counter; ``vfio_view`` is the kernel's own view: each IRQ of the
device's ``msi_irqs`` with its MSI-X index and handler names from /proc/interrupts.
A failing VFIO ioctl is a ``DriverError`` (the kernel's vfio-pci refused).
"""

from __future__ import annotations

import errno
import os

from . import sysview, vfio
from .errors import DriverError, GuestError
from .protocol import Arg, Command
from .sysview import write_sysfs

VFIO_DRIVER = "vfio-pci"



class VfioCommands:
    """The agent's VFIO session on its NIC (see the module's docstring)."""

    def __init__(self, agent, modprobe: tuple[str, ...] = ("modprobe", VFIO_DRIVER)):
        self.agent = agent
        self.root = agent.root
        self.modprobe = list(modprobe)          # a test's tree runs no real modprobe
        self.bdf: str | None = None
        self.device: vfio.Device | None = None
        self.eventfds = vfio.Eventfds()

    def _sys(self, *parts: str) -> str:
        return os.path.join(self.root, "sys/bus/pci", *parts)

    def _driver(self) -> str | None:
        try:
            return os.path.basename(os.readlink(self._sys("devices", self.bdf, "driver")))
        except OSError:
            return None

    def _missing(self, modprobe: dict[str, object]) -> list[str]:
        """What the kernel lacks for VFIO on this device, each named (vfio-pci with what
        ``modprobe`` said when it failed: a kernel tree's modules are not in the image)."""
        missing = []
        if not os.path.isdir(self._sys("drivers", VFIO_DRIVER)):
            said = (str(modprobe.get("stderr") or "").strip().splitlines() or [""])[-1]
            why = f"; {' '.join(self.modprobe)} said: {said}" if modprobe["returncode"] and said \
                else ""
            missing.append(f"vfio-pci (no /sys/bus/pci/drivers/vfio-pci after modprobe{why})")
        if not os.path.islink(self._sys("devices", self.bdf, "iommu_group")):
            missing.append(f"an IOMMU group for {self.bdf} (no vIOMMU, or intel_iommu off)")
        iommufd = (vfio.cdev_name(self.bdf, self.root)
                   and os.path.exists(os.path.join(self.root, "dev/iommu")))
        if not (os.path.exists(os.path.join(self.root, "dev/vfio/vfio")) or iommufd):
            missing.append("a VFIO container (/dev/vfio/vfio) or iommufd (/dev/iommu with "
                           "the device's vfio cdev)")
        return missing

    def bind(self) -> dict[str, object]:
        """``vfio_bind``: unbind the NIC from the msixlab driver, ``modprobe vfio-pci``, set
        ``driver_override`` and reprobe.  Returns the driver now bound, the IOMMU group,
        the cdev, whether /dev/iommu exists, and ``missing`` (what the kernel lacks)."""
        if self.bdf is None:
            self.bdf = self.agent.unbound or self.agent.unbind()["unbound"]
        modprobe = sysview.run_tool(self.modprobe)
        missing = self._missing(modprobe)
        if not missing and self._driver() != VFIO_DRIVER:
            write_sysfs(self._sys("devices", self.bdf, "driver_override"), VFIO_DRIVER)
            write_sysfs(self._sys("drivers_probe"), self.bdf)
        group = os.path.join(self._sys("devices", self.bdf), "iommu_group")
        return {"bdf": self.bdf, "driver": self._driver(), "missing": missing,
                "modprobe": {"returncode": modprobe["returncode"],
                             "stderr": modprobe.get("stderr", "")[-400:]},
                "iommu_group": (os.path.basename(os.readlink(group))
                                if os.path.islink(group) else None),
                "cdev": vfio.cdev_name(self.bdf, self.root),
                "dev_iommu": os.path.exists(os.path.join(self.root, "dev/iommu"))}

    def _need(self) -> vfio.Device:
        if self.device is None:
            raise GuestError(errno.ENODEV, "no VFIO device open: vfio_bind, then vfio_open")
        return self.device

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except vfio.VfioError as err:
            raise DriverError(err.errno, f"{what}: {err.strerror}", command=what) from err

    def open(self, prefer: str) -> dict[str, object]:
        """``vfio_open``: open the bound device (``prefer`` "iommufd" or "legacy"); returns
        the path taken, its record, GET_INFO and MSI-X's GET_IRQ_INFO."""
        if self.bdf is None:
            raise GuestError(errno.ENODEV, "vfio_open: vfio_bind first")
        if prefer not in ("iommufd", "legacy"):
            raise GuestError(errno.EINVAL, f"vfio_open: prefer {prefer!r}: iommufd or legacy")
        if self.device is None:
            self.device = self._call("vfio_open", vfio.open_device, self.bdf, self.root, prefer)
        device = self.device
        command = self._call("config space", device.enable_bus_master)
        return {"path": device.path, "record": device.record, "command_before": command,
                "command": self._call("config space", device.config_read, vfio.PCI_COMMAND, 2),
                "info": self._call("VFIO_DEVICE_GET_INFO", device.info),
                "irq_info": self._call("VFIO_DEVICE_GET_IRQ_INFO", device.irq_info)}

    def set_trigger(self, index: int, action: str) -> dict[str, object]:
        """``vfio_set_trigger``: ``new`` gives vector ``index`` a fresh eventfd (the first
        one enables MSI-X; a vector that had one swaps it), ``release`` sets fd -1."""
        device = self._need()
        if action not in ("new", "release"):
            raise GuestError(errno.EINVAL, f"vfio_set_trigger: action {action!r}: new or release")
        fd = self.eventfds.new(index) if action == "new" else -1
        self._call("VFIO_DEVICE_SET_IRQS", device.set_triggers, index, [fd])
        return {"index": index, "action": action, "fd": fd}

    def kernel_trigger(self, start: int, count: int, bools: list | None) -> dict[str, object]:
        """``vfio_kernel_trigger``: the kernel signals vectors ``start``.. itself
        (DATA_NONE for ``count`` vectors, or DATA_BOOL with ``bools``)."""
        device = self._need()
        if bools is not None and not all(isinstance(b, bool) for b in bools):
            raise GuestError(errno.EINVAL, "vfio_kernel_trigger: bools must be true/false")
        self._call("VFIO_DEVICE_SET_IRQS", device.trigger, start, count, bools)
        return {"start": start, "count": len(bools) if bools is not None else count}

    def read_eventfds(self) -> dict[str, object]:
        """``vfio_eventfds``: what each vector's eventfd counted since the last read
        ({"<index>": n}) and what the swapped-out ones counted (``retired``)."""
        counts, retired = self.eventfds.take()
        return {"counts": {str(i): n for i, n in counts.items()}, "retired": retired}

    def disable(self) -> dict[str, object]:
        """``vfio_disable``: MSI-X off (SET_IRQS count 0)."""
        self._call("VFIO_DEVICE_SET_IRQS", self._need().disable)
        return {"disabled": True}

    def view(self) -> dict[str, object]:
        """``vfio_view``: the kernel's view: each msi_irqs IRQ with its MSI-X index (the
        per-device MSI domain's hwirq), handler names and count, from /sys/kernel/irq/N
        (/proc/interrupts leaves out an IRQ with no handler that never fired)."""
        if self.bdf is None:
            raise GuestError(errno.ENODEV, "vfio_view: vfio_bind first")
        irqs = [e["irq"] for e in sysview.msi_irqs(self.bdf, self.root)["irqs"]]
        return {"bdf": self.bdf, "irqs": [self._irq(irq) for irq in irqs]}

    def _irq(self, irq: int) -> dict[str, object]:
        base = os.path.join(self.root, "sys/kernel/irq", str(irq))

        def read(name: str) -> str:
            try:
                with open(os.path.join(base, name), encoding="utf-8") as f:
                    return f.read().strip()
            except OSError:
                return ""
        hwirq, per_cpu = read("hwirq"), read("per_cpu_count")
        return {"irq": irq, "index": int(hwirq) if hwirq.isdigit() else None,
                "actions": [a for a in read("actions").split(",") if a],
                "count": sum(int(n) for n in per_cpu.split(",") if n.isdigit())}

    def close(self) -> dict[str, object]:
        """``vfio_close``: close the device and every eventfd."""
        if self.device is not None:
            self.device.close()
            self.device = None
        self.eventfds.close()
        return {"closed": True}

    def commands(self) -> list[Command]:
        """The VFIO commands for the agent's table."""
        index = Arg("index", int, minimum=0, maximum=2047)
        return [
            Command("vfio_bind", self.bind),
            Command("vfio_open", self.open,
                    (Arg("prefer", str, required=False, default="iommufd"),)),
            Command("vfio_set_trigger", self.set_trigger, (index, Arg("action", str))),
            Command("vfio_kernel_trigger", self.kernel_trigger, (
                Arg("start", int, minimum=0, maximum=2047),
                Arg("count", int, required=False, default=1, minimum=1, maximum=2048),
                Arg("bools", list, required=False))),
            Command("vfio_eventfds", self.read_eventfds),
            Command("vfio_disable", self.disable),
            Command("vfio_view", self.view),
            Command("vfio_close", self.close),
        ]

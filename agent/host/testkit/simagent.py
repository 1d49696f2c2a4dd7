"""The guest agent of the fake lab: the real agent over the simulated driver and kernel.

Concepts: ``SimAgent`` is the real guest agent (agent/guest/commands.py: its command table
and argument checks, what set_affinity asked, the NIC selection) over ``DriverFile``s
(simdriver.py).  The commands that read or write the guest's sysfs and procfs are
answered from the simulated kernel instead (simkernel.py): set_affinity's write,
cpu_online, msi_irqs, interrupts (the kernel's text through the agent's own parser),
irq_sysfs, reset_function, dmesg, kernel_health, lspci, unbind/bind and
remove_device/rescan, each in the shape the agent's own gives.  Those the fake lab does
not simulate (``vfio_*``, crash, reload_module, await_device) fail with ENOSYS.  Its root
is a path that does not exist (``SIM_ROOT``): no file of the host is read or written, and
no program of the host is run.
"""

from __future__ import annotations

import errno
import os

from agent.guest import sysview
from agent.guest.binding import RESET_METHODS as AGENT_RESET_METHODS
from agent.guest.commands import Agent, affinity_cpus
from agent.guest.errors import GuestError, RequestError
from agent.guest.protocol import Command

from agent.host.testkit.simdriver import DriverFile, SimGuest
from agent.host.testkit.simkernel import RESET_METHODS, KernelErrno

SIM_ROOT = "/nonexistent/msixlab-fakelab"
UNSIMULATED = ("crash", "reload_module", "await_device")


def _guest_error(err: KernelErrno, **fields) -> GuestError:
    return GuestError(err.errno, str(err), **fields)


class SimAgent(Agent):
    """The real guest agent over a ``SimGuest`` (see the module)."""

    def __init__(self, guest: SimGuest):
        self.guest = guest
        paths = guest.device_paths()
        super().__init__(device=paths[0] if paths else None, root=SIM_ROOT,
                         opener=guest.open)

    def commands(self) -> dict[str, Command]:
        """The agent's command table; the commands not simulated fail with ENOSYS."""
        table = super().commands()
        for name, command in table.items():
            if name in UNSIMULATED or name.startswith("vfio_"):
                table[name] = command._replace(handler=self._unsimulated(name))
        return table

    @staticmethod
    def _unsimulated(name: str):
        def handler(**_args):
            raise GuestError(errno.ENOSYS, f"{name}: the fake lab does not simulate it")
        return handler

    def hello(self) -> dict[str, object]:
        """The agent's hello, of the simulated kernel."""
        return {**super().hello(), "kernel": "fakelab", "tainted": 0}

    def kernel_health(self) -> dict[str, object]:
        """No taint and no warning: the simulated kernel reports none."""
        return {"tainted": 0, "warnings": {"count": 0, "messages": [], "lost": 0,
                                           "readable": True}}

    def set_affinity(self, index: int, cpus: list) -> dict[str, object]:
        """``Agent.set_affinity``, writing the simulated /proc/irq/N/smp_affinity_list."""
        cpus = affinity_cpus(cpus)
        vector = self._need_driver().vector(index)
        try:
            self.guest.kernel.set_affinity(vector["irq"], cpus)
        except KernelErrno as err:
            raise _guest_error(err, argument="cpus") from err
        self.asked[index] = (vector["group"], cpus)
        vector = self.vector(index)
        vector["move_pending"] = vector["affinity"]["mask"] != cpus
        return vector

    def cpu_online(self, cpu: int, online: bool) -> dict[str, object]:
        """Take ``cpu`` offline or bring it back, in the simulated kernel."""
        try:
            self.guest.kernel.cpu_online(cpu, online)
        except KernelErrno as err:
            raise _guest_error(err, argument="cpu") from err
        return {"cpu": cpu, "online": online, "online_cpus": sorted(self.guest.kernel.online)}

    def msi_irqs(self) -> dict[str, object]:
        """The device's msi_irqs/ (ENOENT once removed, ENODEV with no device known)."""
        bdf = self._bdf() or self.unbound or self.removed
        if bdf is None:
            raise GuestError(errno.ENODEV, self.device_error or "no driver")
        function = self.guest.functions.get(bdf)
        if function is None or not function.present:
            raise GuestError(errno.ENOENT, f"msi_irqs: no PCI device {bdf}")
        return {"bdf": bdf, "irqs": [{"irq": irq, "mode": "msix"}
                                     for irq in function.msi_irqs()]}

    def interrupts(self, all: bool) -> dict[str, object]:
        """The simulated /proc/interrupts, through the agent's own parser."""
        parsed = sysview.parse_interrupts(self.guest.kernel.proc_interrupts())
        bdf = self._bdf()
        name = os.path.basename(self.driver.path) if self.driver else None
        rows = parsed["rows"] if all else sysview.device_rows(parsed, bdf, name)
        out = {"cpus": parsed["cpus"], "bdf": bdf, "rows": rows}
        if all:
            out["other"] = parsed["other"]
        return out

    def irq_sysfs(self, irq: int) -> dict[str, object]:
        """The simulated /sys/kernel/irq/N and /proc/irq/N."""
        try:
            return self.guest.kernel.irq_sysfs(irq, self._bdf())
        except KernelErrno as err:
            raise _guest_error(err, argument="irq") from err

    def lspci(self) -> dict[str, object]:
        """A line per NIC, as ``lspci -nn`` names them."""
        text = "".join(f"{bdf[5:]} Ethernet controller [0200]: Device [1234:11e9] (rev 01)\n"
                       for bdf, f in sorted(self.guest.functions.items()) if f.present)
        return {"argv": ["lspci", "-vv", "-nn", "-d", "1234:11e9"], "returncode": 0,
                "stdout": text, "stderr": ""}

    def dmesg(self, lines: int) -> dict[str, object]:
        """The simulated kernel's log."""
        return {"returncode": 0, "lines": self.guest.kernel.log[-lines:]}

    def reset_function(self, method: str | None) -> dict[str, object]:
        """``pci_reset_function`` of the selected NIC in the simulated kernel."""
        if method is not None and method not in AGENT_RESET_METHODS:
            raise RequestError(errno.EINVAL, f"reset_function: argument 'method' must be one "
                               f"of {list(AGENT_RESET_METHODS)}, got {method!r}",
                               command="reset_function", argument="method")
        bdf = self._bdf()
        if bdf is None:
            raise GuestError(errno.ENODEV, f"reset_function: no NIC selected ({self.device_error})")
        if method is not None and method not in RESET_METHODS:
            raise GuestError(errno.ENOTTY, f"{bdf} offers reset methods {list(RESET_METHODS)}, "
                             f"not {method!r}", argument="method")
        self.guest.functions[bdf].reset(method or RESET_METHODS[0])
        return {"bdf": bdf, "reset_method": list(RESET_METHODS),
                "method": method or RESET_METHODS[0], "seconds": 0.0}

    def unbind(self) -> dict[str, object]:
        """``Agent.unbind`` in the simulated kernel."""
        bdf = self._release()
        self.guest.unbind(bdf)
        self.unbound = bdf
        return {"unbound": bdf}

    def bind(self) -> dict[str, object]:
        """``Agent.bind`` in the simulated kernel."""
        bdf = self.unbound
        if bdf is None:
            raise GuestError(errno.EINVAL, "bind: nothing was unbound by this agent")
        info = self._reopen(self.guest.bind(bdf))
        self.unbound = None
        return info

    def remove_device(self) -> dict[str, object]:
        """``Agent.remove_device``: the driver's remove, then the function leaves the bus."""
        bdf = self._release()
        self.guest.unbind(bdf)
        self.guest.functions[bdf].present = False
        self.removed = bdf
        return {"removed": bdf}

    def rescan(self) -> dict[str, object]:
        """``Agent.rescan``: the removed function is found again and probed."""
        if self.removed is None:
            raise GuestError(errno.EINVAL, "rescan: nothing was removed by this agent")
        self.guest.functions[self.removed].present = True
        info = self._reopen(self.guest.bind(self.removed))
        self.removed = None
        return info

    def _open_nic(self, bdf: str) -> DriverFile | None:
        """A driver file on the device node bound to ``bdf`` that no NIC holds yet."""
        held = set(self._known())
        for path in self.guest.device_paths():
            if path in held:
                continue
            driver = self.opener(path)
            if driver.info()["bdf"] == bdf:
                return driver
            driver.close()
        return None

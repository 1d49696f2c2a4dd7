"""The guest kernel of the fake lab, simulated: CPUs, x86 vectors, IRQs and PCI MSI-X.

Concepts owned here (each the part of Linux 7.3 that msixlab's checks look at, as it
behaves under QEMU TCG without interrupt remapping):
- *CPUs and vectors* (arch/x86 vector matrix): each CPU has device vectors 0x21..0xeb,
  the lowest six taken on every CPU and ``OTHER_DEVICES`` more spread over the CPUs from
  the top (186 free on 1 CPU, 191 and 192 on 2: as 7.3.4 placed index 0 on CPU 1 at
  vector 0x27, then alternated); a vector goes to the online CPU of its affinity mask
  with the most free ones (the lowest CPU on a tie), at that CPU's lowest free vector.
  No vector left on any CPU of the mask is ENOSPC.
- *IRQ descriptors* (``IrqDesc``): a Linux IRQ number (the lowest free from
  ``FIRST_IRQ``), its MSI-X index, affinity mask, effective CPU, vector, cached message,
  the kernel's cached vector control, managed or not, per-CPU counts (kstat) and the
  handler (``action``).  Allocation activates it in *reservation mode*: the entry gets a
  message naming the shutdown vector 0xef and stays masked; ``request_irq`` starts it
  (a real vector, the message, the unmask); ``free_irq`` masks it; freeing the
  descriptor clears a started entry's message (a never-started one keeps its 0xef).
- *Messages*: compatibility format, physical destination (APIC ID = CPU), fixed, edge.
  A message write to an unmasked entry masks it around the write, as
  ``__pci_write_msi_msg`` does; QEMU sees each mask change (simqemu.py).
- *Delivery*: an MSI write names a CPU and a vector; the IRQ bound there counts it and
  runs its handler; then a pending affinity change is carried out (x86 without
  interrupt remapping moves an IRQ when its next interrupt arrives).  A write to a
  vector nobody holds is logged, as the kernel's "No irq handler for vector".
- *CPU hotplug*: an offline CPU's IRQs move to another online CPU of their mask (or,
  when none is left, to every online CPU: a broken affinity), managed ones whose mask
  has no online CPU left are shut down (entry masked, message cleared) and started
  again on the CPU's return.
- *PCI functions* (``PciFunction``): config space and BARs through QEMU, MSI-X enable
  and disable, dynamic allocation at an index, the PBA and table reads, the function
  mask, and ``pci_reset_function`` (save, disable, FLR or bus reset, restore of every
  MSI-X descriptor) in the kernel's order.
- *Views*: /proc/interrupts as text (the agent's own parser reads it), /sys/kernel/irq
  and /proc/irq of one IRQ, the function's msi_irqs.
``KernelErrno`` carries a failure's errno, as the kernel returns it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from qemu_device.device.config_space import (MSIX_FLAGS, PCI_EXP_DEVCTL,
                                             PCI_EXP_DEVCTL_BCR_FLR, PCI_MSIX_FLAGS_ENABLE,
                                             PCI_MSIX_FLAGS_MASKALL)

from agent.host.testkit.simqemu import PCI_COMMAND, PCI_COMMAND_MASTER, SimQemu

FIRST_VECTOR, LAST_VECTOR = 0x21, 0xEB
SYSTEM_LOW = 6                        # the lowest device vectors, taken on every CPU
OTHER_DEVICES = 11                   # the guest's other devices' vectors, over all CPUs
SHUTDOWN_VECTOR = 0xEF               # MANAGED_IRQ_SHUTDOWN_VECTOR: the reservation message
FIRST_IRQ = 33                       # the guest's first free IRQ number (as on 7.3.4)
MSI_BASE = 0xFEE00000
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_INTX_DISABLE = 0x400
RESET_METHODS = ("flr", "bus")       # what the NIC behind its root port offers


class KernelErrno(Exception):
    """A kernel call failed with ``errno`` (positive), and why."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


def compose(cpu: int, vector: int) -> tuple[int, int, int]:
    """The compatibility-format message for ``vector`` on ``cpu`` (physical, fixed, edge)."""
    return (MSI_BASE | (cpu & 0xFF) << 12, 0, vector)


@dataclass(eq=False)
class IrqDesc:
    """One Linux IRQ of a PCI function's MSI-X index (see the module)."""
    irq: int
    function: "PciFunction"
    index: int
    mask: tuple[int, ...]
    managed: bool
    cpu: int | None = None
    vector: int | None = None
    msg: tuple[int, int, int] = (0, 0, 0)
    ctrl: int = 1                       # the kernel's cached vector control (1: masked)
    started: bool = False
    shutdown: bool = False              # managed, every CPU of its mask offline
    action: Callable[[int], None] | None = None
    action_name: str = ""
    move_to: tuple[int, ...] | None = None
    kstat: list[int] = field(default_factory=list)

    @property
    def effective(self) -> tuple[int, ...]:
        """The effective affinity: the CPU its vector is on (none while not started)."""
        return () if self.cpu is None or not self.started else (self.cpu,)


class SimKernel:
    """The guest kernel: CPUs, vectors, IRQs, PCI functions (see the module)."""

    def __init__(self, cpus: int):
        self.nr_cpus = cpus
        self.online: set[int] = set(range(cpus))
        self.taken = [set(range(FIRST_VECTOR, FIRST_VECTOR + SYSTEM_LOW)) for _ in range(cpus)]
        for n in range(OTHER_DEVICES):
            self.taken[n % cpus].add(LAST_VECTOR - n // cpus)
        self.vector_irq: dict[tuple[int, int], IrqDesc] = {}
        self.irqs: dict[int, IrqDesc] = {}
        self.functions: dict[str, PciFunction] = {}
        self.log: list[str] = []
        self.stray: list[dict] = []      # MSI writes no IRQ took (none on a correct run)

    def add_function(self, bdf: str, qemu: SimQemu) -> "PciFunction":
        """Put a NIC on the guest's PCI bus at ``bdf``."""
        self.functions[bdf] = PciFunction(self, bdf, qemu)
        return self.functions[bdf]

    # --- vectors --------------------------------------------------------------------
    def _best_cpu(self, mask: tuple[int, ...]) -> int:
        free = {cpu: LAST_VECTOR + 1 - FIRST_VECTOR - len(self.taken[cpu])
                for cpu in sorted(set(mask) & self.online)}
        if not free or max(free.values()) <= 0:
            raise KernelErrno(errno.ENOSPC, f"no vector left on CPUs {sorted(free)}")
        return max(free, key=lambda cpu: (free[cpu], -cpu))

    def _assign(self, desc: IrqDesc, mask: tuple[int, ...]) -> None:
        """A vector for ``desc`` on the best CPU of ``mask``; the old one released."""
        cpu = self._best_cpu(mask)
        vector = min(set(range(FIRST_VECTOR, LAST_VECTOR + 1)) - self.taken[cpu])
        self._release(desc)
        self.taken[cpu].add(vector)
        self.vector_irq[(cpu, vector)] = desc
        desc.cpu, desc.vector = cpu, vector

    def _release(self, desc: IrqDesc) -> None:
        if desc.vector is not None and desc.vector != SHUTDOWN_VECTOR:
            self.taken[desc.cpu].discard(desc.vector)
            self.vector_irq.pop((desc.cpu, desc.vector), None)
        desc.vector = None

    # --- descriptors ------------------------------------------------------------------
    def new_desc(self, function: "PciFunction", index: int, cpu: int | None,
                 managed: bool) -> IrqDesc:
        """Allocate and activate (reservation mode) the IRQ of ``index``: affinity ``cpu``
        (None: every CPU); the entry gets the reservation message, masked."""
        irq = next(n for n in range(FIRST_IRQ, FIRST_IRQ + 1 + len(self.irqs))
                   if n not in self.irqs)
        mask = tuple(range(self.nr_cpus)) if cpu is None else (cpu,)
        desc = IrqDesc(irq, function, index, mask, managed, kstat=[0] * self.nr_cpus)
        self.irqs[irq] = desc
        reserve = min(set(mask) & self.online, default=min(self.online))
        desc.cpu = reserve
        function.write_msg(desc, compose(reserve, SHUTDOWN_VECTOR))
        return desc

    def free_desc(self, desc: IrqDesc) -> None:
        """Free the descriptor: a started one's entry is cleared, behind its mask.  One whose
        handler is still requested is a driver bug: the kernel WARNs and the IRQ stays
        (its /proc/irq directory and /proc/interrupts row leak)."""
        if desc.action is not None:
            self.log.append(f"WARNING: remove_proc_entry: removing non-empty directory "
                            f"'irq/{desc.irq}', leaking at least '{desc.action_name}'")
            return
        if desc.started:
            self.shutdown(desc)
            desc.started = False
            desc.function.write_msg(desc, (0, 0, 0))
        self._release(desc)
        del self.irqs[desc.irq]

    def request_irq(self, desc: IrqDesc, action: Callable[[int], None], name: str) -> None:
        """Start ``desc`` with handler ``action``: a vector (``ENOSPC`` when none is left),
        its message, the unmask; a managed IRQ with no online CPU stays shut down."""
        desc.action, desc.action_name = action, name
        desc.started = True
        if desc.managed and not set(desc.mask) & self.online:
            desc.shutdown = True
            return
        try:
            self.startup(desc)
        except KernelErrno:
            desc.action, desc.action_name, desc.started = None, "", False
            raise

    def startup(self, desc: IrqDesc) -> None:
        """Give ``desc`` a vector, write its message and unmask it."""
        self._assign(desc, desc.mask)
        desc.shutdown = False
        desc.function.write_msg(desc, compose(desc.cpu, desc.vector))
        desc.function.set_ctrl(desc, 0)

    def shutdown(self, desc: IrqDesc, clear: bool = False) -> None:
        """Mask ``desc`` and give its vector back (``clear``: its message too)."""
        desc.function.set_ctrl(desc, 1)
        self._release(desc)
        if clear:
            desc.function.write_msg(desc, (0, 0, 0))

    def free_irq(self, desc: IrqDesc) -> None:
        """Remove the handler: the IRQ is shut down (masked)."""
        desc.action, desc.action_name = None, ""
        if not desc.shutdown:
            self.shutdown(desc)

    # --- affinity ---------------------------------------------------------------------
    def set_affinity(self, irq: int, cpus: list[int]) -> None:
        """/proc/irq/N/smp_affinity_list: the move is pending until the IRQ's next
        interrupt.  ENOENT: no such IRQ; EIO: managed; EINVAL: no online CPU in ``cpus``."""
        desc = self.irqs.get(irq)
        if desc is None:
            raise KernelErrno(errno.ENOENT, f"/proc/irq/{irq} does not exist")
        if desc.managed:
            raise KernelErrno(errno.EIO, f"IRQ {irq} is managed")
        if any(c >= self.nr_cpus for c in cpus) or not set(cpus) & self.online:
            raise KernelErrno(errno.EINVAL, f"no online CPU in {cpus}")
        desc.move_to = tuple(sorted(set(cpus)))

    def _move(self, desc: IrqDesc, mask: tuple[int, ...]) -> None:
        self._assign(desc, mask)
        desc.mask = mask
        desc.function.write_msg(desc, compose(desc.cpu, desc.vector))

    # --- interrupts -------------------------------------------------------------------
    def deliver_msi(self, address_lo: int, address_hi: int, data: int) -> None:
        """An MSI write from QEMU: the CPU its destination names takes its vector."""
        cpu, vector = (address_lo >> 12) & 0xFF, data & 0xFF
        if address_lo >> 20 != MSI_BASE >> 20 or address_hi or cpu not in self.online:
            self.stray.append({"address_lo": address_lo, "address_hi": address_hi,
                               "data": data})
            self.log.append(f"MSI write to {address_hi:#x}:{address_lo:#x} data {data:#x} "
                            "reached no CPU")
            return
        self.interrupt(cpu, vector)

    def interrupt(self, cpu: int, vector: int) -> None:
        """Vector ``vector`` on ``cpu``: its IRQ counts it, runs its handler, then carries
        out a pending move."""
        desc = self.vector_irq.get((cpu, vector))
        if desc is None:
            self.stray.append({"cpu": cpu, "vector": vector})
            self.log.append(f"do_IRQ: {cpu}.{vector} No irq handler for vector")
            return
        desc.kstat[cpu] += 1
        if desc.action is not None:
            desc.action(cpu)
        if desc.move_to is not None:
            mask, desc.move_to = desc.move_to, None
            self._move(desc, mask)

    # --- CPU hotplug ------------------------------------------------------------------
    def cpu_online(self, cpu: int, online: bool) -> None:
        """Take ``cpu`` offline or bring it back (see the module).  ENOENT for CPU 0 (x86
        cannot offline it) or a CPU that does not exist; EBUSY for the last online CPU."""
        if not 0 < cpu < self.nr_cpus:
            raise KernelErrno(errno.ENOENT, f"no /sys/devices/system/cpu/cpu{cpu}/online")
        if online == (cpu in self.online):
            return
        if online:
            self.online.add(cpu)
            for desc in list(self.irqs.values()):
                if desc.shutdown and desc.action is not None and cpu in desc.mask:
                    self.startup(desc)
            return
        if len(self.online) == 1:
            raise KernelErrno(errno.EBUSY, "the last online CPU cannot go offline")
        self.online.discard(cpu)
        for desc in list(self.irqs.values()):
            if not desc.started or desc.shutdown or desc.cpu != cpu or desc.vector is None:
                continue
            left = tuple(c for c in desc.mask if c in self.online)
            if left:
                self._move(desc, desc.mask)
            elif desc.managed:
                desc.shutdown = True
                self.shutdown(desc, clear=True)
            else:                              # a broken affinity: every online CPU
                self._move(desc, tuple(sorted(self.online)))

    # --- views ------------------------------------------------------------------------
    def proc_interrupts(self) -> str:
        """/proc/interrupts: one column per online CPU, every IRQ with a handler or counts,
        then the named rows."""
        cpus = sorted(self.online)
        lines = ["     " + "".join(f"{'CPU%d' % c:>11}" for c in cpus)]
        for irq, desc in sorted(self.irqs.items()):
            if desc.action is None and not any(desc.kstat):
                continue
            counts = "".join(f"{desc.kstat[c]:>11}" for c in cpus)
            chip = f"PCI-MSIX-{desc.function.bdf}"
            lines.append(f"{irq:>4}:{counts}  {chip}  {desc.index}-edge      "
                         f"{desc.action_name}".rstrip())
        zeros = "".join(f"{0:>11}" for _ in cpus)
        lines += [f" NMI:{zeros}   Non-maskable interrupts",
                  f" LOC:{zeros}   Local timer interrupts",
                  f" ERR:{0:>11}", f" MIS:{0:>11}"]
        return "\n".join(lines) + "\n"

    def irq_sysfs(self, irq: int, bdf: str | None) -> dict:
        """/sys/kernel/irq/N, /proc/irq/N and (with ``bdf``) msi_irqs/N of one IRQ, as the
        agent's ``irq_sysfs`` gives them; ENOENT if there is no such IRQ."""
        desc = self.irqs.get(irq)
        if desc is None:
            raise KernelErrno(errno.ENOENT, f"irq_sysfs: IRQ {irq} does not exist")
        listed = bdf is not None and bdf == desc.function.bdf and desc.function.present
        return {"irq": irq,
                "sys": {"chip_name": f"PCI-MSIX-{desc.function.bdf}", "hwirq": desc.index,
                        "name": "edge", "type": "edge", "wakeup": "disabled",
                        "actions": desc.action_name, "per_cpu_count": list(desc.kstat)},
                "proc": {"smp_affinity_list": list(desc.mask),
                         "effective_affinity_list": list(desc.effective), "node": "0"},
                **({"msi_irqs": "msix" if listed else None} if bdf is not None else {})}


class PciFunction:
    """One PCI function as the guest kernel drives it, through QEMU (see the module)."""

    def __init__(self, kernel: SimKernel, bdf: str, qemu: SimQemu):
        self.kernel, self.bdf, self.qemu = kernel, bdf, qemu
        self.layout = qemu.device.layout
        self.descs: dict[int, IrqDesc] = {}
        self.msix_enabled = False
        self.present = True
        self.command = 0

    # --- config space and the table -----------------------------------------------------
    def set_command(self, value: int) -> None:
        """Write the Command register."""
        self.command = value
        self.qemu.config_write(PCI_COMMAND, 2, value)

    def _msix_ctrl(self, clear: int, set_: int) -> None:
        ctrl = self.qemu.config_read(MSIX_FLAGS, 2)
        self.qemu.config_write(MSIX_FLAGS, 2, (ctrl & ~clear) | set_)

    def msix_control(self) -> int:
        """Message Control as the guest reads it."""
        return self.qemu.config_read(MSIX_FLAGS, 2)

    def function_mask(self, masked: bool) -> int:
        """Set or clear MASKALL; the register read back."""
        if masked:
            self._msix_ctrl(0, PCI_MSIX_FLAGS_MASKALL)
        else:
            self._msix_ctrl(PCI_MSIX_FLAGS_MASKALL, 0)
        return self.msix_control()

    def write_msg(self, desc: IrqDesc, msg: tuple[int, int, int]) -> None:
        """``__pci_write_msi_msg``: an unmasked entry is masked around the three words."""
        unmasked = not desc.ctrl & 1
        if unmasked:
            self.qemu.table_write(desc.index, 3, desc.ctrl | 1)
        for word, value in enumerate(msg):
            self.qemu.table_write(desc.index, word, value)
        if unmasked:
            self.qemu.table_write(desc.index, 3, desc.ctrl)
        desc.msg = msg

    def set_ctrl(self, desc: IrqDesc, ctrl: int) -> None:
        """Write (and cache) an entry's vector control."""
        desc.ctrl = ctrl
        self.qemu.table_write(desc.index, 3, ctrl)

    def read_entry(self, index: int) -> tuple[int, int, int, int]:
        """Entry ``index`` read through the table BAR (QEMU's copy)."""
        return self.qemu.table_read(index)

    def read_pba(self) -> list[int]:
        """The PBA's 64-bit words, each read as two dwords (as the driver reads them)."""
        base = self.layout.pba_offset
        words = []
        for i in range((self.layout.vectors + 63) // 64):
            lo = int.from_bytes(self.qemu.mmio_read(self.layout.pba_bar, base + 8 * i, 4),
                                "little")
            hi = int.from_bytes(self.qemu.mmio_read(self.layout.pba_bar, base + 8 * i + 4, 4),
                                "little")
            words.append(hi << 32 | lo)
        return words

    # --- MSI-X ------------------------------------------------------------------------
    def enable_msix(self) -> IrqDesc:
        """``pci_alloc_irq_vectors(1, 1, PCI_IRQ_MSIX)``: MSI-X enabled behind MASKALL,
        every entry masked, index 0's IRQ allocated, INTx off, MASKALL cleared."""
        self._msix_ctrl(0, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
        self.msix_enabled = True
        for index in range(self.layout.vectors):
            self.qemu.table_write(index, 3, 1)
        desc = self.alloc_irq_at(0, None, False)
        self.set_command(self.command | PCI_COMMAND_INTX_DISABLE)
        self._msix_ctrl(PCI_MSIX_FLAGS_MASKALL, 0)
        return desc

    def disable_msix(self) -> None:
        """``pci_free_irq_vectors``: every entry masked, MSI-X off, the descriptors freed."""
        for desc in self.descs.values():
            self.set_ctrl(desc, 1)
        self._msix_ctrl(PCI_MSIX_FLAGS_ENABLE, 0)
        self.msix_enabled = False
        for desc in list(self.descs.values()):
            self.free_irq_at(desc)

    def alloc_irq_at(self, index: int | None, cpu: int | None, managed: bool) -> IrqDesc:
        """``pci_msix_alloc_irq_at``: the IRQ of ``index`` (None: the lowest free one).
        EBUSY: the index is taken or the table is full; ERANGE: past the table."""
        size = self.layout.vectors
        if index is None:
            index = next((i for i in range(size) if i not in self.descs), None)
            if index is None:
                raise KernelErrno(errno.EBUSY, "no free MSI-X index")
        elif index >= size:
            raise KernelErrno(errno.ERANGE, f"index {index} is past the table")
        elif index in self.descs:
            raise KernelErrno(errno.EBUSY, f"index {index} is taken")
        desc = self.kernel.new_desc(self, index, cpu, managed)
        self.descs[index] = desc
        return desc

    def free_irq_at(self, desc: IrqDesc) -> None:
        """``pci_msix_free_irq``."""
        self.kernel.free_desc(desc)
        del self.descs[desc.index]

    def msi_irqs(self) -> list[int]:
        """The device's msi_irqs/ directory (empty while MSI-X is off)."""
        return sorted(d.irq for d in self.descs.values()) if self.msix_enabled else []

    # --- reset ------------------------------------------------------------------------
    def reset(self, method: str) -> None:
        """``pci_reset_function`` with ``method``: save and disable (Command to INTx
        disable only), the reset (an FLR through DevCtl, or the bus reset), then restore:
        the Command register, and MSI-X behind MASKALL with every descriptor's message
        and vector control written again."""
        saved = self.command
        self.qemu.config_write(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE)
        if method == "flr":
            devctl = self.qemu.config_read(PCI_EXP_DEVCTL, 2)
            self.qemu.config_write(PCI_EXP_DEVCTL, 2, devctl | PCI_EXP_DEVCTL_BCR_FLR)
        else:
            self.qemu.bus_reset()
        self.set_command(saved)
        if not self.msix_enabled:
            return
        self._msix_ctrl(0, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
        for _, desc in sorted(self.descs.items()):
            self.write_msg(desc, desc.msg)
            self.set_ctrl(desc, desc.ctrl)
        self._msix_ctrl(PCI_MSIX_FLAGS_MASKALL, 0)

    def enable(self) -> None:
        """``pcim_enable_device`` and ``pci_set_master``: memory decoding and bus mastering."""
        self.set_command(self.command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)

    def disable(self) -> None:
        """``pci_disable_device``: bus mastering off."""
        self.set_command(self.command & ~PCI_COMMAND_MASTER)

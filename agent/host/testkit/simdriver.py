"""The guest driver of the fake lab: msixlab.ko's semantics, simulated, and its device nodes
as the real guest agent opens them (simagent.py).

Concepts owned here:
- ``Msixlab``: the driver bound to one NIC (agent/kmod, docs/kmod.md).  Probe: memory and
  bus mastering on, MSI-X with index 0 as group 0.  A group takes min..max vectors at the
  lowest free indices or from an explicit start (stopping at the first taken index or
  the table's end), each allocated at its index and then requested; fewer than min is
  all or nothing (ENOSPC, or EBUSY for an explicit start); ids only grow; a one-shot
  fault fails the nth vector's request_irq (ENOMEM).  A free gives back a group's
  vectors highest index first; remove frees every group newest first, then group 0,
  then MSI-X.  The handler counts per CPU (``count``); a raise rings the ICS doorbell
  and waits for the vector's total to grow; the PBA, table and Function Mask read-outs
  go through the function.  Failures carry the driver's errnos (``KernelErrno``).
- ``DriverFile``: an open /dev/msixlab<N> with the methods and result shapes of the
  agent's ``driver.Driver`` (whose own converters build the group and vector records);
  a failure is a ``DriverError`` naming the call and its meaning, as Driver's.
- ``SimGuest``: the guest as a whole: the kernel, its NICs, their drivers and device nodes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from agent.guest import uapi
from agent.guest.driver import MEANINGS, PCI_MSIX_FLAGS_MASKALL, Driver
from agent.guest.errors import DriverError, RequestError

from qemu_device.device.registers import REG_ICS

from agent.host.testkit.simkernel import IrqDesc, KernelErrno, PciFunction, SimKernel


@dataclass(eq=False)
class Group:
    """One group as the driver keeps it."""
    id: int
    min: int
    max: int
    start: int | None
    cpu: int | None
    managed: bool
    fail_irq: int = 0
    count: int = 0


@dataclass(eq=False)
class Vec:
    """One vector: its IRQ, group, per-CPU counts, total and last CPU."""
    desc: IrqDesc
    group: Group
    counts: list[int]
    total: int = 0
    last_cpu: int | None = None
    dead: bool = False


@dataclass
class Waits:
    """How the driver waits: ``wait(condition, seconds)`` is true once ``condition`` holds
    (the fake lab's clock runs meanwhile), ``now()`` its time in seconds, and
    ``window()`` lets whoever raises from the host meanwhile have a turn (a teardown)."""
    wait: Callable[[Callable[[], bool], float], bool] = lambda cond, seconds: cond()
    now: Callable[[], float] = lambda: 0.0
    window: Callable[[], None] = lambda: None


class Msixlab:
    """msixlab.ko bound to one PCI function (see the module)."""

    def __init__(self, kernel: SimKernel, function: PciFunction, minor: int, waits: Waits,
                 fault_injection: bool = True):
        self.kernel, self.function, self.waits = kernel, function, waits
        self.name = f"msixlab{minor}"
        self.path = f"/dev/{self.name}"
        self.fault_injection = fault_injection
        self.size = function.layout.vectors
        self.groups: dict[int, Group] = {}
        self.vecs: dict[int, Vec] = {}
        self.next_group = 1
        self.fail_irq_next = 0
        self.gone = False
        self.irqs = 0

    # --- probe and remove -----------------------------------------------------------------
    def probe(self) -> None:
        """Enable the function, MSI-X with one vector, group 0 on index 0."""
        self.function.enable()
        desc = self.function.enable_msix()
        grp0 = self.groups[0] = Group(0, 1, 1, 0, None, False)
        self._attach(desc, grp0)
        lay = self.function.layout
        self.kernel.log.append(f"msixlab {self.function.bdf}: {self.name}: {self.size} MSI-X "
                               f"entries, table BAR{lay.table_bar}+{lay.table_offset:#x}, PBA "
                               f"BAR{lay.pba_bar}+{lay.pba_offset:#x}, dynamic allocation "
                               f"supported, fault injection "
                               f"{'on' if self.fault_injection else 'off'}")

    def remove(self) -> None:
        """Free every dynamic group (newest first), group 0, then MSI-X; log what was freed.
        Raises from the host get a turn before, between and after (``Waits.window``)."""
        self.gone = True
        vectors = len(self.vecs)
        self.waits.window()
        for gid in sorted(self.groups, reverse=True):
            if gid:
                self._release(self.groups.pop(gid))
        self.waits.window()
        self._release(self.groups.pop(0), dynamic=False)
        self.function.disable_msix()
        self.waits.window()
        self.function.disable()
        self.kernel.log.append(f"msixlab {self.function.bdf}: {self.name}: removed, freed "
                               f"{vectors} vectors")

    # --- vectors ----------------------------------------------------------------------
    def count(self, vec: Vec, cpu: int) -> None:
        """The interrupt handler: one more on ``cpu``."""
        vec.counts[cpu] += 1
        vec.last_cpu = cpu
        vec.total += 1
        self.irqs += 1

    def _attach(self, desc: IrqDesc, group: Group) -> None:
        """request_irq() and publication (``ENOMEM`` when the armed fault hits it)."""
        if group.fail_irq and group.count + 1 == group.fail_irq:
            raise KernelErrno(errno.ENOMEM, "request_irq failed (the armed fault)")
        vec = Vec(desc, group, [0] * self.kernel.nr_cpus)
        self.kernel.request_irq(desc, lambda cpu: self.count(vec, cpu),
                                f"{self.name}[{desc.index}]")
        self.vecs[desc.index] = vec
        group.count += 1

    def _vec_alloc(self, group: Group, index: int | None) -> None:
        try:
            desc = self.function.alloc_irq_at(index, group.cpu, group.managed)
        except KernelErrno as err:
            code = err.errno
            if code == errno.EBUSY and index is None:
                code = errno.ENOSPC
            elif code == errno.ERANGE:
                code = errno.EINVAL
            raise KernelErrno(code, str(err)) from err
        try:
            self._attach(desc, group)
        except KernelErrno:
            self.function.free_irq_at(desc)
            raise

    def _free_vec(self, vec: Vec, dynamic: bool = True) -> None:
        del self.vecs[vec.desc.index]
        vec.group.count -= 1
        self.kernel.free_irq(vec.desc)
        vec.dead = True
        if dynamic:
            self.function.free_irq_at(vec.desc)

    def _release(self, group: Group, dynamic: bool = True) -> int:
        mine = [v for i, v in sorted(self.vecs.items(), reverse=True) if v.group is group]
        for vec in mine:
            self._free_vec(vec, dynamic)
        return len(mine)

    def _live(self) -> None:
        if self.gone:
            raise KernelErrno(errno.ENODEV, "the device was unbound")

    # --- groups -----------------------------------------------------------------------
    def alloc_group(self, min_: int, max_: int, start: int | None, cpu: int | None,
                    managed: bool) -> Group:
        """ALLOC_GROUP (see the module); the new group."""
        self._live()
        if (min_ < 1 or min_ > max_ or min_ > self.size
                or (start is not None and (start >= self.size or min_ > self.size - start))
                or (cpu is None and managed)
                or (cpu is not None and (cpu >= self.kernel.nr_cpus
                                         or cpu not in self.kernel.online))):
            raise KernelErrno(errno.EINVAL, "bad argument or range")
        group = Group(self.next_group, min_, max_, start, cpu, managed, self.fail_irq_next)
        self.fail_irq_next = 0
        failed = None
        for i in range(max_):
            index = None if start is None else start + i
            if index is not None and index >= self.size:
                break
            if index is not None and index in self.vecs:
                failed = KernelErrno(errno.EBUSY, f"index {index} is taken")
                break
            try:
                self._vec_alloc(group, index)
            except KernelErrno as err:
                failed = err
                break
        if group.count < min_:
            self._release(group)
            raise failed or KernelErrno(errno.ENOSPC, "fewer than min vectors")
        self.groups[group.id] = group
        self.next_group += 1
        return group

    def free_group(self, gid: int) -> int:
        """FREE_GROUP: how many vectors were freed.  EPERM for group 0, ENOENT unknown."""
        self._live()
        if gid == 0:
            raise KernelErrno(errno.EPERM, "group 0 cannot be freed")
        group = self.groups.pop(gid, None)
        if group is None:
            raise KernelErrno(errno.ENOENT, f"no group {gid}")
        return self._release(group)

    def indices(self, group: Group | None = None) -> list[int]:
        """The allocated indices (of ``group``)."""
        return sorted(i for i, v in self.vecs.items() if group is None or v.group is group)

    # --- read-outs and raises --------------------------------------------------------
    def lookup(self, index: int) -> Vec:
        """The vector at ``index``: EINVAL past the table, ENOENT when not allocated."""
        self._live()
        if index >= self.size:
            raise KernelErrno(errno.EINVAL, f"index {index} is past the table")
        if index not in self.vecs:
            raise KernelErrno(errno.ENOENT, f"index {index} is not allocated")
        return self.vecs[index]

    def raise_vector(self, index: int, timeout_ms: int) -> Vec:
        """RAISE: ring the doorbell, wait until the vector counted one more (ETIMEDOUT),
        ENOENT if it was freed meanwhile."""
        if timeout_ms > uapi.RAISE_MAX_MS:
            raise KernelErrno(errno.EINVAL, "timeout_ms too large")
        vec = self.lookup(index)
        before = vec.total
        self.function.qemu.mmio_write(0, REG_ICS, index)
        if not self.waits.wait(lambda: vec.total != before or vec.dead,
                               (timeout_ms or uapi.RAISE_DEFAULT_MS) / 1000):
            raise KernelErrno(errno.ETIMEDOUT, "not counted in time")
        if vec.total == before:
            raise KernelErrno(errno.ENODEV if self.gone else errno.ENOENT, "freed meanwhile")
        return vec


def _fail(what: str, err: KernelErrno) -> DriverError:
    code = errno.errorcode.get(err.errno, str(err.errno))
    return DriverError(err.errno, f"{what}: {code} "
                       f"({MEANINGS.get(err.errno, os.strerror(err.errno))})")


class DriverFile:
    """An open /dev/msixlab<N>: ``driver.Driver``'s methods over a ``Msixlab``."""

    def __init__(self, ml: Msixlab):
        self.ml, self.path, self.closed = ml, ml.path, False

    def close(self) -> None:
        """Close the file (once)."""
        self.closed = True

    def _call(self, what: str, fn, *args):
        if self.closed:
            raise DriverError(errno.EBADF, f"{what}: EBADF (the file is closed)")
        try:
            return fn(*args)
        except KernelErrno as err:
            raise _fail(what, err) from err

    def info(self) -> dict[str, object]:
        """``Driver.info``."""
        ml = self.ml
        self._call("info", ml._live)
        lay = ml.function.layout
        return {"path": self.path, "uapi_version": uapi.UAPI_VERSION,
                "bdf": ml.function.bdf, "vendor": 0x1234, "device": 0x11E9,
                "table_size": ml.size, "table_bar": lay.table_bar,
                "table_offset": lay.table_offset, "pba_bar": lay.pba_bar,
                "pba_offset": lay.pba_offset, "dyn_alloc": True,
                "fault_injection": ml.fault_injection,
                "msix_control": ml.function.msix_control(), "nr_cpu_ids": ml.kernel.nr_cpus,
                "nr_groups": len(ml.groups), "nr_vectors": len(ml.vecs),
                "next_group": ml.next_group, "allocated": ml.indices()}

    def _group(self, group: Group) -> dict[str, object]:
        return Driver._group({
            "id": group.id, "count": group.count, "min": group.min, "max": group.max,
            "start": uapi.ANY_INDEX if group.start is None else group.start,
            "cpu": uapi.NO_CPU if group.cpu is None else group.cpu,
            "flags": uapi.GROUP_MANAGED if group.managed else 0,
            "indices": uapi.list_to_bits(self.ml.indices(group), uapi.VEC_WORDS)})

    def alloc_group(self, min: int, max: int, start: int | None = None,
                    cpu: int | None = None, managed: bool = False) -> dict[str, object]:
        """``Driver.alloc_group``."""
        what = (f"alloc_group(min={min}, max={max}, start={start}, cpu={cpu}, "
                f"managed={managed})")
        return self._group(self._call(what, self.ml.alloc_group, min, max, start, cpu,
                                      managed))

    def free_group(self, group: int) -> dict[str, object]:
        """``Driver.free_group``."""
        freed = self._call(f"free_group(group={group})", self.ml.free_group, group)
        return {"group": group, "freed": freed}

    def list_groups(self) -> list[dict[str, object]]:
        """``Driver.list_groups``."""
        self._call("get_group(id>=0)", self.ml._live)
        return [self._group(g) for _, g in sorted(self.ml.groups.items())]

    def vector(self, index: int) -> dict[str, object]:
        """``Driver.vector``: the routing record built by Driver's own converter."""
        vec = self._call(f"vector(index={index})", self.ml.lookup, index)
        desc = vec.desc
        lo, hi, data, ctrl = self.ml.function.read_entry(index)
        cpus = [{"count": vec.counts[c],
                 "flags": (uapi.CPU_REQUESTED if vec.group.cpu == c else 0)
                 | (uapi.CPU_AFFINITY if c in desc.mask else 0)
                 | (uapi.CPU_EFFECTIVE if c in desc.effective else 0)}
                for c in range(self.ml.kernel.nr_cpus)]
        raw = {"group": vec.group.id, "index": index, "irq": desc.irq,
               "msg_address_lo": desc.msg[0], "msg_address_hi": desc.msg[1],
               "msg_data": desc.msg[2], "table_address_lo": lo, "table_address_hi": hi,
               "table_data": data, "table_ctrl": ctrl, "total": vec.total,
               "last_cpu": uapi.NO_CPU if vec.last_cpu is None else vec.last_cpu}
        return Driver._vector(raw, cpus)

    def routing(self) -> list[dict[str, object]]:
        """``Driver.routing``."""
        return [self.vector(index) for index in self.info()["allocated"]]

    def raise_vector(self, index: int, timeout_ms: int = 0) -> dict[str, object]:
        """``Driver.raise_vector``."""
        started = self.ml.waits.now()
        vec = self._call(f"raise(index={index}, timeout_ms="
                         f"{timeout_ms or uapi.RAISE_DEFAULT_MS})",
                         self.ml.raise_vector, index, timeout_ms)
        return {"index": index, "irq": vec.desc.irq, "cpu": vec.last_cpu,
                "latency_ns": int((self.ml.waits.now() - started) * 1e9), "total": vec.total}

    def totals(self, want: dict[int, int] | None = None, timeout_ms: int = 0,
               each: tuple[int, int, int] | None = None) -> dict[str, object]:
        """``Driver.totals``: with ``want`` or ``each``, wait (bounded) until each allocated
        index reached its count."""
        ml = self.ml
        self._call("totals", ml._live)
        wanted: dict[int, int] = {}
        if each is not None:
            count, first, last = each
            wanted = {i: count for i in range(first, min(last, ml.size - 1) + 1)}
        elif want:
            for index, count in want.items():
                if not 0 <= index < ml.size:
                    raise RequestError(errno.EINVAL, f"totals: argument 'want' names index "
                                       f"{index}, outside the {ml.size}-entry table",
                                       command="totals", argument="want")
            wanted = dict(want)

        def short() -> int:
            return sum(1 for i, v in ml.vecs.items() if v.total < wanted.get(i, 0))
        if wanted:
            ml.waits.wait(lambda: short() == 0, timeout_ms / 1000)
        return {"totals": {str(i): v.total for i, v in sorted(ml.vecs.items())},
                "short": short()}

    def read_pba(self) -> dict[str, object]:
        """``Driver.read_pba``."""
        self._call("read_pba", self.ml._live)
        words = self.ml.function.read_pba()
        return {"table_size": self.ml.size, "pending": uapi.bits_to_list(words, self.ml.size),
                "words": words}

    def read_entry(self, index: int) -> dict[str, object]:
        """``Driver.read_entry``."""
        if index >= self.ml.size:
            raise _fail(f"read_entry(index={index})", KernelErrno(errno.EINVAL))
        lo, hi, data, ctrl = self.ml.function.read_entry(index)
        return {"index": index, "address_lo": lo, "address_hi": hi, "data": data, "ctrl": ctrl}

    def function_mask(self, masked: bool) -> dict[str, object]:
        """``Driver.function_mask``."""
        self._call(f"function_mask(masked={masked})", self.ml._live)
        control = self.ml.function.function_mask(masked)
        return {"masked": bool(control & PCI_MSIX_FLAGS_MASKALL), "control": control}

    def fail_request_irq(self, nth: int) -> dict[str, object]:
        """``Driver.fail_request_irq``: EACCES without fault injection."""
        def arm() -> None:
            self.ml._live()
            if not self.ml.fault_injection:
                raise KernelErrno(errno.EACCES, "fault injection is off")
            self.ml.fail_irq_next = nth
        self._call(f"fail_request_irq(nth={nth})", arm)
        return {"nth": nth}


class SimGuest:
    """The guest: the kernel, its NICs, the drivers bound to them and their device nodes."""

    def __init__(self, kernel: SimKernel, functions: list[PciFunction], waits: Waits,
                 fault_injection: bool = True):
        self.kernel, self.waits = kernel, waits
        self.functions = {f.bdf: f for f in functions}
        self.fault_injection = fault_injection
        self.drivers: dict[str, Msixlab] = {}
        self.driver_cls = Msixlab
        for function in functions:
            self.bind(function.bdf)

    def bind(self, bdf: str) -> str:
        """Probe the driver on ``bdf``; its device node's path."""
        function = self.functions[bdf]
        minor = min(set(range(len(self.drivers) + 1))
                    - {int(d.name[7:]) for d in self.drivers.values()})
        ml = self.driver_cls(self.kernel, function, minor, self.waits, self.fault_injection)
        ml.probe()
        self.drivers[bdf] = ml
        return ml.path

    def unbind(self, bdf: str) -> None:
        """The driver's remove on ``bdf``."""
        self.drivers.pop(bdf).remove()

    def device_paths(self) -> list[str]:
        """Every /dev/msixlab<N>, by number."""
        return [d.path for d in sorted(self.drivers.values(), key=lambda d: int(d.name[7:]))]

    def open(self, path: str) -> DriverFile:
        """Open a device node (``FileNotFoundError`` for one that does not exist)."""
        for ml in self.drivers.values():
            if ml.path == path:
                return DriverFile(ml)
        raise FileNotFoundError(errno.ENOENT, "No such device node", path)

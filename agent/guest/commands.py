"""The guest agent's commands: one table from command name to handler and arguments.

Concepts: ``Agent`` owns the open driver (or the reason there is none) and builds the
command table for ``protocol.Session``.  Handlers receive validated arguments and return
JSON-ready results; commands that need the driver fail with ENODEV naming why it is
missing.  ``hello`` is the event sent once at start; it says whether the kernel can
allocate MSI-X vectors dynamically on the device (``dyn_alloc``).  The agent remembers
the CPUs each ``set_affinity`` asked for, so a vector's ``affinity.requested`` is always
what was asked (by the allocation or by set_affinity), never what the kernel read back.
``crash`` makes the guest kernel WARN, oops or panic through the driver's fault
injection; an oops kills the task that asks, so the agent asks from a child process
(``in_agent``: from the agent itself, which then dies, for the tests of that ending).
``fail_request_irq`` arms the driver's other fault: the next group allocation's nth
vector fails request_irq(), so the driver's unwinding can be judged.
``kernel_health`` is the kernel's own record of what it reported (kernlog.py): its taint
mask (also in the hello, to compare with) and its messages at KERN_WARNING or worse.
The VFIO commands live in vfio_commands.py, the power management ones in power.py.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable

from msixlab_common.deadline import Deadline, wait_until
from msixlab_common.errors import WaitTimeout

from . import binding, kernlog, sysview, uapi
from .power import PowerCommands
from .driver import MEANINGS, Driver, find_devices
from .errors import AgentError, DriverError, GuestError, RequestError
from .protocol import Arg, Command
from .selftests import SelftestCommands
from .vfio_commands import VfioCommands

TABLE_MAX = uapi.MAX_VECTORS - 1
CPU_MAX = uapi.NO_CPU - 1          # the driver checks against nr_cpu_ids and online CPUs
PANIC_DELAY_MS = 500               # time for the reply to leave before the panic
CRASH_CHILD_S = 10.0               # an oops kills the child at once; bound the wait
_INDEX_KEY = re.compile(r"[0-9]{1,4}")   # a table index as a JSON object key (0..TABLE_MAX)


def affinity_cpus(cpus) -> list[int]:
    """``set_affinity``'s ``cpus``, checked (a non-empty list of CPU numbers, else a
    ``RequestError`` EINVAL naming the argument) and sorted without repeats."""
    if not cpus or any(type(c) is not int or not 0 <= c <= CPU_MAX for c in cpus):
        raise RequestError(errno.EINVAL, f"set_affinity: argument 'cpus' must be a "
                           f"non-empty list of CPU numbers, got {cpus!r}",
                           command="set_affinity", argument="cpus")
    return sorted(set(cpus))


class Agent:
    """The guest agent's command handlers over one open driver device (or the reason there
    is none).  ``commands()`` is the command table the session dispatches on; every handler
    takes validated arguments and returns a JSON-ready result, or raises an ``AgentError``
    (``GuestError`` ENODEV naming why when the driver is needed and missing)."""
    def __init__(self, device: str | None = None, root: str = "/",
                 opener: Callable[[str], Driver] = Driver):
        """Open ``device`` (default: the first /dev/msixlab<N>); remember why if none."""
        self.root = root
        self.opener = opener
        self.driver: Driver | None = None
        self.device_error: str | None = None
        self.unbound: str | None = None     # address this agent unbound, for bind
        self.removed: str | None = None     # address this agent removed, for rescan
        self.asked: dict[int, tuple[int, list[int]]] = {}   # index -> (group, set_affinity cpus)
        self.others: dict[str, tuple[Driver, dict]] = {}     # bdf -> NIC not selected now
        self.vfio = VfioCommands(self)                       # the vfio_* commands
        self.selftests = SelftestCommands(self)              # selftests_prepare, selftest_run
        self.power = PowerCommands(self)                     # runtime PM, system sleep
        self.kernlog = kernlog.KernelLog(root)
        path = device
        try:
            path = path or next(iter(find_devices(os.path.join(root, "dev"))), None)
            if path is None:
                self.device_error = "no /dev/msixlab<N>: is msixlab.ko loaded and bound?"
            else:
                self.driver = opener(path)
        except OSError as err:
            self.device_error = f"cannot open {path}: {err.strerror}"

    # ---- helpers ----

    def _need_driver(self) -> Driver:
        if self.driver is None:
            raise GuestError(errno.ENODEV, self.device_error or "no driver")
        return self.driver

    def _bdf(self) -> str | None:
        try:
            return self._need_driver().info()["bdf"]
        except AgentError:
            return None

    def hello(self) -> dict[str, object]:
        """The start event: kernel release and command line (null without /proc/cmdline),
        the device's info (or why there is none) and ``dyn_alloc``: whether the kernel can
        allocate MSI-X vectors after enable on this device (``pci_msix_can_alloc_dyn()``),
        null when there is no device to ask."""
        device: dict[str, object] | None = None
        event: dict[str, object] = {"event": "hello", "kernel": os.uname().release,
                                    "cmdline": binding.cmdline(self.root)}
        try:
            device = self._need_driver().info()
        except AgentError as err:
            event["device_error"] = err.to_dict()
        event["device"] = device
        event["dyn_alloc"] = device["dyn_alloc"] if device else None
        event["tainted"] = self.kernlog.tainted()
        return event

    def kernel_health(self) -> dict[str, object]:
        """``kernel_health``: the kernel's taint mask now (null if unreadable) and its
        messages at KERN_WARNING or worse since the agent started (or the last call)."""
        return {"tainted": self.kernlog.tainted(), "warnings": self.kernlog.warnings()}

    def _with_asked(self, vector: dict[str, object]) -> dict[str, object]:
        """Put what set_affinity asked for in ``affinity.requested`` (same group only)."""
        asked = self.asked.get(vector["index"])
        if asked is not None and asked[0] == vector["group"]:
            vector["affinity"]["requested"] = list(asked[1])
        return vector

    # ---- handlers ----

    def info(self) -> dict[str, object]:
        """``info``: the driver's view of the device (``Driver.info``)."""
        return self._need_driver().info()

    def alloc_group(self, min: int, max: int, start: int | None, cpu: int | None,
                    managed: bool) -> dict[str, object]:
        """``alloc_group``: allocate between ``min`` and ``max`` vectors as one group, at the
        lowest free indices or from ``start``, with affinity to ``cpu`` (``managed``: a
        managed affinity).  Returns the group; the driver's errno on failure."""
        return self._need_driver().alloc_group(min, max, start, cpu, managed)

    def free_group(self, group: int) -> dict[str, object]:
        """``free_group``: free every vector of ``group``; forgets what set_affinity asked on
        them."""
        freed = self._need_driver().free_group(group)
        self.asked = {i: a for i, a in self.asked.items() if a[0] != group}
        return freed

    def list_groups(self) -> list[dict[str, object]]:
        """``list_groups``: every allocated group, by id."""
        return self._need_driver().list_groups()

    def routing(self) -> list[dict[str, object]]:
        """``routing``: every allocated vector (``vector``), with what set_affinity asked."""
        return [self._with_asked(v) for v in self._need_driver().routing()]

    def vector(self, index: int) -> dict[str, object]:
        """``vector``: one allocated vector's routing record, with what set_affinity asked."""
        return self._with_asked(self._need_driver().vector(index))

    def raise_(self, index: int, timeout_ms: int) -> dict[str, object]:
        """``raise``: ring the device's doorbell for vector ``index`` and wait, at most
        ``timeout_ms`` (0 = the driver's default, 1 s), for its handler to count it.  Returns
        the CPU and IRQ that took it, the latency and the new total; a raise not counted in
        time fails with ETIMEDOUT."""
        return self._need_driver().raise_vector(index, timeout_ms)

    def totals(self, want: dict | None, want_each: int | None, first: int, last: int,
               timeout_ms: int) -> dict[str, object]:
        """Every allocated index's interrupt total ({"<index>": total}) in one driver
        call; with ``want`` ({"<index>": count}), or ``want_each`` (one count for every
        index from ``first`` to ``last``), the driver first waits, bounded by
        ``timeout_ms``, until each allocated index reached its count (``short``: how
        many did not)."""
        if want is not None and want_each is not None:
            raise RequestError(errno.EINVAL, "totals: give 'want' or 'want_each', not both",
                               command="totals", argument="want_each")
        if want_each is not None:
            return self._need_driver().totals(None, timeout_ms,
                                              each=(want_each, first, last))
        counts: dict[int, int] = {}
        for key, value in (want or {}).items():
            # ASCII digits only: str.isdigit() also takes '²' (int() refuses it) and a
            # key of thousands of digits would trip int()'s length limit
            if (not _INDEX_KEY.fullmatch(key) or int(key) > TABLE_MAX or type(value) is not int
                    or not 0 <= value < 1 << 64):
                raise RequestError(errno.EINVAL, f"totals: argument 'want' maps an index "
                                   f"(0..{TABLE_MAX}) to a count, got {key!r}: {value!r}",
                                   command="totals", argument="want")
            counts[int(key)] = value
        return self._need_driver().totals(counts, timeout_ms)

    def read_pba(self) -> dict[str, object]:
        """``read_pba``: the Pending Bit Array: table size, pending indices and the raw words."""
        return self._need_driver().read_pba()

    def read_entry(self, index: int) -> dict[str, object]:
        """``read_entry``: MSI-X table entry ``index`` as read through MMIO (allocated or not)."""
        return self._need_driver().read_entry(index)

    def function_mask(self, masked: bool) -> dict[str, object]:
        """``function_mask``: set or clear MSI-X Function Mask; Message Control read back."""
        return self._need_driver().function_mask(masked)

    def set_affinity(self, index: int, cpus: list) -> dict[str, object]:
        """Write ``cpus`` to /proc/irq/<irq>/smp_affinity_list of the vector at ``index``;
        return the vector afterwards (requested = ``cpus``)."""
        cpus = affinity_cpus(cpus)
        vector = self._need_driver().vector(index)
        sysview.write_affinity(vector["irq"], cpus, self.root)
        self.asked[index] = (vector["group"], cpus)
        vector = self.vector(index)
        # x86 without interrupt remapping defers the move to the vector's next interrupt
        vector["move_pending"] = vector["affinity"]["mask"] != cpus
        return vector

    def cpu_online(self, cpu: int, online: bool) -> dict[str, object]:
        """Take ``cpu`` offline or bring it back; return the online CPUs afterwards."""
        sysview.set_cpu_online(cpu, online, self.root)
        return {"cpu": cpu, "online": online, "online_cpus": sysview.online_cpus(self.root)}

    def msi_irqs(self) -> dict[str, object]:
        """``msi_irqs``: every entry of the device's sysfs ``msi_irqs/`` directory (also after
        ``unbind``; after ``remove_device`` ENOENT: the device is gone); ENODEV if the agent
        knows no device."""
        bdf = self._bdf() or self.unbound or self.removed
        if bdf is None:
            raise GuestError(errno.ENODEV, self.device_error or "no driver")
        return sysview.msi_irqs(bdf, self.root)

    def crash(self, kind: str, delay_ms: int | None,
              in_agent: bool = False) -> dict[str, object]:
        """WARN or panic from the agent's own ioctl; an oops from a child's, or with
        ``in_agent`` from the agent's own (the oops kills the agent)."""
        if kind not in uapi.CRASH_KINDS:
            raise RequestError(errno.EINVAL, f"crash: argument 'kind' must be one of "
                               f"{', '.join(uapi.CRASH_KINDS)}, got {kind!r}",
                               command="crash", argument="kind")
        if delay_ms is not None and kind != "panic":
            raise RequestError(errno.EINVAL, "crash: 'delay_ms' applies to kind 'panic' only",
                               command="crash", argument="delay_ms")
        driver = self._need_driver()
        if kind == "oops" and not in_agent:
            return self._oops_in_child(driver.path)
        if kind == "panic":
            return driver.crash(kind, PANIC_DELAY_MS if delay_ms is None else delay_ms)
        return driver.crash(kind)

    def fail_request_irq(self, nth: int) -> dict[str, object]:
        """Arm the driver's one-shot fault: the next group allocation's ``nth`` vector (1 =
        the first) fails request_irq(); 0 disarms.  EACCES without fault injection."""
        return self._need_driver().fail_request_irq(nth)

    def _oops_in_child(self, path: str) -> dict[str, object]:
        pid = os.fork()
        if pid == 0:                                  # the child: oops, or say why not
            code = 0
            try:
                Driver(path).crash("oops")
            except DriverError as err:
                code = err.errno & 0xFF or 1
            except BaseException:                     # noqa: BLE001 - never return to the agent
                code = 255
            os._exit(code)
        def reaped() -> tuple[int] | None:
            got, status = os.waitpid(pid, os.WNOHANG)
            return (status,) if got else None

        deadline = Deadline(CRASH_CHILD_S, f"the oops child (pid {pid}) to end")
        try:
            (status,) = wait_until(reaped, deadline)
        except WaitTimeout as err:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise GuestError(errno.ETIMEDOUT, str(err)) from err
        if os.WIFSIGNALED(status):
            return {"kind": "oops", "pid": pid, "signal": os.WTERMSIG(status)}
        code = os.WEXITSTATUS(status) or errno.EIO
        meaning = MEANINGS.get(code, os.strerror(code))
        raise DriverError(code, f"crash(kind=oops): {errno.errorcode.get(code, code)} "
                          f"({meaning}); the child exited instead of oopsing")

    def interrupts(self, all: bool) -> dict[str, object]:
        """``interrupts``: /proc/interrupts parsed (CPUs and rows); only the device's rows
        unless ``all``.  A read failure is a ``GuestError`` with its errno."""
        path = os.path.join(self.root, "proc/interrupts")
        try:
            with open(path, encoding="utf-8") as f:
                parsed = sysview.parse_interrupts(f.read())
        except OSError as err:
            raise GuestError(err.errno or errno.EIO, f"interrupts: {path}: {err.strerror}") from err
        bdf = self._bdf()
        name = os.path.basename(self.driver.path) if self.driver else None
        rows = parsed["rows"] if all else sysview.device_rows(parsed, bdf, name)
        out = {"cpus": parsed["cpus"], "bdf": bdf, "rows": rows}
        if all:
            out["other"] = parsed["other"]       # the named rows: NMI, LOC, ERR, MIS ...
        return out

    def irq_sysfs(self, irq: int) -> dict[str, object]:
        """``irq_sysfs``: what sysfs and procfs say about IRQ ``irq`` (ENOENT if there is no
        such IRQ)."""
        return sysview.irq_sysfs(irq, self._bdf(), self.root)

    def lspci(self) -> dict[str, object]:
        """``lspci``: ``lspci -vv -nn`` of the rig's NIC (1234:11e9): return code and output."""
        return sysview.run_tool(["lspci", "-vv", "-nn", "-d", "1234:11e9"])

    def dmesg(self, lines: int) -> dict[str, object]:
        """``dmesg``: the last ``lines`` lines of the kernel log, with dmesg's return code."""
        out = sysview.run_tool(["dmesg"])
        text = out["stdout"].splitlines()
        return {"returncode": out["returncode"], "lines": text[-lines:]}

    def _release(self) -> str:
        """Close the driver before a teardown; returns the device's address."""
        bdf = self._bdf()
        if bdf is None:
            raise GuestError(errno.ENODEV, self.device_error or "no driver")
        self.driver.close()
        self.driver, self.device_error = None, "the driver was unbound"
        self.asked = {}                  # group ids start again at 1 after a rebind
        return bdf

    def _reopen(self, path: str) -> dict[str, object]:
        """Open ``path`` as the selected driver; one still selected is kept with the
        other NICs (or closed when its device is gone), never leaked."""
        new = self.opener(path)
        self._select(new, {}, self._bdf())
        return new.info()

    def _select(self, driver: Driver, asked: dict, current: str | None) -> None:
        """Make ``driver`` (with what set_affinity ``asked`` on it) the selected NIC.  The
        one selected until now, bound to ``current``, is kept with the other NICs, or
        closed when its device is gone (``current`` None) or another already holds it."""
        if self.driver is not None:
            if current is not None and current not in self.others:
                self.others[current] = (self.driver, self.asked)
            else:
                self.driver.close()
        self.driver, self.asked, self.device_error = driver, asked, None

    def _known(self) -> list[str]:
        """The device paths this agent's open drivers hold (the selected NIC's too)."""
        held = [driver.path for driver, _ in self.others.values()]
        return held + ([self.driver.path] if self.driver is not None else [])

    def unbind(self) -> dict[str, object]:
        """``unbind``: close the driver and unbind the device from it (sysfs), waiting for its
        misc device to go (the other NICs' stay).  Returns the address; ``bind`` binds that
        address again."""
        path = self.driver.path if self.driver is not None else None
        bdf = self._release()
        binding.unbind(bdf, self.root, path)
        self.unbound = bdf
        return {"unbound": bdf}

    def bind(self) -> dict[str, object]:
        """``bind``: bind the device this agent unbound and reopen the driver (EINVAL if it
        unbound none).  Returns the new ``info``; group ids start again at 1."""
        bdf = self.unbound
        if bdf is None:
            raise GuestError(errno.EINVAL, "bind: nothing was unbound by this agent")
        info = self._reopen(binding.bind(bdf, self.root, known=self._known()))
        self.unbound = None
        return info

    def remove_device(self) -> dict[str, object]:
        """``remove_device``: close the driver and remove the selected NIC from the bus
        (sysfs ``remove``), waiting for its misc device to go.  Returns the address;
        ``rescan`` finds it again."""
        path = self.driver.path if self.driver is not None else None
        bdf = self._release()
        binding.remove(bdf, self.root, path)
        self.removed = bdf
        return {"removed": bdf}

    def rescan(self) -> dict[str, object]:
        """``rescan``: rescan the PCI buses and reopen the device this agent removed (EINVAL
        if it removed none); returns the new ``info`` (group ids start again at 1)."""
        if self.removed is None:
            raise GuestError(errno.EINVAL, "rescan: nothing was removed by this agent")
        info = self._reopen(binding.rescan(self.root, known=self._known()))
        if info.get("bdf") != self.removed:
            raise GuestError(errno.ENODEV, f"rescan: the device that appeared is at "
                             f"{info.get('bdf')}, not at {self.removed}")
        self.removed = None
        return info

    def reset_function(self, method: str | None) -> dict[str, object]:
        """``reset_function``: reset the selected NIC through sysfs with the driver bound and
        its groups live, with the kernel's first method or only ``method``
        (``binding.reset_function``); the driver stays open."""
        if method is not None and method not in binding.RESET_METHODS:
            raise RequestError(errno.EINVAL, f"reset_function: argument 'method' must be one "
                               f"of {list(binding.RESET_METHODS)}, got {method!r}",
                               command="reset_function", argument="method")
        bdf = self._bdf()
        if bdf is None:
            raise GuestError(errno.ENODEV, f"reset_function: no NIC selected ({self.device_error})")
        return binding.reset_function(bdf, self.root, method)

    def await_device(self, present: bool, timeout_s: int) -> dict[str, object]:
        """A hot-unplug or hot-add: with ``present`` false, drop the driver (its device
        is gone or going) and wait for its /dev/msixlab<N> to vanish (every one when
        there was none open); with ``present``, wait for one that no other NIC holds to
        appear and open it (group ids start again at 1)."""
        if not present:
            path = self.driver.path if self.driver is not None else None
            if self.driver is not None:
                self.driver.close()
            self.driver, self.device_error = None, "the device was removed"
            self.asked = {}
            if path is None:
                binding.wait_devices(False, self.root, timeout_s, known=self._known())
            else:
                binding.wait_gone(path, timeout_s)
            return {"devices": []}
        if self.driver is not None:           # replaced by what appears
            self.driver.close()
            self.driver = None
        devices = binding.wait_devices(True, self.root, timeout_s, known=self._known())
        return self._reopen(devices[0])

    def _open_nic(self, bdf: str) -> Driver | None:
        """An open driver on the /dev/msixlab<N> bound to ``bdf`` that no NIC holds yet."""
        held = set(self._known())
        for path in find_devices(os.path.join(self.root, "dev")):
            if path in held:
                continue
            try:
                driver = self.opener(path)
            except OSError:
                continue                          # went away meanwhile: not the one
            try:
                if driver.info()["bdf"] == bdf:
                    return driver
            except AgentError:
                pass
            driver.close()
        return None

    def select_nic(self, bdf: str) -> dict[str, object]:
        """Several NICs (``msixlab run --nics N``): make the driver device bound to
        ``bdf`` the one every later command uses; the others stay open, each keeping
        what set_affinity asked on it.  Returns its ``info``; ENODEV (and the selected
        NIC unchanged) when no device is bound to ``bdf``."""
        current = self._bdf()
        if current == bdf:
            return self.driver.info()
        if bdf in self.others:
            chosen, asked = self.others.pop(bdf)
        else:
            chosen, asked = self._open_nic(bdf), {}
            if chosen is None:
                raise GuestError(errno.ENODEV, f"select_nic: no /dev/msixlab<N> is bound "
                                 f"to {bdf!r}", argument="bdf")
        self._select(chosen, asked, current)
        return chosen.info()

    def reload_module(self, path: str | None, fault_injection: bool | None) -> dict[str, object]:
        """``reload_module``: close every open driver, remove and insert the module again
        (``path`` defaults to the kernel command line's msixlab.kmod=, ``fault_injection``
        to how the rig loaded it) and reopen the selected NIC's device.  Returns the new
        ``info``; EINVAL without a path; ENOENT or ENOEXEC (before anything is unloaded)
        when the path is not a readable ELF file; EIO when insmod refuses it, after
        loading the booted module (msixlab.kmod=) again so the guest keeps a driver."""
        booted = binding.module_path(self.root)
        path = path or booted
        if path is None:
            raise GuestError(errno.EINVAL, "reload_module: no 'path' and no msixlab.kmod= "
                             "on the kernel command line")
        self._check_module_file(path)
        if fault_injection is None:
            fault_injection = binding.fault_injection(self.root)
        bdf = self._release()
        for driver, _ in self.others.values():   # an open file keeps the module in use
            driver.close()
        self.others = {}
        try:
            binding.reload(path, fault_injection, fallback=booted)
        finally:                                  # the booted driver, if it came back
            self.driver = self.driver or self._wait_nic(bdf)
        if self.driver is None:
            raise GuestError(errno.ETIMEDOUT, f"reload_module: {self.device_error}")
        return self.driver.info()

    def _check_module_file(self, path: str) -> None:
        """ENOENT / ENOEXEC (``argument``: ``path``) unless ``path`` is an ELF file: found
        before anything is unloaded."""
        local = os.path.join(self.root, path.lstrip("/")) if os.path.isabs(path) else path
        try:
            with open(local, "rb") as f:
                magic = f.read(4)
        except OSError as err:
            raise GuestError(err.errno or errno.ENOENT, f"reload_module: cannot read module "
                             f"file {path!r}: {err.strerror}; nothing was unloaded",
                             argument="path") from err
        if magic != b"\x7fELF":
            raise GuestError(errno.ENOEXEC, f"reload_module: {path!r} is not an ELF file; "
                             "nothing was unloaded", argument="path")

    def _wait_nic(self, bdf: str) -> Driver | None:
        """The driver of ``bdf`` once its /dev/msixlab<N> is back (bounded), else None."""
        try:
            return wait_until(lambda: self._open_nic(bdf), binding.WAIT_S,
                              f"a /dev/msixlab<N> bound to {bdf}")
        except WaitTimeout:
            self.device_error = f"no /dev/msixlab<N> bound to {bdf} after reloading the module"
            return None

    def shutdown(self) -> dict[str, object]:
        """``shutdown``: close every open driver device; the session ends after this reply."""
        for driver, _ in self.others.values():
            driver.close()
        self.others = {}
        if self.driver is not None:
            self.driver.close()
            self.driver = None
            self.device_error = "the agent is shutting down"
        return {"shutdown": True}

    # ---- the table ----

    def commands(self) -> dict[str, Command]:
        """The command table: each command's name, handler and argument specs (bounds included)."""
        index = Arg("index", int, minimum=0, maximum=TABLE_MAX)
        table = [
            Command("info", self.info),
            Command("alloc_group", self.alloc_group, (
                Arg("min", int, minimum=1, maximum=uapi.MAX_VECTORS),
                Arg("max", int, minimum=1, maximum=uapi.MAX_VECTORS),
                Arg("start", int, required=False, minimum=0, maximum=TABLE_MAX),
                Arg("cpu", int, required=False, minimum=0, maximum=CPU_MAX),
                Arg("managed", bool, required=False, default=False),
            )),
            Command("free_group", self.free_group,
                    (Arg("group", int, minimum=0, maximum=0xFFFFFFFE),)),
            Command("list_groups", self.list_groups),
            Command("routing", self.routing),
            Command("vector", self.vector, (index,)),
            Command("raise", self.raise_, (
                index,
                Arg("timeout_ms", int, required=False, default=0, minimum=0,
                    maximum=uapi.RAISE_MAX_MS),
            )),
            Command("totals", self.totals, (
                Arg("want", dict, required=False),
                Arg("want_each", int, required=False, minimum=0, maximum=(1 << 64) - 1),
                Arg("first", int, required=False, default=0, minimum=0, maximum=TABLE_MAX),
                Arg("last", int, required=False, default=TABLE_MAX, minimum=0,
                    maximum=TABLE_MAX),
                Arg("timeout_ms", int, required=False, default=0, minimum=0,
                    maximum=uapi.RAISE_MAX_MS),
            )),
            Command("read_pba", self.read_pba),
            Command("read_entry", self.read_entry, (index,)),
            Command("function_mask", self.function_mask, (Arg("masked", bool),)),
            Command("set_affinity", self.set_affinity, (index, Arg("cpus", list))),
            Command("cpu_online", self.cpu_online,
                    (Arg("cpu", int, minimum=0, maximum=CPU_MAX), Arg("online", bool))),
            Command("msi_irqs", self.msi_irqs),
            Command("crash", self.crash, (
                Arg("kind", str),
                Arg("delay_ms", int, required=False, minimum=0,
                    maximum=uapi.CRASH_MAX_DELAY_MS),
                Arg("in_agent", bool, required=False, default=False),
            )),
            Command("fail_request_irq", self.fail_request_irq,
                    (Arg("nth", int, minimum=0, maximum=uapi.MAX_VECTORS),)),
            Command("kernel_health", self.kernel_health),
            Command("interrupts", self.interrupts,
                    (Arg("all", bool, required=False, default=False),)),
            Command("irq_sysfs", self.irq_sysfs,
                    (Arg("irq", int, minimum=0, maximum=1 << 24),)),
            Command("lspci", self.lspci),
            Command("dmesg", self.dmesg,
                    (Arg("lines", int, required=False, default=50, minimum=1,
                         maximum=100000),)),
            Command("unbind", self.unbind),
            Command("bind", self.bind),
            Command("remove_device", self.remove_device),
            Command("rescan", self.rescan),
            Command("reset_function", self.reset_function,
                    (Arg("method", str, required=False),)),
            Command("await_device", self.await_device,
                    (Arg("present", bool),
                     Arg("timeout_s", int, required=False, default=30, minimum=1,
                         maximum=600))),
            Command("select_nic", self.select_nic, (Arg("bdf", str),)),
            Command("reload_module", self.reload_module,
                    (Arg("path", str, required=False),
                     Arg("fault_injection", bool, required=False))),
            Command("shutdown", self.shutdown, stops=True),
        ] + self.vfio.commands() + self.selftests.commands() + self.power.commands()
        return {command.name: command for command in table}

"""The guest agent's commands: one table from command name to handler and arguments.

Concepts: ``Agent`` owns the open driver (or the reason there is none) and builds the
command table for ``protocol.Session``.  Handlers receive validated arguments and return
JSON-ready results; commands that need the driver fail with ENODEV naming why it is
missing.  ``hello`` is the event sent once at start.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable

from . import binding, sysview, uapi
from .driver import Driver, find_devices
from .errors import AgentError, GuestError
from .protocol import Arg, Command

TABLE_MAX = uapi.MAX_VECTORS - 1
CPU_MAX = uapi.MAX_CPUS - 1


class Agent:
    def __init__(self, device: str | None = None, root: str = "/",
                 opener: Callable[[str], Driver] = Driver):
        """Open ``device`` (default: the first /dev/msixlab<N>); remember why if none."""
        self.root = root
        self.driver: Driver | None = None
        self.device_error: str | None = None
        self.unbound: str | None = None     # address this agent unbound, for bind
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

    def hello(self) -> dict[str, Any]:
        device: dict[str, Any] | None = None
        event: dict[str, Any] = {"event": "hello", "kernel": os.uname().release}
        try:
            device = self._need_driver().info()
        except AgentError as err:
            event["device_error"] = err.to_dict()
        event["device"] = device
        return event

    # ---- handlers ----

    def info(self) -> dict[str, Any]:
        return self._need_driver().info()

    def alloc_group(self, min: int, max: int, start: int | None, cpu: int | None,
                    managed: bool) -> dict[str, Any]:
        return self._need_driver().alloc_group(min, max, start, cpu, managed)

    def free_group(self, group: int) -> dict[str, Any]:
        return self._need_driver().free_group(group)

    def list_groups(self) -> list[dict[str, Any]]:
        return self._need_driver().list_groups()

    def routing(self) -> list[dict[str, Any]]:
        return self._need_driver().routing()

    def vector(self, index: int) -> dict[str, Any]:
        return self._need_driver().vector(index)

    def raise_(self, index: int, timeout_ms: int) -> dict[str, Any]:
        return self._need_driver().raise_vector(index, timeout_ms)

    def read_pba(self) -> dict[str, Any]:
        return self._need_driver().read_pba()

    def read_entry(self, index: int) -> dict[str, Any]:
        return self._need_driver().read_entry(index)

    def interrupts(self, all: bool) -> dict[str, Any]:
        path = os.path.join(self.root, "proc/interrupts")
        try:
            with open(path, encoding="utf-8") as f:
                parsed = sysview.parse_interrupts(f.read())
        except OSError as err:
            raise GuestError(err.errno or errno.EIO, f"interrupts: {path}: {err.strerror}") from err
        bdf = self._bdf()
        name = os.path.basename(self.driver.path) if self.driver else None
        rows = parsed["rows"] if all else sysview.device_rows(parsed, bdf, name)
        return {"cpus": parsed["cpus"], "bdf": bdf, "rows": rows}

    def irq_sysfs(self, irq: int) -> dict[str, Any]:
        return sysview.irq_sysfs(irq, self._bdf(), self.root)

    def lspci(self) -> dict[str, Any]:
        return sysview.run_tool(["lspci", "-vv", "-nn", "-d", "1234:11e9"])

    def dmesg(self, lines: int) -> dict[str, Any]:
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
        return bdf

    def _reopen(self, path: str) -> dict[str, Any]:
        self.driver, self.device_error = Driver(path), None
        return self.driver.info()

    def unbind(self) -> dict[str, Any]:
        bdf = self._release()
        binding.unbind(bdf, self.root)
        self.unbound = bdf
        return {"unbound": bdf}

    def bind(self) -> dict[str, Any]:
        bdf = self.unbound
        if bdf is None:
            raise GuestError(errno.EINVAL, "bind: nothing was unbound by this agent")
        info = self._reopen(binding.bind(bdf, self.root))
        self.unbound = None
        return info

    def reload_module(self, path: str | None) -> dict[str, Any]:
        path = path or binding.module_path(self.root)
        if path is None:
            raise GuestError(errno.EINVAL, "reload_module: no 'path' and no msixlab.kmod= "
                             "on the kernel command line")
        self._release()
        return self._reopen(binding.reload(path))

    def shutdown(self) -> dict[str, Any]:
        if self.driver is not None:
            self.driver.close()
            self.driver = None
            self.device_error = "the agent is shutting down"
        return {"shutdown": True}

    # ---- the table ----

    def commands(self) -> dict[str, Command]:
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
            Command("read_pba", self.read_pba),
            Command("read_entry", self.read_entry, (index,)),
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
            Command("reload_module", self.reload_module,
                    (Arg("path", str, required=False),)),
            Command("shutdown", self.shutdown, stops=True),
        ]
        return {command.name: command for command in table}

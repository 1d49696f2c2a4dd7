"""A lab: one emulated NIC, one booted guest with the driver loaded, the agent connected.

Concepts: ``Lab`` starts the pieces in the order they depend on each other (device
server, driver build, QEMU in agent mode, the guest agent's hello) and stops them in
reverse, each bounded, always.  It offers the three views of every vector (guest driver,
QEMU's table, device counters) as one ``routing.Snapshot``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from images.image import Image

from . import qemu_view, routing
from .device_server import DeviceServer
from .errors import GuestAgentError, WaitTimeout
from .jsonlines import JsonLinesClient
from .kernel.under_test import KernelUnderTest, as_kernel, require_dynamic_msix
from .kmod import ensure_kmod
from .machine import Machine, tail
from .session import RunDirs, guest_spec

log = logging.getLogger(__name__)


class Lab:
    def __init__(self, image: Image, kernel: KernelUnderTest | str, dirs: RunDirs, *,
                 accel: str = "tcg", vectors: int = 64, cpus: int = 2,
                 trace: tuple[str, ...] = (), qemu: list[str] | None = None):
        self.image, self.dirs = image, dirs
        self.kernel = as_kernel(image, kernel)
        self.flavor = self.kernel.flavor or self.kernel.label
        self.qemu = qemu
        self.accel, self.vectors, self.cpus, self.trace = accel, vectors, cpus, trace
        self.device = DeviceServer.for_run(dirs, vectors)
        self.machine: Machine | None = None
        self.agent_client = JsonLinesClient(dirs.runtime / "agent.sock", "guest-agent")
        self.hello: dict = {}
        self.apic_map = routing.ApicMap.identity()
        self._bars: dict[int, int] | None = None
        self.timings: dict[str, float] = {}

    # --- bring-up and tear-down ---------------------------------------------------------
    def start(self, boot_timeout: float = 180.0) -> None:
        t0 = time.monotonic()
        self.kernel.check_supported()
        kmod_dir = ensure_kmod(self.image, self.kernel, run_dir=self.dirs.results)
        self.timings["kmod_build_s"] = time.monotonic() - t0
        self.device.start()
        spec = guest_spec(self.image, self.kernel, self.dirs, mode="agent", accel=self.accel,
                          qemu=self.qemu, cpus=self.cpus, nic_sockets=(self.device.socket_path,),
                          kmod_dir=kmod_dir, agent=True, trace=self.trace)
        self.machine = Machine(spec, self.dirs.results / "qemu.log")
        self.machine.launch()
        self.agent_client.connect(timeout=10)
        deadline = time.monotonic() + boot_timeout
        while True:
            try:
                self.hello = self.agent_client.wait_event("hello", timeout=2)
                break
            except WaitTimeout:
                if not self.machine.is_running():
                    raise self.machine.died("waiting for the guest agent's hello") from None
                if time.monotonic() > deadline:
                    raise WaitTimeout("the guest agent's hello", boot_timeout,
                                      "console:\n" + tail(self.machine.spec.console_log, 10)) from None
        self.timings["boot_to_agent_s"] = self.machine.elapsed()
        if self.hello.get("device") is None:
            raise GuestAgentError("hello", self.hello.get("device_error") or
                                  {"message": "the guest agent found no msixlab device"})
        require_dynamic_msix(self.hello)

    def stop(self) -> None:
        try:
            if self.machine is not None and self.machine.is_running():
                try:
                    self.agent("shutdown", timeout=5)
                except Exception as err:   # the guest may already be gone
                    log.info("agent shutdown: %s", err)
                self.machine.shutdown(grace=20)
            elif self.machine is not None:
                self.machine.shutdown(grace=0)
        finally:
            self.agent_client.close()
            self.device.stop()

    def __enter__(self) -> "Lab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- talking to the guest -----------------------------------------------------------
    def agent(self, cmd: str, timeout: float = 30.0, **args):
        reply = self.agent_client.request({"cmd": cmd, "args": args}, timeout)
        if not reply.get("ok"):
            raise GuestAgentError(cmd, reply.get("error", {}))
        return reply["result"]

    # --- the three views ----------------------------------------------------------------
    def qemu_table(self) -> dict[int, dict]:
        msix = self.device.state()["msix"]
        if self._bars is None:
            self._bars = qemu_view.find_nic_bars(self.machine.qmp("query-pci"))
        base = self._bars[msix["table_bar"]] + msix["table_offset"]
        return qemu_view.read_table(self.machine, base, msix["table_size"])

    def snapshot(self) -> routing.Snapshot:
        guest = self.agent("routing")
        device = self.device.state()["vectors"]
        return routing.build_snapshot(guest=guest, qemu=self.qemu_table(), device=device,
                                      apic_map=self.apic_map)

    def save(self, name: str, content: str) -> Path:
        path = self.dirs.results / name
        path.write_text(content)
        return path

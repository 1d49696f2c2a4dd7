"""The guest agent's power management commands: runtime D3hot of the NIC, system sleep.

Concepts: *runtime PM* of the selected NIC goes through its sysfs ``power/control``:
``auto`` lets the kernel suspend it once its driver is idle (the PCI core then saves its
state and puts it in D3hot), ``on`` resumes it (D3hot -> D0, the state restored);
``runtime_pm`` writes one and waits, bounded, for ``power/runtime_status`` to follow.
*System sleep* writes ``mem`` (S3, with ``deep`` written to ``mem_sleep`` first) or
``freeze`` (suspend-to-idle) to ``/sys/power/state``.  That write returns only after the
guest resumed, and everything the agent does stops meanwhile (user space is frozen), so
``system_sleep`` hands it to a child process, which waits ``delay_ms`` first (time for
this reply to leave), and ``sleep_result`` collects how it ended once the host woke the
guest.  The host must not talk to the agent before the guest is all back: a request
that reaches the virtio-serial port while QEMU's wake-up reset has turned its bus
mastering off, before the guest's resume restores it, raises an interrupt QEMU drops,
and the agent never reads it.  So the child, once the write returned (every device
resumed, tasks thawed), prints ``MSIXLAB-RESUMED: seq=N state=S errno=E`` on the console
(``/dev/console``), which the host waits for.  The host wakes S3 through QMP ``system_wakeup``; suspend-to-idle needs a wake
source QEMU can fire: the keyboard (QMP ``send-key``), whose serio port ``system_sleep``
makes a wakeup source for the sleep (``sleep_result`` puts the setting back).
``sleep_states`` says what the kernel offers and whether that wake source exists;
``pm_stats`` reads the driver's power management counters.
"""

from __future__ import annotations

import errno
import json
import os
import time

from msixlab_common.deadline import wait_until
from msixlab_common.errors import WaitTimeout

from .errors import GuestError, RequestError
from .protocol import Arg, Command
from .sysview import write_sysfs

SLEEP_STATES = ("mem", "freeze")
RUNTIME_CONTROLS = ("auto", "on")
KEYBOARD_WAKEUP = "sys/bus/serio/devices/serio0/power/wakeup"
SUSPEND_STATS = ("success", "fail", "last_failed_dev", "last_failed_errno",
                 "last_failed_step")
MAX_DELAY_MS = 5000
RESUMED_MARKER = "MSIXLAB-RESUMED"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None



def device_power(root: str, bdf: str) -> dict[str, object]:
    """The runtime PM view of PCI device ``bdf``: ``control``, ``runtime_status``, the
    milliseconds spent runtime-suspended and active, and the kernel's idea of its power
    state (``power_state``: D0, D3hot ...); a file that is missing reads null."""
    device = os.path.join(root, "sys/bus/pci/devices", bdf)
    ms = {k: _read(os.path.join(device, "power", f"runtime_{k}_time"))
          for k in ("suspended", "active")}
    return {"bdf": bdf, "control": _read(os.path.join(device, "power/control")),
            "runtime_status": _read(os.path.join(device, "power/runtime_status")),
            "runtime_suspended_ms": int(ms["suspended"]) if ms["suspended"] else None,
            "runtime_active_ms": int(ms["active"]) if ms["active"] else None,
            "power_state": _read(os.path.join(device, "power_state"))}


def sleep_states(root: str) -> dict[str, object]:
    """What the kernel offers: the states of /sys/power/state, the variants of
    /sys/power/mem_sleep (the chosen one in brackets), whether S3 (``deep``) is among
    them, and whether the keyboard that wakes a suspend-to-idle guest is there."""
    states = (_read(os.path.join(root, "sys/power/state")) or "").split()
    mem_sleep = (_read(os.path.join(root, "sys/power/mem_sleep")) or "").split()
    return {"states": states, "mem_sleep": mem_sleep,
            "s3": "mem" in states and any(v.strip("[]") == "deep" for v in mem_sleep),
            "s2idle": "freeze" in states,
            "keyboard_wakeup": _read(os.path.join(root, KEYBOARD_WAKEUP))}


def suspend_stats(root: str) -> dict[str, object]:
    """The kernel's /sys/power/suspend_stats (numbers as ints), and the IRQ that woke
    it last (``pm_wakeup_irq``; null when none or unreadable)."""
    out: dict[str, object] = {}
    for name in SUSPEND_STATS:
        value = _read(os.path.join(root, "sys/power/suspend_stats", name))
        out[name] = int(value) if value is not None and value.lstrip("-").isdigit() else value
    irq = _read(os.path.join(root, "sys/power/pm_wakeup_irq"))
    out["pm_wakeup_irq"] = int(irq) if irq and irq.isdigit() else None
    return out


def _sleep_child(path: str, state: str, delay_ms: int, report: int, console: str,
                 seq: int) -> None:
    """The child's whole life: wait ``delay_ms``, write ``state`` to ``path`` (this is the
    sleep), print the resumed marker (sleep number ``seq``) on ``console``, write one JSON
    line of how it went to the pipe ``report``, exit."""
    time.sleep(delay_ms / 1000.0)
    result: dict[str, object] = {"errno": 0, "message": ""}
    started = (time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME))
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(state)
    except OSError as err:
        result = {"errno": err.errno or errno.EIO, "message": err.strerror or str(err)}
    result["monotonic_s"] = round(time.monotonic() - started[0], 3)
    result["boottime_s"] = round(time.clock_gettime(time.CLOCK_BOOTTIME) - started[1], 3)
    try:
        with open(console, "w", encoding="ascii") as f:
            f.write(f"\n{RESUMED_MARKER}: seq={seq} state={state} errno={result['errno']}\n")
    except OSError as err:           # the host then says it never saw the guest back
        result["console_error"] = err.strerror or str(err)
    os.write(report, json.dumps(result).encode() + b"\n")


class PowerCommands:
    """The agent's power management commands (see the module's docstring)."""

    def __init__(self, agent):
        self.agent = agent
        self.root = agent.root
        self.child: dict | None = None      # the sleeping child: pid, pipe, state, ...
        self.state_file = os.path.join(self.root, "sys/power/state")   # what the child writes
        self.console = os.path.join(self.root, "dev/console")           # where it says so
        self.sleeps = 0                     # sleeps started: the marker's seq

    def _bdf(self, command: str) -> str:
        bdf = self.agent._bdf()
        if bdf is None:
            raise GuestError(errno.ENODEV, f"{command}: no NIC selected "
                             f"({self.agent.device_error})")
        return bdf

    def pm_stats(self) -> dict[str, object]:
        """``pm_stats``: the driver's power management counters (``Driver.pm_stats``); the
        ioctl resumes a runtime-suspended NIC first."""
        return self.agent._need_driver().pm_stats()

    def runtime_pm(self, control: str, timeout_s: int) -> dict[str, object]:
        """``runtime_pm``: write ``control`` (``auto`` or ``on``) to the selected NIC's
        power/control and wait, at most ``timeout_s``, for runtime_status to become
        ``suspended`` (auto) or ``active`` (on); returns the device's power view then and
        the seconds it took.  ETIMEDOUT when the status does not follow; ENOTSUP without
        runtime PM (no power/control file)."""
        if control not in RUNTIME_CONTROLS:
            raise RequestError(errno.EINVAL, f"runtime_pm: argument 'control' must be one of "
                               f"{list(RUNTIME_CONTROLS)}, got {control!r}",
                               command="runtime_pm", argument="control")
        bdf = self._bdf("runtime_pm")
        path = os.path.join(self.root, "sys/bus/pci/devices", bdf, "power/control")
        if not os.path.exists(path):
            raise GuestError(errno.ENOTSUP, f"runtime_pm: {path} is missing: the kernel has "
                             "no runtime PM (CONFIG_PM)")
        want = "suspended" if control == "auto" else "active"
        started = time.monotonic()
        write_sysfs(path, control)
        try:
            wait_until(lambda: device_power(self.root, bdf)["runtime_status"] == want,
                       float(timeout_s), f"{bdf}'s runtime_status to become {want}",
                       interval=0.02)
        except WaitTimeout as err:
            raise GuestError(errno.ETIMEDOUT, f"runtime_pm: {bdf} is still "
                             f"{device_power(self.root, bdf)['runtime_status']} after "
                             f"{timeout_s} s with control {control} (waited for {want})",
                             power=device_power(self.root, bdf)) from err
        return {**device_power(self.root, bdf),
                "seconds": round(time.monotonic() - started, 3)}

    def sleep_states(self) -> dict[str, object]:
        """``sleep_states``: what the kernel offers (``sleep_states()``)."""
        return sleep_states(self.root)

    def system_sleep(self, state: str, delay_ms: int) -> dict[str, object]:
        """``system_sleep``: put the guest to sleep in ``state`` (``mem``: S3, ``deep``
        written to mem_sleep first; ``freeze``: suspend-to-idle, the keyboard made a
        wakeup source) from a child process that writes it to /sys/power/state after
        ``delay_ms``; returns at once, with the ``seq`` its console marker will carry.
        ENOTSUP when the kernel does not offer the
        state (or, for freeze, there is no keyboard to wake it), EBUSY while a sleep
        is not collected yet (``sleep_result``)."""
        if state not in SLEEP_STATES:
            raise RequestError(errno.EINVAL, f"system_sleep: argument 'state' must be one "
                               f"of {list(SLEEP_STATES)}, got {state!r}",
                               command="system_sleep", argument="state")
        if self.child is not None:
            raise GuestError(errno.EBUSY, f"system_sleep: the {self.child['state']} sleep "
                             f"(pid {self.child['pid']}) is not collected yet")
        offered = sleep_states(self.root)
        restore = self._prepare(state, offered)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:                                  # the child: sleep, report, exit
            code = 0
            try:
                os.close(read_end)
                _sleep_child(self.state_file, state, delay_ms, write_end, self.console,
                             self.sleeps + 1)
            except BaseException:                     # noqa: BLE001 - never back to the agent
                code = 1
            os._exit(code)
        os.close(write_end)
        self.sleeps += 1
        self.child = {"pid": pid, "pipe": read_end, "state": state, "restore": restore,
                      "started": time.monotonic()}
        return {"state": state, "pid": pid, "delay_ms": delay_ms, "seq": self.sleeps,
                "offered": offered}

    def _prepare(self, state: str, offered: dict) -> tuple[str, str] | None:
        """Make ``state`` the sleep /sys/power/state will enter; returns the (path, value)
        to put back afterwards, if any."""
        if state == "mem":
            if not offered["s3"]:
                raise GuestError(errno.ENOTSUP, f"system_sleep: the kernel offers no S3 "
                                 f"(state {offered['states']}, mem_sleep "
                                 f"{offered['mem_sleep']})")
            write_sysfs(os.path.join(self.root, "sys/power/mem_sleep"), "deep")
            return None
        if not offered["s2idle"]:
            raise GuestError(errno.ENOTSUP, f"system_sleep: the kernel offers no "
                             f"suspend-to-idle (state {offered['states']})")
        if offered["keyboard_wakeup"] is None:
            raise GuestError(errno.ENOTSUP, "system_sleep: no keyboard (serio0) to wake a "
                             "suspend-to-idle guest with")
        path = os.path.join(self.root, KEYBOARD_WAKEUP)
        write_sysfs(path, "enabled")
        return path, offered["keyboard_wakeup"]

    def sleep_result(self, timeout_s: int) -> dict[str, object]:
        """``sleep_result``: wait, at most ``timeout_s``, for the sleeping child to end and
        return how the write went (``errno`` 0: the guest slept and resumed; the seconds
        it took on the monotonic clock and on the boot-time clock, which counts the
        sleep), with the kernel's suspend_stats; the keyboard's wakeup setting is put
        back.  EINVAL when no sleep was started, ETIMEDOUT when the child is still in it."""
        child = self.child
        if child is None:
            raise GuestError(errno.EINVAL, "sleep_result: no sleep was started")
        try:
            wait_until(lambda: os.waitpid(child["pid"], os.WNOHANG)[0] or None,
                       float(timeout_s), f"the {child['state']} sleep to end", interval=0.02)
        except WaitTimeout as err:
            raise GuestError(errno.ETIMEDOUT, f"sleep_result: the {child['state']} sleep "
                             f"(pid {child['pid']}) has not ended after {timeout_s} s") from err
        self.child = None
        with os.fdopen(child["pipe"], "rb") as pipe:
            line = pipe.readline()
        if child["restore"] is not None:
            write_sysfs(*child["restore"])
        try:
            result = json.loads(line)
        except ValueError:
            result = {"errno": errno.EIO, "message": f"the sleeping child reported {line!r}"}
        return {"state": child["state"], **result, "stats": suspend_stats(self.root),
                "waited_s": round(time.monotonic() - child["started"], 3)}

    def commands(self) -> list[Command]:
        """The power management commands for the agent's table."""
        return [
            Command("pm_stats", self.pm_stats),
            Command("runtime_pm", self.runtime_pm, (
                Arg("control", str),
                Arg("timeout_s", int, required=False, default=10, minimum=1, maximum=600))),
            Command("sleep_states", self.sleep_states),
            Command("system_sleep", self.system_sleep, (
                Arg("state", str),
                Arg("delay_ms", int, required=False, default=300, minimum=0,
                    maximum=MAX_DELAY_MS))),
            Command("sleep_result", self.sleep_result, (
                Arg("timeout_s", int, required=False, default=30, minimum=1, maximum=600),)),
        ]

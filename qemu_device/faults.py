# Concepts: fault injection. A Fault is armed through the control channel and fires on a
# hook point: the raise path of one vector (or any vector) or the handling of one
# vfio-user command. Each fault fires `count` times (0 = until cleared), then disarms.
# Kinds: drop_raise (the raise is counted, then lost: no eventfd write, no PBA bit),
# delay_raise (delivered or made pending after delay_ms, via the server's timer),
# errno_reply (the next matching command is answered with that errno, unprocessed), and
# raise_on_disable (when the client disables every MSI-X vector, SET_IRQS count 0, the
# vector is raised inside that window: it must be held and delivered once when its
# eventfd comes back, e.g. in QEMU's NORESIZE re-enable).
"""Fault injection hooks."""

from __future__ import annotations

import enum
import errno as _errno
import itertools
from dataclasses import asdict, dataclass

from .errors import ControlError
from .protocol import Command


class FaultKind(enum.Enum):
    DROP_RAISE = "drop_raise"
    DELAY_RAISE = "delay_raise"
    ERRNO_REPLY = "errno_reply"
    RAISE_ON_DISABLE = "raise_on_disable"


_RAISE_KINDS = frozenset({FaultKind.DROP_RAISE, FaultKind.DELAY_RAISE})


@dataclass
class Fault:
    id: int
    kind: FaultKind
    vector: int | None = None        # raise faults: None = any vector
    command: int | None = None       # errno_reply: vfio-user command number
    errno: int = 0
    delay_ms: int = 0
    count: int = 1                   # remaining firings; 0 = unlimited
    fired: int = 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind.value
        if self.command is not None:
            d["command"] = Command(self.command).short
        return d


def _parse_command(value) -> int:
    if isinstance(value, int):
        return int(Command(value))
    name = str(value).upper()
    if not name.startswith("VFIO_USER_"):
        name = "VFIO_USER_" + name
    return int(Command[name])


def _parse_errno(value) -> int:
    if isinstance(value, str):
        if not hasattr(_errno, value):
            raise ControlError(f"unknown errno name {value!r}")
        return getattr(_errno, value)
    if not isinstance(value, int) or value <= 0:
        raise ControlError(f"errno must be a positive integer or a name, not {value!r}")
    return value


class FaultTable:
    """Armed faults and the hook points that consume them."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self.any_raise = False       # hot-path shortcut: is any raise fault armed?
        self.any_command = False

    def add(self, spec: dict) -> Fault:
        try:
            kind = FaultKind(spec["kind"])
            count = int(spec.get("count", 1))
            if count < 0:
                raise ValueError("count must be >= 0")
            fault = Fault(next(self._ids), kind, count=count)
            if kind is FaultKind.ERRNO_REPLY:
                fault.command = _parse_command(spec["command"])
                fault.errno = _parse_errno(spec.get("errno", "EIO"))
            elif kind is FaultKind.RAISE_ON_DISABLE:
                fault.vector = int(spec["vector"])
                if fault.vector < 0:
                    raise ValueError("vector must be >= 0")
            else:
                vec = spec.get("vector")
                fault.vector = None if vec is None else int(vec)
                if kind is FaultKind.DELAY_RAISE:
                    fault.delay_ms = int(spec.get("delay_ms", 100))
                    if fault.delay_ms < 0:
                        raise ValueError("delay_ms must be >= 0")
        except (KeyError, ValueError, TypeError) as err:
            raise ControlError(f"bad fault spec {spec!r}: {err}") from err
        self._faults.append(fault)
        self._refresh()
        return fault

    def clear(self, fault_id: int | None = None) -> int:
        before = len(self._faults)
        self._faults = [f for f in self._faults if fault_id is not None and f.id != fault_id]
        self._refresh()
        return before - len(self._faults)

    def list(self) -> list[dict]:
        return [f.to_json() for f in self._faults]

    def _refresh(self) -> None:
        self.any_raise = any(f.kind in _RAISE_KINDS for f in self._faults)
        self.any_command = any(f.kind is FaultKind.ERRNO_REPLY for f in self._faults)

    def _fire(self, fault: Fault) -> Fault:
        fault.fired += 1
        if fault.count:
            fault.count -= 1
            if fault.count == 0:
                self._faults.remove(fault)
                self._refresh()
        return fault

    def on_raise(self, vector: int) -> Fault | None:
        """The raise fault that applies to this raise of `vector`, consumed, or None."""
        for f in self._faults:
            if f.kind in _RAISE_KINDS and f.vector in (None, vector):
                return self._fire(f)
        return None

    def on_irq_disable(self) -> list[int]:
        """Vectors to raise now that the client disabled every MSI-X vector."""
        hits = [f for f in self._faults if f.kind is FaultKind.RAISE_ON_DISABLE]
        return [self._fire(f).vector for f in hits]

    def on_command(self, command: int) -> int | None:
        """errno to answer this command with, or None."""
        for f in self._faults:
            if f.kind is FaultKind.ERRNO_REPLY and f.command == command:
                return self._fire(f).errno
        return None

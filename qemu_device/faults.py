"""Fault injection hooks.

Concepts: fault injection. A Fault is armed through the control channel and fires on a
hook point: the raise path of one vector (or any vector) or the handling of one
vfio-user command. Each fault fires `count` times (0 = until cleared), then disarms.
Kinds: drop_raise (the raise is counted, then lost: no eventfd write, no PBA bit),
delay_raise (delivered or made pending after delay_ms, via the server's timer),
errno_reply (the next matching command is answered with that errno, unprocessed), and
raise_on_disable (when the client disables every MSI-X vector, SET_IRQS count 0, the
vector is raised inside that window: it must be held and delivered once when its
eventfd comes back, e.g. in QEMU's NORESIZE re-enable), and raise_on_reset (right after
a function reset, DEVICE_RESET, FLR or D3hot -> D0, the vector is raised inside the reset
window, with MSI-X still off: it must be held and delivered once when the guest restores
MSI-X; ``skip`` lets that many resets pass first, for a transition that resets the
function more than once, as QEMU's S3 wake-up does: its pre-reset D0 write, then
DEVICE_RESET).
A spec is checked field by field (type, range, a real errno, a known command); at most
MAX_FAULTS are armed at once and a delay is at most MAX_DELAY_MS.
"""

from __future__ import annotations

import enum
import errno as _errno
import itertools
from dataclasses import asdict, dataclass

from .errors import ControlError, FieldError
from .protocol import Command
from .validate import check_fields, errno_value, integer, optional


class FaultKind(enum.Enum):
    """The kinds of fault that can be armed (see the module docstring for each)."""
    DROP_RAISE = "drop_raise"
    DELAY_RAISE = "delay_raise"
    ERRNO_REPLY = "errno_reply"
    RAISE_ON_DISABLE = "raise_on_disable"
    RAISE_ON_RESET = "raise_on_reset"


_RAISE_KINDS = frozenset({FaultKind.DROP_RAISE, FaultKind.DELAY_RAISE})


@dataclass
class Fault:
    """One armed fault: its ``id``, ``kind``, the vector it watches (raise faults; ``None`` for
    any), the command it answers (errno_reply) with ``errno``, ``delay_ms`` (delay_raise),
    ``count`` firings left (0 = until cleared), the resets raise_on_reset lets pass first
    (``skip``) and how many times it has ``fired``."""
    id: int
    kind: FaultKind
    vector: int | None = None        # raise faults: None = any vector
    command: int | None = None       # errno_reply: vfio-user command number
    errno: int = 0
    delay_ms: int = 0
    count: int = 1                   # remaining firings; 0 = unlimited
    skip: int = 0                    # raise_on_reset: resets to let pass first
    fired: int = 0

    def to_json(self) -> dict:
        """The fault for the control channel: its fields, kind by name, command by short name."""
        d = asdict(self)
        d["kind"] = self.kind.value
        if self.command is not None:
            d["command"] = Command(self.command).short
        return d


#: Bounds of a fault spec: a delay the server's timers can always represent, a count and
#: a number of armed faults that keep the fault table small.
MAX_DELAY_MS = 600_000
MAX_COUNT = 1_000_000
MAX_FAULTS = 256
MAX_VECTOR = 65535
MAX_SKIP = 16


def _command(field: str, value) -> int:
    """A vfio-user command: its number, or its name with or without VFIO_USER_."""
    if type(value) is int:
        try:
            return int(Command(value))
        except ValueError:
            pass
    elif type(value) is str and len(value) <= 64:
        name = value.upper()
        if not name.startswith("VFIO_USER_"):
            name = "VFIO_USER_" + name
        if name in Command.__members__:
            return int(Command[name])
    known = ", ".join(c.short for c in Command)
    raise FieldError(field, f"{field!r} must be a vfio-user command ({known}), "
                     f"not {value!r:.60}")


_VECTOR = optional(integer(0, MAX_VECTOR))
_COUNT = integer(0, MAX_COUNT)
#: Fields each kind takes (besides "kind").
_SPECS = {
    FaultKind.DROP_RAISE: {"vector": _VECTOR, "count": _COUNT},
    FaultKind.DELAY_RAISE: {"vector": _VECTOR, "count": _COUNT,
                            "delay_ms": integer(0, MAX_DELAY_MS)},
    FaultKind.ERRNO_REPLY: {"command": _command, "errno": errno_value, "count": _COUNT},
    FaultKind.RAISE_ON_DISABLE: {"vector": _VECTOR, "count": _COUNT},
    FaultKind.RAISE_ON_RESET: {"vector": _VECTOR, "count": _COUNT,
                               "skip": integer(0, MAX_SKIP)},
}
_REQUIRED = {FaultKind.ERRNO_REPLY: ("command",), FaultKind.RAISE_ON_DISABLE: ("vector",),
             FaultKind.RAISE_ON_RESET: ("vector",)}


def parse_kind(value) -> FaultKind:
    """The ``FaultKind`` named ``value``; anything else raises ``FieldError`` on ``kind``
    listing the kinds."""
    try:
        return FaultKind(value)
    except (ValueError, TypeError):
        kinds = ", ".join(k.value for k in FaultKind)
        raise FieldError("kind", f"'kind' must be one of {kinds}, not {value!r:.60}") \
            from None


class FaultTable:
    """Armed faults and the hook points that consume them."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self.any_raise = False       # hot-path shortcut: is any raise fault armed?
        self.any_command = False

    def add(self, spec: dict) -> Fault:
        """Arm a fault from its spec (``kind`` plus that kind's fields, each checked for
        type and range); raises FieldError or ControlError naming what is wrong."""
        if not isinstance(spec, dict):
            raise ControlError(f"a fault spec must be an object, not {spec!r:.60}")
        kind = parse_kind(spec.get("kind"))
        rest = {k: v for k, v in spec.items() if k != "kind"}
        fields = check_fields(f"fault {kind.value}", rest, _SPECS[kind],
                              _REQUIRED.get(kind, ()))
        if len(self._faults) >= MAX_FAULTS:
            raise ControlError(f"{MAX_FAULTS} faults are armed already; clear some first",
                               errno=_errno.ENOSPC)
        fault = Fault(next(self._ids), kind, count=fields.get("count", 1))
        if kind is FaultKind.ERRNO_REPLY:
            fault.command = fields["command"]
            fault.errno = fields.get("errno") or _errno.EIO
        else:                      # the raise kinds, raise_on_disable/_reset included
            fault.vector = fields.get("vector")
            fault.skip = fields.get("skip", 0)
            if kind is FaultKind.DELAY_RAISE:
                fault.delay_ms = fields.get("delay_ms", 100)
        self._faults.append(fault)
        self._refresh()
        return fault

    def clear(self, fault_id: int | None = None) -> int:
        """Disarm the fault ``fault_id``, or every fault when it is ``None``; return how many
        were disarmed."""
        before = len(self._faults)
        self._faults = [f for f in self._faults if fault_id is not None and f.id != fault_id]
        self._refresh()
        return before - len(self._faults)

    def list(self) -> list[dict]:
        """The armed faults, as ``Fault.to_json`` dicts, in the order they were armed."""
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

    def on_reset(self) -> list[int]:
        """Vectors to raise now, right after a function reset (a fault still skipping
        resets counts this one down instead)."""
        ready = []
        for f in [f for f in self._faults if f.kind is FaultKind.RAISE_ON_RESET]:
            if f.skip:
                f.skip -= 1
            else:
                ready.append(f)
        return [self._fire(f).vector for f in ready]

    def on_command(self, command: int) -> int | None:
        """errno to answer this command with, or None."""
        for f in self._faults:
            if f.kind is FaultKind.ERRNO_REPLY and f.command == command:
                return self._fire(f).errno
        return None

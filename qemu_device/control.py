"""Control channel protocol and commands.

Concepts: the control channel speaks JSON lines over a UNIX socket, framed and decoded by
the codec every msixlab peer shares (``msixlab_common.jsonlines``: lines of at most
``MAX_LINE`` bytes, nesting at most ``MAX_DEPTH``, no NaN/Infinity).  Each request is
``{"id": N, "cmd": NAME, ...fields}``; each reply ``{"id": N, "ok": true, "result": ...}``
or ``{"id": N, "ok": false, "error": {"type", "message", "errno", "code"[, "field"]}}``.
A line that cannot be read (too long, not JSON, too deep, a bad id) gets exactly one error
reply with ``"id": null``; the rest of an over-long line is skipped, never run.

One table maps the command name to its handler and to the fields it takes, each with a
typed, bounded check (``validate``): a request is fully checked before its handler runs.
A ``ControlSession`` is sans-I/O: ``feed()`` takes bytes and returns reply bytes;
subscribers get events through the ``push`` callback the server gives them.  Commands
run in the server's single loop, between vfio-user messages, so a raise can never race
an eventfd replacement.
"""

from __future__ import annotations

import errno
import logging
from typing import Callable

from msixlab_common import jsonlines

from .device.nic import Device
from .errors import ControlError, QemuDeviceError
from .eventlog import EventBus
from .validate import Check, check_fields, integer, list_of, optional, string

log = logging.getLogger(__name__)

MAX_LINE = 64 << 10           # a request is small; the largest is a raise of 4096 vectors
MAX_DEPTH = 8
MAX_RAISE_VECTORS = 4096
MAX_VECTOR = 65535            # beyond any table: such a raise is counted as out_of_range
MAX_EVENT_KINDS = 64

_VECTOR = integer(0, MAX_VECTOR)
_NONE: dict[str, Check] = {}


class ControlContext:
    """What control commands may touch: the device, the event bus, server facts."""

    def __init__(self, device: Device, bus: EventBus,
                 server_state: Callable[[], dict] = dict) -> None:
        self.device = device
        self.bus = bus
        self.server_state = server_state


class ControlSession:
    """One control client: bytes in, reply bytes out."""

    def __init__(self, ctx: ControlContext, key: int, push: Callable[[bytes], None]) -> None:
        self.ctx = ctx
        self.key = key
        self.push = push
        self.framer = jsonlines.LineFramer(MAX_LINE)
        self.subscribed = False
        #: name -> (handler, fields it takes with their checks)
        self._table: dict[str, tuple[Callable[[dict], object], dict[str, Check]]] = {
            "state": (self._state, _NONE),
            "raise": (self._raise, {"vectors": list_of(_VECTOR, MAX_RAISE_VECTORS),
                                    "vector": _VECTOR}),
            "reset_counters": (self._reset, _NONE),
            "subscribe": (self._subscribe,
                          {"events": optional(list_of(string(64), MAX_EVENT_KINDS, 0))}),
            "unsubscribe": (self._unsubscribe, _NONE),
            "fault": (self._fault, None),          # checked by the fault table
            "faults": (self._faults, _NONE),
            "clear_faults": (self._clear, {"fault": optional(integer(1, jsonlines.MAX_ID))}),
            "ping": (self._ping, _NONE),
        }

    def feed(self, data: bytes) -> bytes:
        """Bytes from the client; the replies to every complete line, in order."""
        out = []
        for item in self.framer.feed(data):
            if isinstance(item, jsonlines.JsonLinesError):
                out.append(self._error_line(None, ControlError(item.message,
                                                               errno=item.errno)))
            else:
                out.append(self.handle_line(item))
        return b"".join(out)

    def handle_line(self, line: bytes) -> bytes:
        """The reply line to one request line; never raises."""
        req_id = None
        try:
            try:
                req = jsonlines.loads_object(line, max_depth=MAX_DEPTH)
            except jsonlines.JsonLinesError as err:
                raise ControlError(f"request {err.message}", errno=err.errno) from err
            try:
                req_id = jsonlines.check_id(req.get("id"), required=False)
            except jsonlines.JsonLinesError as err:
                raise ControlError(err.message, errno=err.errno) from err
            result = self._dispatch(req)
            self._note(req)
            return _line({"id": req_id, "ok": True, "result": result})
        except QemuDeviceError as err:
            return self._error_line(req_id, err)
        except Exception as err:            # a bug must cost the request, not the server
            log.exception("control request %r: internal error", req_id)
            return self._error_line(req_id, ControlError(f"internal error: {err!r}",
                                                         errno=errno.EIO))

    def _dispatch(self, req: dict):
        cmd = req.get("cmd")
        entry = self._table.get(cmd) if isinstance(cmd, str) else None
        if entry is None:
            raise ControlError(f"unknown command {cmd!r:.60}; known: {sorted(self._table)}",
                               errno=errno.ENOSYS)
        handler, spec = entry
        fields = {k: v for k, v in req.items() if k not in ("id", "cmd")}
        if spec is not None:
            fields = check_fields(cmd, fields, spec)
        return handler(fields)

    def _note(self, req: dict) -> None:
        if self.ctx.bus.active and req.get("cmd") not in ("state", "ping"):
            self.ctx.bus.emit({"event": "control", **{k: v for k, v in req.items()
                                                      if k != "id"}})

    @staticmethod
    def _error_line(req_id, err: QemuDeviceError) -> bytes:
        error = {"type": type(err).__name__, "message": err.message, "errno": err.errno,
                 "code": err.code}
        if getattr(err, "field", None) is not None:
            error["field"] = err.field
        return _line({"id": req_id, "ok": False, "error": error})

    def close(self) -> None:
        """End the session: drop its event subscription, if any.  Safe to call twice."""
        if self.subscribed:
            self.ctx.bus.unsubscribe(self.key)
            self.subscribed = False

    # -- commands (fields already checked) ------------------------------------------------
    def _state(self, fields: dict) -> dict:
        return {**self.ctx.device.state(), **self.ctx.server_state()}

    def _raise(self, fields: dict) -> dict:
        if ("vector" in fields) == ("vectors" in fields):
            raise ControlError("raise needs 'vectors': [i, ...] or 'vector': i (one of them)")
        vectors = fields["vectors"] if "vectors" in fields else [fields["vector"]]
        msix = self.ctx.device.msix
        return {"results": [{"vector": v, "outcome": msix.raise_vector(v, "control").value}
                            for v in vectors]}

    def _reset(self, fields: dict) -> dict:
        self.ctx.device.msix.reset_counters()
        self.ctx.device.regs.irq_total = 0
        return {}

    def _subscribe(self, fields: dict) -> dict:
        kinds = fields.get("events")
        wanted = set(kinds) if kinds else None

        def listener(ev: dict) -> None:
            if wanted is None or ev.get("event") in wanted:
                self.push(_line(ev))

        self.ctx.bus.subscribe(self.key, listener)
        self.subscribed = True
        return {"subscribed": sorted(wanted) if wanted else "all"}

    def _unsubscribe(self, fields: dict) -> dict:
        self.close()
        return {}

    def _fault(self, fields: dict) -> dict:
        return self.ctx.device.faults.add(fields).to_json()

    def _faults(self, fields: dict) -> list:
        return self.ctx.device.faults.list()

    def _clear(self, fields: dict) -> dict:
        fault = fields.get("fault")
        cancelled = self.ctx.device.msix.cancel_delayed(fault)
        return {"cleared": self.ctx.device.faults.clear(fault), "cancelled": cancelled}

    def _ping(self, fields: dict) -> dict:
        return {"pong": True}


def _line(obj) -> bytes:
    try:
        return jsonlines.dumps(obj)
    except jsonlines.JsonLinesError as err:       # never send invalid JSON
        log.error("cannot encode a control line: %s", err)
        return jsonlines.dumps({"id": jsonlines.request_id(obj), "ok": False,
                                "error": {"type": "ControlError", "errno": errno.EIO,
                                          "code": "EIO", "message": f"internal error: {err}"}})

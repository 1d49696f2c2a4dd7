# Concepts: the control channel, JSON lines over a UNIX socket. Each request is
# {"id": N, "cmd": NAME, ...fields}; each reply {"id": N, "ok": true, "result": ...} or
# {"id": N, "ok": false, "error": {"type", "message", "errno"}}. One table maps the
# command name to its handler. A ControlSession is sans-I/O: feed() takes bytes and
# returns reply bytes; subscribers get events through the `push` callback the server
# gives them. Commands run in the server's single loop, between vfio-user messages, so a
# raise can never race an eventfd replacement.
"""Control channel protocol and commands."""

from __future__ import annotations

import json
import logging
from typing import Callable

from .device.nic import Device
from .errors import ControlError, QemuDeviceError
from .eventlog import EventBus

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20


class ControlContext:
    """What control commands may touch: the device, the event bus, server facts."""

    def __init__(self, device: Device, bus: EventBus,
                 server_state: Callable[[], dict] = dict) -> None:
        self.device = device
        self.bus = bus
        self.server_state = server_state


def _vectors(req: dict) -> list[int]:
    vecs = req.get("vectors", [req["vector"]] if "vector" in req else None)
    if not isinstance(vecs, list) or not vecs:
        raise ControlError("raise needs 'vectors': [i, ...] (or 'vector': i)")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vecs):
        raise ControlError(f"vectors must be integers, not {vecs!r}")
    return vecs


class ControlSession:
    """One control client."""

    def __init__(self, ctx: ControlContext, key: int, push: Callable[[bytes], None]) -> None:
        self.ctx = ctx
        self.key = key
        self.push = push
        self._buf = bytearray()
        self.subscribed = False
        self._table = {
            "state": self._state, "raise": self._raise, "reset_counters": self._reset,
            "subscribe": self._subscribe, "unsubscribe": self._unsubscribe,
            "fault": self._fault, "faults": self._faults, "clear_faults": self._clear,
            "ping": self._ping,
        }

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf.clear()
                    out.append(self._error_line(None, ControlError("line too long")))
                break
            line = bytes(self._buf[:nl])
            del self._buf[:nl + 1]
            if line.strip():
                out.append(self.handle_line(line))
        return b"".join(out)

    def handle_line(self, line: bytes) -> bytes:
        req_id = None
        try:
            try:
                req = json.loads(line)
            except ValueError as err:
                raise ControlError(f"not JSON: {err}") from err
            if not isinstance(req, dict):
                raise ControlError("request must be a JSON object")
            req_id = req.get("id")
            handler = self._table.get(req.get("cmd"))
            if handler is None:
                raise ControlError(f"unknown command {req.get('cmd')!r}; known: "
                                   f"{sorted(self._table)}")
            result = handler(req)
            self._note(req)
            return _line({"id": req_id, "ok": True, "result": result})
        except QemuDeviceError as err:
            return self._error_line(req_id, err)
        except (KeyError, TypeError, ValueError) as err:
            return self._error_line(req_id, ControlError(f"bad request: {err!r}"))

    def _note(self, req: dict) -> None:
        if self.ctx.bus.active and req.get("cmd") not in ("state", "ping"):
            self.ctx.bus.emit({"event": "control", **{k: v for k, v in req.items()
                                                      if k != "id"}})

    @staticmethod
    def _error_line(req_id, err: QemuDeviceError) -> bytes:
        return _line({"id": req_id, "ok": False,
                      "error": {"type": type(err).__name__, "message": err.message,
                                "errno": err.errno}})

    def close(self) -> None:
        if self.subscribed:
            self.ctx.bus.unsubscribe(self.key)
            self.subscribed = False

    # -- commands -----------------------------------------------------------------------
    def _state(self, req: dict) -> dict:
        return {**self.ctx.device.state(), **self.ctx.server_state()}

    def _raise(self, req: dict) -> dict:
        msix = self.ctx.device.msix
        results = [{"vector": v, "outcome": msix.raise_vector(v, "control").value}
                   for v in _vectors(req)]
        return {"results": results}

    def _reset(self, req: dict) -> dict:
        self.ctx.device.msix.reset_counters()
        self.ctx.device.regs.irq_total = 0
        return {}

    def _subscribe(self, req: dict) -> dict:
        kinds = req.get("events")
        wanted = set(kinds) if kinds else None

        def listener(ev: dict) -> None:
            if wanted is None or ev.get("event") in wanted:
                self.push(_line(ev))

        self.ctx.bus.subscribe(self.key, listener)
        self.subscribed = True
        return {"subscribed": sorted(wanted) if wanted else "all"}

    def _unsubscribe(self, req: dict) -> dict:
        self.close()
        return {}

    def _fault(self, req: dict) -> dict:
        spec = {k: v for k, v in req.items() if k not in ("id", "cmd")}
        return self.ctx.device.faults.add(spec).to_json()

    def _faults(self, req: dict) -> list:
        return self.ctx.device.faults.list()

    def _clear(self, req: dict) -> dict:
        return {"cleared": self.ctx.device.faults.clear(req.get("fault"))}

    def _ping(self, req: dict) -> dict:
        return {"pong": True}


def _line(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

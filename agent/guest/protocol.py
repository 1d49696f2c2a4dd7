"""Sans-I/O core of the guest agent: JSON-line framing, validation, dispatch, replies.

Concepts: a ``Session`` is fed raw bytes (``receive_data``) and returns the bytes to
send back; it never touches a file.  Lines are framed on ``\\n`` (``LineFramer``), each
line is one request ``{"id", "cmd", "args"}``; the command table maps ``cmd`` to a
``Command`` whose ``Arg`` specs validate and default the arguments before the handler
runs.  Validate, dispatch, reply: one place each.  Every failure becomes one error reply
built by ``error_reply`` from an ``AgentError``; the session stops after a command that
asks to (``shutdown``).
"""

from __future__ import annotations

import errno
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import AgentError, GuestError, RequestError

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20

_MISSING = object()


@dataclass(frozen=True)
class Arg:
    """One command argument: its type, whether it is required, its default and range."""

    name: str
    type: type
    required: bool = True
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None

    def check(self, command: str, value: Any) -> Any:
        if value is _MISSING or value is None:
            if self.required:
                raise RequestError(errno.EINVAL, f"{command}: missing argument {self.name!r}",
                                   command=command, argument=self.name)
            return self.default
        # bool is an int subclass in Python: never accept one for the other
        if type(value) is not self.type:
            raise RequestError(
                errno.EINVAL,
                f"{command}: argument {self.name!r} must be {self.type.__name__}, "
                f"got {type(value).__name__} {value!r}",
                command=command, argument=self.name)
        if self.minimum is not None and value < self.minimum:
            raise RequestError(errno.EINVAL,
                               f"{command}: argument {self.name!r} must be >= {self.minimum}, "
                               f"got {value}", command=command, argument=self.name)
        if self.maximum is not None and value > self.maximum:
            raise RequestError(errno.EINVAL,
                               f"{command}: argument {self.name!r} must be <= {self.maximum}, "
                               f"got {value}", command=command, argument=self.name)
        return value


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[..., Any]
    args: tuple[Arg, ...] = ()
    stops: bool = False        # the session ends after replying

    def bind(self, raw: Any) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise RequestError(errno.EINVAL, f"{self.name}: 'args' must be an object, "
                               f"got {type(raw).__name__}", command=self.name, argument="args")
        known = {arg.name for arg in self.args}
        extra = sorted(set(raw) - known)
        if extra:
            raise RequestError(
                errno.EINVAL,
                f"{self.name}: unknown argument {extra[0]!r} "
                f"(accepted: {', '.join(sorted(known)) or 'none'})",
                command=self.name, argument=extra[0])
        return {arg.name: arg.check(self.name, raw.get(arg.name, _MISSING)) for arg in self.args}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=False).encode() + b"\n"


def ok_reply(request_id: Any, result: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error_reply(request_id: Any, err: AgentError) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": err.to_dict()}


class LineFramer:
    """Split a byte stream into lines; a line longer than MAX_LINE is dropped and reported."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | AgentError]:
        out: list[bytes | AgentError] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    if not self._discarding:
                        out.append(RequestError(errno.EMSGSIZE,
                                                f"request line longer than {self.max_line} bytes"))
                    self._discarding = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.max_line:
                out.append(RequestError(errno.EMSGSIZE,
                                        f"request line longer than {self.max_line} bytes"))
            elif line.strip():
                out.append(line)

    @property
    def pending(self) -> int:
        return len(self._buf)


def parse_request(line: bytes) -> tuple[Any, str, Any]:
    """Return (id, cmd, args) of one request line or raise RequestError (with its id)."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(errno.EBADMSG, f"request is not valid JSON: {err}") from err
    if not isinstance(message, dict):
        raise RequestError(errno.EBADMSG,
                           f"request must be a JSON object, got {type(message).__name__}")
    request_id = message.get("id")
    if "id" not in message or type(request_id) not in (int, str):
        raise RequestError(errno.EINVAL, "request needs an 'id' (integer or string)",
                           argument="id")
    cmd = message.get("cmd")
    if not isinstance(cmd, str):
        err = RequestError(errno.EINVAL, "request needs a 'cmd' string", argument="cmd")
        err.request_id = request_id
        raise err
    extra = sorted(set(message) - {"id", "cmd", "args"})
    if extra:
        err = RequestError(errno.EINVAL, f"unknown request field {extra[0]!r} "
                           "(accepted: id, cmd, args)", argument=extra[0])
        err.request_id = request_id
        raise err
    return request_id, cmd, message.get("args")


@dataclass
class Session:
    """One agent conversation: bytes in, bytes out, per the command table."""

    commands: dict[str, Command]
    framer: LineFramer = field(default_factory=LineFramer)
    stopped: bool = False

    def receive_data(self, data: bytes) -> bytes:
        out = bytearray()
        for item in self.framer.feed(data):
            if self.stopped:
                break
            if isinstance(item, AgentError):
                out += encode(error_reply(None, item))
            else:
                out += encode(self.handle_line(item))
        return bytes(out)

    def handle_line(self, line: bytes) -> dict[str, Any]:
        request_id = None
        try:
            request_id, cmd, raw_args = parse_request(line)
            command = self.commands.get(cmd)
            if command is None:
                raise RequestError(errno.ENOSYS, f"unknown command {cmd!r} "
                                   f"(known: {', '.join(sorted(self.commands))})", command=cmd)
            args = command.bind(raw_args)
            log.debug("--> %s %s %s", request_id, cmd, args)
            result = command.handler(**args)
            if command.stops:
                self.stopped = True
            return ok_reply(request_id, result)
        except AgentError as err:
            request_id = getattr(err, "request_id", request_id)
            log.debug("<-- %s error %s", request_id, err.to_dict())
            return error_reply(request_id, err)
        except Exception as err:  # a bug in a handler must not end the agent
            log.exception("request %r failed", request_id)
            return error_reply(request_id, GuestError(
                errno.EIO, f"internal error: {type(err).__name__}: {err}"))

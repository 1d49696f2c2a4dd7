"""Sans-I/O core of the guest agent: JSON-line framing, validation, dispatch, replies.

Concepts: a ``Session`` is fed raw bytes (``receive_data``) and returns the bytes to
send back; it never touches a file.  Lines are framed and decoded by the one JSON-lines
codec every peer shares (``msixlab_common.jsonlines``: bounded line length and nesting,
no NaN/Infinity, validated ids); each line is one request ``{"id", "cmd", "args"}``; the
command table maps ``cmd`` to a ``Command`` whose ``Arg`` specs validate and default the
arguments before the handler runs.  Validate, dispatch, reply: one place each.  Every failure becomes one error reply
built by ``error_reply`` from an ``AgentError``; the session stops after a command that
asks to (``shutdown``).
"""

from __future__ import annotations

import errno
import logging
from collections import namedtuple

from msixlab_common import jsonlines

from .errors import AgentError, GuestError, RequestError

log = logging.getLogger(__name__)

MAX_LINE = jsonlines.MAX_LINE

_MISSING = object()


class Arg(namedtuple("Arg", "name type required default minimum maximum",
                     defaults=(True, None, None, None))):
    """One command argument: its name, its type, whether it is required, its default and
    its range (``minimum``/``maximum``, None for no bound).

    The records here are named tuples rather than dataclasses, and no annotation names
    are imported from ``typing``: the guest starts under TCG, where importing
    ``dataclasses`` and ``typing`` costs about a fifth of a second."""

    __slots__ = ()

    def check(self, command: str, value: object) -> object:
        """``value`` checked for ``command``: a missing one is the default (or ``RequestError``
        if required); otherwise exact type and bounds, else ``RequestError`` (EINVAL) naming
        the argument."""
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


class Command(namedtuple("Command", "name handler args stops", defaults=((), False))):
    """One agent command: its ``name``, the ``handler`` called with the checked arguments
    as keywords, their ``Arg`` specs, and whether the session ``stops`` after replying."""

    __slots__ = ()

    def bind(self, raw: object) -> dict[str, object]:
        """The handler's keyword arguments from the request's ``args`` (``None`` = none): every
        spec checked and defaulted; a non-object or an unknown argument is a
        ``RequestError``."""
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


def encode(message: dict[str, object]) -> bytes:
    """One reply line.  A reply that cannot be JSON (a NaN in a result) becomes an error
    reply naming why, so the host always gets valid JSON."""
    try:
        return jsonlines.dumps(message)
    except jsonlines.JsonLinesError as err:
        log.error("reply to %r cannot be encoded: %s", message.get("id"), err)
        return jsonlines.dumps(error_reply(jsonlines.request_id(message),
                                           GuestError(errno.EIO, f"internal error: {err}")))


def ok_reply(request_id: object, result: object) -> dict[str, object]:
    """The success reply to ``request_id`` carrying ``result``."""
    return {"id": request_id, "ok": True, "result": result}


def error_reply(request_id: object, err: AgentError) -> dict[str, object]:
    """The error reply to ``request_id`` carrying ``err.to_dict()``."""
    return {"id": request_id, "ok": False, "error": err.to_dict()}


class LineFramer(jsonlines.LineFramer):
    """The shared framer (``msixlab_common.jsonlines``), its refusals as ``RequestError``:
    a line longer than ``max_line`` gives one EMSGSIZE error and is skipped to its end."""

    def __init__(self, max_line: int = MAX_LINE):
        super().__init__(max_line)

    def feed(self, data: bytes) -> list[bytes | AgentError]:
        return [RequestError(item.errno, f"request {item.message}")
                if isinstance(item, jsonlines.JsonLinesError) else item
                for item in super().feed(data)]


def parse_request(line: bytes) -> tuple[object, str, object]:
    """Return (id, cmd, args) of one request line or raise RequestError (with its id)."""
    try:
        message = jsonlines.loads_object(line)
    except jsonlines.JsonLinesError as err:
        raise RequestError(err.errno, f"request is not valid JSON: {err.message}"
                           if err.reason != jsonlines.NOT_OBJECT
                           else f"request {err.message}") from err
    if "id" not in message:
        raise RequestError(errno.EINVAL, "request needs an 'id' (integer or string)",
                           argument="id")
    try:
        request_id = jsonlines.check_id(message["id"])
    except jsonlines.JsonLinesError as err:
        raise RequestError(err.errno, f"request {err.message}", argument="id") from err
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


class Session:
    """One agent conversation: bytes in, bytes out, per the command table."""

    def __init__(self, commands: dict[str, Command], framer: LineFramer | None = None):
        self.commands = commands
        self.framer = framer if framer is not None else LineFramer()
        self.stopped = False

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes read from the host; return the encoded replies to send (one per complete
        line, an error reply with a null id for a line the framer rejects).  Lines after a
        stopping command are not run."""
        out = bytearray()
        for item in self.framer.feed(data):
            if self.stopped:
                break
            if isinstance(item, AgentError):
                out += encode(error_reply(None, item))
            else:
                out += encode(self.handle_line(item))
        return bytes(out)

    def handle_line(self, line: bytes) -> dict[str, object]:
        """The reply to one request line: parse, look the command up (ENOSYS if unknown), check
        the arguments, run the handler.  Never raises: an ``AgentError`` becomes its error
        reply and any other exception an EIO internal-error reply (logged with its
        traceback)."""
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

"""One JSON-lines codec for every msixlab peer, without I/O.

Concepts: the device server's control channel, the host agent's client, the guest agent
and the tests all speak one JSON value per ``\\n``-terminated line.  This module is the
only place that frames and decodes those lines, so every peer has the same limits:

* ``LineFramer.feed(bytes)`` returns complete lines (``bytes``) and, in order with them,
  one ``JsonLinesError`` per line it had to refuse.  A line longer than ``max_line`` gives
  exactly one error; everything up to its newline is skipped, never read as a new line.
  Blank lines are ignored.  The framer holds at most ``max_line`` bytes.
* ``loads(line)`` decodes one line: UTF-8 only, nesting at most ``max_depth`` deep
  (checked on the raw text before the JSON parser recurses), no ``NaN``/``Infinity``
  (neither the constants nor numbers that overflow to them).
* ``dumps(value)`` encodes one line; it refuses what ``loads`` would refuse (NaN,
  Infinity), so a peer never sends invalid JSON.
* ``check_id(value)`` validates a request id: an integer with magnitude below 2**53 or a
  string of at most ``MAX_ID_LEN`` characters.  ``request_id(obj)`` is the id to echo in
  an error reply: the request's id when it is valid, else ``None``.
* ``Decoder`` joins a framer and ``loads``: bytes in, decoded values or errors out.

Every refusal is a ``JsonLinesError`` carrying an errno (EMSGSIZE for an over-long line,
EBADMSG for a line that is not acceptable JSON, EINVAL for a bad id) and a ``reason``.
Standard library only: the guest agent imports it inside the guest.
"""

from __future__ import annotations

import errno as _errno
import json
import math
import re
from array import array
from itertools import accumulate

from .errors import MsixlabError

MAX_LINE = 1 << 20
MAX_DEPTH = 32
MAX_ID = (1 << 53) - 1
MAX_ID_LEN = 128

# Reasons a line or a value is refused.
TOO_LONG = "too_long"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
TOO_DEEP = "too_deep"
NON_FINITE = "non_finite"
NOT_OBJECT = "not_object"
BAD_ID = "bad_id"
NOT_ENCODABLE = "not_encodable"

_ERRNO = {TOO_LONG: _errno.EMSGSIZE, BAD_ID: _errno.EINVAL, NOT_ENCODABLE: _errno.EINVAL}


class JsonLinesError(MsixlabError, ValueError):
    """A line or value the JSON-lines rules refuse.  ``reason`` is one of the module's
    reason names, ``errno`` the number a reply should carry."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.errno = _ERRNO.get(reason, _errno.EBADMSG)


class LineFramer:
    """Split a byte stream into lines, bounded by ``max_line`` bytes per line."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0           # bytes of _buf known to hold no newline
        self._discarding = False    # inside an over-long line already reported

    @property
    def pending(self) -> int:
        """Bytes held for a line not yet complete."""
        return len(self._buf)

    def _too_long(self) -> JsonLinesError:
        return JsonLinesError(TOO_LONG, f"line longer than {self.max_line} bytes")

    def feed(self, data: bytes) -> list[bytes | JsonLinesError]:
        """Complete lines (without their newline) and one error per refused line."""
        out: list[bytes | JsonLinesError] = []
        buf = self._buf
        buf += data
        while True:
            nl = buf.find(b"\n", self._scanned)
            if nl < 0:
                if len(buf) > self.max_line:
                    if not self._discarding:
                        out.append(self._too_long())
                        self._discarding = True
                    buf.clear()
                self._scanned = len(buf)
                return out
            line = bytes(buf[:nl])
            del buf[:nl + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
            elif len(line) > self.max_line:
                out.append(self._too_long())
            elif line.strip():
                out.append(line)


_STRING = re.compile(rb'"(?:[^"\\]|\\.?)*"?', re.DOTALL)   # linear, even unterminated
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def depth(text: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (0 for a scalar).  Brackets
    inside strings do not count; the text need not be valid JSON."""
    if text.count(b"[") + text.count(b"{") == 0:
        return 0
    skeleton = _STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    steps = array("b", skeleton.translate(_BRACKETS))
    return max(max(accumulate(steps), default=0), 0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonLinesError(NON_FINITE, f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> object:
    raise JsonLinesError(NON_FINITE, f"{name} is not allowed")


def loads(line: bytes | str, *, max_depth: int = MAX_DEPTH) -> object:
    """Decode one JSON line under the module's rules, or raise ``JsonLinesError``."""
    if isinstance(line, (bytes, bytearray)):
        if max_depth is not None and line.count(b"[") + line.count(b"{") > max_depth:
            if depth(bytes(line)) > max_depth:
                raise JsonLinesError(TOO_DEEP, f"JSON nested deeper than {max_depth}")
        try:
            text = bytes(line).decode("utf-8")
        except UnicodeDecodeError as err:
            raise JsonLinesError(NOT_UTF8, f"not valid JSON: not UTF-8 ({err.reason} "
                                 f"at byte {err.start})") from err
    else:
        text = line
        if max_depth is not None and text.count("[") + text.count("{") > max_depth:
            if depth(text.encode("utf-8", "surrogatepass")) > max_depth:
                raise JsonLinesError(TOO_DEEP, f"JSON nested deeper than {max_depth}")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except JsonLinesError:
        raise
    except RecursionError as err:          # only if max_depth is None or huge
        raise JsonLinesError(TOO_DEEP, "JSON nested too deep") from err
    except ValueError as err:              # JSONDecodeError, or an int with too many digits
        raise JsonLinesError(NOT_JSON, f"not valid JSON: {err}") from err


def loads_object(line: bytes | str, *, max_depth: int = MAX_DEPTH) -> dict:
    """``loads`` for a line that must hold a JSON object."""
    value = loads(line, max_depth=max_depth)
    if not isinstance(value, dict):
        raise JsonLinesError(NOT_OBJECT, f"must be a JSON object, not {_json_type(value)}")
    return value


def dumps(value: object) -> bytes:
    """One compact JSON line (with its newline).  NaN and Infinity are refused."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise JsonLinesError(NOT_ENCODABLE, f"cannot encode as JSON: {err}") from err
    return text.encode() + b"\n"


def check_id(value: object, *, required: bool = True) -> int | str | None:
    """``value`` if it is a valid request id, else ``JsonLinesError(BAD_ID)``."""
    if value is None and not required:
        return None
    if type(value) is int and -MAX_ID <= value <= MAX_ID:
        return value
    if type(value) is str and len(value) <= MAX_ID_LEN:
        return value
    raise JsonLinesError(BAD_ID, f"'id' must be an integer of magnitude below 2**53 or a "
                         f"string of at most {MAX_ID_LEN} characters, not {_describe(value)}")


def request_id(obj: object) -> int | str | None:
    """The id to echo in a reply to ``obj``: its ``id`` if valid, else None."""
    if isinstance(obj, dict):
        try:
            return check_id(obj.get("id"), required=False)
        except JsonLinesError:
            return None
    return None


def _json_type(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                        type(value).__name__)


def _describe(value: object) -> str:
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if type(value) is int:
        return f"{_json_type(value)} of {value.bit_length()} bits"
    return _json_type(value)


class Decoder:
    """A framer plus ``loads``: bytes in, decoded values and errors out, in order."""

    def __init__(self, max_line: int = MAX_LINE, max_depth: int = MAX_DEPTH):
        self.framer = LineFramer(max_line)
        self.max_depth = max_depth

    @property
    def pending(self) -> int:
        """Bytes held for a line not yet complete."""
        return self.framer.pending

    def feed(self, data: bytes) -> list[object | JsonLinesError]:
        """The decoded values of the complete lines in ``data``, with a ``JsonLinesError`` in
        place of each refused line."""
        out: list[object | JsonLinesError] = []
        for item in self.framer.feed(data):
            if isinstance(item, JsonLinesError):
                out.append(item)
                continue
            try:
                out.append(loads(item, max_depth=self.max_depth))
            except JsonLinesError as err:
                out.append(err)
        return out

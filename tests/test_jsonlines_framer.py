"""The one JSON-lines codec (msixlab_common.jsonlines): framing fed whole, byte by byte
and with trailing data; one error per over-long line and its rest never read as a line;
bounded nesting before the parser recurses; no NaN/Infinity either way; ids checked."""

from __future__ import annotations

import errno
import json

import pytest

from msixlab_common import jsonlines as jl

LINES = b'{"id":1,"cmd":"a"}\n\n  \n{"id":2,"cmd":"b"}\r\n'


def _strict(line: bytes):
    """Parse as a strict JSON peer would (no NaN/Infinity)."""
    def refuse(name):
        raise ValueError(name)
    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("step", [len(LINES), 1, 3])
def test_framing_whole_byte_by_byte_and_in_pieces(step):
    framer = jl.LineFramer()
    items = [i for k in range(0, len(LINES), step) for i in framer.feed(LINES[k:k + step])]
    assert items == [b'{"id":1,"cmd":"a"}', b'{"id":2,"cmd":"b"}\r']
    assert framer.pending == 0


def test_trailing_partial_line_waits():
    framer = jl.LineFramer()
    assert framer.feed(b'{"id":1}\n{"id"') == [b'{"id":1}']
    assert framer.pending == 5
    assert framer.feed(b':2}\n') == [b'{"id":2}']


@pytest.mark.parametrize("chunks", [
    [b"x" * 40 + b"\n"],                            # whole, in one piece
    [b"x" * 20, b"x" * 20, b"\n"],                  # crosses the limit without a newline
    [b"x" * 17, b'{"id":9,"cmd":"raise"}\n'],        # the rest looks like a request
    [b"x" * 17] + [b"y"] * 30 + [b"\n"],            # byte by byte past the limit
])
def test_overlong_line_gives_exactly_one_error_and_its_rest_is_skipped(chunks):
    framer = jl.LineFramer(max_line=16)
    items = [i for c in chunks for i in framer.feed(c)]
    assert len(items) == 1 and isinstance(items[0], jl.JsonLinesError)
    assert items[0].errno == errno.EMSGSIZE and items[0].reason == jl.TOO_LONG
    assert framer.feed(b'{"a":1}\n') == [b'{"a":1}']      # the next line is read again


def test_framer_never_holds_more_than_max_line():
    framer = jl.LineFramer(max_line=1000)
    for _ in range(100):
        framer.feed(b"z" * 999)
        assert framer.pending <= 1000


def test_a_line_of_exactly_max_line_bytes_is_accepted():
    framer = jl.LineFramer(max_line=16)
    assert framer.feed(b"1" * 16 + b"\n") == [b"1" * 16]


@pytest.mark.parametrize("text,deep", [
    (b"3", 0), (b"[]", 1), (b'[{"a":[1]}]', 3), (b'"[[[[[["', 0),
    (b'["\\"[[[[", {"x": "]]]"}]', 2), (b'"unterminated [[[', 0),
    (b"]]][[", 0),              # counted from the start: the parser stops at the first "]"
])
def test_depth_ignores_brackets_in_strings(text, deep):
    assert jl.depth(text) == deep


@pytest.mark.parametrize("line", [b"[" * 3000, b"[" * 33 + b"]" * 33,
                                  b'{"a":' * 40 + b"1" + b"}" * 40])
def test_nesting_is_refused_before_the_parser_recurses(line):
    with pytest.raises(jl.JsonLinesError) as err:
        jl.loads(line)
    assert err.value.reason == jl.TOO_DEEP and err.value.errno == errno.EBADMSG


def test_nesting_at_the_limit_is_accepted():
    assert jl.loads(b"[" * jl.MAX_DEPTH + b"]" * jl.MAX_DEPTH) is not None


@pytest.mark.parametrize("line", [b'{"count": Infinity}', b'{"v": -Infinity}', b"NaN",
                                  b'{"vector": 1e400}', b'[-1e999]'])
def test_nan_and_infinity_are_refused(line):
    with pytest.raises(jl.JsonLinesError) as err:
        jl.loads(line)
    assert err.value.reason == jl.NON_FINITE


@pytest.mark.parametrize("line,reason", [
    (b"not json", jl.NOT_JSON), (b"\xff\xfe", jl.NOT_UTF8), (b'{"a":1', jl.NOT_JSON),
    (b'{"n": ' + b"9" * 5000 + b"}", jl.NOT_JSON),
])
def test_undecodable_lines_are_named(line, reason):
    with pytest.raises(jl.JsonLinesError) as err:
        jl.loads(line)
    assert err.value.reason == reason


def test_loads_object_wants_an_object():
    with pytest.raises(jl.JsonLinesError, match="JSON object, not an array"):
        jl.loads_object(b"[1]")


def test_dumps_is_one_strict_line_and_refuses_nan():
    assert jl.dumps({"a": "x\ny", "b": [1.5]}) == b'{"a":"x\\ny","b":[1.5]}\n'
    for bad in (float("nan"), float("inf"), {1, 2}):
        with pytest.raises(jl.JsonLinesError) as err:
            jl.dumps({"v": bad})
        assert err.value.reason == jl.NOT_ENCODABLE


@pytest.mark.parametrize("value", [0, 1, -5, jl.MAX_ID, -jl.MAX_ID, "a", "x" * jl.MAX_ID_LEN])
def test_valid_ids(value):
    assert jl.check_id(value) == value
    assert jl.request_id({"id": value}) == value


@pytest.mark.parametrize("value", [None, True, 1.0, float("nan"), jl.MAX_ID + 1, 2 ** 64,
                                   "x" * (jl.MAX_ID_LEN + 1), [1], {"a": 1}])
def test_bad_ids_are_refused_and_echoed_as_null(value):
    with pytest.raises(jl.JsonLinesError) as err:
        jl.check_id(value)
    assert err.value.reason == jl.BAD_ID and err.value.errno == errno.EINVAL
    assert "'id'" in str(err.value)
    assert jl.request_id({"id": value}) is None


def test_missing_id_is_allowed_only_when_optional():
    assert jl.check_id(None, required=False) is None
    assert jl.request_id({"cmd": "x"}) is None


def test_decoder_yields_values_and_errors_in_order():
    dec = jl.Decoder(max_line=64)
    out = dec.feed(b'{"a":1}\nNaN\n' + b"[" * 40 + b"\n" + b"x" * 70 + b"\n[2]\n")
    assert out[0] == {"a": 1} and out[-1] == [2]
    assert [e.reason for e in out[1:-1]] == [jl.NON_FINITE, jl.TOO_DEEP, jl.TOO_LONG]
    for value in out:
        if not isinstance(value, jl.JsonLinesError):
            _strict(jl.dumps(value))

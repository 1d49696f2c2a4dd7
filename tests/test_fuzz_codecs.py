"""The project's fuzzer, property-based, on the sans-I/O cores: the JSON-lines framer and
codec, the control session, and the vfio-user connection and endpoint (bytes plus fds).

Invariants: the framer's output does not depend on how the stream is chunked and matches
a plain reference model (one error per over-long line, its rest skipped); the codec never
raises anything but JsonLinesError and never accepts what it could not send back; the
control session answers every line exactly once with strict JSON and keeps answering;
the vfio-user connection hands back every fd it was given (in an event or as pending),
never raises, and frames whole messages the same however they are split; the endpoint
answers every whole message once and leaks no fd."""

from __future__ import annotations

import json
import os
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fuzzing import FOUND_CONTROL_LINES, control_lines, load_profile, make_fd, messages, scaled
from msixlab_common import jsonlines as jl
from qemu_device.fdio import OsFdPort
from qemu_device.connection import BadMessage, Connection, Request
from qemu_device.control import ControlContext, ControlSession
from qemu_device.device.nic import Device
from qemu_device.eventlog import EventBus
from qemu_device.handlers import Endpoint
from qemu_device.protocol import HEADER_SIZE
from qemu_device.testing import FdWatch

load_profile()


def _reference(data: bytes, max_line: int) -> list:
    """What a framer must yield for the whole stream: lines, and 'E' per over-long one."""
    *complete, rest = data.split(b"\n")
    out: list = []
    for line in complete:
        if len(line) > max_line:
            out.append("E")
        elif line.strip():
            out.append(line)
    if len(rest) > max_line:
        out.append("E")
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


stream = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"\n", b" \n", b"x" * 30])),
                  max_size=12).map(b"".join)


@settings(max_examples=scaled(200))
@given(data=stream, cuts=st.lists(st.integers(0, 10_000), max_size=8),
       max_line=st.integers(1, 32))
@example(data=b"x" * 20 + b'{"id":1}\n', cuts=[17], max_line=16)
def test_framer_matches_the_reference_however_chunked(data, cuts, max_line):
    framer = jl.LineFramer(max_line)
    got = [i for chunk in _split(data, cuts) for i in framer.feed(chunk)]
    assert ["E" if isinstance(i, jl.JsonLinesError) else i for i in got] == \
        _reference(data, max_line)
    assert framer.pending <= max_line


json_text = st.one_of(
    st.binary(max_size=80),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6),
                           st.floats(allow_nan=True, allow_infinity=True)),
                 lambda inner: st.lists(inner, max_size=3) |
                 st.dictionaries(st.text(max_size=4), inner, max_size=3),
                 max_leaves=40).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 80).map(lambda n: b"[" * n + b"]" * n),
)


@settings(max_examples=scaled(300))
@given(line=json_text)
@example(line=b"[" * 3000)
@example(line=b'{"v": 1e400}')
def test_codec_accepts_only_what_it_can_send_back(line):
    try:
        value = jl.loads(line)
    except jl.JsonLinesError:
        return
    assert jl.loads(jl.dumps(value)) == value
    assert jl.depth(jl.dumps(value)) <= jl.MAX_DEPTH


def _strict(line: bytes) -> dict:
    def refuse(name):
        raise AssertionError(f"{name}: not JSON")
    value = json.loads(line, parse_constant=refuse)
    assert isinstance(value, dict) and set(value) >= {"id", "ok"}
    return value


@settings(max_examples=scaled(200))
@given(lines=st.lists(control_lines, max_size=6), cuts=st.lists(st.integers(0, 10_000),
                                                               max_size=6))
# found by this test against the control channel as it was before issue 9
@example(lines=FOUND_CONTROL_LINES, cuts=[])
def test_control_session_answers_every_line_once_with_strict_json(lines, cuts):
    session = ControlSession(ControlContext(Device(fds=OsFdPort()), EventBus()), 1, lambda b: None)
    data = b"".join(line + b"\n" for line in lines)
    out = b"".join(session.feed(chunk) for chunk in _split(data, cuts))
    replies = [_strict(r) for r in out.splitlines()]
    assert len(replies) == len(lines)
    assert _strict(session.feed(b'{"id":"last","cmd":"ping"}\n')) == \
        {"id": "last", "ok": True, "result": {"pong": True}}


# -- vfio-user: the connection (sans-I/O) -----------------------------------------------------

def _wire(m) -> bytes:
    msg_id, command, flags, payload, _ = m
    return struct.pack("<HHIII", msg_id, command, HEADER_SIZE + len(payload), flags, 0) + payload


@settings(max_examples=scaled(200))
@given(chunks=st.lists(st.tuples(st.binary(max_size=48), st.integers(0, 3)), max_size=10))
def test_connection_hands_back_every_fd_and_never_raises(chunks):
    conn = Connection()
    given_fds, returned = [], []
    for data, nfds in chunks:
        fds = list(range(1000 + len(given_fds), 1000 + len(given_fds) + nfds))
        given_fds += fds
        for ev in conn.receive_data(data, fds):
            assert isinstance(ev, (Request, BadMessage))
            returned += ev.fds
    returned += conn.pending_fds()
    assert sorted(returned) == given_fds               # none lost, none doubled


@settings(max_examples=scaled(150))
@given(ms=st.lists(messages(), min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10_000),
                                                                     max_size=6))
def test_whole_messages_frame_the_same_however_split(ms, cuts):
    data = b"".join(_wire(m) for m in ms)
    whole = Connection().receive_data(data)
    conn = Connection()
    split = [ev for chunk in _split(data, cuts) for ev in conn.receive_data(chunk)]

    def key(ev):
        return (type(ev).__name__, ev.msg_id, ev.command, ev.flags,
                getattr(ev, "payload", None))
    assert [key(e) for e in split] == [key(e) for e in whole]
    assert len(whole) == len(ms) and not conn.has_partial()


# -- vfio-user: the endpoint with real fds ----------------------------------------------------

@settings(max_examples=scaled(150))
@given(ms=st.lists(messages(allow_reply_type=False), max_size=8))
def test_endpoint_answers_each_whole_message_and_leaks_no_fd(ms):
    watch = FdWatch()
    ep = Endpoint(Device(fds=OsFdPort()))
    version = struct.pack("<HH", 0, 0) + b"{}\0"
    ep.receive_data(_wire((0, 1, 0, version, [])))
    try:
        for m in ms:
            fds = [make_fd(k) for k in m[4]]
            try:
                replies = ep.receive_data(_wire(m), [os.dup(fd) for fd in fds])
            finally:
                for fd in fds:
                    os.close(fd)
            assert len(replies) == (0 if m[2] & 0x10 else 1)
            for r in replies:
                rid, rcmd, size, flags, err = struct.unpack_from("<HHIII", r)
                assert (rid, rcmd, size) == (m[0], m[1], len(r)) and flags & 0xF == 1
                assert (err > 0 and size == HEADER_SIZE) if flags & 0x20 else err == 0
        assert not ep.closed
    finally:
        ep.close()
    assert watch.opened() == {}

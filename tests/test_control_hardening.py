"""The control channel under hostile input (issue 9, items 2, 5, 7): every line gets one
reply that is strict JSON, every field is checked for type and range, nothing escapes
the session, and the channel answers a good request after a bad one.  Then the limits
the server puts on control clients: how many, how much output, how many timers."""

from __future__ import annotations

import errno
import json
import socket

import pytest

from qemu_device.fdio import OsFdPort
from qemu_device import control
from qemu_device.control import ControlContext, ControlSession
from qemu_device.device.nic import Device
from qemu_device.eventlog import EventBus
from qemu_device.faults import MAX_DELAY_MS
from qemu_device.server import MAX_POLL_S, Limits, Server
from qemu_device.testing import FdWatch


def strict(line: bytes) -> dict:
    def refuse(name):
        raise AssertionError(f"{name} in a reply: not JSON")
    return json.loads(line, parse_constant=refuse)


class Session:
    def __init__(self):
        self.device = Device(fds=OsFdPort())
        self.pushed: list[bytes] = []
        self.s = ControlSession(ControlContext(self.device, EventBus()), 1,
                                self.pushed.append)

    def feed(self, data: bytes) -> list[dict]:
        return [strict(line) for line in self.s.feed(data).splitlines()]

    def ask(self, **req) -> dict:
        (reply,) = self.feed(json.dumps(req).encode() + b"\n")
        return reply

    def alive(self) -> None:
        assert self.ask(id=77, cmd="ping") == {"id": 77, "ok": True, "result": {"pong": True}}


@pytest.fixture
def ses():
    return Session()


def error(reply: dict, *, id=None) -> dict:
    assert reply["ok"] is False and reply["id"] == id, reply
    return reply["error"]


# -- lines the codec refuses: one reply each, id null --------------------------------------

@pytest.mark.parametrize("line,needle", [
    (b"[" * 3000, "nested deeper"),                          # RecursionError before
    (b'{"id": 1, "cmd": "raise", "vectors": ' + b"[" * 100 + b"]" * 100 + b"}",
     "nested deeper"),
    (b"not json", "not valid JSON"),
    (b"\xff\xfe", "UTF-8"),
    (b"[1, 2]", "JSON object"),
    (b'{"id": NaN, "cmd": "ping"}', "NaN"),                  # echoed as invalid JSON before
    (b'{"id": Infinity, "cmd": "ping"}', "Infinity"),
    (b'{"id": 1e400, "cmd": "ping"}', "out of range"),
    (b'{"id": 1, "cmd": "raise", "vector": 1e400}', "out of range"),   # OverflowError before
    (b'{"id": 1, "cmd": "fault", "kind": "drop_raise", "count": Infinity}', "Infinity"),
    (b'{"id": 36893488147419103232, "cmd": "ping"}', "'id'"),
    (b'{"id": "' + b"x" * 200 + b'", "cmd": "ping"}', "'id'"),
    (b'{"id": [1], "cmd": "ping"}', "'id'"),
    (b'{"id": true, "cmd": "ping"}', "'id'"),
])
def test_unreadable_lines_get_one_error_with_id_null(ses, line, needle):
    (reply,) = ses.feed(line + b"\n")
    assert needle in error(reply)["message"]
    ses.alive()


def test_overlong_line_is_answered_once_and_its_rest_never_runs(ses):
    replies = ses.feed(b"x" * (control.MAX_LINE + 1))
    replies += ses.feed(b'{"id": 2, "cmd": "raise", "vector": 7}\n')
    assert len(replies) == 1 and error(replies[0])["errno"] == errno.EMSGSIZE
    assert ses.device.msix.raised[7] == 0
    ses.alive()


def test_overlong_line_in_one_piece_is_answered_once(ses):
    replies = ses.feed(b"y" * (control.MAX_LINE + 100) + b"\n")
    assert len(replies) == 1 and error(replies[0])["errno"] == errno.EMSGSIZE


# -- fields: type and range, named ----------------------------------------------------------

@pytest.mark.parametrize("req,field,needle", [
    ({"cmd": "raise", "vector": 1.0}, "vector", "integer"),
    ({"cmd": "raise", "vector": True}, "vector", "integer"),
    ({"cmd": "raise", "vector": -1}, "vector", "0..65535"),
    ({"cmd": "raise", "vector": 2 ** 70}, "vector", "0..65535"),
    ({"cmd": "raise", "vectors": []}, "vectors", "1..4096"),
    ({"cmd": "raise", "vectors": list(range(5000))}, "vectors", "1..4096"),
    ({"cmd": "raise", "vectors": [1, "2"]}, "vectors[1]", "integer"),
    ({"cmd": "raise", "vectors": 3}, "vectors", "array"),
    ({"cmd": "raise", "vector": 1, "vectors": [2]}, None, "one of them"),
    ({"cmd": "raise", "vector": 1, "force": True}, "force", "unknown field"),
    ({"cmd": "state", "verbose": 1}, "verbose", "unknown field"),
    ({"cmd": "subscribe", "events": "deliver"}, "events", "array"),
    ({"cmd": "subscribe", "events": [1]}, "events[0]", "string"),
    ({"cmd": "clear_faults", "fault": "x"}, "fault", "integer"),
    ({"cmd": "clear_faults", "fault": 0}, "fault", "1.."),
    ({"cmd": "fault"}, "kind", "one of"),
    ({"cmd": "fault", "kind": 3}, "kind", "one of"),
    ({"cmd": "fault", "kind": "drop_raise", "count": None}, "count", "integer"),
    ({"cmd": "fault", "kind": "drop_raise", "count": "5"}, "count", "integer"),
    ({"cmd": "fault", "kind": "drop_raise", "count": -1}, "count", "0..1000000"),
    ({"cmd": "fault", "kind": "drop_raise", "vector": 1.5}, "vector", "integer"),
    ({"cmd": "fault", "kind": "drop_raise", "delay_ms": 5}, "delay_ms", "unknown field"),
    ({"cmd": "fault", "kind": "delay_raise", "delay_ms": 3000000000}, "delay_ms",
     f"0..{MAX_DELAY_MS}"),
    ({"cmd": "fault", "kind": "delay_raise", "delay_ms": -1}, "delay_ms", "0.."),
    ({"cmd": "fault", "kind": "errno_reply"}, "command", "needs"),
    ({"cmd": "fault", "kind": "errno_reply", "command": "NOPE"}, "command", "vfio-user"),
    ({"cmd": "fault", "kind": "errno_reply", "command": 99}, "command", "vfio-user"),
    ({"cmd": "fault", "kind": "errno_reply", "command": "DMA_MAP", "errno": 2 ** 40},
     "errno", "errno"),
    ({"cmd": "fault", "kind": "errno_reply", "command": "DMA_MAP", "errno": 0},
     "errno", "errno"),
    ({"cmd": "fault", "kind": "errno_reply", "command": "DMA_MAP", "errno": -5},
     "errno", "errno"),
    ({"cmd": "fault", "kind": "errno_reply", "command": "DMA_MAP", "errno": "errorcode"},
     "errno", "unknown errno name"),
    ({"cmd": "fault", "kind": "errno_reply", "command": "DMA_MAP", "errno": 5.0},
     "errno", "errno"),
])
def test_every_field_is_checked_and_named(ses, req, field, needle):
    err = error(ses.ask(id=5, **req), id=5)
    assert needle in err["message"], err
    assert err.get("field") == field
    assert ses.device.faults.list() == []
    ses.alive()


def test_good_fields_are_accepted(ses):
    ok = ses.ask(id=1, cmd="fault", kind="errno_reply", command="dma_map", errno="ENOSPC")
    assert ok["result"]["errno"] == errno.ENOSPC and ok["result"]["command"] == "DMA_MAP"
    ok = ses.ask(id=2, cmd="fault", kind="errno_reply", command=2, errno=5, count=0)
    assert ok["result"]["errno"] == errno.EIO and ok["result"]["count"] == 0
    ok = ses.ask(id=3, cmd="fault", kind="delay_raise", vector=3, delay_ms=MAX_DELAY_MS)
    assert ok["result"]["delay_ms"] == MAX_DELAY_MS
    assert ses.ask(id=4, cmd="clear_faults", fault=1)["result"] == {"cleared": 1, "cancelled": 0}
    assert ses.ask(id=5, cmd="raise", vector=70)["result"]["results"] == [
        {"vector": 70, "outcome": "out_of_range"}]
    assert ses.ask(id="s", cmd="subscribe", events=None)["result"] == {"subscribed": "all"}


def test_unknown_command_is_enosys(ses):
    err = error(ses.ask(id=3, cmd="explode"), id=3)
    assert err["errno"] == errno.ENOSYS and "'explode'" in err["message"]
    assert err["code"] == "ENOSYS"


def test_the_number_of_armed_faults_is_bounded(ses):
    from qemu_device.faults import MAX_FAULTS
    for i in range(MAX_FAULTS):
        assert ses.ask(id=i, cmd="fault", kind="drop_raise", vector=1)["ok"]
    err = error(ses.ask(id=9, cmd="fault", kind="drop_raise"), id=9)
    assert err["errno"] == errno.ENOSPC


def test_a_bug_in_a_command_costs_the_request_not_the_session(ses):
    def broken():
        raise ZeroDivisionError("planted")
    ses.device.state = broken
    err = error(ses.ask(id=4, cmd="state"), id=4)
    assert err["errno"] == errno.EIO and "ZeroDivisionError" in err["message"]
    ses.alive()


# -- the server's limits on control clients ---------------------------------------------------

class Rig:
    def __init__(self, tmp_path, **limits):
        self.server = Server(Device(fds=OsFdPort()), str(tmp_path / "s"), str(tmp_path / "c"),
                             limits=Limits(**limits))
        self.server.bind()
        self.socks: list[socket.socket] = []

    def pump(self, rounds=3):
        for _ in range(rounds):
            self.server.run_once(0)

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        self.socks.append(s)
        s.connect(self.server.control_path)
        self.pump()
        return s

    def ask(self, s, **req) -> dict:
        s.sendall(json.dumps({"id": 1, **req}).encode() + b"\n")
        self.pump()
        return strict(s.makefile("rb").readline())

    def close(self):
        for s in self.socks:
            s.close()
        self.server.close()


@pytest.fixture
def rig_factory(tmp_path):
    fds = FdWatch()
    rigs = []

    def make(**limits):
        rigs.append(Rig(tmp_path, **limits))
        return rigs[-1]
    yield make
    for r in rigs:
        r.close()
    assert fds.opened() == {}, "fd leak"


def test_control_clients_beyond_the_limit_are_refused_with_a_reason(rig_factory):
    rig = rig_factory(max_control_clients=3)
    first = [rig.connect() for _ in range(3)]
    extra = rig.connect()
    line = extra.makefile("rb").readline()
    assert error(strict(line))["errno"] == errno.EUSERS and extra.recv(1) == b""
    assert all(rig.ask(s, cmd="ping")["ok"] for s in first)
    first[0].close()
    rig.pump()
    again = rig.connect()
    st = rig.ask(again, cmd="state")["result"]
    assert st["server"]["control_refused"] == 1 and st["control_clients"] == 3


def test_a_control_client_that_does_not_read_is_disconnected(rig_factory):
    rig = rig_factory(control_output=64 << 10)
    lazy = rig.connect()
    lazy.sendall(b'{"id": 1, "cmd": "subscribe"}\n')
    rig.pump()
    other = rig.connect()
    for _ in range(200):                  # each request queues ~400 KiB of events
        rig.ask(other, cmd="raise", vectors=list(range(4096)))
        if rig.server.counters["control_dropped"]:
            break
    assert rig.server.counters["control_dropped"] == 1
    assert len(rig.server.ctls) == 1                     # only `other` is left
    received = 0
    while chunk := lazy.recv(1 << 20):                  # its backlog, then EOF
        received += len(chunk)
    assert 0 < received < 64 << 20
    assert rig.ask(other, cmd="ping")["ok"]


def test_delayed_raise_timers_are_bounded_and_nothing_is_lost(rig_factory):
    rig = rig_factory(max_timers=2)
    s = rig.connect()
    assert rig.ask(s, cmd="fault", kind="delay_raise", delay_ms=MAX_DELAY_MS, count=0)["ok"]
    outcomes = rig.ask(s, cmd="raise", vectors=[1, 2, 3, 4])["result"]["results"]
    assert [o["outcome"] for o in outcomes] == ["delayed"] * 4
    msix = rig.server.device.msix
    assert len(rig.server._timers) == 2                  # two wait, two ran at once
    assert [msix.is_pending(v) for v in (1, 2, 3, 4)] == [False, False, True, True]
    assert rig.server.counters["timers_overflowed"] == 2


def test_a_far_timer_never_overflows_the_poll_timeout(rig_factory):
    rig = rig_factory()
    s = rig.connect()
    assert rig.ask(s, cmd="fault", kind="delay_raise", delay_ms=MAX_DELAY_MS)["ok"]
    rig.server.call_later(3e9, lambda: None)            # as far as any caller could ask
    s.sendall(b'{"id": 2, "cmd": "raise", "vector": 5}\n')
    rig.server.run_once(None)                            # wakes for the request, no overflow
    assert rig.server.device.msix.raised[5] == 1
    assert rig.server._timers[-1][0] - rig.server.clock() <= MAX_POLL_S


@pytest.mark.parametrize("clearing", [{"cmd": "clear_faults"}, {"cmd": "reset_counters"}])
def test_a_delayed_raise_is_shown_and_cancelled_with_its_fault(rig_factory, clearing):
    rig = rig_factory()
    now = [rig.server.clock()]
    rig.server.clock = lambda: now[0]
    s = rig.connect()
    fault = rig.ask(s, cmd="fault", kind="delay_raise", vector=3, delay_ms=1000, count=0)
    other = rig.ask(s, cmd="fault", kind="delay_raise", vector=5, delay_ms=1000)
    assert rig.ask(s, cmd="raise", vectors=[3, 5])["result"]["results"][0]["outcome"] == "delayed"
    waiting = rig.ask(s, cmd="state")["result"]["delayed"]
    assert waiting == [{"vector": 3, "fault": fault["result"]["id"], "delay_ms": 1000},
                       {"vector": 5, "fault": other["result"]["id"], "delay_ms": 1000}]
    assert rig.ask(s, **clearing)["ok"]
    now[0] += 2.0                                         # both timers are due
    rig.pump()
    state = rig.ask(s, cmd="state")["result"]
    assert state["delayed"] == []
    assert [(v["pending"], v["delivered"]) for v in state["vectors"][3:6:2]] == [(False, 0)] * 2


def test_clearing_one_fault_cancels_only_its_delayed_raises(rig_factory):
    rig = rig_factory()
    s = rig.connect()
    first = rig.ask(s, cmd="fault", kind="delay_raise", vector=3, delay_ms=MAX_DELAY_MS)
    rig.ask(s, cmd="fault", kind="delay_raise", vector=5, delay_ms=MAX_DELAY_MS)
    rig.ask(s, cmd="raise", vectors=[3, 5])
    cleared = rig.ask(s, cmd="clear_faults", fault=first["result"]["id"])["result"]
    assert cleared == {"cleared": 0, "cancelled": 1}     # the fault itself fired already
    assert [d["vector"] for d in rig.ask(s, cmd="state")["result"]["delayed"]] == [5]

"""The guest agent's protocol core, driven with bytes: framing, validation, dispatch, replies.

The session runs the real command table of ``agent.guest.commands.Agent``; on the host
there is no /dev/msixlab<N>, so commands that need the driver must fail with ENODEV and
say why, while argument validation happens before any driver is needed.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from agent.guest import binding, protocol
from agent.guest.commands import Agent
from agent.guest.errors import GuestError, RequestError
from agent.guest.protocol import Arg, Command, LineFramer, Session


@pytest.fixture
def agent(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "proc").mkdir()
    return Agent(root=str(tmp_path))


@pytest.fixture
def session(agent):
    return Session(agent.commands())


def request(session: Session, message, raw: bool = False) -> dict:
    data = message if raw else json.dumps(message).encode() + b"\n"
    out = session.receive_data(data)
    lines = out.splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


def error_of(reply: dict) -> dict:
    assert reply["ok"] is False, reply
    return reply["error"]


# ---- framing ----

FEED = b'{"id":1,"cmd":"list_groups"}\n{"id":2,"cmd":"nope"}\n'


def _ids(out: bytes) -> list:
    return [json.loads(line)["id"] for line in out.splitlines()]


def test_framing_whole(session):
    assert _ids(session.receive_data(FEED)) == [1, 2]


def test_framing_byte_by_byte(session):
    out = b"".join(session.receive_data(FEED[i:i + 1]) for i in range(len(FEED)))
    assert _ids(out) == [1, 2]


def test_framing_trailing_partial_line_waits(session):
    out = session.receive_data(FEED + b'{"id":3,')
    assert _ids(out) == [1, 2]
    assert session.framer.pending == len(b'{"id":3,')
    assert _ids(session.receive_data(b'"cmd":"x"}\n')) == [3]


def test_framing_blank_lines_and_crlf_are_ignored(session):
    out = session.receive_data(b'\n  \n{"id":7,"cmd":"nope"}\r\n')
    assert _ids(out) == [7]


def test_overlong_line_is_reported_once_and_skipped():
    framer = LineFramer(max_line=16)
    items = framer.feed(b"x" * 20) + framer.feed(b"y" * 20) + framer.feed(b'zz\n{"a":1}\n')
    errors = [i for i in items if isinstance(i, RequestError)]
    assert len(errors) == 1 and errors[0].errno == errno.EMSGSIZE
    assert items[-1] == b'{"a":1}'


# ---- request validation ----

@pytest.mark.parametrize("raw, code, needle", [
    (b"not json\n", "EBADMSG", "not valid JSON"),
    (b"[1, 2]\n", "EBADMSG", "JSON object"),
    (b'{"cmd": "info"}\n', "EINVAL", "'id'"),
    (b'{"id": 1.5, "cmd": "info"}\n', "EINVAL", "'id'"),
    (b'{"id": 1}\n', "EINVAL", "'cmd'"),
    (b'{"id": 1, "cmd": "info", "extra": 2}\n', "EINVAL", "'extra'"),
    (b'\xff\xfe\n', "EBADMSG", "not valid JSON"),
])
def test_malformed_requests(session, raw, code, needle):
    err = error_of(request(session, raw, raw=True))
    assert err["code"] == code and needle in err["message"]
    assert err["source"] == "request"


def test_id_is_echoed_even_when_cmd_is_missing(session):
    assert request(session, {"id": "abc"})["id"] == "abc"


def test_unknown_command_lists_known_ones(session):
    err = error_of(request(session, {"id": 1, "cmd": "explode"}))
    assert err["errno"] == errno.ENOSYS and err["code"] == "ENOSYS"
    assert "'explode'" in err["message"] and "alloc_group" in err["message"]
    assert err["command"] == "explode"


@pytest.mark.parametrize("args, argument, needle", [
    ({"max": 2}, "min", "missing argument 'min'"),
    ({"min": "2", "max": 2}, "min", "must be int, got str"),
    ({"min": True, "max": 2}, "min", "must be int, got bool"),
    ({"min": 0, "max": 2}, "min", ">= 1"),
    ({"min": 1, "max": 2, "start": -1}, "start", ">= 0"),
    ({"min": 1, "max": 2, "start": 2048}, "start", "<= 2047"),
    ({"min": 1, "max": 2, "cpu": 1.0}, "cpu", "must be int, got float"),
    ({"min": 1, "max": 2, "managed": 1}, "managed", "must be bool"),
    ({"min": 1, "max": 2, "colour": "red"}, "colour", "unknown argument 'colour'"),
])
def test_alloc_group_argument_errors_name_the_argument(session, args, argument, needle):
    err = error_of(request(session, {"id": 9, "cmd": "alloc_group", "args": args}))
    assert err["code"] == "EINVAL" and err["argument"] == argument
    assert needle in err["message"] and err["message"].startswith("alloc_group:")


@pytest.mark.parametrize("cmd, args, argument", [
    ("free_group", {}, "group"),
    ("raise", {"index": 1, "timeout_ms": 60001}, "timeout_ms"),
    ("raise", {"timeout_ms": 5}, "index"),
    ("vector", {"index": "3"}, "index"),
    ("read_entry", {"index": None}, "index"),
    ("irq_sysfs", {"irq": -1}, "irq"),
    ("dmesg", {"lines": 0}, "lines"),
])
def test_other_argument_errors(session, cmd, args, argument):
    err = error_of(request(session, {"id": 1, "cmd": cmd, "args": args}))
    assert err["code"] == "EINVAL" and err["argument"] == argument


def test_args_must_be_an_object(session):
    err = error_of(request(session, {"id": 1, "cmd": "info", "args": [1]}))
    assert err["argument"] == "args"


def test_commands_without_arguments_reject_any(session):
    err = error_of(request(session, {"id": 1, "cmd": "routing", "args": {"x": 1}}))
    assert "accepted: none" in err["message"]


# ---- dispatch without a driver ----

@pytest.mark.parametrize("cmd, args", [
    ("info", {}), ("alloc_group", {"min": 1, "max": 1}), ("free_group", {"group": 1}),
    ("list_groups", {}), ("routing", {}), ("raise", {"index": 0}), ("read_pba", {}),
    ("read_entry", {"index": 0}), ("vector", {"index": 0}),
    ("function_mask", {"masked": True}), ("set_affinity", {"index": 0, "cpus": [0]}),
    ("msi_irqs", {}), ("crash", {"kind": "warn"}),
])
def test_driver_commands_fail_with_enodev_naming_why(session, cmd, args):
    err = error_of(request(session, {"id": 1, "cmd": cmd, "args": args}))
    assert err["code"] == "ENODEV" and err["source"] == "guest"
    assert "msixlab.ko" in err["message"]


def test_hello_without_device(agent):
    hello = agent.hello()
    assert hello["event"] == "hello" and hello["device"] is None
    assert hello["kernel"] and hello["device_error"]["code"] == "ENODEV"
    assert hello["dyn_alloc"] is None                 # nothing to ask: cannot tell
    assert hello["cmdline"] is None                   # no proc/cmdline under this root


def test_hello_carries_the_kernel_command_line(agent):
    proc = Path(agent.root) / "proc"
    (proc / "cmdline").write_bytes(b'console=ttyS0 msixlab.kmod=/k.ko dyndbg="file msi.c +p"\n')
    assert agent.hello()["cmdline"] == 'console=ttyS0 msixlab.kmod=/k.ko dyndbg="file msi.c +p"'
    assert binding.module_path(agent.root) == "/k.ko"
    (proc / "cmdline").write_bytes(b"quiet x=\xff\n")         # not ASCII: replaced, no error
    assert agent.hello()["cmdline"] == "quiet x=\ufffd" and binding.module_path(agent.root) is None


@pytest.mark.parametrize("cmd, args, argument, needle", [
    ("crash", {"kind": "boom"}, "kind", "warn, oops, panic"),
    ("crash", {"kind": 1}, "kind", "must be str"),
    ("crash", {"kind": "oops", "delay_ms": 100}, "delay_ms", "'panic' only"),
    ("crash", {"kind": "panic", "delay_ms": 10001}, "delay_ms", "<= 10000"),
    ("set_affinity", {"index": 0, "cpus": []}, "cpus", "non-empty list"),
    ("set_affinity", {"index": 0, "cpus": [0, -1]}, "cpus", "CPU numbers"),
    ("set_affinity", {"index": 0, "cpus": [False]}, "cpus", "CPU numbers"),
    ("set_affinity", {"index": 0, "cpus": "0-1"}, "cpus", "must be list"),
    ("function_mask", {"masked": 1}, "masked", "must be bool"),
    ("reload_module", {"fault_injection": "yes"}, "fault_injection", "must be bool"),
    # keys str.isdigit() takes but int() refuses, or too long for int() to convert
    ("totals", {"want": {"\u00b2": 1}}, "want", "maps an index"),
    ("totals", {"want": {"\u0661": 1}}, "want", "maps an index"),
    ("totals", {"want": {"9" * 5000: 1}}, "want", "maps an index"),
    ("totals", {"want": {"2048": 1}}, "want", "maps an index"),
    ("totals", {"want": {"-1": 1}}, "want", "maps an index"),
    ("totals", {"want": {"1": 1.5}}, "want", "maps an index"),
    ("totals", {"want": {"1": 1 << 64}}, "want", "maps an index"),
])
def test_new_commands_validate_before_needing_the_driver(session, cmd, args, argument,
                                                         needle):
    err = error_of(request(session, {"id": 1, "cmd": cmd, "args": args}))
    assert (err["code"], err["source"], err["argument"]) == ("EINVAL", "request", argument)
    assert needle in err["message"]


def test_interrupts_reads_the_root(agent, session, tmp_path):
    (tmp_path / "proc/interrupts").write_text(
        "       CPU0\n 30:  5  PCI-MSIX-0000:00:04.0  0-edge  msixlab0[0]\n")
    reply = request(session, {"id": 1, "cmd": "interrupts", "args": {"all": True}})
    assert reply["ok"] and reply["result"]["rows"][0]["hwirq"] == 0


def test_interrupts_missing_file_is_a_guest_error(session):
    err = error_of(request(session, {"id": 1, "cmd": "interrupts"}))
    assert err["code"] == "ENOENT" and "interrupts" in err["message"]


def test_shutdown_replies_then_stops(session):
    out = session.receive_data(b'{"id":1,"cmd":"shutdown"}\n{"id":2,"cmd":"info"}\n')
    assert _ids(out) == [1] and session.stopped


# ---- the core on its own ----

def test_handler_errors_and_bugs_become_replies():
    def fails(kind: str):
        if kind == "agent":
            raise GuestError(errno.EIO, "disk on fire", path="/x")
        raise ZeroDivisionError("oops")

    s = Session({"f": Command("f", fails, (Arg("kind", str),))})
    err = error_of(request(s, {"id": 1, "cmd": "f", "args": {"kind": "agent"}}))
    assert err == {"errno": errno.EIO, "code": "EIO", "message": "disk on fire",
                   "source": "guest", "path": "/x"}
    err = error_of(request(s, {"id": 2, "cmd": "f", "args": {"kind": "bug"}}))
    assert err["code"] == "EIO" and "ZeroDivisionError" in err["message"]


def test_optional_argument_default_and_ok_reply():
    s = Session({"echo": Command("echo", lambda n: {"n": n},
                                 (Arg("n", int, required=False, default=4),))})
    assert request(s, {"id": 1, "cmd": "echo"}) == {"id": 1, "ok": True, "result": {"n": 4}}
    assert request(s, {"id": 2, "cmd": "echo", "args": {"n": 5}})["result"] == {"n": 5}


def test_encode_is_one_line():
    assert protocol.encode({"a": "x\ny"}).count(b"\n") == 1


@pytest.mark.parametrize("raw, code, needle", [
    (b'{"id": NaN, "cmd": "info"}\n', "EBADMSG", "NaN"),
    (b'{"id": 1, "cmd": "info", "args": {"x": 1e400}}\n', "EBADMSG", "out of range"),
    (b'{"id": 9007199254740993, "cmd": "info"}\n', "EINVAL", "'id'"),
    (b'{"id": "' + b"x" * 200 + b'", "cmd": "info"}\n', "EINVAL", "'id'"),
    (b'{"id": 1, "cmd": "info", "args": ' + b"[" * 40 + b"]" * 40 + b"}\n", "EBADMSG",
     "nested deeper"),
])
def test_lines_the_shared_codec_refuses_get_one_error_with_id_null(session, raw, code, needle):
    reply = request(session, raw, raw=True)
    assert reply["id"] is None
    err = error_of(reply)
    assert err["code"] == code and needle in err["message"]
    assert request(session, {"id": 2, "cmd": "nope"})["id"] == 2      # the session goes on


@pytest.mark.parametrize("message", [
    {"id": 1, "cmd": "alloc_group", "args": {"min": "A" * 900_000, "max": 1}},
    {"id": 1, "cmd": "A" * 900_000},
    {"id": 1, "cmd": "alloc_group", "args": {"A" * 900_000: 1}},
    {"id": 1, "cmd": "crash", "args": {"kind": "A" * 900_000}},
    {"id": 1, "cmd": "totals", "args": {"want": {"A" * 900_000: 1}}},
])
def test_an_error_quoting_a_huge_value_stays_small(session, message):
    """A request of almost a megabyte gets an error of a few kilobytes that still names
    the culprit (it used to quote it whole, twice for an unknown command)."""
    out = session.receive_data(json.dumps(message).encode() + b"\n")
    assert len(out) < 4096, len(out)
    err = json.loads(out)["error"]
    assert err["code"] in ("EINVAL", "ENOSYS") and err["message"].endswith(" characters)")

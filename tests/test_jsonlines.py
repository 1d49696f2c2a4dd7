"""The host's JSON-lines client: replies by id, events queued, bounded waits."""

from __future__ import annotations

import json
import socket

import pytest

from agent.host.errors import HostError, WaitTimeout
from agent.host.lab.agent_client import JsonLinesClient


@pytest.fixture
def pair(tmp_path):
    path = tmp_path / "peer.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    client = JsonLinesClient(path, "peer")
    client.connect(timeout=1)
    server, _ = listener.accept()
    yield client, server
    client.close()
    server.close()
    listener.close()


def test_reply_matched_by_id_and_events_queued(pair):
    client, server = pair
    # written before the request, split across lines as a stream may deliver them
    server.sendall(b'{"event": "hello", "kernel": "7.3"}\n{"id": 1, "ok": tr')
    server.sendall(b'ue, "result": {"n": 5}}\n')
    reply = client.request({"cmd": "info"}, timeout=1)
    assert reply == {"id": 1, "ok": True, "result": {"n": 5}}
    assert json.loads(server.recv(4096)) == {"id": 1, "cmd": "info"}
    assert client.wait_event("hello", timeout=0.1)["kernel"] == "7.3"


def test_a_reconnect_starts_clean(pair, tmp_path):
    # a stalled boot is set aside and the guest booted again: nothing of the old
    # connection (a half line, an unread event) may surface on the new one
    client, server = pair
    server.sendall(b'{"event": "stale"}\n{"event": "hel')
    with pytest.raises(WaitTimeout):
        client.wait_event("hello", timeout=0.05)
    client.close()
    server.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "again.sock"))
    listener.listen(1)
    client.path = tmp_path / "again.sock"
    client.connect(timeout=1)
    fresh, _ = listener.accept()
    fresh.sendall(b'{"event": "hello", "boot": 2}\n')     # not glued to the old half line
    assert client.wait_event("hello", timeout=1) == {"event": "hello", "boot": 2}
    with pytest.raises(WaitTimeout):
        client.wait_event("stale", timeout=0.05)
    fresh.close()
    listener.close()


def test_a_reconnect_forgets_lines_read_but_not_yet_taken(pair, tmp_path):
    # two lines in one chunk: taking the first leaves the second decoded but untaken
    client, server = pair
    server.sendall(b'{"event": "first"}\n{"event": "untaken"}\n')
    assert client.wait_event("first", timeout=1) == {"event": "first"}
    client.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "again.sock"))
    listener.listen(1)
    client.path = tmp_path / "again.sock"
    client.connect(timeout=1)
    fresh, _ = listener.accept()
    with pytest.raises(WaitTimeout):
        client.wait_event("untaken", timeout=0.05)
    fresh.close()
    listener.close()


def test_request_timeout_names_what_it_waited_for(pair):
    client, _server = pair
    with pytest.raises(WaitTimeout, match=r"peer's reply to 'info' \(id 1\)"):
        client.request({"cmd": "info"}, timeout=0.05)


def test_closed_peer_is_reported(pair):
    client, server = pair
    server.close()
    with pytest.raises(HostError, match="closed the connection"):
        client.wait_event("hello", timeout=1)


def test_garbage_line_is_reported_not_parsed(pair):
    client, server = pair
    server.sendall(b"not json\n")
    with pytest.raises(HostError, match="not JSON"):
        client.wait_event("hello", timeout=1)


def test_connect_timeout_names_the_socket(tmp_path):
    client = JsonLinesClient(tmp_path / "absent.sock", "peer")
    with pytest.raises(WaitTimeout, match="absent.sock"):
        client.connect(timeout=0.05)


@pytest.mark.parametrize("line,needle", [
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"id": 1, "ok": true, "result": NaN}\n', "NaN"),
    (b"[" * 100 + b"\n", "nested deeper"),
])
def test_lines_the_shared_codec_refuses_are_reported(pair, line, needle):
    client, server = pair
    server.sendall(line)
    with pytest.raises(HostError, match=needle):
        client.wait_event("hello", timeout=1)


def test_nan_is_never_sent(pair):
    client, _server = pair
    with pytest.raises(HostError, match="cannot send"):
        client.send({"cmd": "raise", "value": float("nan")})

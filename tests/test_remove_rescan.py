"""The remove-rescan scenario's host-side parts: the raiser that keeps the device raising
through a teardown (against a real device server process) and the ledger that starts from
a device with a history."""

import time

from agent.host.lab.agent_client import JsonLinesClient
from agent.host.lab.device_server import DeviceServer
from agent.host.scenarios.remove_rescan import Raiser, seeded_ledger
from agent.host.verdict.ledger import GroupRequest


def state(n=8, **vectors):
    out = {"irq_total": 3, "vectors": [{"index": i, "raised": 0, "delivered": 0,
                                        "pending": False} for i in range(n)]}
    for key, fields in vectors.items():
        out["vectors"][int(key[1:])].update(fields)
    return out


def test_the_raiser_raises_until_stopped_and_every_raise_reaches_the_device(tmp_path):
    server = DeviceServer(tmp_path / "n.sock", tmp_path / "n.ctl", tmp_path / "ev.jsonl",
                          tmp_path / "err.log", vectors=8)
    server.start()
    try:
        raiser = Raiser(server.second_client("device-raiser"), [1, 5])
        raiser.start()
        time.sleep(0.3)
        raised = raiser.stop()
        assert not raiser.is_alive() and raiser.error is None
        assert raised >= 2 and raised % 2 == 0
        vectors = server.state()["vectors"]
        assert vectors[1]["raised"] == vectors[5]["raised"] == raised // 2
        assert vectors[1]["pending"] and vectors[1]["delivered"] == 0   # no client: held
    finally:
        server.stop()


def test_the_raiser_reports_a_device_it_cannot_reach(tmp_path):
    raiser = Raiser(JsonLinesClient(tmp_path / "missing.ctl", "device-raiser"), [1])
    raiser.start()
    assert raiser.stop() == 0 and raiser.error


def test_the_seeded_ledger_starts_from_the_device_and_index_0_from_the_teardown():
    since = state(v0={"raised": 40, "delivered": 30, "pending": True})
    now = state(v0={"raised": 40, "delivered": 31}, v3={"raised": 7, "delivered": 5,
                                                        "pending": True})
    book = seeded_ledger(8, 2, now, since)
    assert book.expected_device()[3] == (7, 5, True) and book.expected_pending() == {3}
    assert book.expected_counts() == {0: 1}          # the held raise reached the probe once
    assert book.doorbell_raises == 3
    book.allocated(GroupRequest("A", 1, (3,), 1, 1))
    assert book.expected_counts()[3] == 1             # and index 3's reaches its next owner

"""The reset step's checks and records (agent/host/scenarios/reset_step.py), on views built as the
lab builds them, and the ledger's function reset."""

import json

import pytest

from agent.host.scenarios import reset_step
from agent.host.verdict.ledger import GroupRequest, Ledger
from agent.host.verdict.routing import Verdict
from tests.test_checks import snap, vec


def state(resets=1, faults=(), pending=(), delivered=None):
    delivered = delivered or {}
    return {"resets": resets, "faults": list(faults),
            "vectors": [{"index": i, "eventfd": False, "pending": i in pending,
                         "delivered": delivered.get(i, 0), "raised": 0, "masked": False}
                        for i in range(64)]}


def test_entry_restored_passes_when_message_and_mask_are_back():
    assert reset_step.entry_restored(snap(vec(5)), snap(vec(5)), 5).verdict is Verdict.PASS


@pytest.mark.parametrize("field,value,words", [
    ("data", 0, "message"),                    # the restore forgot the message
    ("ctrl", 1, "masked after the reset"),     # ... or left the entry masked (QEMU's reset)
    ("address_lo", 0xFEE02000, "message"),
])
def test_entry_restored_fails_on_a_changed_entry(field, value, words):
    after = vec(5)
    after["qemu"] = {**after["qemu"], field: value}
    result = reset_step.entry_restored(snap(vec(5)), snap(after), 5)
    assert result.verdict is Verdict.FAIL and words in result.summary
    assert result.evidence["after"][field] == value


def test_entry_restored_skips_without_a_qemu_view():
    after = vec(5)
    after["qemu"] = None
    assert reset_step.entry_restored(snap(vec(5)), snap(after), 5).verdict is Verdict.SKIP


def test_held_discarded():
    assert reset_step.held_discarded(state(), set(), 63, 0).verdict is Verdict.PASS
    kept = reset_step.held_discarded(state(pending={63}), {63}, 63, 0)
    assert kept.verdict is Verdict.FAIL
    assert "still holds it pending" in kept.summary and "PBA" in kept.summary
    sent = reset_step.held_discarded(state(delivered={63: 1}), set(), 63, 0)
    assert sent.verdict is Verdict.FAIL and "delivered 1 times" in sent.summary


def test_reached_device():
    assert reset_step.reached_device(state(1), state(2), "flr").verdict is Verdict.PASS
    none = reset_step.reached_device(state(1), state(1), "flr")
    assert none.verdict is Verdict.FAIL and "0 times" in none.summary
    armed = reset_step.reached_device(state(1), state(2, faults=[{"kind": "raise_on_reset"}]),
                                      "bus")
    assert armed.verdict is Verdict.FAIL and "never fired" in armed.summary


def test_qemu_sent_reads_the_log_from_the_offset(tmp_path):
    log = tmp_path / "events.jsonl"
    before = {"event": "rx", "cmd": "DEVICE_RESET"}
    log.write_text(json.dumps(before) + "\n")
    offset = log.stat().st_size
    events = [{"event": "rx", "cmd": "DEVICE_SET_IRQS", "start": 0, "count": 0, "nfds": 0,
               "flags": 33}, {"event": "rx", "cmd": "DEVICE_RESET"},
              {"event": "device_reset", "source": "device_reset"}, {"event": "tx"}]
    with open(log, "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in events) + "not json\n")
    sent = reset_step.qemu_sent(str(log), offset)
    assert sent == {"requests": {"DEVICE_SET_IRQS": 1, "DEVICE_RESET": 1},
                    "set_irqs": [{"start": 0, "count": 0, "nfds": 0, "flags": 33}],
                    "resets": ["device_reset"]}
    assert reset_step.qemu_sent(None, 0) is None
    assert "cannot read" in reset_step.qemu_sent(str(tmp_path / "gone"), 0)["error"]


def test_spare_indices_are_unowned_and_without_eventfd():
    st = state()
    st["vectors"][63]["eventfd"] = True
    assert reset_step._spare_indices(st, {0, 62}) == (61, 60)
    with pytest.raises(Exception, match="two unallocated"):
        reset_step._spare_indices({"vectors": st["vectors"][:2]}, {0})


def test_ledger_function_reset_discards_held_raises_and_restore_delivers_once():
    book = Ledger(table_size=64, cpus=2)
    book.allocated(GroupRequest("A", 1, (1, 2), 2, 2))
    book.raised(63, has_eventfd=False)            # held by the device before the reset
    book.function_mask(True)
    book.raised(1, has_eventfd=True)              # held behind MASKALL
    book.function_reset(qemu_table_reset=False)
    assert book.expected_pending() == set() and not book.function_masked
    book.raised(2, has_eventfd=False)             # inside the reset window
    book.raised(61, has_eventfd=False)
    book.msix_restored()
    assert book.expected_counts() == {0: 0, 1: 0, 2: 1}
    assert book.expected_pending() == {61}
    assert book.expected_device()[63] == (1, 0, False)


def test_ledger_bus_reset_drops_what_qemu_held():
    book = Ledger(table_size=64, cpus=2)
    book.allocated(GroupRequest("B", 1, (5,), 1, 1))
    book.freed(1)
    book.raised(5, has_eventfd=True)              # QEMU holds it behind the freed entry
    book.function_reset(qemu_table_reset=True)
    book.allocated(GroupRequest("E", 2, (5,), 1, 1))
    assert book.expected_counts()[5] == 0

"""The ledger: the expected set, requests and counts the scenario's checks judge against."""

import pytest

from agent.host.verdict.ledger import GroupRequest, Ledger, LedgerError


def ledger():
    return Ledger(table_size=64, cpus=2)


def group(label, gid, indices, **kw):
    return GroupRequest(label, gid, tuple(indices), kw.pop("min", len(indices)),
                        kw.pop("max", len(indices)), **kw)


def test_index_zero_is_always_live_and_groups_add_their_indices():
    book = ledger()
    assert book.live() == {0}
    book.allocated(group("A", 1, [1, 2]))
    assert book.live() == {0, 1, 2} and book.owner(2).label == "A"
    assert book.freed(1).label == "A"
    assert book.live() == {0} and book.retired_ids == {1}


def test_a_live_index_cannot_be_given_twice_and_static_group_cannot_be_freed():
    book = ledger()
    book.allocated(group("A", 1, [1, 2]))
    with pytest.raises(LedgerError):
        book.allocated(group("B", 2, [2, 3]))
    with pytest.raises(LedgerError):
        book.freed(0)
    with pytest.raises(LedgerError):
        book.freed(7)


def test_a_raise_before_allocation_is_held_by_the_device_and_delivered_once():
    book = ledger()
    book.raised(60, has_eventfd=False)
    book.raised(60, has_eventfd=False)           # coalesces: one pending
    assert book.expected_pending() == {60}
    assert book.expected_device()[60] == (2, 0, True)
    book.allocated(group("C", 3, [60, 61, 62], start=60))
    assert book.expected_counts()[60] == 1 and book.expected_pending() == set()
    assert book.expected_device()[60] == (2, 1, False)


def test_a_raise_of_a_freed_index_reaches_its_next_owner_once():
    book = ledger()
    book.allocated(group("B", 2, [5, 6]))
    book.raised(5, has_eventfd=True)
    assert book.expected_counts()[5] == 1
    book.freed(2)
    book.raised(5, has_eventfd=True)             # QEMU holds it behind the mask
    book.raised(5, has_eventfd=True)
    assert book.expected_device()[5] == (3, 3, False)
    book.allocated(group("E", 5, [5, 6]))
    assert book.expected_counts() == {0: 0, 5: 1, 6: 0}


def test_function_mask_holds_then_delivers_once():
    book = ledger()
    book.allocated(group("A", 1, [1]))
    book.function_mask(True)
    book.raised(1, has_eventfd=True)
    assert book.expected_counts()[1] == 0 and book.expected_pending() == {1}
    book.function_mask(False)
    assert book.expected_counts()[1] == 1 and book.expected_pending() == set()
    assert book.expected_device()[1] == (1, 1, False)


def test_doorbell_raises_are_what_irq_total_counts():
    book = ledger()
    book.allocated(group("A", 1, [1]))
    book.raised(1, has_eventfd=True)
    book.raised(1, has_eventfd=True, doorbell=True)
    assert book.doorbell_raises == 1 and book.expected_counts()[1] == 2


def test_requested_cpus_follow_the_request_then_a_move():
    book = ledger()
    book.allocated(group("B", 2, [5, 6], cpu=1))
    book.allocated(group("A", 1, [1]))
    assert book.requested_cpus(5) == (1,) and book.requested_cpus(1) is None
    book.retarget(1, 0)
    assert book.requested_cpus(1) == (0,)
    book.freed(1)
    book.allocated(group("G", 7, [1]))
    assert book.requested_cpus(1) is None        # a new owner starts from its own request
    with pytest.raises(LedgerError):
        book.retarget(40, 1)


def test_raise_outside_the_table_is_refused():
    with pytest.raises(LedgerError):
        ledger().raised(64, has_eventfd=True)


def test_a_raise_of_a_shut_down_vector_is_held_then_counted_once_at_start():
    led = ledger()
    led.allocated(group("M", 1, [4, 5], cpu=1, managed=True))
    led.shut_down([4, 5])
    assert led.unmasked_in_qemu() == {0}
    led.raised(4, has_eventfd=True)
    led.raised(4, has_eventfd=True)            # coalesced behind QEMU's mask
    assert led.expected_counts()[4] == 0 and led.expected_device()[4] == (2, 2, False)
    led.started([4, 5])
    assert led.expected_counts() == {0: 0, 4: 1, 5: 0}
    assert led.unmasked_in_qemu() == {0, 4, 5}
    with pytest.raises(LedgerError):
        led.started([4])
    with pytest.raises(LedgerError):
        led.shut_down([9])


def test_a_live_vector_s_held_raise_is_owed_until_the_device_delivers_it():
    ledger = Ledger(16, 2)
    ledger.allocated(GroupRequest("a", 1, (3, 4), 2, 2))
    ledger.raised(3, has_eventfd=False)              # the device held it (vector masked)
    ledger.raised(9, has_eventfd=False)              # not live: not owed to anyone
    assert ledger.owed() == {3} and ledger.expected_counts()[3] == 0
    ledger.delivered_held(3)
    assert ledger.owed() == set()
    assert ledger.expected_counts()[3] == 1 and ledger.expected_device()[3] == (1, 1, False)
    with pytest.raises(LedgerError):
        ledger.delivered_held(3)                     # delivered once, not twice
    with pytest.raises(LedgerError):
        ledger.delivered_held(9)


def test_last_doorbell_follows_doorbell_raises_only_and_a_register_reset():
    book = Ledger(table_size=8, cpus=1)
    assert book.last_doorbell == 0                      # LAST_VECTOR's reset value
    book.raised(5, has_eventfd=False, doorbell=True)
    book.raised(3, has_eventfd=False)                   # from the device: not a doorbell
    assert (book.last_doorbell, book.doorbell_raises) == (5, 1)
    book.registers_reset()
    assert book.last_doorbell == 0 and book.doorbell_raises == 1


def test_a_function_reset_puts_last_vector_back_to_its_reset_value():
    """FLR and DEVICE_RESET reset the device's registers (qemu_device NicDevice.reset): the
    ledger's LAST_VECTOR expectation follows, or device_registers_match fails after the
    reset step."""
    book = Ledger(table_size=8, cpus=1)
    book.raised(5, has_eventfd=False, doorbell=True)
    book.function_reset(qemu_table_reset=False)
    assert book.last_doorbell == 0

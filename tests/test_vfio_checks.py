"""The vfio-pci scenario's checks (agent/host/verdict/vfio_checks.py), each shown passing on
the views a correct run gives (as seen on 7.3.4 after a release) and failing on the view a
bug gives."""

from __future__ import annotations

import pytest

from agent.host.scenarios.vfio_pci import release_tuple
from agent.host.verdict import vfio_checks as vc
from agent.host.verdict.routing import Verdict

BDF = "0000:01:00.0"


def view(*entries):
    """A ``vfio_view`` reply: (index, handler?) pairs."""
    return {"bdf": BDF, "irqs": [{"irq": 34 + n, "index": index, "count": 0,
                                  "actions": [f"vfio-msix[{index}]({BDF})"] if handler else []}
                                 for n, (index, handler) in enumerate(entries)]}


def table(unmasked, size=64):
    return {i: {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 0 if i in unmasked else 1}
            for i in range(size)}


def state(eventfds, enabled=True, size=64):
    return {"msix": {"enabled": enabled},
            "vectors": [{"index": i, "eventfd": i in eventfds} for i in range(size)]}


RELEASED = view((0, True), (8, False), (63, True))      # 8's trigger released


def test_views_after_a_release_pass():
    assert vc.msi_irqs_match_allocated(RELEASED, {0, 8, 63}).verdict is Verdict.PASS
    assert vc.handlers_match_triggers(RELEASED, {0, 63}).verdict is Verdict.PASS
    assert vc.qemu_table_matches_triggers(table({0, 63}), {0, 63}).verdict is Verdict.PASS
    assert vc.device_eventfds_match(state({0, 8, 63}), {0, 8, 63}).verdict is Verdict.PASS


@pytest.mark.parametrize("check, args, words", [
    (vc.msi_irqs_match_allocated, (view((0, True)), {0, 8}), "lacks [8]"),
    (vc.msi_irqs_match_allocated, (RELEASED, {0, 63}), "has [8] beyond"),
    (vc.handlers_match_triggers, (RELEASED, {0, 8, 63}), "lacks [8]"),
    (vc.handlers_match_triggers, (view((0, True), (8, True)), {0}), "has [8]"),
    (vc.qemu_table_matches_triggers, (table({0, 8, 63}), {0, 63}), "has [8]"),
    (vc.device_eventfds_match, (state({0}), {0, 8}), "lacks [8]"),
])
def test_views_that_disagree_fail_naming_the_index(check, args, words):
    result = check(*args)
    assert result.verdict is Verdict.FAIL and words in result.summary


def test_an_irq_without_an_index_fails_the_check_instead_of_crashing_it():
    result = vc.msi_irqs_match_allocated(view((0, True), (None, False)), {0})
    assert result.verdict is Verdict.FAIL and "has [None]" in result.summary


def test_eventfds_fired_exactly_once_and_no_other():
    ok = vc.eventfds_fired("x", {0: 1, 8: 0}, 0, {0: 1}, {0, 8})
    assert [r.verdict for r in ok] == [Verdict.PASS, Verdict.PASS]
    lost = vc.eventfds_fired("x", {0: 0}, 0, {0: 1}, {0})
    assert lost[0].verdict is Verdict.FAIL and "fired 0 times, expected 1" in lost[0].summary
    twice = vc.eventfds_fired("x", {0: 2}, 0, {0: 1}, {0})
    assert twice[0].verdict is Verdict.FAIL
    stray = vc.eventfds_fired("x", {0: 1, 8: 1}, 0, {0: 1}, {0, 8})
    assert [r.verdict for r in stray] == [Verdict.PASS, Verdict.FAIL] and stray[1].index == 8
    old = vc.eventfds_fired("x", {0: 1}, 1, {0: 1}, {0})
    assert old[0].verdict is Verdict.FAIL and "swapped-out" in old[0].summary


def test_refill_reuses_irq():
    assert vc.refill_reuses_irq(8, 35, 35).verdict is Verdict.PASS
    assert vc.refill_reuses_irq(8, 35, 40).verdict is Verdict.FAIL
    assert vc.refill_reuses_irq(8, None, None).verdict is Verdict.FAIL     # never allocated


def test_irq_info_checks():
    assert vc.irq_count_is_table_size({"count": 64}, 64).verdict is Verdict.PASS
    assert vc.irq_count_is_table_size({"count": 1}, 64).verdict is Verdict.FAIL
    assert vc.noresize_clear({"flags": 1}, 8).verdict is Verdict.PASS
    assert vc.noresize_clear({"flags": 9}, 8).verdict is Verdict.FAIL


def test_nothing_left_after_disable():
    assert vc.nothing_left(view(), table(set()), state(set(), enabled=False)).verdict \
        is Verdict.PASS
    left = vc.nothing_left(view((8, False)), table(set()), state({8}, enabled=True))
    assert left.verdict is Verdict.FAIL
    for words in ("msi_irqs still holds", "MSI-X enabled", "eventfds for [8]"):
        assert words in left.summary


def test_release_tuple():
    assert release_tuple("7.3.4+deb13-amd64") == (7, 3)
    assert release_tuple("6.12.117+deb13-amd64") == (6, 12)
    assert release_tuple("weird") is None

"""A soak on several NICs: every reconciliation judges every NIC against its own ledger,
so a count that turns up on the wrong NIC fails on both, each named for its NIC; the
results stay routable (routing.json attaches indices to NIC 0's final records only);
the totals sum the NICs; ``--nics`` and a fault's ``nic=`` are checked before anything
starts.  No lab: the soak's pure parts driven with real ledgers and totals."""

from __future__ import annotations

import pytest

from agent.host import cli
from agent.host.jobs.soak import SoakJob
from agent.host.scenarios.soak import Soak
from agent.host.scenarios.soak_nic import SoakStats
from agent.host.verdict.routing import Snapshot, Verdict


def soak_on(nics: int) -> Soak:
    """A soak of ``nics`` NICs, each begun (static vector 0 counted 4 times before)."""
    soak = Soak(None, seed=1, seconds=1, nics=nics)
    for nic in soak.nics:
        nic.begin(64, 2, {"0": 4})
    soak.step = "op3"
    return soak


def test_a_count_moved_from_nic0_to_nic1_fails_on_both_named():
    soak = soak_on(2)
    nic0, nic1 = soak.nics
    nic0.ledger.raised(0, has_eventfd=True)           # raised on NIC 0 ...
    soak.judge_totals([{0: 4}, {0: 5}], nic0, [0])     # ... counted on NIC 1
    labels = {r.label for r in soak.failures}
    assert labels == {"nic0/op3/no_interrupt_lost[0]", "nic1/op3/no_spurious_interrupt[0]"}
    by_nic = {r.evidence["nic"]: r for r in soak.failures}
    assert by_nic[0].summary.startswith("NIC 0: ") and by_nic[1].summary.startswith("NIC 1: ")
    assert nic1.passed["no_interrupt_lost"] == 1 and "no_interrupt_lost" not in nic0.passed


def test_counts_where_the_ledger_expects_them_pass_on_every_nic():
    soak = soak_on(3)
    soak.nics[2].ledger.raised(0, has_eventfd=True)
    soak.judge_totals([{0: 4}, {0: 4}, {0: 5}], soak.nics[2], [0])
    assert not soak.failures
    assert [nic.stats.interrupts for nic in soak.nics] == [0, 0, 1]
    assert all(nic.passed["no_spurious_interrupt"] == 1 for nic in soak.nics)
    with pytest.raises(ValueError):                      # a NIC's totals left out
        soak.judge_totals([{0: 4}, {0: 4}], None, ())


def test_one_nic_names_results_as_the_single_nic_soak_always_did():
    soak = soak_on(1)
    soak.nics[0].ledger.raised(0, has_eventfd=True)
    soak.judge_totals([{0: 4}], soak.nics[0], [0])
    (lost,) = soak.failures
    assert lost.label == "op3/no_interrupt_lost[0]" and "nic" not in lost.evidence
    assert lost.summary.startswith("vector 0 counted 4")


def test_results_attach_only_nic0_indices_the_final_snapshot_has():
    """Failures before the end (no final snapshot) or on another NIC carry their index
    in the evidence, so routing.json can be written; the labels keep it."""
    for nics in (1, 2):
        soak = soak_on(nics)
        soak.nics[-1].ledger.raised(0, has_eventfd=True)
        soak.judge_totals([{0: 4}] * nics, soak.nics[-1], [0])
        results = soak.results()
        Snapshot(()).with_checks(results)                # raised ValueError before
        (failed,) = [r for r in results if r.verdict is Verdict.FAIL]
        assert failed.index is None and failed.evidence["index"] == 0
        assert soak.failures[0].label.endswith("no_interrupt_lost[0]")
        steps = {r.step for r in results if r.verdict is Verdict.PASS}
        assert steps == ({"soak"} if nics == 1 else {"nic0/soak", "nic1/soak"})


def test_totals_sum_the_nics():
    a, b = SoakStats(), SoakStats()
    a.ops.update(alloc=2, free=1)
    b.ops.update(alloc=1)
    a.raises["device"], b.raises["doorbell"] = 5, 3
    a.interrupts, b.interrupts, a.reconciliations, b.reconciliations = 5, 3, 9, 9
    a.rss_kib, b.rss_kib = [100, 110], [200, 205]
    a.device, b.device = {"raised": 5, "irq_total": 0}, {"raised": 3, "irq_total": 3}
    total = SoakStats.merged([a, b]).to_dict(2.0)
    assert (total["ops"], total["raises"], total["interrupts"]) == (4, 8, 8)
    assert total["reconciliations"] == 9 and total["device_rss_kib"]["samples"] == [300, 315]
    assert total["device"] == {"raised": 8, "irq_total": 3}
    assert SoakStats.merged([a]) is a


@pytest.mark.parametrize("words, named", [
    (["--nics", "0"], "--nics must be 1..8, not 0"),
    (["--nics", "9"], "--nics must be 1..8, not 9"),
    (["--nics", "two"], "--nics takes an integer"),
])
def test_soak_nics_is_bounded_as_for_run(words, named, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["soak", *words])
    assert err.value.code == 125
    err_text = capsys.readouterr().err
    assert named in err_text and "bad_option" in err_text


@pytest.mark.parametrize("command", ["soak", "run"])
@pytest.mark.parametrize("words", [
    ["--nics", "2", "--device-fault", "drop_raise:nic=2"],
    ["--device-fault", "drop_raise:nic=1"],
    ["--nics", "2", "--device-fault", "drop_raise:nic=x"],
    ["--nics", "3", "--device-fault", "drop_raise:nic=-1"],
])
def test_a_fault_on_no_nic_of_the_run_is_refused_before_anything_starts(command, words,
                                                                        capsys, tmp_path):
    assert cli.main([command, "--results", str(tmp_path), *words]) == 125
    out = capsys.readouterr()
    assert "bad_option" in out.out + out.err and "names no NIC of this run" in out.out + out.err
    assert not any(tmp_path.iterdir())                   # nothing started


def test_soak_defaults_to_one_nic_and_reproduces_its_nics():
    assert cli.parser().parse_args(["soak"]).nics == 1
    args = cli.parser().parse_args(["soak", "--nics", "3", "--device-fault",
                                    "drop_raise:nic=2,count=0"])
    words = SoakJob.from_args(args, seed=7).reproduce().split()
    assert words[words.index("--nics") + 1] == "3"
    assert "--device-fault=drop_raise:nic=2,count=0" in words
    assert "--nics" not in SoakJob.from_args(cli.parser().parse_args(["soak"]), seed=7).reproduce()


def test_the_live_cap_is_shared_by_every_nic():
    """The CPUs' vector space is one for all NICs: a NIC allocates only while fewer than
    LIVE_CAP vectors are live on all of them together."""
    from agent.host.verdict.ledger import GroupRequest
    from agent.host.scenarios.soak_nic import LIVE_CAP
    soak = soak_on(2)
    for nic in soak.nics:
        nic.begin(256, 2, {})
    soak.nics[0].ledger.allocated(GroupRequest("g1", 1, tuple(range(1, 151)), 150, 150))
    assert [view.live_cap for view in soak._views()] == [LIVE_CAP - 1, LIVE_CAP - 151]
    one = soak_on(1)
    assert one._views()[0].live_cap == min(LIVE_CAP, 64)


class RefusesWithEnospc:
    """The guest agent's side of one allocation the driver refuses with ENOSPC."""

    def agent(self, cmd, **args):
        from agent.host.verdict.outcome import DriverCallFailed
        raise DriverCallFailed(cmd, args, 28, "ENOSPC")


@pytest.mark.parametrize("nics", [1, 2])
def test_an_enospc_with_room_in_the_table_and_the_vector_space_fails(nics):
    soak = soak_on(nics)
    nic = soak.nics[-1]
    nic.__dict__["target"] = RefusesWithEnospc()
    assert soak._alloc(nic, {"min": 4, "max": 5}) == {"result": "ENOSPC"}
    [failed] = soak.failures
    assert failed.name == "enospc_only_when_full" and failed.verdict is Verdict.FAIL
    assert failed.evidence["live_vectors_in_guest"] == nics     # every NIC's static vector
    assert failed.step == ("op3" if nics == 1 else f"nic{nics - 1}/op3")
    assert nic.stats.enospc == 1


def test_an_enospc_when_the_table_is_full_passes():
    soak = soak_on(1)
    nic = soak.nics[0]
    nic.__dict__["target"] = RefusesWithEnospc()
    from agent.host.verdict.ledger import GroupRequest  # two entries left (62, 63): min 3 cannot fit
    nic.ledger.allocated(GroupRequest("g1", 1, tuple(range(1, 62)), 61, 61))
    soak._alloc(nic, {"min": 3, "max": 3})
    assert soak.failures == [] and soak.passed["enospc_only_when_full"] == 1


# --- a live vector's raise the device holds pending is owed --------------------------------

def device_state(index: int, *, pending: bool, delivered: int, eventfd: bool = True,
                 masked: bool = False, function_mask: bool = False) -> dict:
    return {"msix": {"enabled": True, "function_mask": function_mask},
            "vectors": [{"index": index, "eventfd": eventfd, "masked": masked,
                         "pending": pending, "raised": 1, "delivered": delivered}]}


def owing(index: int = 0):
    soak = soak_on(1)
    nic = soak.nics[0]
    nic.ledger.raised(index, has_eventfd=False)          # held while masked
    assert nic.ledger.owed() == {index}
    return soak, nic


def test_a_held_raise_still_masked_is_owed_not_failed_until_the_end():
    soak, nic = owing()
    released, results = nic.settle_owed(device_state(0, pending=True, delivered=0, masked=True))
    assert (released, results) == ([], []) and nic.ledger.owed() == {0}
    _, [result] = nic.settle_owed(device_state(0, pending=True, delivered=0, masked=True),
                                  final=True)
    assert result.name == "held_raise_delivered" and result.verdict is Verdict.FAIL
    assert "at the end" in result.summary


def test_a_held_raise_the_device_could_deliver_fails_at_once():
    soak, nic = owing()
    _, [result] = nic.settle_owed(device_state(0, pending=True, delivered=0))
    assert result.verdict is Verdict.FAIL and result.index == 0
    assert result.evidence["device"]["eventfd"] and not result.evidence["device"]["masked"]


def test_a_held_raise_delivered_is_counted_once_and_reconciled():
    soak, nic = owing()
    released, [result] = nic.settle_owed(device_state(0, pending=False, delivered=1))
    assert released == [0] and result.verdict is Verdict.PASS
    assert nic.ledger.expected_counts()[0] == 5              # 4 before the soak, + the held one
    soak.judge_totals([{0: 5}], None, (), {0: released})
    assert soak.failures == []
    soak.judge_totals([{0: 7}], None, (), {0: []})           # two more nobody raised
    assert [f.name for f in soak.failures] == ["no_spurious_interrupt"]


class DeviceHolds:
    """The device's side of one raise it answers ``pending``, and its state then."""

    def __init__(self, eventfd: bool):
        self.eventfd = eventfd

    def device_command(self, cmd, **args):
        if cmd == "raise":
            return {"results": [{"vector": v, "outcome": "pending"} for v in args["vectors"]]}
        return device_state(0, pending=True, delivered=0, eventfd=self.eventfd, masked=True)


@pytest.mark.parametrize("eventfd", [True, False])
def test_a_live_raise_held_with_its_eventfd_is_owed_without_one_fails(eventfd):
    soak = soak_on(1)
    nic = soak.nics[0]
    nic.__dict__["target"] = DeviceHolds(eventfd)
    assert soak._device_raise(nic, [0], live=True) == ["pending"]
    assert nic.ledger.owed() == {0}
    names = [f.name for f in soak.failures]
    assert names == ([] if eventfd else ["live_vector_has_eventfd"])


class LabWith:
    def __init__(self, *append: str):
        self.append = append


def test_an_appended_irqaffinity_counts_the_guest_as_one_cpu_for_the_vector_space():
    from agent.host.verdict.ledger import GroupRequest
    verdicts = []
    for append in ((), ("quiet", "irqaffinity=0")):
        soak = soak_on(1)
        soak.lab = LabWith(*append)
        nic = soak.nics[0]
        nic.__dict__["target"] = RefusesWithEnospc()
        nic.ledger = type(nic.ledger)(256, 2)
        nic.ledger.allocated(GroupRequest("g1", 1, tuple(range(1, 151)), 150, 150))
        soak._alloc(nic, {"min": 16, "max": 16})      # 151 + 16 live: > 160, <= 320
        verdicts.append([r.verdict for r in soak.failures] or ["pass"])
    assert verdicts == [[Verdict.FAIL], ["pass"]]

"""``msixlab run --repeat N``'s verdict: the worst run decides, disagreement is flaky."""

import pytest

from agent.host.cli import parser
from agent.host.jobs.repeat import overall_exit, summarize


@pytest.mark.parametrize("codes,want", [
    ([0, 0, 0], 0), ([0, 1, 0], 1), ([125, 0], 125), ([125, 1, 0], 1), ([1], 1), ([2], 125),
])
def test_overall_exit_is_the_worst(codes, want):
    assert overall_exit(codes) == want


def run(number, code, failed=()):
    return {"number": number, "run_id": f"run-{number}", "exit_code": code, "failed": list(failed)}


def test_steady_runs_are_not_flaky():
    summary = summarize([run(1, 1, ["a[1]"]), run(2, 1, ["a[1]"])])
    assert (summary["exit_code"], summary["flaky"], summary["counts"]) == (1, False, {"1": 2})


@pytest.mark.parametrize("runs", [
    [run(1, 0), run(2, 1, ["raise_counted_once_on_cpu[1]"])],      # pass, then fail
    [run(1, 1, ["a[1]"]), run(2, 1, ["b[2]"])],                    # different failures
    [run(1, 0), run(2, 125)],                                       # could not judge once
])
def test_disagreeing_runs_are_flaky(runs):
    assert summarize(runs)["flaky"] is True


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_repeat_needs_a_positive_count(value, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["run", "--repeat", value])
    assert info.value.code == 125          # a bad option: could not judge
    assert "--repeat: must be a whole number of at least 1" in capsys.readouterr().err

"""The one deadline/poll helper: returns the condition's value, times out naming the wait."""

import math

import pytest

from msixlab_common.deadline import Deadline, wait_until
from msixlab_common.errors import MsixlabError, WaitTimeout


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds > 0
        self.now += seconds


def test_returns_the_first_truthy_value():
    clock, seen = Clock(), iter([0, None, {"n": 3}])
    deadline = Deadline(5, "three things", clock=clock)
    assert wait_until(lambda: next(seen), deadline, sleep=clock.sleep) == {"n": 3}
    assert deadline.remaining() == pytest.approx(5 - 2 * 0.02)


def test_times_out_naming_the_wait_and_the_detail():
    clock, calls = Clock(), []
    deadline = Deadline(1, "vector 5 to be counted", clock=clock)
    with pytest.raises(WaitTimeout) as err:
        wait_until(lambda: calls.append(clock.now), deadline, interval=0.25,
                   detail=lambda: "counted 0", sleep=clock.sleep)
    assert "vector 5 to be counted" in str(err.value) and "counted 0" in str(err.value)
    assert err.value.timeout == 1 and isinstance(err.value, MsixlabError)
    assert err.value.exit_code == 125
    assert calls[-1] >= 101.0          # tried once more at the deadline
    assert len(calls) == 5


def test_check_and_remaining():
    clock = Clock()
    deadline = Deadline(2, "x", clock=clock)
    deadline.check()
    clock.now += 3
    assert deadline.remaining() == 0 and deadline.expired()
    with pytest.raises(WaitTimeout):
        deadline.check("late")


@pytest.mark.parametrize("bad", [-1, math.nan])
def test_rejects_a_bad_timeout(bad):
    with pytest.raises(ValueError):
        Deadline(bad, "x")

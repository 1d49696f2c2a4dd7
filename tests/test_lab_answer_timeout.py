"""Lab.agent never calls a guest unresponsive while it is still inside a wait the request
itself asked for: the host awaits the answer at least that wait plus a margin."""

import math

import pytest

from agent.host.lab.lab import AGENT_MARGIN_S, answer_timeout


@pytest.mark.parametrize("args, expect", [
    ({}, 30.0),                                            # no guest-side wait: the default
    ({"timeout_ms": 0}, 30.0),                             # 0: the driver's own default (1 s)
    ({"timeout_ms": 5000}, 5 + AGENT_MARGIN_S),
    ({"timeout_ms": 60000}, 60 + AGENT_MARGIN_S),          # the agent accepts up to 60 s
    ({"timeout_s": 600}, 600 + AGENT_MARGIN_S),            # await_device up to 600 s
    ({"timeout_s": 30, "timeout_ms": 90000}, 90 + AGENT_MARGIN_S),
])
def test_the_answer_is_awaited_past_the_wait_the_request_asks_for(args, expect):
    assert answer_timeout(30.0, args) == expect


def test_a_longer_timeout_of_the_caller_stands():
    assert answer_timeout(900.0, {"timeout_s": 600}) == 900.0


@pytest.mark.parametrize("bad", [-5, math.nan, math.inf, "600", True, None, [1]])
def test_a_value_the_agent_will_refuse_does_not_change_the_wait(bad):
    assert answer_timeout(30.0, {"timeout_s": bad, "timeout_ms": bad}) == 30.0

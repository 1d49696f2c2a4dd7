"""python -m bench's arithmetic: the ratio to the floor is taken pair by pair (a floor
run and the server run after it), the goal is judged on the median pair, and the modes
pin client and server as named."""

import importlib

bench = importlib.import_module("bench.__main__")


def _run(us: float, n: int = 200) -> list[int]:
    return [int(us * 1000)] * n


def test_ratio_is_the_median_of_the_pairs_ratios_and_judges_the_goal():
    # Pair 2 ran on two cores (slow floor and server alike): pooling would mix the runs.
    floor = [_run(10), _run(40), _run(10)]
    server = [_run(12), _run(46), _run(15)]
    r = bench.compare(floor, server)
    assert r["ratio_per_repeat"] == [1.2, 1.15, 1.5]
    assert r["ratio_to_floor"] == 1.2 and r["goal_met"]
    assert r["p99_ratio_per_repeat"] == [1.2, 1.15, 1.5]
    assert r["pingpong_floor"]["n"] == 600
    slow = bench.compare([_run(10)] * 3, [_run(13.5)] * 3)
    assert slow["ratio_to_floor"] == 1.35 and not slow["goal_met"]


def test_modes_pin_client_and_server_as_named():
    assert bench._modes({0, 1}) == [("same_core", {0}, 0), ("cross_core", {0}, 1),
                                    ("unpinned", {0, 1}, None)]
    assert bench._modes({3}) == [("same_core", {3}, 3), ("unpinned", {3}, None)]

"""python -m bench's arithmetic: the ratio to the floor is taken pair by pair (a floor
run and the server run after it), the goal is judged on the median pair, and the modes
pin client and server as named."""

import importlib
import subprocess
import sys

bench = importlib.import_module("bench.__main__")


def _run(us: float, n: int = 200, voluntary: float = 1.0, preempted: float = 0.0):
    return bench.Side([int(us * 1000)] * n, voluntary, preempted)


def test_ratio_is_the_median_of_the_pairs_ratios_and_judges_the_goal():
    # Pair 2 ran on two cores (slow floor and server alike): pooling would mix the runs.
    floor = [_run(10), _run(40), _run(10)]
    server = [_run(12), _run(46), _run(15)]
    r = bench.compare(floor, server)
    assert r["ratio_per_repeat"] == [1.2, 1.15, 1.5]
    assert r["ratio_to_floor"] == 1.2 and r["goal_met"]
    assert r["p99_ratio_per_repeat"] == [1.2, 1.15, 1.5]
    assert r["pingpong_floor"]["n"] == 600
    assert "epoll_floor" not in r
    slow = bench.compare([_run(10)] * 3, [_run(13.5)] * 3)
    assert slow["ratio_to_floor"] == 1.35 and not slow["goal_met"]


def test_epoll_floor_ratios_and_switches_per_round_trip():
    floor = [_run(10), _run(10), _run(20)]
    epoll = [_run(12, preempted=0.5), _run(13, preempted=0.8), _run(24, preempted=0.7)]
    server = [_run(15, voluntary=0.25, preempted=1.25), _run(13, voluntary=0.5, preempted=1.0),
              _run(30, voluntary=0.75, preempted=1.5)]
    r = bench.compare(floor, server, epoll)
    assert r["epoll_floor_ratio_to_floor"] == 1.2          # 1.2, 1.3, 1.2
    assert r["ratio_to_epoll_floor"] == 1.25               # 1.25, 1.0, 1.25
    assert r["ratio_to_floor"] == 1.5                      # 1.5, 1.3, 1.5
    assert r["region_read"]["switches_per_round_trip"] == {"voluntary": 0.5, "preempted": 1.25}
    assert r["epoll_floor"]["switches_per_round_trip"] == {"voluntary": 1.0, "preempted": 0.7}


def test_switches_reads_a_real_process():
    code = "import time\nfor _ in range(20):\n    time.sleep(0.005)\nprint('slept', flush=True)\ninput()"
    sleeper = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert sleeper.stdout.readline() == "slept\n"
        waited, _preempted = bench.switches(sleeper.pid)
        assert waited >= 20                                 # each sleep waited once
    finally:
        sleeper.communicate("\n", timeout=10)


def test_each_side_really_answers(tmp_path, monkeypatch):
    """The floor, the epoll floor and the device server each answer 100 round trips of
    36-byte replies (``_rounds`` reads exactly that much per request), unpinned.  The
    client socket gets a timeout here (the bench has none: a timeout makes every recv
    poll first), so a side that answers short fails instead of hanging."""
    connect = bench._connect

    def with_timeout(path):
        s = connect(path)
        s.settimeout(10)
        return s

    monkeypatch.setattr(bench, "_connect", with_timeout)
    for run in (lambda: bench._pingpong_run(str(tmp_path), None, 100),
                lambda: bench._pingpong_run(str(tmp_path), None, 100, epoll=True),
                lambda: bench._server_run(str(tmp_path), None, 100)):
        side = run()
        assert len(side.samples) == 100 and min(side.samples) > 0
        assert side.voluntary >= 0 and side.preempted >= 0

"""python -m bench [--iterations N] [--repeat R] [--out DIR]

Concepts: REGION_READ round-trip latency of the device server, measured with a raw
client (pre-packed request, one send and one recv per round trip), against a raw
UNIX-socket ping-pong of the same sizes as the floor, and an epoll ping-pong that reads
as the device server does (the least any such Python server can do).  Each is run with
server and client pinned to one core, pinned to two cores, and unpinned (which mixes the
two from run to run).  Floor, epoll floor and server runs alternate, R rounds with fresh
processes (a run's latency moves by a microsecond or more with where the processes land,
so one run alone says little).  Reports median, p99 and messages/s of all samples of
each side and its server's context switches per round trip (waited, preempted), the
median over the rounds of the server/floor ratio of medians and of p99s (and each
round's), the epoll floor's ratio to the floor and the server's to it, whether the ratio
goal (``GOAL_RATIO``) is met and the load average before and after, and writes JSON to
results/bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

from msixlab_common.lifetime import process_status
from qemu_device.protocol import Command, RegionAccess, pack_message
from qemu_device.testing import QEMU_CAPS

REG_SCRATCH = 0x18
#: One side's run: round-trip times (ns) and its server's context switches per round
#: trip, voluntary (it waited) and involuntary (it was preempted).
Side = namedtuple("Side", "samples voluntary preempted")
#: the REGION_READ round trip may take at most this many times the ping-pong floor
GOAL_RATIO = 1.3


def _start(argv: list[str], cpu: int | None) -> subprocess.Popen:
    def pin():
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=pin)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready or not proc.stdout.readline():
        proc.kill()
        raise SystemExit(f"bench: {argv[2]} did not become ready")
    return proc


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = s.recv(n)
    while len(data) < n:
        data += s.recv(n - len(data))
    return data


def _rounds(s: socket.socket, request: bytes, reply_size: int, n: int) -> list[int]:
    send, recv, clock = s.send, s.recv, time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        send(request)
        data = recv(reply_size)
        if len(data) != reply_size:
            data += _recv_exact(s, reply_size - len(data))
        out[i] = clock() - t0
    return out


def _summary(samples_ns: list[int]) -> dict:
    s = sorted(samples_ns)
    total = sum(s) / 1e9
    return {"n": len(s), "median_us": round(statistics.median(s) / 1e3, 2),
            "p99_us": round(s[int(len(s) * 0.99) - 1] / 1e3, 2),
            "min_us": round(s[0] / 1e3, 2), "msgs_per_s": round(len(s) / total)}


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of process ``pid`` so far, summed over
    its threads (``/proc/PID/status``)."""
    status = process_status(pid)
    return (int(status["voluntary_ctxt_switches"]),
            int(status["nonvoluntary_ctxt_switches"]))


def _measure(proc: subprocess.Popen, s: socket.socket, req: bytes, n: int) -> Side:
    """Warm up, then ``n`` round trips; the server process's context switches over the
    measured ones."""
    _rounds(s, req, 36, min(n, 2000))
    before = switches(proc.pid)
    samples = _rounds(s, req, 36, n)
    after = switches(proc.pid)
    return Side(samples, (after[0] - before[0]) / n, (after[1] - before[1]) / n)


def _server_run(tmp: str, cpu: int | None, n: int) -> Side:
    """REGION_READ round trips against a fresh device server (pinned to ``cpu`` if given):
    ``n`` measured after a warm-up, in ns."""
    path = os.path.join(tmp, "nic.sock")
    proc = _start([sys.executable, "-m", "qemu_device", "serve", "--socket", path], cpu)
    try:
        s = _connect(path)
        caps = json.dumps(QEMU_CAPS).encode() + b"\0"
        s.send(pack_message(0, Command.VFIO_USER_VERSION, b"\0" * 4 + caps))
        hdr = _recv_exact(s, 16)
        _recv_exact(s, int.from_bytes(hdr[4:8], "little") - 16)
        req = pack_message(1, Command.VFIO_USER_REGION_READ,
                           RegionAccess(REG_SCRATCH, 0, 4).pack())
        side = _measure(proc, s, req, n)
        s.close()
        return side
    finally:
        proc.terminate()
        proc.wait(10)


def _pingpong_run(tmp: str, cpu: int | None, n: int, epoll: bool = False) -> Side:
    """The same round trips against a raw UNIX-socket echo server (``bench.pingpong``):
    the floor the device server is judged against, or with ``epoll`` the floor of any
    epoll server reading with ``recvmsg_into``."""
    path = os.path.join(tmp, "pp.sock")
    proc = _start([sys.executable, "-m", "bench.pingpong", path]
                  + (["--epoll"] if epoll else []), cpu)
    try:
        s = _connect(path)
        side = _measure(proc, s, b"\0" * 32, n)
        s.close()
        return side
    finally:
        proc.wait(10)


def _ratios(floor: list[list[int]], other: list[list[int]]) -> tuple[list[float], list[float]]:
    """Per adjacent pair, other/floor of the medians and of the p99s."""
    pairs = [(_summary(a), _summary(b)) for a, b in zip(floor, other)]
    return ([round(r["median_us"] / f["median_us"], 2) for f, r in pairs],
            [round(r["p99_us"] / f["p99_us"], 2) for f, r in pairs])


def _side(runs: list[Side]) -> dict:
    """The pooled summary of one side's runs, and its server's context switches per
    round trip (the median over the runs)."""
    out = _summary(sum((r.samples for r in runs), []))
    out["switches_per_round_trip"] = {
        "voluntary": round(statistics.median(r.voluntary for r in runs), 2),
        "preempted": round(statistics.median(r.preempted for r in runs), 2)}
    return out


def compare(floor: list[Side], server: list[Side], epoll: list[Side] | None = None) -> dict:
    """The runs of one mode (alternating, same sizes and pinning): the pooled summary of
    each side, and the ratios server/floor of each adjacent pair's median and p99.  The
    mode's ratios are the medians of the pairs' ratios: a pair ran under the same
    conditions (unpinned, one pair may share a core and the next not).  With ``epoll``
    runs, also the epoll floor's ratio to the floor and the server's to the epoll floor."""
    per_median, per_p99 = _ratios([r.samples for r in floor], [r.samples for r in server])
    ratio = round(statistics.median(per_median), 2)
    out = {"pingpong_floor": _side(floor), "region_read": _side(server),
           "ratio_to_floor": ratio, "p99_ratio_to_floor": round(statistics.median(per_p99), 2),
           "ratio_per_repeat": per_median, "p99_ratio_per_repeat": per_p99,
           "goal_ratio": GOAL_RATIO, "goal_met": ratio <= GOAL_RATIO}
    if epoll:
        floor_s, epoll_s = [r.samples for r in floor], [r.samples for r in epoll]
        out["epoll_floor"] = _side(epoll)
        out["epoll_floor_ratio_to_floor"] = round(statistics.median(
            _ratios(floor_s, epoll_s)[0]), 2)
        out["ratio_to_epoll_floor"] = round(statistics.median(
            _ratios(epoll_s, [r.samples for r in server])[0]), 2)
    return out


def _modes(cpus: set[int]) -> list[tuple[str, set[int], int | None]]:
    """(mode, the client's CPUs, the server's CPU or None): both on one core; on two
    cores (the QEMU-like case: a vCPU thread and the server apart), when there are two;
    and unpinned (the scheduler places them, run by run, on one core or two)."""
    first = min(cpus)
    modes = [("same_core", {first}, first)]
    if len(cpus) > 1:
        modes.append(("cross_core", {first}, min(cpus - {first})))
    modes.append(("unpinned", set(cpus), None))
    return modes


def main(argv=None) -> int:
    """``python -m bench``: floor and server alternating ``--repeat`` times, on one core,
    on two cores and unpinned, printed and written as JSON under ``--out``.  Returns 0 (the goal
    is reported, not enforced: performance is never a test verdict)."""
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="floor/server run pairs per mode, alternating (default 3)")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    if args.iterations < 100 or args.repeat < 1:
        ap.error("--iterations must be at least 100 and --repeat at least 1")
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": sys.version.split()[0],
              "cpus": os.cpu_count(), "iterations": args.iterations, "repeat": args.repeat,
              "loadavg_before": [round(x, 2) for x in os.getloadavg()], "runs": {}}
    original = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="qd-bench-") as tmp:
        for mode, mine, pin in _modes(original):
            os.sched_setaffinity(0, mine)
            floor, epoll, server = [], [], []
            for _ in range(args.repeat):
                floor.append(_pingpong_run(tmp, pin, args.iterations))
                epoll.append(_pingpong_run(tmp, pin, args.iterations, epoll=True))
                server.append(_server_run(tmp, pin, args.iterations))
            report["runs"][mode] = compare(floor, server, epoll)
    os.sched_setaffinity(0, original)
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"region-read-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    _print(report)
    print(f"written {path}")
    return 0


def _print(report: dict) -> None:
    print(f"load average {report['loadavg_before']} -> {report['loadavg_after']}, "
          f"{report['repeat']} x {report['iterations']} round trips per mode and side")
    for mode, r in report["runs"].items():
        for what in ("pingpong_floor", "epoll_floor", "region_read"):
            x = r[what]
            sw = x["switches_per_round_trip"]
            print(f"{mode:10} {what:15} median {x['median_us']:7.2f} us  p99 "
                  f"{x['p99_us']:7.2f} us  {x['msgs_per_s']:7d} msg/s  switches/rt "
                  f"{sw['voluntary']:.2f} waited {sw['preempted']:.2f} preempted")
        print(f"{mode:10} ratio to floor: median {r['ratio_to_floor']} (goal <= "
              f"{r['goal_ratio']}: {'met' if r['goal_met'] else 'NOT met'}), p99 "
              f"{r['p99_ratio_to_floor']}; per pair {r['ratio_per_repeat']}; epoll floor "
              f"{r['epoll_floor_ratio_to_floor']}x the floor, the server "
              f"{r['ratio_to_epoll_floor']}x the epoll floor")


if __name__ == "__main__":
    sys.exit(main())

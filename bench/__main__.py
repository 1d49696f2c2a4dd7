"""python -m bench [--iterations N] [--out DIR]

Concepts: REGION_READ round-trip latency of the device server, measured with a raw
client (pre-packed request, one send and one recv per round trip), against a raw
UNIX-socket ping-pong of the same sizes as the floor. Each is run with server and
client pinned to one core, and unpinned. Reports median, p99 and messages/s and writes
JSON to results/bench/.
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
from pathlib import Path

from qemu_device.protocol import Command, RegionAccess, pack_message
from qemu_device.testing import QEMU_CAPS

REG_SCRATCH = 0x18


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


def bench_server(tmp: str, cpu: int | None, n: int) -> dict:
    """REGION_READ round trips against a fresh device server (pinned to ``cpu`` if given):
    ``n`` measured after a warm-up."""
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
        _rounds(s, req, 36, min(n, 2000))                      # warm up
        result = _summary(_rounds(s, req, 36, n))
        s.close()
        return result
    finally:
        proc.terminate()
        proc.wait(10)


def bench_pingpong(tmp: str, cpu: int | None, n: int) -> dict:
    """The same round trips against a raw UNIX-socket echo server: the floor the device server
    is compared with."""
    path = os.path.join(tmp, "pp.sock")
    proc = _start([sys.executable, "-m", "bench.pingpong", path], cpu)
    try:
        s = _connect(path)
        req = b"\0" * 32
        _rounds(s, req, 36, min(n, 2000))
        result = _summary(_rounds(s, req, 36, n))
        s.close()
        return result
    finally:
        proc.wait(10)


def main(argv=None) -> int:
    """``python -m bench``: both benchmarks pinned to one core and unpinned, printed and
    written as JSON under ``--out``.  Returns 0."""
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    cpu = min(os.sched_getaffinity(0))
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": sys.version.split()[0],
              "cpus": os.cpu_count(), "iterations": args.iterations, "runs": {}}
    original = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="qd-bench-") as tmp:
        for mode in ("same_core", "unpinned"):
            pin = cpu if mode == "same_core" else None
            os.sched_setaffinity(0, {cpu} if pin is not None else original)
            report["runs"][mode] = {
                "pingpong_floor": bench_pingpong(tmp, pin, args.iterations),
                "region_read": bench_server(tmp, pin, args.iterations)}
            r = report["runs"][mode]
            r["ratio_to_floor"] = round(r["region_read"]["median_us"] /
                                        r["pingpong_floor"]["median_us"], 2)
    os.sched_setaffinity(0, original)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"region-read-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for mode, r in report["runs"].items():
        for what in ("pingpong_floor", "region_read"):
            x = r[what]
            print(f"{mode:10} {what:15} median {x['median_us']:7.2f} us  p99 "
                  f"{x['p99_us']:7.2f} us  {x['msgs_per_s']:7d} msg/s")
        print(f"{mode:10} ratio to floor {r['ratio_to_floor']}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

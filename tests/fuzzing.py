"""Shared pieces of the project's fuzzer (tests/test_fuzz_*.py), built on hypothesis.

Concepts: two profiles bound the run.  ``ci`` (the default) is what ``make test`` runs:
a few hundred examples in all, well under a minute.  ``long`` (``make fuzz``, or
``MSIXLAB_FUZZ=long``) runs many more.  ``MSIXLAB_FUZZ_EXAMPLES=N`` overrides the example
count of either.  Strategies here build vfio-user messages the way a hostile client would:
headers that are right, nearly right or wrong, payloads that are structured for their
command or random, and fds of every kind (eventfd, memfd, pipe, socket, nothing).
"""

from __future__ import annotations

import json
import os
import socket
import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from qemu_device.protocol import (HEADER_SIZE, Command, DmaMap, DmaUnmap, IrqInfo, IrqSet,
                                  RegionAccess, RegionInfo)

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=60, stateful_step_count=25, **_COMMON)
settings.register_profile("long", max_examples=3000, stateful_step_count=60, **_COMMON)


def load_profile() -> None:
    name = os.environ.get("MSIXLAB_FUZZ", "ci")
    settings.load_profile(name)
    override = os.environ.get("MSIXLAB_FUZZ_EXAMPLES")
    if override:
        settings.register_profile(f"{name}-n", settings.get_profile(name),
                                  max_examples=int(override))
        settings.load_profile(f"{name}-n")


def scaled(n: int) -> int:
    """An example count for one test: ``n`` under ``ci``, 50 times more under ``long``."""
    return n * 50 if os.environ.get("MSIXLAB_FUZZ") == "long" else n


# -- fds a message may carry ---------------------------------------------------------------

FD_KINDS = ("eventfd", "memfd", "pipe", "socket")


def make_fd(kind: str) -> int:
    """A fresh fd of ``kind`` (the caller closes it)."""
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_NONBLOCK)
    if kind == "memfd":
        fd = os.memfd_create("fuzz")
        os.ftruncate(fd, 4 * 4096)
        return fd
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    a, b = socket.socketpair()
    b.close()
    return a.detach()


fd_lists = st.lists(st.sampled_from(FD_KINDS), max_size=3)


# -- payloads ------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u32 = st.one_of(st.integers(0, 8), st.sampled_from([0xFFFFFFFF, 0x80000000, 63, 64, 2048]),
                st.integers(0, 0xFFFFFFFF))
u64 = st.one_of(st.integers(0, 0x10000), st.sampled_from([2 ** 64 - 1, 2 ** 63, 4096]),
                st.integers(0, 2 ** 64 - 1))
region = st.one_of(st.integers(0, 9), u32)
small_count = st.one_of(st.integers(0, 16), u32)


def _structured(command: int):
    C = Command
    if command == C.VFIO_USER_DMA_MAP:
        return st.builds(lambda a, f, o, ad, s: DmaMap(a, f, o, ad, s).pack(),
                         st.sampled_from([32, 8, 64]), st.integers(0, 7), u64, u64, u64)
    if command == C.VFIO_USER_DMA_UNMAP:
        return st.builds(lambda a, f, ad, s: DmaUnmap(a, f, ad, s).pack(),
                         st.sampled_from([24, 8]), st.integers(0, 3), u64, u64)
    if command == C.VFIO_USER_DEVICE_GET_REGION_INFO:
        return st.builds(lambda a, i: RegionInfo(a, 0, i, 0, 0, 0).pack(),
                         st.sampled_from([32, 16, 4096]), region)
    if command == C.VFIO_USER_DEVICE_GET_IRQ_INFO:
        return st.builds(lambda a, i: IrqInfo(a, 0, i, 0).pack(),
                         st.sampled_from([16, 8]), st.integers(0, 6))
    if command == C.VFIO_USER_DEVICE_SET_IRQS:
        return st.builds(lambda a, f, i, s, c, tail: IrqSet(a, f, i, s, c).pack() + tail,
                         st.sampled_from([20, 8, 24]), st.integers(0, 0x3F) | u32,
                         st.integers(0, 5), small_count, small_count,
                         st.binary(max_size=8))
    if command in (C.VFIO_USER_REGION_READ, C.VFIO_USER_REGION_WRITE):
        return st.builds(lambda o, r, c, data: RegionAccess(o, r, c).pack() + data,
                         st.one_of(st.integers(0, 0x4100), u64), region,
                         st.one_of(st.integers(0, 8), u32), st.binary(max_size=16))
    if command == C.VFIO_USER_REGION_WRITE_MULTI:
        return st.builds(lambda n, body: struct.pack("<Q", n) + body,
                         st.integers(0, 4) | u64, st.binary(max_size=64))
    if command == C.VFIO_USER_VERSION:
        return st.builds(lambda a, b, caps: struct.pack("<HH", a, b) + caps,
                         st.integers(0, 2), st.integers(0, 2),
                         st.sampled_from([b"{}\0", b"\0", b"[1]\0", b"{\0", b"\xff\0", b""]))
    return st.binary(max_size=24)


commands = st.one_of(st.sampled_from([int(c) for c in Command]), st.integers(0, 0xFFFF))


@st.composite
def messages(draw, allow_reply_type: bool = True):
    """(msg_id, command, flags, payload, fd kinds): a whole message with a right size."""
    command = draw(commands)
    structured = command in {int(c) for c in Command}
    payload = draw(_structured(command) if structured and draw(st.booleans())
                   else st.binary(max_size=48))
    flags = draw(st.sampled_from([0, 0, 0, 0x10, 0x1, 0x20, 0x2]) if allow_reply_type
                 else st.sampled_from([0, 0, 0x10]))
    return draw(st.integers(0, 0xFFFF)), command, flags, payload, draw(fd_lists)


def header(msg_id: int, command: int, size: int, flags: int, error: int = 0) -> bytes:
    return struct.pack("<HHIII", msg_id & 0xFFFF, command & 0xFFFF, size & 0xFFFFFFFF,
                       flags & 0xFFFFFFFF, error & 0xFFFFFFFF)


garbage = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.builds(lambda i, c, size, f, tail: header(i, c, size, f) + tail,   # a lying size
              st.integers(0, 0xFFFF), commands,
              st.one_of(st.integers(0, 64), st.sampled_from([0xFFFFFFFF, (1 << 20) + 4097])),
              st.integers(0, 0xFFFFFFFF), st.binary(max_size=32)),
)

# -- control requests ------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                     st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=12), st.sampled_from(["EIO", "DMA_MAP", "drop_raise",
                                                            "delay_raise", "errno_reply"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                       max_leaves=12)
_fields = st.sampled_from(["id", "vector", "vectors", "events", "kind", "count", "delay_ms",
                           "command", "errno", "fault", "x"])
#: JSON values shaped like control requests (json.dumps of them may hold NaN/Infinity)
control_values = st.one_of(
    _values,
    st.fixed_dictionaries({"id": _scalars, "cmd": st.sampled_from(
        ["state", "raise", "reset_counters", "subscribe", "unsubscribe", "fault", "faults",
         "clear_faults", "ping", "nope", 3])},
        optional={"vector": _values, "vectors": st.lists(st.integers(-3, 70), max_size=6),
                  "kind": _scalars, "count": _scalars, "delay_ms": _scalars,
                  "command": _scalars, "errno": _scalars, "fault": _scalars,
                  "events": _values}),
    st.dictionaries(_fields, _values, max_size=5),
    st.fixed_dictionaries({"id": st.integers(0, 9), "cmd": st.just("fault"),
                           "kind": st.sampled_from(["drop_raise", "delay_raise",
                                                    "errno_reply"])},
                          optional={"vector": _scalars, "count": _scalars,
                                    "delay_ms": _scalars, "command": _scalars,
                                    "errno": _scalars}),
    st.fixed_dictionaries({"id": st.integers(0, 9), "cmd": st.just("raise")},
                          optional={"vector": _scalars, "vectors": _values}),
)
#: one control line (no newline): a request-shaped value, random bytes, deep nesting
control_lines = st.one_of(
    control_values.map(lambda v: json.dumps(v).encode()),
    st.binary(min_size=1, max_size=120).filter(lambda b: b"\n" not in b and b.strip()),
    st.integers(1, 4000).map(lambda n: b"[" * n),
    st.integers(1, 200).map(lambda n: b'{"id": 1, "cmd": "raise", "vectors": ' + b"[" * n
                            + b"]" * n + b"}"),
)

#: control lines the fuzzer found against the control channel as it was before issue 9:
#: each killed the server or made it send invalid JSON.  Kept as regression cases.
FOUND_CONTROL_LINES = [
    b"[" * 1988,                                                        # RecursionError
    b'{"id":Infinity}',                                      # echoed back as invalid JSON
    b'{"":0,"cmd":"fault","kind":"drop_raise","vector":Infinity}',      # OverflowError
    b'{"":0,"cmd":"fault","kind":"drop_raise","count":Infinity}',       # OverflowError
]

__all__ = ["HEADER_SIZE", "load_profile", "make_fd", "messages", "garbage", "header",
           "FD_KINDS", "fd_lists", "scaled", "control_values", "control_lines",
           "FOUND_CONTROL_LINES"]

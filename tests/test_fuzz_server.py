"""The project's fuzzer, stateful: a hostile vfio-user client and a hostile control client
drive one real device server (its epoll loop, run step by step) with whole messages of
every shape, garbage that breaks the framing, fds of every kind, stalls, reconnects and
control lines of any content.  Invariants: no exception ever leaves the server loop (a
step would fail); every whole message gets exactly the reply it should (one reply, its
id, header-only if an error; none for NO_REPLY or a reply-type message); garbage ends in
a clean disconnect at worst; the connection answers a good request after any whole bad
message; every control line gets exactly one strict-JSON reply; `state` always encodes;
and at the end no fd is left open (FdWatch).  Bounded: every read is non-blocking after
the server ran, the clock is the test's.

Inputs this fuzzer found are kept in ``fuzzing.FOUND_CONTROL_LINES`` and replayed at the
end, through the whole server."""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fuzzing import FOUND_CONTROL_LINES, control_lines, garbage, load_profile, make_fd, messages
from msixlab_common import jsonlines
from msixlab_common.removal import remove_tree
from qemu_device.fdio import OsFdPort
from qemu_device import control
from qemu_device.device.nic import Device
from qemu_device.protocol import HEADER_SIZE, Command as C, RegionAccess
from qemu_device.server import Limits, Server
from qemu_device.testing import QEMU_CAPS, FdWatch

load_profile()

ID_REGISTER = 0x11E91234


class Clock:
    now = 5000.0

    def __call__(self) -> float:
        return self.now


def _send(sock: socket.socket, data: bytes, fd_kinds=()) -> None:
    fds = [make_fd(k) for k in fd_kinds]
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] \
            if fds else []
        sock.sendmsg([data], anc)
    finally:
        for fd in fds:
            os.close(fd)


class Peer:
    """One client socket: what it sent is in the server after pump(); read() takes what
    the server sent without ever blocking."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.eof = False

    def read(self) -> None:
        while not self.eof:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


class ServerUnderFuzz(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.watch = FdWatch()
        self.dir = tempfile.mkdtemp(prefix="msixlab-fuzz-")
        self.clock = Clock()
        self.server = Server(Device(fds=OsFdPort()), f"{self.dir}/s", f"{self.dir}/c",
                             limits=Limits(max_fd_dma_maps=6), clock=self.clock)
        self.server.bind()
        self.vfio: Peer | None = None
        self.ctl: Peer | None = None
        self.next_id = 1

    # -- plumbing ----------------------------------------------------------------------
    def pump(self) -> None:
        for _ in range(3):
            self.server.run_once(0)

    def replies(self, want: int) -> list[tuple[tuple, bytes]]:
        """Up to ``want`` whole replies from the vfio-user peer (fewer only on EOF)."""
        out = []
        for _ in range(64):                      # bounded: each round the server runs
            self.pump()
            self.vfio.read()
            while len(self.vfio.buf) >= HEADER_SIZE:
                hdr = struct.unpack_from("<HHIII", self.vfio.buf)
                if hdr[2] < HEADER_SIZE or len(self.vfio.buf) < hdr[2]:
                    break
                out.append((hdr, bytes(self.vfio.buf[HEADER_SIZE:hdr[2]])))
                del self.vfio.buf[:hdr[2]]
            if len(out) >= want or self.vfio.eof:
                return out
        raise AssertionError(f"no reply after 64 rounds (wanted {want}, got {len(out)})")

    def connect_vfio(self) -> None:
        if self.vfio is not None:
            self.vfio.close()
            self.pump()
        self.vfio = Peer(self.server.socket_path)
        self.pump()
        caps = json.dumps(QEMU_CAPS).encode() + b"\0"
        self.vfio.sock.sendall(struct.pack("<HHIII", 0, C.VFIO_USER_VERSION,
                                           HEADER_SIZE + 4 + len(caps), 0, 0) + b"\0" * 4 + caps)
        ((hdr, _),) = self.replies(1)
        assert hdr[3] == 1, "VERSION refused"

    @initialize()
    def start(self) -> None:
        self.connect_vfio()
        self.ctl = Peer(self.server.control_path)
        self.pump()

    # -- vfio-user rules -----------------------------------------------------------------
    @rule(m=messages())
    def whole_message(self, m) -> None:
        msg_id, command, flags, payload, fd_kinds = m
        data = struct.pack("<HHIII", msg_id, command, HEADER_SIZE + len(payload), flags, 0)
        _send(self.vfio.sock, data + payload, fd_kinds)
        answered = not flags & 0x10 and flags & 0xF != 1
        got = self.replies(1) if answered else self.replies(0)
        assert not self.vfio.eof, "a whole message must never cost the connection"
        assert len(got) == (1 if answered else 0), (m, got)
        if got:
            (rid, rcmd, size, rflags, err), body = got[0]
            assert (rid, rcmd) == (msg_id, command) and rflags & 0xF == 1
            if rflags & 0x20:
                assert err > 0 and size == HEADER_SIZE, "error replies are header-only"
            else:
                assert err == 0

    @rule()
    def good_request(self) -> None:
        """The connection answers a good request, whatever came before."""
        rid = self.next_id = (self.next_id + 1) & 0xFFFF
        payload = RegionAccess(0, 0, 4).pack()
        self.vfio.sock.sendall(struct.pack("<HHIII", rid, C.VFIO_USER_REGION_READ,
                                           HEADER_SIZE + len(payload), 0, 0) + payload)
        ((hdr, body),) = self.replies(1)
        assert hdr[0] == rid and hdr[3] == 1
        assert int.from_bytes(body[16:20], "little") == ID_REGISTER

    @rule(data=garbage, fd_kinds=st.lists(st.sampled_from(["eventfd", "memfd"]), max_size=3),
          stall=st.sampled_from([0, 0, 31, 10_000]))
    def garbage_then_reconnect(self, data, fd_kinds, stall) -> None:
        """Bytes that may break the framing: replies, a clean disconnect or silence; then
        (perhaps after a stall the server times out) a fresh connection is served."""
        _send(self.vfio.sock, data, fd_kinds)
        self.replies(0)
        self.clock.now += stall
        self.replies(0)
        self.connect_vfio()

    @rule()
    def reconnect(self) -> None:
        self.connect_vfio()

    # -- control rules -------------------------------------------------------------------
    def ctl_lines(self, want: int) -> list[dict]:
        lines: list[dict] = []
        for _ in range(64):
            self.pump()
            self.ctl.read()
            while b"\n" in self.ctl.buf:
                line, _, rest = bytes(self.ctl.buf).partition(b"\n")
                self.ctl.buf[:] = rest
                lines.append(strict(line))
            if len(lines) >= want or self.ctl.eof:
                break
        assert not self.ctl.eof, "a control line must never cost the connection"
        return lines

    @rule(line=control_lines)
    def control_line(self, line) -> None:
        self.ctl.sock.sendall(line + b"\n")
        replies = [r for r in self.ctl_lines(1) if "ok" in r]
        assert len(replies) == 1, (line, replies)
        reply = replies[0]
        try:
            sent_id = jsonlines.request_id(jsonlines.loads(line))
        except jsonlines.JsonLinesError:
            sent_id = None
        assert reply["id"] in (sent_id, None)

    @rule(n=st.integers(1, 3))
    def control_overlong(self, n) -> None:
        self.ctl.sock.sendall(b"[" * (control.MAX_LINE + n) + b'\n{"id":9,"cmd":"ping"}\n')
        replies = [r for r in self.ctl_lines(2) if "ok" in r]
        assert [r["id"] for r in replies] == [None, 9] and replies[1]["ok"]

    @invariant()
    def state_always_encodes(self) -> None:
        if self.ctl is not None:
            jsonlines.dumps({**self.server.device.state(), **self.server._server_state()})

    def teardown(self) -> None:
        try:
            for peer in (self.vfio, self.ctl):
                if peer is not None:
                    peer.close()
            self.pump()
            self.server.close()
        finally:
            remove_tree(self.dir, ignore_errors=True)
        assert self.watch.opened() == {}, "fd growth"


def strict(line: bytes) -> dict:
    def refuse(name):
        raise AssertionError(f"{name} sent by the server: not JSON")
    value = json.loads(line, parse_constant=refuse)
    assert isinstance(value, dict)
    return value


TestServerUnderFuzz = ServerUnderFuzz.TestCase


# -- inputs the fuzzer found, kept as regression cases --------------------------------------

@pytest.mark.parametrize("line", FOUND_CONTROL_LINES)
def test_found_control_lines_through_the_server(line):
    machine = ServerUnderFuzz()
    try:
        machine.start()
        machine.control_line(line)
        machine.good_request()
        machine.state_always_encodes()
    finally:
        machine.teardown()

"""The device server under hostile vfio-user clients and a hostile host (issue 9, items
3, 4, 6, 7, 8, 9): fd exhaustion, fds piled on an incomplete message, DMA maps without
end, a saturated blocking eventfd, a full disk under the event log, the umask, a client
that stalls, and bad `qemu-device ctl` words.  Each one used to kill, hang or weaken the
server; each test plants the situation and checks the server keeps serving."""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import stat
import subprocess
import sys

import pytest

from msixlab_common.deadline import wait_until

from qemu_device.fdio import OsFdPort
from qemu_device.connection import MAX_PENDING_FDS, BadMessage, Connection
from qemu_device.device.nic import Device
from qemu_device.protocol import Command as C, pack_message
from qemu_device.server import Limits, Server
from qemu_device.testing import FakeQemu, FdWatch
from qemu_device.transport import listen_unix

PAGE = 4096


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp_path, log=None, **limits):
        self.clock = Clock()
        self.device = Device(fds=OsFdPort())
        self.server = Server(self.device, str(tmp_path / "nic.sock"), str(tmp_path / "nic.ctl"),
                             log, limits=Limits(**limits), clock=self.clock)
        self.server.bind()
        self.socks: list[socket.socket] = []

    def pump(self, rounds=4):
        for _ in range(rounds):
            self.server.run_once(0)

    def connect(self, path=None) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path or self.server.socket_path)
        self.socks.append(s)
        self.pump()
        return s

    def qemu(self) -> FakeQemu:
        return FakeQemu(self.connect(), self.pump)

    def ctl(self, **req) -> dict:
        s = self.connect(self.server.control_path)
        s.sendall(json.dumps({"id": 1, **req}).encode() + b"\n")
        self.pump()
        return json.loads(s.makefile("rb").readline())

    def close(self):
        for s in self.socks:
            s.close()
        self.server.close()


@pytest.fixture
def make_rig(tmp_path):
    watch = FdWatch()
    rigs = []

    def make(**kw):
        rigs.append(Rig(tmp_path, **kw))
        return rigs[-1]
    yield make
    for r in rigs:
        r.close()
    assert watch.opened() == {}, "fd leak"


def eof(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


# -- permissions (item 8) -------------------------------------------------------------------

def test_sockets_are_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        sock = listen_unix(str(tmp_path / "s"))
        probe = tmp_path / "probe"
        probe.touch()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o600
        assert stat.S_IMODE(probe.stat().st_mode) == 0o666        # the umask was really 0
    finally:
        sock.close()


# -- stalls (item 9) ------------------------------------------------------------------------

def test_a_client_stalled_mid_message_is_disconnected(make_rig):
    rig = make_rig(message_timeout=30)
    q = rig.qemu()
    q.version()
    q.sock.sendall(pack_message(7, C.VFIO_USER_DEVICE_GET_INFO, b"\x10" + b"\0" * 15)[:20])
    rig.pump()
    rig.clock.now += 29
    rig.pump()
    assert rig.server.client is not None               # still within its time
    rig.clock.now += 2
    rig.pump()
    assert rig.server.client is None and eof(q.sock)
    assert rig.server.counters["clients_timed_out"] == 1
    q2 = rig.qemu()                                    # the next client is served
    assert q2.version()["capabilities"]


def test_a_client_that_never_sends_version_is_disconnected(make_rig):
    rig = make_rig(message_timeout=30)
    s = rig.connect()
    rig.clock.now += 31
    rig.pump()
    assert rig.server.client is None and eof(s)


def test_an_idle_client_after_version_stays_unless_asked(make_rig):
    rig = make_rig(message_timeout=30)
    q = rig.qemu()
    q.version()
    rig.clock.now += 10_000
    rig.pump()
    assert rig.server.client is not None               # QEMU may idle for ever
    assert q.read32(0, 0) == 0x11E91234


def test_idle_timeout_when_configured(make_rig):
    rig = make_rig(idle_timeout=60)
    q = rig.qemu()
    q.version()
    rig.clock.now += 61
    rig.pump()
    assert rig.server.client is None and eof(q.sock)


def test_the_stall_clock_starts_with_each_message(make_rig):
    rig = make_rig(message_timeout=30)
    q = rig.qemu()
    q.version()
    for _ in range(3):                                 # whole messages, 20 s apart
        rig.clock.now += 20
        assert q.read32(0, 0) == 0x11E91234
    assert rig.server.client is not None


def test_a_far_deadline_never_overflows_the_poll_timeout(make_rig):
    rig = make_rig(message_timeout=1e12)               # a Limits no CLI option would give
    rig.connect()                                      # no VERSION yet: a deadline is set
    assert rig.ctl(cmd="raise", vector=3)["ok"]        # run_once(0) on the way
    s = rig.connect(rig.server.control_path)
    s.sendall(b'{"id": 1, "cmd": "ping"}\n')
    rig.server.run_once(None)                          # wakes for the ping, no OverflowError
    assert b"pong" in s.recv(100)


# -- fds (item 3) ---------------------------------------------------------------------------

def test_fds_piled_on_an_incomplete_message_end_the_connection():
    conn = Connection()
    fds = [os.eventfd(0) for _ in range(MAX_PENDING_FDS + 1)]
    part = pack_message(1, C.VFIO_USER_VERSION, b"\0" * 64)[:20]
    events = conn.receive_data(part, fds[:MAX_PENDING_FDS])
    assert events == [] and conn.has_partial()
    (bad,) = conn.receive_data(b"\0", fds[MAX_PENDING_FDS:])
    assert isinstance(bad, BadMessage) and bad.error.fatal and conn.closed
    assert sorted(bad.fds) == sorted(fds)              # handed back, to be closed
    assert not conn.has_partial()
    for fd in fds:
        os.close(fd)


def test_fds_piled_on_the_server_are_closed_and_the_next_client_served(make_rig):
    rig = make_rig()
    q = rig.qemu()
    q.version()
    head = pack_message(9, C.VFIO_USER_DEVICE_GET_INFO, b"\x10" + b"\0" * 15)
    for i in range(3):
        fds = [os.eventfd(0) for _ in range(8)]
        q.send_raw(head[i:i + 1], fds)
        for fd in fds:
            os.close(fd)
        rig.pump()
    assert rig.server.client is None and eof(q.sock)
    assert rig.qemu().version()


def test_more_fds_than_the_kernel_passes_drops_the_client(make_rig):
    rig = make_rig()
    q = rig.qemu()
    q.version()
    fds = [os.eventfd(0) for _ in range(40)]
    q.send_raw(pack_message(3, C.VFIO_USER_DEVICE_SET_IRQS, b"\0" * 20), fds)
    for fd in fds:
        os.close(fd)
    rig.pump()
    assert rig.server.client is None and eof(q.sock)
    assert rig.server.counters["fds_truncated"] == 1


def test_dma_maps_with_an_fd_are_capped(make_rig):
    rig = make_rig(max_fd_dma_maps=4)
    q = rig.qemu()
    q.version()
    ram = os.memfd_create("ram")
    os.ftruncate(ram, 16 * PAGE)
    try:
        for i in range(4):
            q.dma_map(i * PAGE, PAGE, i * PAGE, 3, ram)
        watch = FdWatch()
        q.dma_map(8 * PAGE, PAGE, 8 * PAGE, 3, ram, expect_error=errno.ENOSPC)
        assert watch.opened() == {}
        q.dma_map(0x100000, PAGE)                      # a map without an fd costs no fd
        q.dma_unmap(0, PAGE)
        q.dma_map(8 * PAGE, PAGE, 8 * PAGE, 3, ram)    # room again
    finally:
        os.close(ram)
    assert len(rig.device.dma) == 5


def test_the_fd_map_budget_follows_rlimit_nofile():
    from qemu_device.server import fd_dma_map_budget
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fd_dma_map_budget(64, Limits()) == max(8, soft - 64 - 16 - 64)


def test_accept_under_emfile_refuses_and_keeps_serving(tmp_path):
    sock, ctl = tmp_path / "n.sock", tmp_path / "n.ctl"

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
    proc = subprocess.Popen([sys.executable, "-m", "qemu_device", "serve", "--socket",
                             str(sock), "--control", str(ctl), "--vectors", "8",
                             "--max-control-clients", "200"], preexec_fn=low_limit,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    clients = []
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        answered = refused = 0
        for _ in range(60):                            # well past 48 fds
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(10)
            clients.append(c)
            c.connect(str(ctl))
            try:
                c.sendall(b'{"id": 1, "cmd": "ping"}\n')
                answered += bool(c.recv(100))
            except (ConnectionResetError, BrokenPipeError):
                pass
            refused = len(clients) - answered          # refused: closed, not left hanging
        assert answered >= 20 and refused >= 10 and proc.poll() is None
        for c in clients[:20]:
            c.close()

        def state():                                   # once the server saw those EOFs
            fresh = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(fresh)
            fresh.settimeout(10)
            try:
                fresh.connect(str(ctl))
                fresh.sendall(b'{"id": 2, "cmd": "state"}\n')
                return json.loads(fresh.makefile("rb").readline())["result"]
            except (ConnectionResetError, BrokenPipeError, ValueError):
                return None
        st = wait_until(state, 10, "a control client served after others left")
        assert st["server"]["accept_failed"] >= 1
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "cannot accept a connection" in err and "Traceback" not in err


# -- a saturated blocking eventfd (item 6) ----------------------------------------------------

@pytest.mark.timeout(20)
def test_a_saturated_blocking_eventfd_never_blocks_the_server(make_rig):
    rig = make_rig()
    q = rig.qemu()
    ram = os.memfd_create("ram")
    os.ftruncate(ram, 1 << 20)
    facts = q.realize(ram, 1 << 20)
    os.close(ram)
    q.enable_msix(facts["msix_cap"])
    hostile = os.eventfd(0)                            # blocking, and then full
    os.eventfd_write(hostile, 0xFFFFFFFFFFFFFFFE)
    q.use_vector(0, hostile)
    reply = rig.ctl(cmd="raise", vectors=[0, 0])
    assert [r["outcome"] for r in reply["result"]["results"]] == ["pending", "pending"]
    st = rig.ctl(cmd="state")["result"]
    assert st["errors"]["eventfd_write_failed"] >= 1 and st["vectors"][0]["pending"]
    assert os.eventfd_read(hostile) == 0xFFFFFFFFFFFFFFFE   # drained: the next write works
    rig.ctl(cmd="raise", vector=0)
    assert os.eventfd_read(hostile) == 1
    os.close(hostile)


# -- the event log on a full disk (item 4) ----------------------------------------------------

def test_a_full_disk_under_the_event_log_loses_events_not_the_server(make_rig):
    rig = make_rig(log="/dev/full")
    q = rig.qemu()
    q.version()
    assert q.read32(0, 0) == 0x11E91234
    st = rig.ctl(cmd="state")["result"]
    log = st["event_log"]
    assert log["path"] == "/dev/full" and log["written"] == 0 and log["lost"] >= 4
    assert "No space left" in log["last_error"]
    assert rig.ctl(cmd="ping")["ok"]


def test_the_event_log_counts_what_it_wrote(make_rig, tmp_path):
    rig = make_rig(log=str(tmp_path / "events.jsonl"))
    rig.qemu().version()
    log = rig.ctl(cmd="state")["result"]["event_log"]
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert log["lost"] == 0 and log["written"] == len(lines) >= 3


# -- a bug in a timer --------------------------------------------------------------------------

def test_a_failing_timer_is_logged_and_the_loop_goes_on(make_rig, caplog):
    rig = make_rig()
    ran = []
    rig.server.call_later(0, lambda: 1 / 0)
    rig.server.call_later(0, lambda: ran.append(1))
    rig.pump()
    assert ran == [1] and rig.server.counters["internal_errors"] == 1
    assert "ZeroDivisionError" in caplog.text


# -- qemu-device ctl words (item 7) -----------------------------------------------------------

@pytest.mark.parametrize("words,needle", [
    (["raise", "abc"], "a vector must be an integer"),
    (["raise"], "at least one vector"),
    (["clear_faults", "x"], "a fault id must be an integer"),
    (["fault"], "needs a kind"),
    (["fault", "drop_raise", "vector"], "key=value"),
    (["state", "extra"], "takes no arguments"),
])
def test_ctl_usage_errors_are_clear_not_tracebacks(tmp_path, words, needle):
    done = subprocess.run([sys.executable, "-m", "qemu_device", "ctl", "--control",
                           str(tmp_path / "absent"), *words], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and needle in done.stderr
    assert "Traceback" not in done.stderr

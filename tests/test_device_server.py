"""The server loop: control channel commands, disconnect semantics, the next client,
and the CLI process contract (ready line, SIGTERM, sockets unlinked)."""

import json
import os
import select
import signal
import socket
import subprocess
import sys

import pytest

from msixlab_common import jsonlines

from qemu_device.device.nic import Device
from qemu_device.fdio import OsFdPort
from qemu_device.server import Server
from qemu_device.testing import FakeQemu, FdWatch

RAM = 1 << 20


class Rig:
    def __init__(self, tmp_path):
        self.device = Device(fds=OsFdPort())
        self.server = Server(self.device, str(tmp_path / "nic.sock"), str(tmp_path / "nic.ctl"),
                             str(tmp_path / "events.jsonl"))
        self.server.bind()
        self.ctl = self.connect(self.server.control_path)
        self.ctl_file = self.ctl.makefile("rb")
        self.n = 0

    def pump(self, rounds=4):
        for _ in range(rounds):
            self.server.run_once(0)

    def connect(self, path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        self.pump()
        return s

    def qemu(self):
        return FakeQemu(self.connect(self.server.socket_path), self.pump)

    def command(self, cmd, **fields):
        self.n += 1
        self.ctl.sendall(jsonlines.dumps({"id": self.n, "cmd": cmd, **fields}))
        self.pump()
        reply = jsonlines.loads_object(self.ctl_file.readline())
        assert reply["id"] == self.n
        return reply

    def close(self):
        self.ctl_file.close()
        self.ctl.close()
        self.server.close()


@pytest.fixture
def rig(tmp_path):
    fds = FdWatch()
    r = Rig(tmp_path)
    yield r
    r.close()
    assert fds.opened() == {}, "fd leak"


def booted(rig, vectors=(0, 1)):
    q = rig.qemu()
    ram = os.memfd_create("ram")
    os.ftruncate(ram, RAM)
    f = q.realize(ram, RAM)
    os.close(ram)
    q.enable_msix(f["msix_cap"])
    efds = {v: os.eventfd(0, os.EFD_NONBLOCK) for v in vectors}
    for v, fd in efds.items():
        q.use_vector(v, fd)
    return q, efds


def test_state_reports_the_contract_fields(rig):
    q, efds = booted(rig)
    try:
        st = rig.command("state")["result"]
        assert st["msix"] == {"table_size": 64, "enabled": True, "function_mask": False,
                              "table_bar": 2, "table_offset": 0, "pba_bar": 4,
                              "pba_offset": 0, "maskable": False, "noresize": False,
                              "irq_info_flags": 1,
                              "requests": {"mask": 0, "unmask": 0, "disable_all": 0}}
        assert st["vectors"][1] == {"index": 1, "eventfd": True, "masked": False,
                                    "raised": 0, "delivered": 0, "pending": False,
                                    "dropped": 0}
        assert st["client_connected"] and len(st["dma_maps"]) == 3
        assert st["errors"]["bad_region_access"] == 0
    finally:
        for fd in efds.values():
            os.close(fd)
        q.sock.close()


def test_control_raise_delivers_or_pends(rig):
    q, efds = booted(rig)
    res = rig.command("raise", vectors=[1, 5, 99])["result"]["results"]
    assert [r["outcome"] for r in res] == ["delivered", "pending", "out_of_range"]
    assert os.eventfd_read(efds[1]) == 1
    assert q.read(4, 0, 1)[0] == 1 << 5            # guest PBA read sees vector 5
    fd5 = os.eventfd(0, os.EFD_NONBLOCK)
    q.use_vector(5, fd5)
    assert os.eventfd_read(fd5) == 1                # delivered once on assignment
    assert q.read(4, 0, 1)[0] == 0
    st = rig.command("state")["result"]
    assert st["errors"]["raise_out_of_range"] == 1
    assert rig.command("reset_counters")["ok"]
    assert rig.command("state")["result"]["vectors"][5]["raised"] == 0
    for fd in (*efds.values(), fd5):
        os.close(fd)
    q.sock.close()


@pytest.mark.parametrize("req,etype,field", [
    ({"cmd": "nope"}, "ControlError", None), ({"cmd": "raise"}, "ControlError", None),
    ({"cmd": "raise", "vectors": ["x"]}, "FieldError", "vectors[0]"),
    ({"cmd": "fault", "kind": "bogus"}, "FieldError", "kind"),
    ({"cmd": "fault", "kind": "errno_reply", "command": "NOPE"}, "FieldError", "command")])
def test_bad_control_requests_get_error_replies(rig, req, etype, field):
    reply = rig.command(**req)
    assert not reply["ok"] and reply["error"]["type"] == etype
    assert reply["error"].get("field") == field
    assert rig.command("ping")["ok"]


def test_errno_fault_answers_the_next_command(rig):
    q = rig.qemu()
    q.version()
    f = rig.command("fault", kind="errno_reply", command="DEVICE_GET_INFO", errno="EIO")
    assert f["ok"] and f["result"]["count"] == 1
    from qemu_device.protocol import Command as C
    q.request(C.VFIO_USER_DEVICE_GET_INFO, b"\x10" + b"\0" * 15, expect_error=5)
    assert q.get_info().num_regions == 9            # fired once only
    assert rig.command("faults")["result"] == []
    q.sock.close()


def test_disconnect_drops_maps_and_fds_keeps_state_and_next_client_works(rig):
    q, efds = booted(rig, vectors=(0,))
    rig.command("raise", vectors=[7])
    q.write32(0, 0x18, 0x5A5A)                       # scratch register
    fds = FdWatch()
    q.sock.close()
    rig.pump()
    closed = fds.closed().values()                   # the server's eventfd and mmap dups
    assert any("eventfd" in target for target in closed), closed
    assert any(target.startswith("/memfd:") for target in closed), closed
    st = rig.command("state")["result"]
    assert not st["client_connected"] and st["dma_maps"] == []
    assert not any(v["eventfd"] for v in st["vectors"])
    assert st["vectors"][7]["pending"] and st["msix"]["enabled"]
    q2 = rig.qemu()
    q2.version()
    assert q2.read32(0, 0x18) == 0x5A5A              # device state survived
    assert rig.command("state")["result"]["clients_served"] == 2
    os.close(efds[0])
    q2.sock.close()


def test_subscribe_streams_interrupt_events(rig):
    q, efds = booted(rig, vectors=(2,))
    sub = rig.connect(rig.server.control_path)
    sub.sendall(b'{"id": 1, "cmd": "subscribe", "events": ["deliver", "pend"]}\n')
    rig.pump()
    f = sub.makefile("rb")
    assert jsonlines.loads_object(f.readline())["ok"]
    rig.command("raise", vectors=[2, 3])
    events = [jsonlines.loads_object(f.readline()) for _ in range(2)]
    assert [(e["event"], e["vector"]) for e in events] == [("deliver", 2), ("pend", 3)]
    f.close()
    sub.close()
    rig.pump()
    os.close(efds[2])
    q.sock.close()


def test_event_log_records_protocol_and_interrupts(rig, tmp_path):
    q, efds = booted(rig, vectors=(0,))
    q.write32(0, 0x20, 0, posted=True)
    rig.pump()
    events = [json.loads(line) for line in open(tmp_path / "events.jsonl")]
    kinds = {e["event"] for e in events}
    assert {"connect", "rx", "tx", "deliver", "eventfd_assign", "msix_control"} <= kinds
    assert all("ts" in e and "mono" in e for e in events)
    assert any(e["event"] == "rx" and e["cmd"] == "VERSION" for e in events)
    out = subprocess.run([sys.executable, "-m", "qemu_device", "log",
                          str(tmp_path / "events.jsonl")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "DMA_MAP" in out and "deliver" in out
    os.close(efds[0])
    q.sock.close()


def _readline(proc, timeout=20.0):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no ready line in time"
    return proc.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_ready_line_and_clean_exit(tmp_path, sig):
    sock, ctl = tmp_path / "n.sock", tmp_path / "n.ctl"
    proc = subprocess.Popen([sys.executable, "-m", "qemu_device", "serve", "--socket",
                             str(sock), "--control", str(ctl), "--vectors", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = json.loads(_readline(proc))
        assert ready == {"event": "ready", "socket": str(sock), "control": str(ctl),
                         "pid": proc.pid}
        assert sock.is_socket() and ctl.is_socket()
        out = subprocess.run([sys.executable, "-m", "qemu_device", "ctl", "--control",
                              str(ctl), "--json", "raise", "3"], capture_output=True,
                             text=True, timeout=30)
        assert json.loads(out.stdout)["result"]["results"][0]["outcome"] == "pending"
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        assert not sock.exists() and not ctl.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_cli_refuses_bad_layout(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qemu_device", "serve", "--socket",
                        str(tmp_path / "s"), "--table-offset", "4"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "aligned" in r.stderr

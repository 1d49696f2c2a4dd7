"""A manual session: ``msixlab shell`` puts the guest's console on the terminal, with the
NIC attached and the driver loaded; driven here through pipes as a person would type."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from agent.host.session import PROJECT_DIR


class Terminal:
    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, cwd=PROJECT_DIR, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.seen = b""

    def expect(self, text: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} within {timeout} s; screen ends {self.seen[-600:]!r}"
            ready, _, _ = select.select([self.proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                assert chunk, f"session ended before {text!r}: {self.seen[-600:]!r}"
                self.seen += chunk

    def type(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()


def test_shell_session_reaches_the_nic_and_exits_cleanly(tmp_path):
    term = Terminal([sys.executable, "-m", "agent.host", "shell", "--results", str(tmp_path)])
    try:
        term.expect(b"device control: qemu-device ctl --control ", 60)
        term.expect(b"msixlab-guest:", 120)          # the prompt: the shell reads input now
        term.type("echo MARK-$((6*7)); ls /dev/msixlab*; lspci -d 1234:11e9")
        term.expect(b"MARK-42", 30)
        term.expect(b"/dev/msixlab0", 30)
        term.expect(b"Ethernet controller", 30)
        term.type("exit")
        assert term.proc.wait(timeout=60) == 0
        term.seen += term.proc.stdout.read()
        assert b"MSIXLAB-POWEROFF status=0" in term.seen
        assert b"unrecognized option" not in term.seen
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()

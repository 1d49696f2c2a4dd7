"""The guest agent's selftest commands: the kernel's own VFIO selftests, run in the guest.

Concepts: the host builds ``tools/testing/selftests/vfio`` for the kernel under test and
shares the binaries read-only over 9p under the tag ``selftests`` (no guest init change:
the share is mounted here, on demand).  ``selftests_prepare`` mounts it at
``/run/msixlab-selftests``, reserves 2 MiB huge pages (the DMA mapping test's HugeTLB
variants skip without them) and reports what the guest offers a VFIO user: ``/dev/iommu``
(iommufd), ``/dev/vfio/vfio`` (the legacy container) and the binaries in the share.
``selftest_run`` runs one binary of the share, named by its bare file name, with its
arguments and extra environment, in a session of its own, bounded by ``timeout_s``:
when that expires the whole session is killed (the harness forks every test into a
process group of its own) and the reply says so (``timed_out``).  The reply carries the
exit status (negative: the signal that ended it), the wall time and the output, stdout
and stderr in one stream as the kselftest harness interleaves them (its KTAP lines and
the assertions' diagnostics), cut in the middle past ``OUTPUT_MAX`` bytes so the reply
stays under the protocol's line limit.
Judging the output is the host's business (agent/host/scenarios/kselftest.py).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import time

from .errors import GuestError, RequestError
from .protocol import Arg, Command

SHARE_TAG = "selftests"
MOUNT_DIR = "run/msixlab-selftests"          # under the agent's root
P9_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,ro"
OUTPUT_MAX = 256 * 1024                      # bytes of output a reply carries at most
TIMEOUT_MAX_S = 900
HUGEPAGES_MAX = 64
KILL_WAIT_S = 10                             # for the output once the session is killed
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


def kill_session(sid: int) -> int:
    """SIGKILL every process of session ``sid`` (the binary and the children the kselftest
    harness forks, each in a process group of its own); returns how many were signalled."""
    killed = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.getsid(int(name)) == sid:
                os.kill(int(name), signal.SIGKILL)
                killed += 1
        except (ProcessLookupError, PermissionError):
            continue
    return killed


def cut_middle(data: bytes, limit: int = OUTPUT_MAX) -> tuple[str, int]:
    """``data`` as text, at most ``limit`` bytes of it: the first quarter and the last three
    quarters, with a line saying how much was cut between them (the harness's header and
    its final results are what matter).  Returns the text and the bytes cut."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), 0
    head, tail = limit // 4, limit - limit // 4
    cut = len(data) - head - tail
    text = (data[:head].decode("utf-8", "replace")
            + f"\n# msixlab: {cut} bytes of output cut here\n"
            + data[-tail:].decode("utf-8", "replace"))
    return text, cut


class SelftestCommands:
    """The agent's selftest commands (see the module's docstring).  ``mounter`` is the
    argv prefix that mounts the share (a test's tree passes one that mounts nothing)."""

    def __init__(self, agent, mounter: tuple[str, ...] = ("mount", "-t", "9p")):
        self.agent = agent
        self.root = agent.root
        self.mounter = list(mounter)
        self.dir = os.path.join(self.root, MOUNT_DIR)

    def _mounted(self) -> bool:
        try:
            with open(os.path.join(self.root, "proc/mounts"), encoding="utf-8") as f:
                return any(line.split()[1:2] == ["/" + MOUNT_DIR] for line in f)
        except OSError:
            return False

    def _mount(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        if self._mounted():
            return
        argv = self.mounter + ["-o", P9_OPTIONS, SHARE_TAG, self.dir]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise GuestError(errno.EIO, f"mount of the {SHARE_TAG!r} share: {err}") from err
        if done.returncode != 0:
            raise GuestError(errno.ENOENT, f"mount of the {SHARE_TAG!r} share failed "
                             f"(exit {done.returncode}): {done.stderr.strip()[-300:]}; "
                             "was the guest booted with it?")

    def _hugepages(self, count: int) -> int:
        path = os.path.join(self.root, "proc/sys/vm/nr_hugepages")
        if not os.path.exists(path):
            return 0                    # a kernel without HugeTLB: its variants skip
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(str(count))
            with open(path, encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError) as err:
            raise GuestError(errno.EIO, f"reserving {count} huge pages: {err}") from err

    def prepare(self, hugepages: int) -> dict[str, object]:
        """``selftests_prepare``: mount the share, reserve ``hugepages`` 2 MiB pages; returns
        the binaries found, the huge pages the kernel gave (0 on a kernel without HugeTLB),
        whether /dev/iommu and /dev/vfio/vfio exist."""
        self._mount()
        binaries = sorted(name for name in os.listdir(self.dir)
                          if os.path.isfile(os.path.join(self.dir, name))
                          and os.access(os.path.join(self.dir, name), os.X_OK))
        return {"dir": "/" + MOUNT_DIR, "binaries": binaries,
                "hugepages": self._hugepages(hugepages) if hugepages else 0,
                "dev_iommu": os.path.exists(os.path.join(self.root, "dev/iommu")),
                "dev_vfio": os.path.exists(os.path.join(self.root, "dev/vfio/vfio"))}

    def _path(self, binary: str) -> str:
        if not _NAME.fullmatch(binary):
            raise RequestError(errno.EINVAL, f"selftest_run: binary {binary!r} must be a bare "
                               "file name in the selftests share", argument="binary")
        path = os.path.join(self.dir, binary)
        if not os.path.isfile(path):
            raise GuestError(errno.ENOENT, f"selftest_run: no {binary} in {self.dir} "
                             "(selftests_prepare first; was it built?)")
        return path

    @staticmethod
    def _check(args: list, env: dict) -> None:
        for arg in args:
            if not isinstance(arg, str) or "\0" in arg:
                raise RequestError(errno.EINVAL, f"selftest_run: argument {arg!r} must be "
                                   "a string without NUL", argument="args")
        for key, value in env.items():
            if not _ENV_KEY.fullmatch(key) or not isinstance(value, str) or "\0" in value:
                raise RequestError(errno.EINVAL, f"selftest_run: environment {key}={value!r}: "
                                   "an upper-case name and a string", argument="env")

    def run(self, binary: str, args: list | None, env: dict | None,
            timeout_s: int) -> dict[str, object]:
        """``selftest_run``: run ``binary`` with ``args`` and ``env`` added to the agent's
        environment, at most ``timeout_s`` seconds (then its session is killed);
        returns ``returncode`` (negative: killed by that signal), ``timed_out``,
        ``seconds``, ``output`` (stdout and stderr interleaved, cut past ``OUTPUT_MAX``
        bytes) and ``cut`` (how many bytes were)."""
        args, env = list(args or []), dict(env or {})
        self._check(args, env)
        argv = [self._path(binary)] + args
        started = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, cwd=self.dir,
                                    env={**os.environ, **env}, start_new_session=True)
        except OSError as err:
            raise GuestError(err.errno or errno.EIO, f"selftest_run: cannot start "
                             f"{binary}: {err.strerror}") from err
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_session(proc.pid)
            try:
                out, _ = proc.communicate(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                out = b""
        text, cut = cut_middle(out)
        return {"binary": binary, "argv": argv, "returncode": proc.returncode,
                "timed_out": timed_out, "seconds": round(time.monotonic() - started, 3),
                "output": text, "cut": cut}

    def commands(self) -> list[Command]:
        """The selftest commands for the agent's table."""
        return [
            Command("selftests_prepare", self.prepare,
                    (Arg("hugepages", int, required=False, default=0, minimum=0,
                         maximum=HUGEPAGES_MAX),)),
            Command("selftest_run", self.run, (
                Arg("binary", str),
                Arg("args", list, required=False),
                Arg("env", dict, required=False),
                Arg("timeout_s", int, required=False, default=120, minimum=1,
                    maximum=TIMEOUT_MAX_S))),
        ]

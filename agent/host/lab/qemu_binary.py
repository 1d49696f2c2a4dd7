"""Which QEMU runs the guest: the image's, or one given with ``--qemu PATH``.

Concepts: a run needs a QEMU of at least ``MIN_VERSION`` whose ``-device help`` lists
``vfio-user-pci`` (the vfio-user client).  The image's QEMU is checked when the image is
built; another one (for example a QEMU build tree whose vfio-user client is being
bisected) is checked here before anything starts, and a QEMU that falls short is a named
could-not-judge (125) saying why.  ``qemu_argv`` is the argv prefix ``GuestSpec`` takes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from msixlab_common.lifetime import run_in_group

from agent.host.verdict.outcome import CouldNotJudge, Outcome

MIN_VERSION = (10, 1)
PROBE_TIMEOUT = 60.0


@dataclass(frozen=True)
class QemuBinary:
    """A QEMU binary that passed the checks, and its version."""
    path: Path
    version: str

    @property
    def argv(self) -> list[str]:
        """The argv prefix that runs it."""
        return [str(self.path)]


def _unsuitable(path: Path, why: str) -> CouldNotJudge:
    return CouldNotJudge(Outcome.BAD_OPTION, f"--qemu {path}: {why}", qemu=str(path))


def _output(path: Path, *args: str, timeout: float = PROBE_TIMEOUT) -> str:
    """``path args`` run to its end (at most ``timeout`` s) in its own process group, which
    is killed whole however the probe ends: a wrapper script's children must not outlive
    it (a ``--version`` that hung left them running)."""
    try:
        done = run_in_group([str(path), *args], timeout, sig=signal.SIGKILL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    except OSError as err:
        raise _unsuitable(path, f"cannot run it: {err.strerror}") from err
    except subprocess.TimeoutExpired as err:
        raise _unsuitable(path, f"`{' '.join(args)}` did not finish in {timeout:g} s") from err
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise _unsuitable(path, f"`{' '.join(args)}` failed with exit {done.returncode}: {last[0]}")
    return done.stdout


def check_qemu(path: Path | str) -> QemuBinary:
    """The QEMU at ``path`` if the rig can use it; else ``CouldNotJudge`` naming why."""
    qemu = Path(path).expanduser().resolve()
    if not qemu.is_file() or not os.access(qemu, os.X_OK):
        raise _unsuitable(qemu, "no executable file there")
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", _output(qemu, "--version"))
    if not match:
        raise _unsuitable(qemu, "`--version` names no version")
    version = (int(match.group(1)), int(match.group(2)))
    text = ".".join(g for g in match.groups() if g is not None)
    if version < MIN_VERSION:
        raise _unsuitable(qemu, f"QEMU {text} is older than {'.'.join(map(str, MIN_VERSION))}, "
                                "the first with the vfio-user client")
    if '"vfio-user-pci"' not in _output(qemu, "-device", "help"):
        raise _unsuitable(qemu, f"QEMU {text} does not list vfio-user-pci in `-device help` "
                                "(built without the vfio-user client?)")
    return QemuBinary(qemu, text)

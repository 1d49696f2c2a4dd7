"""Where a run lives and how its guest is put together.

Concepts: a ``RunDirs`` pairs the private runtime directory (mode 0700, short path, for
the sockets of QEMU, QMP, the device server and the agent) with ``results/<run-id>/``,
where every artifact of the run is kept.  A run id carries 48 random bits and its results
dir is made exclusively.  The runtime dir records its owner (pid and process start time,
``owner.json``); a run that dies without cleaning up (SIGKILL) leaves it behind, and the
next run removes it, stopping any process still running from it
(``clean_stale_runtime_dirs``).  ``guest_spec`` assembles a ``GuestSpec`` from
the image, the kernel under test (a ``KernelUnderTest``, or an image flavor's name), the
QEMU to run (the image's, unless one is given) and the run's sockets, so every boot
(doctor's probe, the ready check, the main job, a bisect step) uses the same recipe.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from images.image import Image

from msixlab_common.lifetime import process_alive, process_start_time
from msixlab_common.removal import remove_tree

from .errors import HostError
from .outcome import CouldNotJudge, Outcome
from .kernel.under_test import KernelUnderTest, as_kernel
from .qemu_argv import GuestSpec, Share

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]


RUNTIME_PREFIX = "msixlab-"
OWNER_FILE = "owner.json"
RUN_ID_BYTES = 6            # 48 random bits: a collision is a one in 2**48 event


def new_run_id(prefix: str = "run") -> str:
    """A new run id: ``prefix``, the local time and 48 random bits in hex."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(RUN_ID_BYTES)}"


def _owner_record(run_id: str) -> dict:
    return {"pid": os.getpid(), "start_time": process_start_time(os.getpid()),
            "run_id": run_id}


def _stale(path: Path) -> dict | None:
    """The owner record of a runtime dir whose owner is dead; None for a live one or a
    dir that is not a runtime dir of msixlab (no readable owner record)."""
    try:
        if path.is_symlink() or path.stat().st_uid != os.getuid():
            return None
        owner = json.loads((path / OWNER_FILE).read_text())
        pid, started = owner["pid"], owner.get("start_time")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or process_alive(pid, started):
        return None
    return owner


def _processes_using(path: Path) -> list[int]:
    """Our processes whose command line names ``path`` (a dead run's QEMU or server)."""
    needle = os.fsencode(str(path)) + b"/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def clean_stale_runtime_dirs(root: Path | None = None) -> list[Path]:
    """Remove the runtime dirs of runs whose msixlab is dead (killed, crashed) and stop
    what is still running in them; return the dirs removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for path in sorted(root.glob(RUNTIME_PREFIX + "*")):
        owner = _stale(path)
        if owner is None:
            continue
        for pid in _processes_using(path):
            log.warning("killing pid %d left running by dead run %s", pid, owner.get("run_id"))
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        remove_tree(path, ignore_errors=True)
        log.info("removed the runtime dir %s of dead run %s (pid %s)", path,
                 owner.get("run_id"), owner["pid"])
        removed.append(path)
    return removed


def _unusable_root(root: Path, why: str) -> CouldNotJudge:
    what = "is not a directory" if root.exists() and not root.is_dir() else "cannot be made"
    return CouldNotJudge(Outcome.HOST_RESOURCE, f"the results dir {root} {what} ({why})",
                         path=str(root))


def make_results_dir(path: Path, *, exist_ok: bool = True) -> Path:
    """``mkdir -p path`` for results; a failure, whatever its errno (ENOENT under /proc
    too), is ``host_resource`` (``CouldNotJudge``, 125) naming the path, never a bug."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as err:
        raise _unusable_root(path, err.strerror or str(err)) from err
    return path


def check_results_root(root: Path | str) -> None:
    """Refuse, before anything starts and without creating anything, a results root
    (``--results``) that cannot hold results: a file, or a path whose nearest existing
    ancestor is not a writable directory (``CouldNotJudge``, ``host_resource``, 125)."""
    root = Path(root).absolute()
    existing = next(p for p in (root, *root.parents) if p.exists() or p == Path("/"))
    if not existing.is_dir():
        raise _unusable_root(root, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _unusable_root(root, f"{existing} is not writable")


@dataclass
class RunDirs:
    """A run's two directories: ``results`` (kept) and ``runtime`` (private, for sockets,
    removed at the end)."""
    run_id: str
    results: Path    # kept: results/<run-id>/
    runtime: Path    # private, removed at the end

    @classmethod
    def create(cls, results_root: Path, prefix: str = "run") -> "RunDirs":
        """A fresh run: ``results_root/<run-id>/`` made exclusively (never another run's),
        and a private runtime dir (0700 whatever the umask) that records its owner, after
        removing the runtime dirs of dead runs."""
        clean_stale_runtime_dirs()
        results_root = Path(results_root)
        make_results_dir(results_root)
        for _ in range(8):
            run_id = new_run_id(prefix)
            results = results_root / run_id
            try:
                results.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise HostError(f"cannot make a fresh results dir under {results_root}")
        runtime = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX))
        os.chmod(runtime, 0o700)
        (runtime / OWNER_FILE).write_text(json.dumps(_owner_record(run_id)))
        return cls(run_id, results, runtime)

    def cleanup(self) -> None:
        """Remove the runtime directory (errors ignored); the results stay."""
        remove_tree(self.runtime, ignore_errors=True)

    def __enter__(self) -> "RunDirs":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def guest_spec(image: Image, kernel: KernelUnderTest | str, dirs: RunDirs, *, mode: str = "ready",
               accel: str = "tcg", cpus: int = 2, memory_mb: int = 1024,
               nic_sockets: tuple[Path, ...] = (), kmod_dir: Path | None = None,
               agent: bool = False, trace: tuple[str, ...] = (),
               append: tuple[str, ...] = (), interactive: bool = False,
               iommu: bool = False, qemu: list[str] | None = None) -> GuestSpec:
    """The ``GuestSpec`` of one boot of ``kernel`` from ``image`` with ``dirs``' console log and
    sockets: the rootfs and the project shared over 9p (and ``kmod_dir`` when the driver is
    to be loaded), the agent's socket if ``agent``, and the image's QEMU unless ``qemu`` is
    given.  Builds the kernel's initramfs if it is not cached."""
    kernel = as_kernel(image, kernel)
    shares = [Share("rootfs", image.rootfs), Share("msixlab", PROJECT_DIR)]
    if kmod_dir is not None:
        shares.append(Share("kmod", kmod_dir))
    return GuestSpec(
        qemu=list(qemu) if qemu else image.qemu_command(), kernel=kernel.bzimage,
        initramfs=kernel.initramfs(image),
        console_log=dirs.results / "console.log", qmp_socket=dirs.runtime / "qmp.sock",
        shares=tuple(shares), mode=mode, accel=accel, cpus=cpus, memory_mb=memory_mb,
        nic_sockets=nic_sockets,
        agent_socket=dirs.runtime / "agent.sock" if agent else None,
        kmod="/opt/kmod/msixlab.ko" if kmod_dir is not None else None,
        trace=trace, trace_log=dirs.results / "qemu-trace.log" if trace else None,
        append=append, interactive=interactive, iommu=iommu,
    )

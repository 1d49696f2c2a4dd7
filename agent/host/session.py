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
import stat
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
MAX_LINK_HOPS = 40          # as the kernel's own limit on symbolic links in one lookup
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


def _unsafe_root(root: Path, why: str) -> CouldNotJudge:
    return CouldNotJudge(Outcome.HOST_RESOURCE, f"the results dir {root} is not safe to write "
                         f"as uid {os.geteuid()}: {why}", path=str(root))


def _writable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _trusted_dir(path: str, st: os.stat_result) -> str | None:
    """Why another user could swap entries of ``path`` (an ancestor of a results root), or
    None: it must be ours or root's, and writable by others only when sticky."""
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid not in (os.geteuid(), 0):
        return f"{path} is owned by uid {st.st_uid}, who could swap what is in it"
    if _writable_by_others(st) and not st.st_mode & stat.S_ISVTX:
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _resolve_trusted(path: str, hops: list[int]) -> str:
    """Resolve the absolute ``path`` one component at a time, as the kernel would, never
    through a directory or symbolic link another user controls (each checked with lstat:
    nothing is followed before it is checked); return the resolved path (its missing tail
    as given).  Raises ``ValueError`` naming the first untrusted component."""
    current = "/"
    why = _trusted_dir(current, os.lstat(current))
    if why:
        raise ValueError(why)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for i, name in enumerate(parts):
        if name == "..":
            current = os.path.dirname(current)
            continue
        nxt = os.path.join(current, name)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            return os.path.join(nxt, *parts[i + 1:])
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (os.geteuid(), 0):
                raise ValueError(f"{nxt} is a symbolic link owned by uid {st.st_uid}")
            hops[0] += 1
            if hops[0] > MAX_LINK_HOPS:
                raise ValueError(f"{nxt}: more than {MAX_LINK_HOPS} symbolic links")
            current = _resolve_trusted(os.path.join(current, os.readlink(nxt)), hops)
            if not os.path.lexists(current):
                return os.path.join(current, *parts[i + 1:])
            continue
        why = _trusted_dir(nxt, st)
        if why:
            raise ValueError(why)
        current = nxt
    return current


def check_results_tree(root: Path | str) -> Path:
    """Refuse a results root another user could redirect (issue 22): every existing
    directory on its path, through every symbolic link, must be ours or root's and not
    writable by others unless sticky, every link ours or root's; the root itself, when it
    exists, must be ours (writable by others only if sticky).  Nothing is followed before
    it is checked and nothing is made.  Returns the resolved root; raises
    ``CouldNotJudge`` (``host_resource``, 125) naming the path and why."""
    root = Path(os.path.abspath(root))
    try:
        resolved = _resolve_trusted(str(root), [0])
    except ValueError as err:
        raise _unsafe_root(root, str(err)) from None
    except OSError as err:
        raise _unusable_root(root, err.strerror or str(err)) from err
    try:
        st = os.lstat(resolved)
    except FileNotFoundError:
        return Path(resolved)
    if st.st_uid != os.geteuid():
        raise _unsafe_root(root, f"{resolved} is owned by uid {st.st_uid}, another user")
    return Path(resolved)


def check_results_root(root: Path | str) -> None:
    """Refuse, before anything starts and without creating anything, a results root
    (``--results``) that cannot hold results: one another user could redirect
    (``check_results_tree``), a file, or a path whose nearest existing ancestor is not a
    writable directory (``CouldNotJudge``, ``host_resource``, 125)."""
    check_results_tree(root)
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
        check_results_tree(results_root)               # before making anything in it
        results_root = Path(results_root)
        make_results_dir(results_root)
        check_results_tree(results_root)               # what was made, and by whom
        for _ in range(8):
            run_id = new_run_id(prefix)
            results = results_root / run_id
            try:
                results.mkdir(mode=0o755)
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
               iommu: bool = False, qemu: list[str] | None = None,
               sleep_safe: bool = False) -> GuestSpec:
    """The ``GuestSpec`` of one boot of ``kernel`` from ``image`` with ``dirs``' console log and
    sockets: the rootfs and the project shared over 9p (and ``kmod_dir`` when the driver is
    to be loaded), the agent's socket if ``agent``, and the image's QEMU unless ``qemu`` is
    given; ``sleep_safe`` puts the virtio devices behind No_Soft_Reset root ports
    (qemu_argv.py).  Builds the kernel's initramfs if it is not cached."""
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
        append=append, interactive=interactive, iommu=iommu, sleep_safe=sleep_safe,
    )

"""Building the image: a few named steps, each logged, with live progress.

Concepts: ``ensure_image()`` is the one entry point.  It holds the image's lock
(images/lock.py) shared for the rest of the process, so the rootfs stays while this
process may boot guests from it.  A warm cache answers at once.  A cold one takes the
lock exclusive, re-checks (another process may have just finished), reaps what dead
builds left, then runs the steps ``mirror`` -> ``mmdebstrap`` -> (``reclaim``) ->
``inspect`` -> ``publish`` in a temporary directory.  As a normal user, mmdebstrap runs in
its unshare mode: the user namespace it needs is tried first, and a user who may not make
one gets the fix at once; the rootfs it leaves owned by the user's subordinate ids is
then handed to the user (``reclaim``, images/userns.py).  As root, mmdebstrap runs in
mount and pid namespaces of its own (``contained()``): its proc, sys, devpts and
``/dev/shm`` binds
are never in the host's namespace, and vanish with the namespace however the build
dies.  Whatever ends a build early (a failed step, the watchdog, SIGTERM) kills it
before its directory is removed, and removal never crosses a mount point
(msixlab_common/removal.py).  Each step's output goes to ``<cache>/logs/<key>-<step>.log``;
a failure raises ``ImageError`` naming the step and keeps that log.  Progress is
reported to a callback (``on_step(step, line)``) so the CLI can show it with ``rich``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

from msixlab_common import streamed
from msixlab_common.removal import remove_tree

from . import keyfiles, recipe, userns
from .cache import build_key, cache_dir, images_dir, tree_size
from .errors import ImageError
from .image import Image
from .lock import ImageLock, hold
from .mirror import debian_mirror

log = logging.getLogger(__name__)

OnStep = Callable[[str, str], None]
BUILD_TIMEOUT = 45 * 60
LOCK_TIMEOUT = 60 * 60


def image_key() -> str:
    """The image's cache key: ``trixie-`` and the recipe's hash."""
    return f"trixie-{recipe.recipe_hash()}"


def find_image(root: Path | None = None) -> Image | None:
    """The built image for the current recipe, or None."""
    final = images_dir(root) / image_key()
    if (final / "manifest.json").is_file():
        return Image(final / "rootfs")
    return None


def _quiet(step: str, line: str) -> None:
    log.debug("%s: %s", step, line)


def contained(argv: list[str]) -> list[str]:
    """``argv`` run in mount and pid namespaces of its own when we are root, where
    mmdebstrap (root mode) would otherwise mount proc, sys, devpts and a bind of the
    host's ``/dev/shm`` under the target in the host's namespace.  Its mounts are private
    to it, and when its first process dies (``--kill-child``: with ``unshare``) the
    kernel kills the rest and drops the namespace and every mount in it.  Not root:
    mmdebstrap's own unshare mode already keeps its mounts in a namespace of its own."""
    if os.geteuid() != 0:
        return argv
    unshare = shutil.which("unshare")
    if unshare is None:
        raise ImageError("unshare (util-linux) is not installed: the build's mounts need "
                         "a namespace of their own", step="mmdebstrap")
    return [unshare, "--mount", "--propagation", "private", "--pid", "--fork",
            "--kill-child", "--mount-proc", "--", *argv]


def _run_logged(argv: list[str], step: str, log_path: Path, on_step: OnStep,
                timeout: float | None = None) -> None:
    """Run one build command, streaming its lines to ``log_path`` and ``on_step``, under the
    one streamed-child policy (``msixlab_common.streamed``): a watchdog stops it after
    ``timeout`` seconds even if it prints nothing.  However this ends early (watchdog,
    SIGTERM as ``Terminated``, any error), the command's whole process group is killed
    (SIGKILL: unshare(1) blocks SIGTERM while it waits for its child) and reaped before
    this returns or raises."""
    timeout = BUILD_TIMEOUT if timeout is None else timeout
    program = argv[argv.index("--") + 1] if "--" in argv else argv[0]    # not unshare
    on_step(step, " ".join(argv[:2]) + " ...")
    with open(log_path, "w", buffering=1) as out:
        out.write("$ " + " ".join(argv) + "\n")
        try:
            done = streamed.stream(argv, timeout=timeout, log=out,
                                   on_line=lambda line: on_step(step, line.rstrip()),
                                   stop_sig=signal.SIGKILL, death_sig=signal.SIGKILL,
                                   grace=5.0)
        except OSError as err:
            raise ImageError(f"cannot start {argv[0]}: {err}", step=step, log=log_path) from err
    if done.timed_out:
        raise ImageError(f"{program} ran longer than {timeout:g} s and was killed",
                         step=step, log=log_path)
    if done.returncode != 0:
        raise ImageError(f"{program} exited with status {done.returncode}", step=step,
                         log=log_path)


def dead_builds(root: Path, key: str) -> list[Path]:
    """The build directories of ``key`` under ``root``'s images: with its lock held
    exclusive, every one is a dead build's (a live build holds the lock)."""
    images = images_dir(root)
    if not images.is_dir():
        return []
    return sorted(p for p in images.iterdir() if build_key(p.name) == key)


def _reap(root: Path, key: str) -> None:
    """Remove what dead builds of ``key`` left (the caller holds its lock exclusive): their
    directories, after unmounting anything still mounted there (theirs, so ours), and, as a
    normal user, after taking back what mmdebstrap's unshare mode left owned by the user's
    subordinate ids (images/userns.py)."""
    for path in dead_builds(root, key):
        log.warning("removing %s, left by a build that died", path)
        userns.reclaim(path)
        remove_tree(path, unmount=True)


def reap_dead_builds(root: Path) -> None:
    """Reap the leftovers of every dead build under ``root`` whose image lock is free now
    (none of its builds or users is alive); a busy one is left for later, and one that
    cannot be removed (not ours to unmount, say) is logged, not raised."""
    images = images_dir(root)
    keys = {build_key(p.name) for p in images.iterdir()} - {None} if images.is_dir() else set()
    for key in sorted(keys):
        with ImageLock(images / f"{key}.lock") as lock:
            if not lock.try_exclusive():
                continue
            try:
                _reap(root, key)
            except OSError as err:          # it must not stop a run: say what is left
                log.warning("could not remove what a dead build of %s left: %s", key, err)


def _discard(tmp: Path) -> None:
    """Remove a build directory this process made, after its build was killed."""
    try:
        userns.reclaim(tmp)
        remove_tree(tmp, unmount=True)
    except (OSError, ImageError) as err:
        log.warning("could not remove the build directory %s: %s (the next build reaps it)",
                    tmp, err)


def _build(root: Path, on_step: OnStep) -> Image:
    key = image_key()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    on_step("mirror", "reading the host's apt configuration")
    mirror = debian_mirror()

    tmp = images_dir(root) / f".tmp-{key}-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        _run_logged(contained(recipe.mmdebstrap_argv(mirror, tmp / "rootfs")), "mmdebstrap",
                    logs / f"{key}-mmdebstrap.log", on_step)
        if os.geteuid() != 0:
            on_step("reclaim", "making every file of the rootfs this user's")
            userns.reclaim(tmp / "rootfs")
        _publish(tmp, key, started, on_step)
    except BaseException:
        _discard(tmp)
        raise
    return Image(images_dir(root) / key / "rootfs")


def _publish(tmp: Path, key: str, started: float, on_step: OnStep) -> None:
    on_step("inspect", "checking QEMU and the kernels")
    image = Image(tmp / "rootfs")
    if not image.has_vfio_user_pci:
        raise ImageError(f"QEMU {image.qemu_version} in the image has no vfio-user-pci",
                         step="inspect")
    flavors = sorted(k.flavor for k in image.kernels)
    if flavors != sorted(recipe.FLAVORS):
        raise ImageError(f"expected kernel flavors {sorted(recipe.FLAVORS)}, found {flavors}",
                         step="inspect")

    on_step("publish", "moving the image into the cache")
    manifest = {
        "key": key,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 1),
        "size_bytes": tree_size(tmp / "rootfs"),
        "qemu_version": image.qemu_version,
        "kernels": [{"flavor": k.flavor, "version": k.version} for k in image.kernels],
    }
    keyfiles.record(image)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.rename(tmp, tmp.parent / key)   # atomic: readers see no image or a whole one


def ensure_image(on_step: OnStep = _quiet, root: Path | None = None) -> Image:
    """The image for the current recipe, built first if the cache lacks it; its key files
    are checked (images/keyfiles.py: ``CacheEntryError`` when one is damaged).  On return
    this process holds the image's lock shared until it exits (``images.lock.hold``), so
    neither ``image clean`` nor a rebuild removes the rootfs while it may boot guests."""
    root = root or cache_dir()
    key = image_key()
    reap_dead_builds(root)
    lock = hold(images_dir(root) / f"{key}.lock")
    for _ in range(3):      # a clean may slip in while exclusive turns back into shared
        lock.shared(LOCK_TIMEOUT, f"a build or clean of image {key} to end")
        image = find_image(root)
        if image is not None:
            return keyfiles.verified(image)
        lock.exclusive(LOCK_TIMEOUT, f"another msixlab building image {key}, or runs "
                                     "using it, to end")
        try:
            if find_image(root) is None:
                if shutil.which("mmdebstrap") is None:
                    raise ImageError("mmdebstrap is not installed: run 'msixlab setup' "
                                     "(apt-get install mmdebstrap)", step="mmdebstrap")
                userns.check_unshare_mode()         # as a normal user: can mmdebstrap run?
                _reap(root, key)
                _build(root, on_step)
        except BaseException:
            lock.release()
            raise
    raise ImageError(f"image {key} was removed three times right after it was found "
                     "(is an 'msixlab image clean' looping?)", step="lock")


def manifest(image: Image) -> dict:
    """The built image's manifest.json (key, QEMU version, kernels, size, build seconds)."""
    return json.loads((image.rootfs.parent / "manifest.json").read_text())

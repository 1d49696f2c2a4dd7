"""Building the image: a few named steps, each logged, with live progress.

Concepts: ``ensure_image()`` is the one entry point.  A warm cache answers at once.  A cold
one takes the build lock, re-checks (another process may have just finished), then runs
the steps ``mirror`` -> ``mmdebstrap`` -> ``inspect`` -> ``publish`` in a temporary
directory.  Each step's output goes to ``<cache>/logs/<key>-<step>.log``; a failure raises
``ImageError`` naming the step and keeps that log.  Progress is reported to a callback
(``on_step(step, line)``) so the CLI can show it with ``rich``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from msixlab_common.lifetime import die_with_parent
from msixlab_common.removal import remove_tree

from . import recipe
from .cache import cache_dir, exclusive, images_dir, tree_size
from .errors import ImageError
from .image import Image
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


def _run_logged(argv: list[str], step: str, log_path: Path, on_step: OnStep,
                timeout: float | None = None) -> None:
    """Run one build command, streaming its lines to ``log_path`` and ``on_step``; a
    watchdog kills it after ``timeout`` seconds even if it prints nothing."""
    timeout = BUILD_TIMEOUT if timeout is None else timeout
    on_step(step, " ".join(argv[:2]) + " ...")
    with open(log_path, "w", buffering=1) as out:
        out.write("$ " + " ".join(argv) + "\n")
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace",
                                    preexec_fn=die_with_parent(signal.SIGTERM))
        except OSError as err:
            raise ImageError(f"cannot start {argv[0]}: {err}", step=step, log=log_path) from err
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            proc.kill()

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        with proc:               # closes the child's stdout pipe, reaps the child
            try:
                for line in proc.stdout:
                    out.write(line)
                    on_step(step, line.rstrip())
                code = proc.wait()
            finally:
                watchdog.cancel()
    if fired.is_set():
        raise ImageError(f"{argv[0]} ran longer than {timeout:g} s and was killed",
                         step=step, log=log_path)
    if code != 0:
        raise ImageError(f"{argv[0]} exited with status {code}", step=step, log=log_path)


def _build(root: Path, on_step: OnStep) -> Image:
    key = image_key()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    on_step("mirror", "reading the host's apt configuration")
    mirror = debian_mirror()

    tmp = images_dir(root) / f".tmp-{key}-{os.getpid()}"
    remove_tree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _run_logged(recipe.mmdebstrap_argv(mirror, tmp / "rootfs"), "mmdebstrap",
                    logs / f"{key}-mmdebstrap.log", on_step)

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
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        final = images_dir(root) / key
        os.rename(tmp, final)          # atomic: readers see no image or a whole one
    except BaseException:
        remove_tree(tmp, ignore_errors=True)
        raise
    return Image(final / "rootfs")


def ensure_image(on_step: OnStep = _quiet, root: Path | None = None) -> Image:
    """The image for the current recipe, built first if the cache lacks it."""
    root = root or cache_dir()
    image = find_image(root)
    if image is not None:
        return image
    lock = images_dir(root) / f"{image_key()}.lock"
    with exclusive(lock, timeout=LOCK_TIMEOUT, what="another msixlab is building this image"):
        image = find_image(root)
        if image is not None:
            return image
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed: run 'make setup' "
                             "(apt-get install mmdebstrap)", step="mmdebstrap")
        return _build(root, on_step)


def manifest(image: Image) -> dict:
    """The built image's manifest.json (key, QEMU version, kernels, size, build seconds)."""
    return json.loads((image.rootfs.parent / "manifest.json").read_text())

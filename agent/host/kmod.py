"""Building the guest driver for a kernel of the image.

Concepts: ``agent/kmod/build.sh`` builds ``msixlab.ko`` inside the image rootfs (its gcc,
its kernel headers) without modifying it.  Builds are cached under
``<cache>/kmod/<kernel>-<hash of the driver sources>/`` so a run rebuilds only when the
driver or the kernel changed.  The directory is shared into the guest as ``/opt/kmod``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from images.cache import cache_dir, exclusive
from images.image import Image
from msixlab_common.lifetime import die_with_parent

from .errors import HostError
from .outcome import Outcome

KMOD_DIR = Path(__file__).resolve().parents[1] / "kmod"


class KmodBuildError(HostError):
    """The guest driver did not build against the kernel: the run could not judge."""

    outcome = Outcome.BUILD_FAILED


def sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(KMOD_DIR.iterdir()):
        if path.suffix in (".c", ".h", ".sh") or path.name in ("Kbuild", "Makefile"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def kmod_dir(image: Image, flavor: str) -> Path:
    """Where ``msixlab.ko`` for ``flavor``'s kernel is (or will be) cached."""
    return cache_dir() / "kmod" / f"{image.kernel(flavor).version}-{sources_hash()}"


def ensure_kmod(image: Image, flavor: str, timeout: float = 600) -> Path:
    """Directory holding ``msixlab.ko`` built for ``flavor``'s kernel."""
    kernel = image.kernel(flavor)
    out = kmod_dir(image, flavor)
    if (out / "msixlab.ko").is_file():
        return out
    with exclusive(out.parent / (out.name + ".lock"), timeout=timeout,
                   what="another msixlab build of the driver"):
        if (out / "msixlab.ko").is_file():
            return out
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        env = {**os.environ, "MSIXLAB_KVER": kernel.version}
        try:
            done = subprocess.run(["sh", str(KMOD_DIR / "build.sh"), str(image.rootfs), str(tmp)],
                                  env=env, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=die_with_parent(signal.SIGTERM))
        except subprocess.TimeoutExpired as err:
            raise KmodBuildError(f"building msixlab.ko took longer than {timeout} s") from err
        if done.returncode != 0:
            raise KmodBuildError(f"building msixlab.ko for {kernel.version} failed:\n"
                                 + (done.stderr or done.stdout)[-3000:])
        os.rename(tmp, out)
    return out

"""Building the guest driver for the kernel under test.

Concepts: two ways, chosen by the kernel's ``DriverBuild``:
- an image kernel: ``agent/kmod/build.sh`` builds ``msixlab.ko`` with the image rootfs's
  make and gcc against its kernel headers, as any user: no chroot and no namespace, the
  rootfs's programs run on the host through its own dynamic loader, as its QEMU does, and
  the rootfs is only read.  Builds are cached under
  ``<cache>/kmod/<release>-<hash of the driver sources>/`` so a run rebuilds only when the
  driver or the kernel changed;
- a kernel build tree (``--kernel-tree``, ``--kdir``): ``make -C KDIR M=DIR modules`` on the
  host, with the compiler that built the tree, in one build directory per tree
  (``<cache>/kmod/tree-<hash of the tree's path>-<hash of the driver sources>/``) that is
  kept, so kbuild's own dependency tracking rebuilds the driver exactly when the tree's
  headers, config or release changed (a bisect step changes the tree, not its path).
  When nothing it reads is newer than the module, make is not run at all.
  The built ``msixlab.ko`` and the build log are copied into the run's ``kmod/``.
The driver's sources are package data of ``agent`` (``agent/kmod/``, read through
importlib.resources: images/packaged.py).  A failed build's error carries its reason on
its first line (the first compiler error, else the build's last line) and the tail of its
output after it, never an empty reason.
Either directory is shared into the guest as ``/opt/kmod``.  Each built ``msixlab.ko``
gets a manifest beside it (size and SHA-256, images/manifest.py) and is checked against
it before use; a damaged one (truncated, overwritten, garbage) is built again, so a bad
module never reaches a guest.  A module from before manifests is checked as an ELF
module for the release (``elf_problem``) and then recorded.
``build_with_warnings`` builds as the first way does, uncached, with kbuild's extra
warnings (``W=1``), for the unit suite's check that the driver builds without warnings
(tests/test_kmod_lint.py, kernel/lint.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import subprocess
from pathlib import Path

from images import manifest
from images.cache import cache_dir, exclusive
from images.image import Image
from images.packaged import package_dir
from msixlab_common.lifetime import run_in_group
from msixlab_common.removal import remove_tree

from agent.host.errors import HostError
from agent.host.kernel.build import first_error
from agent.host.kernel.under_test import DriverBuild, KernelUnderTest, as_kernel
from agent.host.verdict.outcome import Outcome

log = logging.getLogger(__name__)

KMOD_DIR = package_dir("agent") / "kmod"       # the driver's sources (package data)
TAIL_CHARS = 3000                               # of a failed build's output, in its error
SOURCES = ("Kbuild", "Makefile")


class KmodBuildError(HostError):
    """The guest driver did not build against the kernel: the run could not judge."""

    outcome = Outcome.BUILD_FAILED

    def __init__(self, message: str, *, log: Path | None = None, first_error: str = ""):
        super().__init__(message)
        self.evidence = {"log": str(log) if log else None, "first_error": first_error}


def sources_hash() -> str:
    """12 hex digits naming the driver's sources (every .c, .h, .sh and build file of
    agent/kmod)."""
    digest = hashlib.sha256()
    for path in sorted(KMOD_DIR.iterdir()):
        if path.suffix in (".c", ".h", ".sh") or path.name in SOURCES:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def kmod_dir(image: Image, kernel: KernelUnderTest | str, run_dir: Path | None = None) -> Path:
    """Where ``msixlab.ko`` for the kernel is (or will be) built: the cache for an image
    kernel, ``run_dir/kmod`` for a kernel build tree."""
    kernel = as_kernel(image, kernel)
    if kernel.driver_build is DriverBuild.KDIR:
        if run_dir is None:
            raise ValueError("a driver built against a kernel tree needs the run's directory")
        return run_dir / "kmod"
    return cache_dir() / "kmod" / f"{kernel.release}-{sources_hash()}"


def ensure_kmod(image: Image, kernel: KernelUnderTest | str, timeout: float = 600,
                run_dir: Path | None = None) -> Path:
    """Directory holding ``msixlab.ko`` built for the kernel under test."""
    kernel = as_kernel(image, kernel)
    out = kmod_dir(image, kernel, run_dir)
    if kernel.driver_build is DriverBuild.KDIR:
        _build_against_kdir(kernel, out, timeout)
        return out
    if built_intact(out / "msixlab.ko", kernel.release):
        return out
    with exclusive(out.parent / (out.name + ".lock"), timeout=timeout,
                   what="another msixlab build of the driver"):
        if built_intact(out / "msixlab.ko", kernel.release):
            return out
        _discard(out)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        remove_tree(tmp, ignore_errors=True)
        _build_in_image(image, kernel.release, tmp, timeout)
        _record(tmp / "msixlab.ko", kernel.release)
        os.rename(tmp, out)
    return out


def _build_in_image(image: Image, release: str, out: Path, timeout: float,
                    warnings: str = "", sources: Path = KMOD_DIR) -> None:
    """``build.sh`` of ``sources`` into ``out`` against the image's headers for ``release``,
    with kbuild's extra ``warnings`` levels (``W=``) when given; ``KmodBuildError`` when it
    fails (``build_failed``: the reason on its first line)."""
    env = {**os.environ, "MSIXLAB_KVER": release, "MSIXLAB_W": warnings}
    try:
        done = run_in_group(["sh", str(sources / "build.sh"), str(image.rootfs), str(out)],
                            timeout, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    except subprocess.TimeoutExpired as err:
        raise KmodBuildError(f"building msixlab.ko took longer than {timeout} s",
                             log=out / "build.log") from err
    except OSError as err:
        raise KmodBuildError(f"cannot run the driver's build.sh: {err}") from err
    if done.returncode != 0:
        raise build_failed(f"building msixlab.ko for {release}", done, out / "build.log")


def build_failed(what: str, done: subprocess.CompletedProcess, log: Path) -> KmodBuildError:
    """The error of a failed build ``what``: ``what failed: REASON`` on the first line (the
    first compiler, linker or make error, else the last line the build printed, else its
    exit status), then the tail of its output (stderr, else stdout)."""
    output = (done.stderr or "") or (done.stdout or "")
    lines = [line for line in output.splitlines() if line.strip()]
    error = first_error(lines)
    if error:
        reason = error.splitlines()[0].strip()
    elif lines:
        reason = lines[-1].strip()
    else:
        reason = f"exit status {done.returncode}, no output"
    tail = output[-TAIL_CHARS:].rstrip()
    return KmodBuildError(f"{what} failed: {reason}" + (f"\n{tail}" if tail else ""),
                          log=log if log.is_file() else None, first_error=error)


def build_with_warnings(image: Image, kernel: KernelUnderTest | str, out: Path,
                        level: str = "1", timeout: float = 600,
                        sources: Path = KMOD_DIR) -> str:
    """Build ``msixlab.ko`` for an image kernel into ``out`` (a fresh directory, never the
    cache) as ``ensure_kmod`` does but with kbuild's extra warnings ``W=level``, and return
    the build log (the compiler's messages; kernel/lint.py reads the warnings from it).
    ``sources`` is the driver's directory (a copy, for a test that plants a warning).
    ``KmodBuildError`` when it does not build."""
    kernel = as_kernel(image, kernel)
    if kernel.driver_build is not DriverBuild.IMAGE:
        raise ValueError(f"{kernel.label}: a W={level} build is for image kernels only")
    _build_in_image(image, kernel.release, out, timeout, warnings=level, sources=sources)
    return (out / "build.log").read_text(errors="replace")


def elf_problem(ko: Path, release: str) -> str | None:
    """What makes ``ko`` no module for ``release``, or None: it must be a 64-bit
    little-endian relocatable ELF file whose section headers lie inside it (a truncated
    module loses them: they come last) and whose ``.modinfo`` names ``release`` in its
    ``vermagic``."""
    try:
        data = ko.read_bytes()
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if len(data) < 64 or data[:6] != b"\x7fELF\x02\x01":
        return "not a 64-bit little-endian ELF file"
    kind, = struct.unpack_from("<H", data, 16)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    if kind != 1:
        return f"ELF type {kind}, not a relocatable module"
    if shnum == 0 or shoff + shentsize * shnum > len(data):
        return f"truncated: its section headers end at byte {shoff + shentsize * shnum}, " \
               f"the file has {len(data)}"
    if b"vermagic=" + release.encode() + b" " not in data:
        return f"its vermagic does not name {release}"
    return None


def built_intact(ko: Path, release: str) -> bool:
    """Whether the built driver ``ko`` can be used as it is: it matches its manifest
    (images/manifest.py), or, when it has none (built before there were manifests), it
    passes ``elf_problem`` and gets one now.  A damaged one is logged, for the caller to
    build again."""
    if not ko.is_file():
        return False
    if manifest.load(manifest.manifest_path(ko)) is not None:
        damage = manifest.file_problems(ko)
        if not damage:
            return True
        log.warning("cached guest driver %s is damaged (%s): building it again", ko,
                    "; ".join(p.what for p in damage))
        return False
    problem = elf_problem(ko, release)
    if problem is not None:
        log.warning("cached guest driver %s is damaged (%s): building it again", ko, problem)
        return False
    try:
        manifest.record_file(ko)
    except OSError as err:
        log.info("cannot record the manifest of %s: %s", ko, err)
    return True


def _record(ko: Path, release: str) -> None:
    """Check a driver just built (``elf_problem``) and write its manifest."""
    problem = elf_problem(ko, release)
    if problem is not None:
        raise KmodBuildError(f"the build of {ko} succeeded but the module is bad: {problem}")
    manifest.record_file(ko)


def _discard(out: Path) -> None:
    """Remove a damaged build directory: renamed aside first, so that no reader finds it
    half removed."""
    if out.exists() or out.is_symlink():
        aside = out.with_name(out.name + f".bad{os.getpid()}")
        os.rename(out, aside)
        remove_tree(aside, ignore_errors=True)


def tree_build_dir(kernel: KernelUnderTest) -> Path:
    """The kept build directory of the driver for a kernel build tree."""
    key = hashlib.sha256(str(kernel.kdir).encode()).hexdigest()[:12]
    return cache_dir() / "kmod" / f"tree-{key}-{sources_hash()}"


def _sync_sources(build: Path) -> None:
    """Copy the driver's sources into ``build``, leaving unchanged files (and their
    modification times) alone so that kbuild rebuilds only what changed."""
    build.mkdir(parents=True, exist_ok=True)
    for path in KMOD_DIR.iterdir():
        if path.suffix in (".c", ".h") or path.name in SOURCES:
            target = build / path.name
            if not target.is_file() or target.read_bytes() != path.read_bytes():
                shutil.copy2(path, target)


def _build_against_kdir(kernel: KernelUnderTest, out: Path, timeout: float) -> None:
    build = tree_build_dir(kernel)
    with exclusive(build.with_name(build.name + ".lock"), timeout=timeout,
                   what=f"another msixlab build of the driver against {kernel.kdir}"):
        _sync_sources(build)
        remove_tree(out, ignore_errors=True)
        out.mkdir(parents=True)
        ko = build / "msixlab.ko"
        if ko.is_file() and not built_intact(ko, kernel.release):
            ko.unlink()           # else make, going by its time, would keep it
        try:
            if not _up_to_date(kernel, build):
                _make_against_kdir(kernel, build, timeout)
                _record(ko, kernel.release)
        finally:
            if (build / "build.log").is_file():
                shutil.copy2(build / "build.log", out / "build.log")
        shutil.copy2(build / "msixlab.ko", out / "msixlab.ko")


def _up_to_date(kernel: KernelUnderTest, build: Path) -> bool:
    """Whether ``msixlab.ko`` in ``build`` is newer than everything a rebuild would read:
    the driver's sources, the tree's .config, release and Module.symvers (rewritten by
    every kernel build), and every header under its include directories.  Conservative
    (any newer header counts) and cheap next to make's own walk of the tree."""
    ko = build / "msixlab.ko"
    if not ko.is_file():
        return False
    built = ko.stat().st_mtime_ns
    fixed = [kernel.kdir / name for name in (".config", "Module.symvers",
                                             "include/config/kernel.release")]
    fixed += [build / name for name in os.listdir(build)
              if name.endswith((".c", ".h")) or name in SOURCES]
    for path in fixed:
        if not path.exists() or path.stat().st_mtime_ns > built:
            return False
    for top in ("include", "arch/x86/include"):
        for root, _dirs, files in os.walk(kernel.kdir / top):
            for name in files:
                if os.stat(os.path.join(root, name)).st_mtime_ns > built:
                    return False
    return True


def _make_against_kdir(kernel: KernelUnderTest, out: Path, timeout: float) -> None:
    log = out / "build.log"
    argv = ["make", "-C", str(kernel.kdir), f"M={out}", "modules"]
    try:
        with open(log, "w") as handle:
            handle.write(f"$ {' '.join(argv)}\n")
            handle.flush()
            done = run_in_group(argv, timeout, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise KmodBuildError(f"building msixlab.ko against {kernel.kdir} took longer than "
                             f"{timeout} s", log=log) from err
    except OSError as err:
        raise KmodBuildError(f"cannot run make for msixlab.ko: {err}", log=log) from err
    text = log.read_text(errors="replace")
    if done.returncode != 0 or not (out / "msixlab.ko").is_file():
        lines = [line for line in text.splitlines()[1:] if line.strip()]   # not "$ make"
        error = first_error(lines)
        reason = (error.splitlines()[0].strip() if error else
                  lines[-1].strip() if lines else f"make exited with status {done.returncode}")
        raise KmodBuildError(f"building msixlab.ko against {kernel.kdir} ({kernel.release}) "
                             f"failed: {reason}; log: {log}"
                             + (f"\nfirst error:\n{error}" if error else ""),
                             log=log, first_error=error)

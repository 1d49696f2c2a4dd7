"""The kernel's VFIO selftests, built for the kernel under test and cached by source and build.

Concepts:
- The *source*: a kernel tree's own (``--kernel-tree``; for ``--kernel``/``--kdir``, the
  build directory's ``source`` link when it has one), else Debian's ``linux-source-7.3``,
  the package the rig already caches for its tests (kernel/source.py), of which only what
  the build reads is unpacked, once, under ``<cache>/selftests/source/<package>_<version>/``
  for an image kernel of 6.18 or later.  A source without ``tools/testing/selftests/vfio``
  (a tree before 6.18) has none to build, and an image kernel before 6.18 (the lts
  flavor's 6.12) has none of its own (7.3's test 7.3's uapi): ``SelftestsMissing``, a
  named could-not-judge (125, ``kernel_unsupported``).
- The *build*, on the host: the image rootfs has gcc but no C library headers (its gcc
  comes without libc6-dev), so user-space programs cannot be compiled in it.  The host's
  glibc is older than the image's (bookworm's 2.36, trixie's 2.41), so what it links runs
  in the guest; every binary is checked to load against the image's own libraries (the
  rootfs loader's ``--list``) before it is cached.  The source is only read:
  ``make O=<scratch>/kbuild headers`` installs its uapi headers into the scratch
  directory, then ``make -C tools/testing/selftests/vfio OUTPUT=<scratch>/out`` builds
  against them, with two files of msixlab's own (agent/selftests/): a constructor that
  lets ``MSIXLAB_VFIO_IOMMU_MODE`` choose the library's default IOMMU mode (a kernel
  without iommufd has only the legacy container) and libuuid's two declarations (linked
  as ``libuuid.so.1``: the host needs no uuid-dev).
- The *cache*: ``<cache>/selftests/<key>/`` holds the binaries, ``build.log`` and
  ``record.json`` (written last: the entry is complete), and a manifest of the binaries
  (images/manifest.py) checked before every use; a damaged entry is built again.  The
  key hashes the build recipe (``RECIPE``, agent/selftests/, the host's gcc) and the
  *key files* of the source: everything the build reads of it (``KEY_PATHS``: the
  selftests' directory with the files its links lead to, the harness, tools/include,
  the uapi headers, the syscall tables, the top Makefile).  Not the kernel's ``.config``:
  the selftests are user space and read none of it, so a bisect step that changes only
  the configuration, or only drivers/, reuses the build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from images import manifest
from images.cache import cache_dir, exclusive
from images.image import LIBDIR, LOADER, Image
from images.packaged import package_dir
from msixlab_common.lifetime import run_in_group
from msixlab_common.removal import remove_tree

from agent.host.kernel.build import first_error
from agent.host.kernel.errors import KernelError, KernelUnsupported, SourceError
from agent.host.kernel.source import PACKAGE, cached_debs, deb_problems, fetch_intact
from agent.host.kernel.under_test import DriverBuild, KernelUnderTest

log = logging.getLogger(__name__)

SELFTESTS = "tools/testing/selftests/vfio"
SHIM_DIR = package_dir("agent") / "selftests"     # msixlab's own two files (package data)
RECIPE = "msixlab vfio selftests build 1: make O= headers; make OUTPUT= KHDR_INCLUDES="
KEY_PATHS = (SELFTESTS, "tools/testing/selftests/kselftest.h",
             "tools/testing/selftests/kselftest_harness.h", "tools/testing/selftests/lib.mk",
             "tools/include", "tools/arch/x86/include", "include/uapi",
             "arch/x86/include/uapi", "arch/x86/entry/syscalls", "Makefile")
# what the build reads of Debian's source package (top-level directory stripped)
UNPACK = ("Makefile", "Kbuild", "scripts/*", "include/*", "arch/x86/*", "tools/include/*",
          "tools/arch/x86/*", "tools/scripts/*", "tools/testing/selftests/*.h",
          "tools/testing/selftests/lib.mk", f"{SELFTESTS}/*")
BUILD_TIMEOUT = 30 * 60
FIRST_VERSION = (6, 18)


class SelftestsMissing(KernelUnsupported):
    """The kernel's source has no VFIO selftests (they arrived in 6.18): nothing to run."""


class SelftestBuildError(KernelError):
    """Building the selftests failed, or what it built would not load in the guest: the
    run could not judge (125, ``build_failed``); ``log`` is kept."""

    def __init__(self, message: str, *, log: Path | None = None, first_error: str = ""):
        super().__init__(message + (f"\nfirst error:\n{first_error}" if first_error else "")
                         + (f"\nlog: {log}" if log else ""))
        self.log, self.first_error = log, first_error
        self.evidence = {"log": str(log) if log else None, "first_error": first_error}


@dataclass(frozen=True)
class SelftestSource:
    """Where the selftests come from: a ``label`` for the records, the tree ``path`` and its
    ``origin`` (``tree`` or ``debian``)."""
    label: str
    path: Path
    origin: str


@dataclass(frozen=True)
class SelftestBuild:
    """A built, intact cache entry: its ``dir`` (shared with the guest), the ``binaries`` in
    it, its ``key``, the ``source`` it was built from, and whether this call found it built
    (``cached``) and how long the call took (``seconds``)."""
    dir: Path
    binaries: tuple[str, ...]
    key: str
    source: SelftestSource
    cached: bool
    seconds: float

    def as_json(self) -> dict:
        """The build as routing.json's metadata records it."""
        return {"dir": str(self.dir), "binaries": list(self.binaries), "key": self.key,
                "source": self.source.label, "source_dir": str(self.source.path),
                "origin": self.source.origin, "cached": self.cached,
                "seconds": round(self.seconds, 3)}


def selftests_root() -> Path:
    """Where built selftests and the unpacked Debian source live in the cache."""
    return cache_dir() / "selftests"


# --- the source ---------------------------------------------------------------------------

def source_for(kernel: KernelUnderTest) -> SelftestSource:
    """The source the selftests of ``kernel`` are built from (unpacking Debian's package
    the first time for an image kernel); ``SelftestsMissing`` when it has none."""
    if kernel.driver_build is DriverBuild.KDIR:
        tree = kernel.kdir / "source" if (kernel.kdir / "source").is_dir() else kernel.kdir
        source = SelftestSource(f"tree {tree.resolve()}", tree.resolve(), "tree")
    elif kernel.version < FIRST_VERSION:
        raise SelftestsMissing(
            f"kernel {kernel.release} predates the VFIO selftests ({FIRST_VERSION[0]}."
            f"{FIRST_VERSION[1]}): its source has none, and {PACKAGE}'s test a newer uapi "
            "(on 6.12 their DMA overflow cases expect EOVERFLOW where 6.12 answers EINVAL: "
            "docs/vfio-pci.md)", release=kernel.release)
    else:
        source = debian_source()
    if not (source.path / SELFTESTS / "Makefile").is_file():
        raise SelftestsMissing(f"{source.label} has no {SELFTESTS}: the kernel's VFIO "
                               f"selftests arrived in {FIRST_VERSION[0]}.{FIRST_VERSION[1]}, "
                               "this source has none to build", source=str(source.path),
                               release=kernel.release)
    return source


def debian_source() -> SelftestSource:
    """Debian's linux-source-7.3, unpacked (what the build reads of it) in the cache."""
    have = cached_debs(PACKAGE)
    package = have[-1] if have else fetch_intact(PACKAGE)
    out = selftests_root() / "source" / f"{package.name}_{package.key}"
    stamp = out.with_name(out.name + ".json")
    label = f"{package.name} {package.version}"
    if stamp.is_file():
        return SelftestSource(label, out, "debian")
    with exclusive(out.with_name(out.name + ".lock"), timeout=BUILD_TIMEOUT,
                   what=f"another msixlab unpacking of {package.name}"):
        if not stamp.is_file():
            if deb_problems(package):
                package = fetch_intact(PACKAGE)
            remove_tree(out, ignore_errors=True)
            unpack(package.deb, out, out.with_name(out.name + ".log"))
            stamp.write_text(json.dumps({"package": package.name, "version": package.version,
                                         "unpacked": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return SelftestSource(label, out, "debian")


def _run(argv: list[str], log_path: Path, what: str, cwd: Path | None = None,
         timeout: float = BUILD_TIMEOUT) -> None:
    """Run ``argv`` (its output appended to ``log_path``); ``SelftestBuildError`` quoting
    the first error when it fails."""
    with open(log_path, "a") as handle:
        handle.write(f"$ {' '.join(argv)}\n")
        handle.flush()
        try:
            done = run_in_group(argv, timeout, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd)
        except subprocess.TimeoutExpired as err:
            raise SelftestBuildError(f"{what} took longer than {timeout} s", log=log_path) \
                from err
        except OSError as err:
            raise SelftestBuildError(f"{what}: cannot run {argv[0]}: {err}",
                                     log=log_path) from err
    if done.returncode != 0:
        lines = log_path.read_text(errors="replace").splitlines()
        raise SelftestBuildError(f"{what} failed (exit {done.returncode})", log=log_path,
                                 first_error=first_error(lines) or "\n".join(lines[-5:]))


def unpack(deb: Path, dest: Path, log_path: Path) -> None:
    """Unpack from the source package ``deb`` what the selftests' build reads (``UNPACK``)
    into ``dest``, then the files the selftests' links lead to (a second pass: the links
    point into drivers/)."""
    scratch = dest.with_name(dest.name + ".deb")
    remove_tree(scratch, ignore_errors=True)
    log_path.write_text("")
    try:
        _run(["dpkg-deb", "-x", str(deb), str(scratch)], log_path, "dpkg-deb -x")
        tarballs = list((scratch / "usr/src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise SourceError(f"{deb.name} holds {len(tarballs)} source tarballs, not one",
                              log=log_path)
        top = tarballs[0].name.split(".tar.")[0]
        dest.mkdir(parents=True)
        untar = ["tar", "-x", "-f", str(tarballs[0]), "-C", str(dest), "--strip-components=1"]
        _run(untar + ["--wildcards"] + [f"{top}/{p}" for p in UNPACK], log_path,
             f"tar -x {tarballs[0].name}")
        missing = dangling_links(dest / SELFTESTS, dest)
        if missing:
            _run(untar + [f"{top}/{rel}" for rel in missing], log_path,
                 f"tar -x the {len(missing)} files the selftests' links lead to")
    finally:
        remove_tree(scratch, ignore_errors=True)
    if not (dest / SELFTESTS / "Makefile").is_file() or not (dest / "Makefile").is_file():
        raise SourceError(f"{deb.name} did not unpack the selftests into {dest}", log=log_path)


def dangling_links(under: Path, root: Path) -> list[str]:
    """The ``root``-relative targets of the symlinks under ``under`` that lead nowhere."""
    missing = []
    for dirpath, _dirs, files in os.walk(under):
        for name in files:
            link = Path(dirpath) / name
            if link.is_symlink() and not link.exists():
                target = os.path.normpath(os.path.join(dirpath, os.readlink(link)))
                missing.append(os.path.relpath(target, root))
    return sorted(missing)


# --- the key ------------------------------------------------------------------------------

def _hash_tree(digest, root: Path, rel: str) -> None:
    path = root / rel
    if path.is_file():
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
        return
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(dirpath) / name
            name_rel = str(full.relative_to(root)).encode()
            try:
                digest.update(name_rel + b"\0" + full.read_bytes() + b"\0")
            except OSError:                     # a link that leads nowhere: its text
                digest.update(name_rel + b"\0->" + os.readlink(full).encode() + b"\0")


def recipe_text() -> str:
    """What decides the build besides the source: ``RECIPE``, msixlab's own files in
    agent/selftests/ and the host compiler's version."""
    parts = [RECIPE]
    for path in sorted(p for p in SHIM_DIR.rglob("*") if p.is_file()):
        parts.append(f"{path.relative_to(SHIM_DIR)}\0{path.read_text()}")
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        gcc = ["no gcc"]
    return "\0".join(parts + gcc)


def build_key(source: SelftestSource) -> str:
    """16 hex digits naming a build of ``source``: the recipe and the source's key files."""
    digest = hashlib.sha256(recipe_text().encode())
    for rel in KEY_PATHS:
        _hash_tree(digest, source.path, rel)
    return digest.hexdigest()[:16]


def planned_dir(kernel: KernelUnderTest) -> Path:
    """Where the build for ``kernel`` is (or will be) found, without building or unpacking
    anything (``--dry-run``): its cache entry when the source is at hand (a tree, or
    Debian's package already unpacked), else the cache with a ``<key>`` placeholder."""
    if kernel.driver_build is DriverBuild.KDIR or kernel.version >= FIRST_VERSION:
        try:
            source = (source_for(kernel) if kernel.driver_build is DriverBuild.KDIR
                      else _unpacked_debian())
        except SelftestsMissing:
            source = None
        if source is not None:
            return selftests_root() / build_key(source) / "bin"
    return selftests_root() / "<key>" / "bin"


def _unpacked_debian() -> SelftestSource | None:
    have = cached_debs(PACKAGE)
    if not have:
        return None
    out = selftests_root() / "source" / f"{have[-1].name}_{have[-1].key}"
    if not out.with_name(out.name + ".json").is_file():
        return None
    return SelftestSource(f"{have[-1].name} {have[-1].version}", out, "debian")


# --- the build ----------------------------------------------------------------------------

def entry_intact(entry: Path) -> bool:
    """Whether ``entry`` is a complete build whose binaries match their manifest."""
    if not (entry / "record.json").is_file():
        return False
    damage = manifest.problems(manifest.manifest_path(entry / "bin"), entry / "bin")
    if damage:
        log.warning("cached VFIO selftests %s are damaged (%s): building them again", entry,
                    "; ".join(str(p) for p in damage[:3]))
    return not damage


def ensure_selftests(image: Image, kernel: KernelUnderTest,
                     timeout: float = BUILD_TIMEOUT) -> SelftestBuild:
    """The VFIO selftests built for ``kernel`` (see the module's docstring): from the cache
    when an intact entry has the key of its source, else built now."""
    started = time.monotonic()
    source = source_for(kernel)
    key = build_key(source)
    entry = selftests_root() / key
    cached = entry_intact(entry)
    if not cached:
        with exclusive(entry.with_name(key + ".lock"), timeout=timeout,
                       what="another msixlab build of the VFIO selftests"):
            if not entry_intact(entry):
                _build(image, source, entry, timeout)
    record = json.loads((entry / "record.json").read_text())
    return SelftestBuild(entry / "bin", tuple(record["binaries"]), key, source, cached,
                         time.monotonic() - started)


def _build(image: Image, source: SelftestSource, entry: Path, timeout: float) -> None:
    """Build into a scratch sibling of ``entry``, check, record and rename it into place."""
    started = time.monotonic()
    scratch = entry.with_name(entry.name + f".tmp{os.getpid()}")
    remove_tree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    log_path = scratch / "build.log"
    log_path.write_text(f"# VFIO selftests from {source.label}\n")
    kbuild, out = scratch / "kbuild", scratch / "out"
    jobs = f"-j{min(2, os.cpu_count() or 1)}"
    _run(["make", "-s", "-C", str(source.path), f"O={kbuild}", jobs, "headers"], log_path,
         f"make headers of {source.label}", timeout=timeout)
    out.mkdir()
    shim = out / "msixlab_iommu_mode.o"
    _run(["gcc", "-O2", "-Wall", "-Werror", "-c", str(SHIM_DIR / "msixlab_iommu_mode.c"),
          "-o", str(shim)], log_path, "the IOMMU mode constructor", timeout=timeout)
    _run(["make", "-C", str(source.path / SELFTESTS), jobs, f"OUTPUT={out}",
          f"KHDR_INCLUDES=-isystem {kbuild}/usr/include",
          f"EXTRA_CFLAGS=-I{SHIM_DIR / 'compat'}", f"LDLIBS=-l:libuuid.so.1 {shim}"],
         log_path, f"make -C {SELFTESTS}", timeout=timeout)
    binaries = built_binaries(out)
    if not binaries:
        raise SelftestBuildError(f"make -C {SELFTESTS} succeeded but built no test program",
                                 log=log_path)
    bin_dir = scratch / "bin"
    bin_dir.mkdir()
    for name in binaries:
        shutil.copy2(out / name, bin_dir / name)
    check_loads(image, bin_dir, binaries, log_path)
    manifest.write(manifest.manifest_path(bin_dir), bin_dir, binaries)
    remove_tree(kbuild, ignore_errors=True)
    remove_tree(out, ignore_errors=True)
    (scratch / "record.json").write_text(json.dumps({
        "source": source.label, "source_dir": str(source.path), "origin": source.origin,
        "binaries": binaries, "seconds": round(time.monotonic() - started, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")
    aside = entry.with_name(entry.name + f".old{os.getpid()}")
    if entry.exists():
        os.rename(entry, aside)
    os.rename(scratch, entry)
    remove_tree(aside, ignore_errors=True)


def built_binaries(out: Path) -> list[str]:
    """The test programs ``make`` left in ``out``: its executable ELF files."""
    names = []
    for path in sorted(out.iterdir()):
        if path.is_file() and os.access(path, os.X_OK):
            with open(path, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    names.append(path.name)
    return names


def check_loads(image: Image, bin_dir: Path, binaries: list[str], log_path: Path) -> None:
    """Every binary must load against the image's own C library and libuuid: the rootfs's
    loader resolves it (``--list``) with the rootfs's libraries only."""
    loader, libs = image.rootfs / LOADER, image.rootfs / LIBDIR
    for name in binaries:
        argv = [str(loader), "--library-path", str(libs), "--list", str(bin_dir / name)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        with open(log_path, "a") as handle:
            handle.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0 or "not found" in done.stdout + done.stderr:
            raise SelftestBuildError(f"{name} would not load in the guest: "
                                     + (done.stderr or done.stdout).strip()[-400:],
                                     log=log_path)

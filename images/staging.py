"""What the guest mounts at /opt/msixlab: msixlab's guest files, staged in the cache.

Concepts: the guest runs msixlab's guest agent (``agent/guest``, with its
``bin/msixlab-guest``), the code every process shares (``msixlab_common``), the ``agent``
package's ``__init__`` and stage 2 (``images/guest/stage2``), and nothing else of the host:
not the user's working directory, not the checkout, not site-packages.  ``ensure(image)``
copies exactly these files, read where msixlab's packages are (images/packaged.py), into a
*staged directory* ``<cache>/guest/<version>-<hash>-<tag>/`` (the package version, a hash
of the files' names, modes and bytes, the image Python's tag such as ``cpython-313``),
compiles their bytecode there with the image's own Python (images/bytecode.py), records
every file in a manifest beside it (images/manifest.py) and renames it into place; the
guest mounts it read-only over 9p.  A checkout with edits gets a staged directory of its
own (the hash changes), so the guest always runs the code the host runs.  Before each use
the directory is checked against its manifest; a damaged one is staged again.  Staging
takes a lock per directory, so concurrent runs stage once.

``GUEST_FILES`` lists what is staged: each entry is a package, a pattern under it, the
directory it goes to in the staged tree, and whether the files are programs (mode 0755).
The layout mirrors the packages' (``agent/guest/...``, ``msixlab_common/...``,
``images/guest/stage2``), so the guest's paths and ``PYTHONPATH=/opt/msixlab`` stay as
they were when the guest mounted the checkout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from msixlab_common.removal import remove_tree

from . import bytecode, manifest
from .cache import cache_dir, exclusive
from .image import Image
from .packaged import PackagedFileError, package_dir

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 300        # another run staging the same files
GUEST_MOUNT = "/opt/msixlab"


@dataclass(frozen=True)
class GuestFiles:
    """Files of ``package`` matching ``pattern`` (recursive with ``**``), staged under
    ``into``; ``program`` files get mode 0755."""
    package: str
    pattern: str
    into: str
    program: bool = False


GUEST_FILES = (
    GuestFiles("agent", "__init__.py", "agent"),
    GuestFiles("agent.guest", "**/*.py", "agent/guest"),
    GuestFiles("agent.guest", "bin/msixlab-guest", "agent/guest", program=True),
    GuestFiles("msixlab_common", "**/*.py", "msixlab_common"),
    GuestFiles("images", "guest/stage2", "images", program=True),
)


@dataclass(frozen=True)
class Staged:
    """One file to stage: its path in the staged tree, its source, its mode."""
    name: str
    source: Path
    mode: int


def guest_files() -> list[Staged]:
    """Every file the guest needs, from where msixlab's packages are (sorted by name);
    ``PackagedFileError`` when an entry of ``GUEST_FILES`` finds nothing (an install
    without its package data)."""
    found: dict[str, Staged] = {}
    for entry in GUEST_FILES:
        root = package_dir(entry.package)
        sources = [p for p in sorted(root.glob(entry.pattern))
                   if p.is_file() and "__pycache__" not in p.relative_to(root).parts]
        if not sources:
            raise PackagedFileError(f"this msixlab install lacks the guest's "
                                    f"{entry.package}/{entry.pattern} (an install without "
                                    "its package data)")
        for source in sources:
            name = f"{entry.into}/{source.relative_to(root).as_posix()}"
            found[name] = Staged(name, source, 0o755 if entry.program else 0o644)
    return [found[name] for name in sorted(found)]


def package_version() -> str:
    """msixlab's version as a directory name (``unknown`` when it is not installed)."""
    try:
        version = metadata.version("msixlab")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", version)


def files_hash(files: list[Staged]) -> str:
    """12 hex digits naming ``files``: each one's name, mode and bytes."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{f.mode:o}\0".encode() + f.source.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def python_tag(image: Image) -> str | None:
    """The image Python's bytecode tag (``cpython-313``), None without a Python."""
    return "cpython-" + image.python_version.replace(".", "") if image.python_version else None


def staged_dir(image: Image, files: list[Staged] | None = None, root: Path | None = None) -> Path:
    """Where the guest's files for ``image`` are (or will be) staged."""
    files = guest_files() if files is None else files
    tag = python_tag(image) or "nopython"
    return (root or cache_dir()) / "guest" / f"{package_version()}-{files_hash(files)}-{tag}"


def manifest_of(staged: Path) -> Path:
    """The manifest of staged directory ``staged``: beside it."""
    return staged.with_name(staged.name + ".manifest.json")


def intact(staged: Path) -> bool:
    """Whether ``staged`` is whole: every file its manifest records, as recorded."""
    if not staged.is_dir():
        return False
    damage = manifest.problems(manifest_of(staged), staged)
    if damage:
        log.warning("staged guest files %s are damaged (%s): staging them again", staged,
                    "; ".join(str(p) for p in damage[:3]))
    return not damage


def ensure(image: Image, root: Path | None = None) -> Path:
    """The staged directory of the guest's files for ``image``, staged (and its bytecode
    compiled by the image's Python) first if the cache lacks it or it is damaged."""
    files = guest_files()
    out = staged_dir(image, files, root)
    if intact(out):
        return out
    with exclusive(out.with_name(out.name + ".lock"), timeout=LOCK_TIMEOUT_S,
                   what="another msixlab staging the guest's files"):
        if intact(out):
            return out
        _discard(out)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        remove_tree(tmp, ignore_errors=True)
        try:
            _stage(image, files, tmp)
            manifest.write(manifest_of(out), tmp, _every_file(tmp))
            os.rename(tmp, out)
        except BaseException:
            remove_tree(tmp, ignore_errors=True)
            raise
    return out


def _stage(image: Image, files: list[Staged], tmp: Path) -> None:
    for f in files:
        target = tmp / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.source, target)
        os.chmod(target, f.mode)
    command, tag = image.python_command(), python_tag(image)
    if command is not None and tag is not None:
        # a failure only costs the guest the time to compile its agent (logged)
        bytecode.ensure(command, tag, tmp)


def _every_file(top: Path) -> list[str]:
    return sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file())


def _discard(out: Path) -> None:
    """Remove a damaged staged directory: renamed aside first, so no reader finds it half
    removed."""
    if out.exists() or out.is_symlink():
        aside = out.with_name(out.name + f".bad{os.getpid()}")
        os.rename(out, aside)
        remove_tree(aside, ignore_errors=True)

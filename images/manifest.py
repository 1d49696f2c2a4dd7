"""Cache entry manifests: what a cached file was when msixlab made it, checked before use.

Concepts: every file msixlab builds into its cache and later reuses (an initramfs, the
guest driver, the image rootfs's key files) gets a *manifest* written beside it when it is
made: for each file its size and SHA-256 (for a symlink, its target).  The manifest is a
small JSON file written atomically (a temporary sibling renamed into place), so a reader
finds either no manifest or a whole one.  Before an entry is used, ``problems()`` compares
what is on disk with the manifest: a file missing, of another size, with other contents,
or a link pointing elsewhere is a problem, named with its path.

Every check re-hashes the files in full: the entries are small (an initramfs of a few MiB,
a driver of about 1.3 MiB) or few (the image's key files, about 70 MiB: 0.06 s with the
CPU's SHA extensions on a quiet host, 0.4 s on 2 cores at load 16), against a main job
of 10 to 50 s; and a file overwritten in place with its old size and modification time
is still caught, which size and mtime alone would miss.

A damaged entry that msixlab can make again (initramfs, driver) is rebuilt by its owner;
one it cannot (a file of the image rootfs) ends the run with ``CacheEntryError``, which
names the path and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from msixlab_common import atomic

from .errors import ImageError

VERSION = 1
CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One way a cache entry differs from its manifest: ``path`` and ``what`` is wrong."""
    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


class CacheEntryError(ImageError):
    """A cache entry msixlab cannot rebuild by itself is damaged: ``path`` names the first
    bad file, ``fix`` what the user runs to repair the cache."""

    def __init__(self, problems: list[Problem], *, what: str, fix: str):
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"the cached {what} is damaged: {first}{more}; fix: {fix}",
                         step="verify")
        self.problems, self.path, self.fix = problems, first.path, fix
        self.evidence = {"path": str(first.path), "problem": first.what, "fix": fix,
                         "problems": [str(p) for p in problems]}


def sha256_of(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (read in 1 MiB chunks), in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: Path) -> dict:
    """What the manifest records for ``path``: ``{"link": target}`` for a symlink, else
    ``{"size": bytes, "sha256": hex}``.  Raises ``OSError`` when it is neither a regular
    file nor a symlink."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return {"link": os.readlink(path)}
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(f"{path} is not a regular file")
    return {"size": st.st_size, "sha256": sha256_of(path)}


def manifest_path(entry: Path) -> Path:
    """Where the manifest of the single-file entry ``entry`` lives: beside it, its name
    plus ``.manifest.json``."""
    return entry.with_name(entry.name + ".manifest.json")


def write(manifest: Path, base: Path, names: Iterable[str]) -> dict:
    """Record the files ``names`` (relative to ``base``) in ``manifest``, atomically;
    returns the record."""
    record = {"version": VERSION, "files": {name: describe(base / name) for name in names}}
    atomic.write_json(manifest, record, indent=1, sort_keys=True)
    return record


def load(manifest: Path) -> dict | None:
    """The record in ``manifest``, or None when there is none or it cannot be read as one."""
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != VERSION \
            or not isinstance(record.get("files"), dict):
        return None
    return record


def _compare(path: Path, want: dict) -> str | None:
    """What is wrong with ``path`` against its record ``want``, or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if "link" in want:
        if not stat.S_ISLNK(st.st_mode):
            return f"not the symlink to {want['link']} it was"
        target = os.readlink(path)
        return None if target == want["link"] else f"links to {target}, recorded {want['link']}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size != want.get("size"):
        return f"{st.st_size} bytes, recorded {want.get('size')} (truncated or replaced)"
    try:
        digest = sha256_of(path)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if digest != want.get("sha256"):
        recorded = str(want.get("sha256"))[:16]
        return f"contents changed (sha256 {digest[:16]}..., recorded {recorded}...)"
    return None


def problems(manifest: Path, base: Path) -> list[Problem]:
    """Every way the files recorded in ``manifest`` differ from what is under ``base`` now;
    a missing or unreadable manifest is itself one problem."""
    record = load(manifest)
    if record is None:
        return [Problem(manifest, "no readable manifest")]
    found = []
    for name, want in sorted(record["files"].items()):
        what = _compare(base / name, want if isinstance(want, dict) else {})
        if what is not None:
            found.append(Problem(base / name, what))
    return found


def file_problems(entry: Path) -> list[Problem]:
    """``problems`` of a single-file entry whose manifest is beside it (``manifest_path``)."""
    if not entry.is_file():
        return [Problem(entry, "missing")]
    return problems(manifest_path(entry), entry.parent)


def record_file(entry: Path) -> dict:
    """Write the manifest of a single-file entry beside it."""
    return write(manifest_path(entry), entry.parent, [entry.name])

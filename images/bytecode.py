"""The guest agent's bytecode, compiled on the host by the image's own Python.

Concepts: the guest imports its agent from msixlab's guest files staged in the cache
(images/staging.py), shared read-only over 9p at /opt/msixlab, with
PYTHONDONTWRITEBYTECODE set.  Without bytecode beside the sources every boot compiles the
agent again under TCG, which costs about half a second of the guest's start.  So when the
files are staged, the image's Python (run on the host through the image's loader, as QEMU
is) compiles the guest packages into their ``__pycache__`` directories there, where the
guest's interpreter looks for them; the file names carry the interpreter's tag
(``cpython-313``).

The guest validates each file by the source's mtime and size (9p passes both through),
so stale bytecode is never used: the guest then compiles in memory as before.  Compiling
is skipped when every file is fresh, and a tree the host cannot write is left alone (the
guest compiles; nothing fails).  Each package's bytecode is recorded in a manifest
(images/manifest.py) when it is compiled; a file that no longer matches it (a valid
header over garbage would crash the guest's import) is compiled again.
"""
from __future__ import annotations

import logging
import os
import struct
import subprocess
from pathlib import Path

from . import manifest

log = logging.getLogger(__name__)

# The packages the guest imports (agent/guest/__main__.py and what it imports).
GUEST_PACKAGES = ("agent", "agent/guest", "msixlab_common")
COMPILE_TIMEOUT_S = 60


def _sources(project: Path) -> list[Path]:
    return sorted(p for pkg in GUEST_PACKAGES for p in (project / pkg).glob("*.py"))


def is_fresh(source: Path, tag: str) -> bool:
    """Whether ``source`` has bytecode for interpreter ``tag`` that matches its mtime
    and size (the fields a timestamp-validated .pyc header holds)."""
    pyc = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
    try:
        header = pyc.read_bytes()[:16]
        st = source.stat()
    except OSError:
        return False
    if len(header) < 16:
        return False
    flags, mtime, size = struct.unpack("<III", header[4:16])
    return flags == 0 and mtime == (int(st.st_mtime) & 0xFFFFFFFF) \
        and size == (st.st_size & 0xFFFFFFFF)


def _pyc(source: Path, tag: str) -> Path:
    return source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"


def manifest_of(package: Path, tag: str) -> Path:
    """The manifest (images/manifest.py) of ``package``'s ``tag`` bytecode."""
    return package / "__pycache__" / f"guest-bytecode.{tag}.manifest.json"


def damaged(project: Path, tag: str) -> list[Path]:
    """The guest sources whose ``tag`` bytecode differs from what was recorded when it was
    compiled (or was never recorded): a file with a valid header and garbage after it
    would pass ``is_fresh`` and crash the guest's import."""
    bad = []
    for pkg in GUEST_PACKAGES:
        record = manifest.load(manifest_of(project / pkg, tag))
        files = record["files"] if record else {}
        wrong = {p.path.name for p in manifest.problems(manifest_of(project / pkg, tag),
                                                        project / pkg / "__pycache__")}
        bad += [s for s in sorted((project / pkg).glob("*.py"))
                if _pyc(s, tag).name not in files or _pyc(s, tag).name in wrong]
    return bad


def _record(project: Path, tag: str) -> None:
    """Write each guest package's bytecode manifest."""
    for pkg in GUEST_PACKAGES:
        cache = project / pkg / "__pycache__"
        names = [_pyc(s, tag).name for s in sorted((project / pkg).glob("*.py"))]
        manifest.write(manifest_of(project / pkg, tag), cache, names)


def stale(project: Path, tag: str) -> list[Path]:
    """The guest sources whose ``tag`` bytecode is missing, out of date or damaged."""
    bad = set(damaged(project, tag))
    return [s for s in _sources(project) if s in bad or not is_fresh(s, tag)]


def ensure(python: list[str], tag: str, project: Path) -> bool:
    """Compile the guest packages of ``project`` with ``python`` (an argv prefix that runs
    the image's interpreter) when any is stale.  Returns True when all are fresh after.
    Never raises: a failure only costs the guest its compile time, so it is logged."""
    todo = stale(project, tag)
    if not todo:
        return True
    if not os.access(project, os.W_OK):
        log.debug("checkout %s is not writable: the guest compiles its agent", project)
        return False
    argv = python + ["-m", "py_compile", *map(str, todo)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("compiling the guest agent with the image's Python failed: %s", err)
        return False
    if done.returncode != 0:
        log.warning("compiling the guest agent failed (%d): %s", done.returncode,
                    done.stderr.strip()[-500:])
        return False
    if any(not is_fresh(s, tag) for s in _sources(project)):
        return False
    try:
        _record(project, tag)
    except OSError as err:
        log.warning("cannot record the guest agent's bytecode: %s", err)
        return False
    return not stale(project, tag)

"""What msixlab is running: its package version and, from a checkout, its commit.

Concepts: ``package_version()`` is the installed distribution's version
(``importlib.metadata``).  ``commit()`` is the git commit of the checkout msixlab runs
from, ``-dirty`` when tracked files changed, and None when there is no checkout: msixlab
counts as a checkout only when the directory holding its packages is the top of a git work
tree, so an install inside somebody else's repository (a venv in a kernel tree) never
reports that repository's commit.  ``what_ran()`` is what the records carry where they name
msixlab (``msixlab_commit``): the commit, else ``msixlab <version>``; ``describe()`` is
``msixlab --version``.
"""

from __future__ import annotations

import logging
import subprocess
from importlib import metadata
from pathlib import Path

from images.packaged import package_dir

log = logging.getLogger(__name__)

#: the directory that holds msixlab's packages: a checkout's top, or site-packages
PACKAGES_DIR = package_dir("agent").parent
GIT_TIMEOUT_S = 10


def package_version() -> str:
    """The installed msixlab's version, ``unknown`` when it is not installed (run from a
    bare tree with PYTHONPATH)."""
    try:
        return metadata.version("msixlab")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as err:
        log.info("git %s in %s: %s", " ".join(args), root, err)
        return None


def commit(root: Path = PACKAGES_DIR) -> str | None:
    """The commit of the msixlab checkout at ``root`` (``-dirty`` with changes to tracked
    files), or None when ``root`` is not the top of a git work tree."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
        return None
    head = _git(root, "rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return None
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return head.stdout.strip() + ("-dirty" if dirty is not None and dirty.stdout.strip() else "")


def what_ran(root: Path = PACKAGES_DIR) -> str:
    """What the records name as the msixlab that ran: the commit, else ``msixlab
    <version>``."""
    return commit(root) or f"msixlab {package_version()}"


def describe(root: Path = PACKAGES_DIR) -> str:
    """``msixlab --version``: ``msixlab 0.1.0``, and ``(commit C)`` from a checkout."""
    found = commit(root)
    return f"msixlab {package_version()}" + (f" (commit {found})" if found else "")

"""What msixlab is running, and the command line that runs a recorded run again.

Concepts: ``package_version()`` is the installed distribution's version
(``importlib.metadata``).  ``commit()`` is the git commit of the checkout msixlab runs
from, ``-dirty`` when tracked files changed, and None when there is no checkout: msixlab
counts as a checkout only when the directory holding its packages is the top of a git work
tree, so an install inside somebody else's repository (a venv in a kernel tree) never
reports that repository's commit.  ``what_ran()`` is the one way the records name
msixlab (``msixlab_commit``): the commit, else ``msixlab <version>``; ``describe()`` is
``msixlab --version``.  ``reproduce_command(metadata)`` is the one way a run's command
line is written: from what its metadata records (``job``, ``options``, ``seed``:
results/metadata.py), so the ``reproduce`` line a job writes and the one rebuilt for an
older routing.json that has none are the same function of the same record.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from agent.host.argtypes import cmdline_text
from agent.host.results.metadata import DEFAULT_SCENARIO, upgrade

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


def reproduce_command(recorded: Mapping[str, Any]) -> str:
    """The ``msixlab`` command line that repeats the run whose metadata is ``recorded``
    (either layout: ``upgrade``): ``msixlab soak`` with its seconds, seed and ops, or
    ``msixlab run`` with its scenario when not the default; then the kernel under test (a
    tree, a prebuilt kernel with its build tree, else the flavor), another QEMU, an
    accelerator other than tcg, vectors, CPUs, the MSI-X modes, the vIOMMU, the NICs, the
    extra kernel parameters and the device faults.  An option the record lacks is left
    out (its default)."""
    meta = upgrade(recorded)
    options: Mapping[str, Any] = meta["options"]
    words = ["msixlab", str(meta.get("job") or "run")]
    if words[1] == "soak":
        words += ["--seconds", f"{options.get('seconds') or 60:g}",
                  "--seed", str(meta.get("seed", 0))]
        words += ["--ops", str(options["ops"])] if options.get("ops") is not None else []
    elif options.get("scenario") not in (None, DEFAULT_SCENARIO):
        words += ["--scenario", str(options["scenario"])]
    if options.get("kernel_tree"):
        words += ["--kernel-tree", str(options["kernel_tree"])]
    elif options.get("kernel") and options.get("kdir"):
        words += ["--kernel", str(options["kernel"]), "--kdir", str(options["kdir"])]
    elif options.get("flavor"):
        words += ["--flavor", str(options["flavor"])]
    words += ["--qemu", str(options["qemu"])] if options.get("qemu") else []
    words += ["--accel", str(options["accel"])] if options.get("accel") not in (
        None, "", "tcg") else []
    for key in ("vectors", "cpus"):
        words += [f"--{key}", str(options[key])] if options.get(key) is not None else []
    words += [flag for key, flag in (("msix_maskable", "--msix-maskable"),
                                     ("msix_noresize", "--msix-noresize"),
                                     ("iommu", "--iommu")) if options.get(key)]
    words += ["--nics", str(options["nics"])] if (options.get("nics") or 1) > 1 else []
    words += ["--append", cmdline_text(options["append"])] if options.get("append") else []
    words += ["--device-fault=" + spec["kind"] + ":" + ",".join(
        f"{k}={v}" for k, v in spec.items() if k != "kind")
        for spec in options.get("device_faults") or ()]
    return shlex.join(words)

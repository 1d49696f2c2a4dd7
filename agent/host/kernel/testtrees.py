"""Kernel trees for msixlab's own tests and benches, built once in the cache.

Concepts:
- The *test kernel*: Debian's ``linux-source-7.3`` (``source``) unpacked and built with
  ``tinyconfig`` plus the rig's fragment under ``<cache>/kernel/trees/<package>_<version>-
  <config hash>/``.  The config hash covers the fragment, so a changed fragment builds a
  new tree and an unchanged one is never rebuilt.  The build happens in a ``.building``
  sibling (an interrupted build resumes there, incrementally) that is renamed into place
  when it succeeded; ``<tree>.json`` beside it, written last, says it is complete.
  ``<tree>.manifest.json`` (images/manifest.py) records the files a run reads (bzImage,
  .config, release, Module.symvers, the modules); a tree whose files no longer match is
  reopened (``reopen_damaged``): the damaged files deleted and the build resumed.
- The *bisect fixture*: a git repository made from a copy of the built test kernel
  (Debian's top-level ``.gitignore`` holds ``/*``, which is dropped), a ``base`` commit,
  and one branch per ``SERIES``: commits that each make one small change in
  ``drivers/pci/msi/``, ``drivers/vfio/pci/`` or their documentation, one of which plants
  a bug: an MSI-X table regression, an oops, a restore that misses vectors added after
  enable (all three caught by the default scenario) and a vfio-pci one (caught by
  ``--scenario vfio-pci``).  Commits are made with fixed names and dates, so the same
  inputs give the same shas.  The repository is kept under ``<cache>/kernel/bisect/``
  with its build products, so a bisect of it rebuilds only what a step changes;
  ``fixture_in_use`` lends it to one user (a test module, a bench) at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from images import manifest
from images.cache import exclusive
from msixlab_common import atomic
from msixlab_common.lifetime import die_with_parent
from msixlab_common.removal import remove_tree

from agent.host.kernel import build as kbuild
from agent.host.kernel import config as kconfig
from agent.host.kernel.errors import SourceError
from agent.host.kernel.git import Git
from agent.host.kernel.source import PACKAGE, extract, fetch_deb, fetch_intact, kernel_cache

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 3 * 3600
GIT_ENV = {"GIT_AUTHOR_NAME": "msixlab", "GIT_AUTHOR_EMAIL": "msixlab@localhost",
           "GIT_COMMITTER_NAME": "msixlab", "GIT_COMMITTER_EMAIL": "msixlab@localhost",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def config_hash() -> str:
    """12 hex digits naming the test kernel's configuration (the fragment, tinyconfig and the
    targets)."""
    digest = hashlib.sha256(kconfig.FRAGMENT.read_bytes() + b"\0tinyconfig\0bzImage modules")
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class CachedTree:
    """A built test kernel tree in the cache and its ``<tree>.json`` record."""
    tree: kbuild.KernelTree
    info: dict

    @property
    def path(self) -> Path:
        """The tree's directory."""
        return self.tree.path


def ensure_test_kernel(*, jobs: int | None = None, niceness: int = 10,
                       on_line: Callable[[str], None] | None = None) -> CachedTree:
    """The built test kernel (fetched, unpacked and built first if needed)."""
    package = fetch_deb(PACKAGE)
    root = kernel_cache() / "trees"
    out = root / f"{package.name}_{package.key}-{config_hash()}"
    stamp = out.with_name(out.name + ".json")
    if stamp.is_file() and tree_intact(out):
        return CachedTree(kbuild.KernelTree(out), json.loads(stamp.read_text()))
    with exclusive(root / (out.name + ".lock"), timeout=LOCK_TIMEOUT,
                   what=f"another msixlab build of {out.name}"):
        if stamp.is_file() and not tree_intact(out):
            reopen_damaged(out)
        if not stamp.is_file():
            if not out.is_dir():
                _build_test_kernel(package, out, jobs, niceness, on_line)
            tree = kbuild.KernelTree(out)
            manifest.write(manifest.manifest_path(out), out, tree_key_files(out))
            atomic.write_json(stamp, {"package": package.name, "version": package.version,
                                "config_hash": config_hash(), "release": tree.release(),
                                "built": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return CachedTree(kbuild.KernelTree(out), json.loads(stamp.read_text()))


def tree_key_files(tree: Path) -> list[str]:
    """The built tree's files a run reads (tree-relative): the bzImage, .config, release,
    Module.symvers, and every module of modules.order."""
    names = [kbuild.BZIMAGE, ".config", "include/config/kernel.release", "Module.symvers"]
    order = tree / "modules.order"
    if order.is_file():
        names.append("modules.order")
        names += [rel[:-2] + ".ko" if rel.endswith(".o") else rel
                  for rel in order.read_text().split()]
    return [str(n) for n in names if (tree / n).is_file()]


def tree_intact(tree: Path) -> bool:
    """Whether the cached tree's key files match their manifest (images/manifest.py); a
    tree from before manifests counts as intact (its manifest is written now)."""
    record = manifest.manifest_path(tree)
    if manifest.load(record) is None:
        try:
            manifest.write(record, tree, tree_key_files(tree))
        except OSError as err:
            log.info("cannot record the key files of %s: %s", tree, err)
        return True
    damage = manifest.problems(record, tree)
    for problem in damage:
        log.warning("cached kernel tree %s is damaged: %s", tree, problem)
    return not damage


def reopen_damaged(tree: Path) -> None:
    """Make a damaged cached tree a build in progress again: its damaged files deleted (so
    that make, which goes by their times, makes them again), its record and manifest
    removed and the tree moved back to ``.building``, where the build resumes."""
    for problem in manifest.problems(manifest.manifest_path(tree), tree):
        problem.path.unlink(missing_ok=True)
    manifest.manifest_path(tree).unlink(missing_ok=True)
    tree.with_name(tree.name + ".json").unlink(missing_ok=True)
    work = tree.with_name(tree.name + ".building")
    remove_tree(work, ignore_errors=True)
    os.rename(tree, work)


def _build_test_kernel(package, out: Path, jobs, niceness, on_line) -> None:
    work = out.with_name(out.name + ".building")
    logs = out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (work / "Makefile").is_file():
        remove_tree(work, ignore_errors=True)
        started = time.monotonic()
        package = fetch_intact(package.name)
        extract(package, work, logs / f"{out.name}-extract.log")
        log.info("unpacked %s in %.1f s", package.deb.name, time.monotonic() - started)
    result = kbuild.build(kbuild.KernelTree(work), logs / f"{out.name}-build.log", jobs=jobs,
                          niceness=niceness, on_line=on_line)
    atomic.write_json(work.parent / (out.name + "-build-time.json"),
                {"seconds": round(result.seconds, 1), "steps": result.steps, "jobs": jobs})
    os.rename(work, out)


# --- the bisect fixture ---------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    """Replace the one occurrence of ``anchor`` in ``path`` with ``text``."""

    path: str
    anchor: str
    text: str

    def apply(self, tree: Path) -> None:
        """Make the edit in ``tree``; ``SourceError`` unless its anchor occurs exactly once in
        the file."""
        path = tree / self.path
        content = path.read_text()
        if content.count(self.anchor) != 1:
            raise SourceError(f"{self.path}: the fixture's anchor {self.anchor[:40]!r} occurs "
                              f"{content.count(self.anchor)} times, not once")
        path.write_text(content.replace(self.anchor, self.text))


def _note(path: str, anchor: str, note: str) -> Edit:
    """A harmless change: a line added after ``anchor`` (C comment or rst comment)."""
    line = f".. {note}\n" if path.endswith(".rst") else f"/* {note} */\n"
    return Edit(path, anchor, anchor + line)


API, MSI, DOMAIN = "drivers/pci/msi/api.c", "drivers/pci/msi/msi.c", "drivers/pci/msi/irqdomain.c"
DOC = "Documentation/PCI/msi-howto.rst"
API_INCLUDES = '#include <linux/irq.h>\n\n#include "msi.h"\n'
MSI_INCLUDES = '#include "../pci.h"\n#include "msi.h"\n'
DOMAIN_INCLUDES = "#include <linux/of_irq.h>\n"
DOC_ANCHOR = "Using MSI\n---------\n"

# The regression: pci_write_msg_msix() skips an all-zero message, so an entry freed with
# pci_msix_free_irq() keeps its old address and data in the table (checked by
# freed_entry_masked_and_cleared).
ZERO_MSG_SKIPPED = Edit(
    MSI, "\tif (desc->pci.msi_attrib.is_virtual)\n\t\treturn;\n",
    "\tif (desc->pci.msi_attrib.is_virtual)\n\t\treturn;\n"
    "\t/* An empty message changes nothing: the entry is masked by now */\n"
    "\tif (!msg->address_lo && !msg->address_hi && !msg->data)\n\t\treturn;\n")

# The oops: pci_msix_alloc_irq_at() reads affdesc without checking it, and most dynamic
# allocations pass none (a NULL pointer dereference in the guest driver's first one).
MANAGED_DEREF = Edit(
    API, "\treturn msi_domain_alloc_irq_at(&dev->dev, MSI_DEFAULT_DOMAIN, index, affdesc, NULL);\n",
    "\t/* Managed interrupts are set up when MSI-X is enabled, not later */\n"
    "\tif (affdesc->is_managed)\n\t\treturn map;\n\n"
    "\treturn msi_domain_alloc_irq_at(&dev->dev, MSI_DEFAULT_DOMAIN, index, affdesc, NULL);\n")


# The restore regression: __pci_restore_msix_state() walks the descriptors as if MSI-X
# held only the block pci_enable_msix_range() set up from entry 0 and stops at the first
# gap, so a vector added after enable past a gap (an explicit index, a freed hole) is not
# rewritten: after a bus reset, which resets QEMU's table, it stays masked with an empty
# message (checked by reset_entry_restored).  The FLR before it passes: QEMU keeps its
# table over an FLR.
RESTORE_STOPS_AT_GAP = Edit(
    MSI, "\t\tmsi_for_each_desc(entry, &dev->dev, MSI_DESC_ALL) {\n"
         "\t\t\tif (write_msg)\n",
    "\t\tunsigned int next = 0;\n\n"
    "\t\tmsi_for_each_desc(entry, &dev->dev, MSI_DESC_ALL) {\n"
    "\t\t\t/* The table was set up as one block from entry 0 */\n"
    "\t\t\tif (entry->msi_index != next++)\n\t\t\t\tbreak;\n"
    "\t\t\tif (write_msg)\n")

VFIO_INTRS, VFIO_CORE = "drivers/vfio/pci/vfio_pci_intrs.c", "drivers/vfio/pci/vfio_pci_core.c"
VFIO_DOC = "Documentation/driver-api/vfio.rst"
VFIO_INCLUDES = '#include "vfio_pci_priv.h"\n'
VFIO_DOC_ANCHOR = "VFIO Device cdev\n----------------\n"

# The vfio-pci regression: a vector userspace adds after MSI-X was enabled gets whichever
# table entry is free (MSI_ANY_INDEX), not its own, so its trigger is wired to another
# entry and its own raise reaches nothing (checked by vfio_msi_irqs_match_allocated and the
# vfio-pci scenario's other views).
VFIO_ANY_INDEX = Edit(
    VFIO_INTRS, "\tmap = pci_msix_alloc_irq_at(pdev, vector, NULL);\n",
    "\t/* The MSI core places the new vector, as pci_alloc_irq_vectors() does */\n"
    "\tmap = pci_msix_alloc_irq_at(pdev, MSI_ANY_INDEX, NULL);\n")


def _msi_notes(tag: str) -> list[tuple[str, Edit]]:
    return [
        ("PCI/MSI: Document where dynamic allocation lives", _note(DOC, DOC_ANCHOR, f"{tag} 1")),
        ("PCI/MSI: Note the API file's scope", _note(API, API_INCLUDES, f"{tag}: exported API")),
        ("PCI/MSI: Note the core file's scope", _note(MSI, MSI_INCLUDES, f"{tag}: core")),
        ("PCI/MSI: Note the irqdomain file's scope", _note(DOMAIN, DOMAIN_INCLUDES, f"{tag}: domains")),
        ("PCI/MSI: Document MSI-X table ownership", _note(DOC, DOC_ANCHOR, f"{tag} 2")),
        ("PCI/MSI: Note the API's locking", _note(API, API_INCLUDES, f"{tag}: locking")),
        ("PCI/MSI: Note the write ordering", _note(MSI, MSI_INCLUDES, f"{tag}: ordering")),
    ]


def _vfio_notes(tag: str) -> list[tuple[str, Edit]]:
    return [
        ("vfio: Document the device cdev's users", _note(VFIO_DOC, VFIO_DOC_ANCHOR, f"{tag} 1")),
        ("vfio/pci: Note the interrupt file's scope",
         _note(VFIO_INTRS, VFIO_INCLUDES, f"{tag}: irqs")),
        ("vfio/pci: Note the core file's scope", _note(VFIO_CORE, VFIO_INCLUDES, f"{tag}: core")),
        ("vfio: Document MSI-X growth after enable", _note(VFIO_DOC, VFIO_DOC_ANCHOR, f"{tag} 2")),
        ("vfio/pci: Note the trigger locking", _note(VFIO_INTRS, VFIO_INCLUDES, f"{tag}: locking")),
        ("vfio/pci: Note the reset paths", _note(VFIO_CORE, VFIO_INCLUDES, f"{tag}: resets")),
        ("vfio: Document NORESIZE", _note(VFIO_DOC, VFIO_DOC_ANCHOR, f"{tag} 3")),
    ]


def _series(culprit_at: int, culprit: tuple[str, Edit], tag: str,
            notes: Callable[[str], list[tuple[str, Edit]]] = _msi_notes,
            ) -> tuple[tuple[str, tuple[Edit, ...]], ...]:
    """Seven harmless commits (``notes``) with ``culprit`` inserted at ``culprit_at``."""
    commits = [(subject, (edit,)) for subject, edit in notes(tag)]
    commits.insert(culprit_at, (culprit[0], (culprit[1],)))
    return tuple(commits)


# name -> the commits on top of base; the culprit's position is its index.
SERIES = {
    "msix-regression": _series(4, ("PCI/MSI: Skip table writes of an empty message",
                                   ZERO_MSG_SKIPPED), "regression series"),
    "oops": _series(2, ("PCI/MSI: Refuse managed affinity in dynamic allocation",
                        MANAGED_DEREF), "oops series"),
    "restore": _series(6, ("PCI/MSI: Restore the MSI-X table as one block from entry 0",
                           RESTORE_STOPS_AT_GAP), "restore series"),
    "vfio-pci": _series(3, ("vfio/pci: Let the MSI core place MSI-X vectors added after enable",
                            VFIO_ANY_INDEX), "vfio-pci series", _vfio_notes),
}
CULPRITS = {"msix-regression": 4, "oops": 2, "restore": 6, "vfio-pci": 3}


def fixture_hash() -> str:
    """12 hex digits naming the bisect fixture's series and culprits (a change makes a new
    fixture)."""
    text = repr(sorted((name, commits) for name, commits in SERIES.items())) + repr(CULPRITS)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _git(repo: Path, *args: str, date: int = 0) -> str:
    stamp = f"@{1700000000 + date} +0000"
    env = {**os.environ, **GIT_ENV, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env=env, timeout=1800, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SourceError(f"git {' '.join(args)} in {repo} failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def ensure_bisect_fixture(**build_args) -> dict:
    """The fixture repository (made first if needed): ``{"path", "base", "series":
    {name: {"tip", "culprit", "commits"}}}``."""
    test_kernel = ensure_test_kernel(**build_args)
    root = kernel_cache() / "bisect"
    out = root / f"{test_kernel.path.name}-{fixture_hash()}"
    stamp = out.with_name(out.name + ".json")
    if stamp.is_file():
        return json.loads(stamp.read_text())
    with exclusive(root / (out.name + ".lock"), timeout=LOCK_TIMEOUT,
                   what=f"another msixlab build of the bisect fixture {out.name}"):
        if not stamp.is_file():
            atomic.write_json(stamp, _make_fixture(test_kernel.path, out))
    return json.loads(stamp.read_text())


def _make_fixture(source: Path, out: Path) -> dict:
    work = out.with_name(out.name + ".making")
    remove_tree(work, ignore_errors=True)
    remove_tree(out, ignore_errors=True)
    started = time.monotonic()
    subprocess.run(["cp", "-a", str(source), str(work)], check=True, timeout=3600,
                   preexec_fn=die_with_parent(signal.SIGTERM))
    ignore = work / ".gitignore"        # Debian's packaging ignores everything at the top
    ignore.write_text("".join(l for l in ignore.read_text().splitlines(keepends=True)
                              if l.strip() != "/*"))
    _git(work, "init", "-q", "-b", "base")
    _git(work, "config", "gc.auto", "0")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", f"{PACKAGE} as Debian ships it")
    info = {"path": str(out), "base": _git(work, "rev-parse", "HEAD"), "series": {}}
    for name, commits in SERIES.items():
        _git(work, "checkout", "-q", "-b", name, "base")
        shas = []
        for i, (subject, edits) in enumerate(commits, 1):
            for edit in edits:
                edit.apply(work)
            _git(work, "commit", "-q", "-a", "-m", subject, date=i)
            shas.append(_git(work, "rev-parse", "HEAD"))
        info["series"][name] = {"tip": shas[-1], "culprit": shas[CULPRITS[name]],
                                "commits": shas}
    _git(work, "checkout", "-q", "base")
    log.info("made the bisect fixture in %.1f s", time.monotonic() - started)
    os.rename(work, out)
    return info


@contextmanager
def fixture_in_use(info: dict, timeout: float = LOCK_TIMEOUT):
    """Hold the fixture for one user at a time (two test sessions on one machine would
    otherwise check out and bisect the same repository at once)."""
    path = Path(info["path"])
    with exclusive(path.with_name(path.name + ".use.lock"), timeout=timeout,
                   what=f"another user of the bisect fixture {path.name}"):
        yield info


def reset_fixture(info: dict, branch: str) -> Git:
    """Put the fixture back on ``branch`` with no bisect under way and no tracked changes
    (a test interrupted mid-bisect may have left it otherwise)."""
    repo = Path(info["path"])
    git = Git(repo)
    if git.bisecting():
        git.run("bisect", "reset")
    git.run("checkout", "-q", "-f", branch)
    return git

"""The kernel's ``scripts/checkpatch.pl``, from Debian's linux-source package, on the driver.

Concepts:
- ``script_dir`` finds checkpatch and the two word lists it reads (``SCRIPTS``), all from
  one linux-source version (the newest .deb in the cache, source.py): the ``scripts/`` of
  a complete test kernel tree of that version (testtrees.py) when there is one, else
  ``<cache>/kernel/checkpatch/<package>_<version>/``, unpacked from the .deb once
  (``unpack_scripts``; the .deb is downloaded first, through the rig's private apt
  configuration, when the cache has none) and checked against its manifest
  (images/manifest.py) before each use.
- ``run`` checks files with ``--no-tree -f --strict``: ``-f`` because they are files, not
  a patch; ``--strict`` for the CHECK-level tests that new code and drivers/pci are held
  to; ``--no-tree`` because the driver lives outside a kernel tree, and all a tree would
  add (MAINTAINERS status, SPDX licences through git, ``<asm/>`` includes, CamelCase
  names from its headers) finds nothing here.  It runs in the files' directory, so the
  findings name them as the accepted list does, with ``HOME`` an empty directory and no
  ``CHECKPATCH_CONFIG_DIR``: no one's ``.checkpatch.conf`` changes its options.  Its
  ``--terse --show-types`` lines become ``lint.Finding``s.
- Whatever keeps checkpatch from checking (no perl, a word list missing, a crash) is a
  ``LintError`` with its message, never "no findings".
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from images import manifest
from images.cache import exclusive
from msixlab_common.removal import remove_tree

from agent.host.kernel.errors import SourceError
from agent.host.kernel.lint import Finding, LintError
from agent.host.kernel.source import (
    PACKAGE,
    SourcePackage,
    cached_debs,
    fetch_intact,
    kernel_cache,
)

log = logging.getLogger(__name__)

SCRIPTS = ("checkpatch.pl", "spelling.txt", "const_structs.checkpatch")
OPTIONS = ("--no-tree", "-f", "--strict", "--terse", "--show-types", "--no-summary",
           "--color=never")
RUN_TIMEOUT = 120
UNPACK_TIMEOUT = 15 * 60

# "msixlab_route.c:182: WARNING:MEMORY_BARRIER: memory barrier without comment"
_TERSE = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+): (?P<level>ERROR|WARNING|CHECK):"
                    r"(?P<kind>[A-Z0-9_]+): (?P<text>.*)$")


def _tree_scripts(source: SourcePackage) -> Path | None:
    """``scripts/`` of a complete test kernel tree (its ``<tree>.json`` written) unpacked
    from ``source``, if there is one with every file of ``SCRIPTS``."""
    for tree in sorted((kernel_cache() / "trees").glob(f"{source.name}_{source.key}-*")):
        scripts = tree / "scripts"
        if tree.with_name(tree.name + ".json").is_file() and \
                all((scripts / name).is_file() for name in SCRIPTS):
            return scripts
    return None


def unpack_scripts(source: SourcePackage, dest: Path) -> None:
    """Unpack ``SCRIPTS`` from the kernel tarball the package carries into ``dest`` (made
    anew) and record them in ``dest``'s manifest; ``SourceError`` when it cannot."""
    scratch = dest.with_name(dest.name + f".deb{os.getpid()}")
    remove_tree(scratch, ignore_errors=True)
    remove_tree(dest, ignore_errors=True)
    try:
        _run(["dpkg-deb", "-x", str(source.deb), str(scratch)], "dpkg-deb -x")
        tarballs = list((scratch / "usr/src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise SourceError(f"{source.deb.name} holds {len(tarballs)} source tarballs, not one")
        top = tarballs[0].name.split(".tar.")[0]          # linux-source-7.3
        dest.mkdir(parents=True)
        _run(["tar", "-x", "-f", str(tarballs[0]), "-C", str(dest), "--strip-components=2",
              *(f"{top}/scripts/{name}" for name in SCRIPTS)], f"tar -x {tarballs[0].name}")
    finally:
        remove_tree(scratch, ignore_errors=True)
    manifest.write(manifest.manifest_path(dest), dest, SCRIPTS)


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=UNPACK_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SourceError(f"{what} failed: {err}") from err
    if done.returncode != 0:
        raise SourceError(f"{what} failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-500:]}")


def script_dir(package: str = PACKAGE) -> Path:
    """A directory holding every file of ``SCRIPTS`` from the newest cached ``package``
    (downloaded first when there is none): a test kernel tree's ``scripts/``, else the
    unpacked copy in the cache, unpacked (again, when damaged) if needed."""
    have = cached_debs(package)
    source = have[-1] if have else fetch_intact(package)
    if (scripts := _tree_scripts(source)) is not None:
        return scripts
    dest = kernel_cache() / "checkpatch" / f"{source.name}_{source.key}"
    record = manifest.manifest_path(dest)
    if manifest.load(record) is not None and not manifest.problems(record, dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(dest.with_name(dest.name + ".lock"), timeout=UNPACK_TIMEOUT,
                   what=f"another msixlab unpacking checkpatch from {source.deb.name}"):
        if manifest.load(record) is None or manifest.problems(record, dest):
            log.info("unpacking checkpatch from %s", source.deb.name)
            unpack_scripts(fetch_intact(package), dest)
    return dest


def parse(output: str) -> list[Finding]:
    """checkpatch's ``--terse --show-types`` lines as findings; ``LintError`` on any other
    line (checkpatch said something this reader would otherwise drop)."""
    findings = []
    for line in output.splitlines():
        if not line.strip():
            continue
        match = _TERSE.match(line)
        if not match:
            raise LintError(f"unexpected checkpatch output: {line!r}")
        findings.append(Finding(match["file"], int(match["line"]), match["kind"],
                                f"{match['level']}: {match['text']}"))
    return findings


def run(files: list[Path], scripts: Path, timeout: float = RUN_TIMEOUT) -> list[Finding]:
    """checkpatch (``OPTIONS``) on ``files``, all in one directory, run from there; the
    findings, named by file name.  ``LintError`` when it could not check them."""
    if not files:
        raise LintError("checkpatch was given no files")
    where = {f.parent for f in files}
    if len(where) != 1:
        raise LintError(f"checkpatch's files must share one directory, not {sorted(where)}")
    perl = shutil.which("perl")
    if perl is None:
        raise LintError("perl is not installed (checkpatch.pl needs it; make setup installs it)")
    argv = [perl, str(scripts / "checkpatch.pl"), *OPTIONS, *(f.name for f in files)]
    with tempfile.TemporaryDirectory(prefix="msixlab-checkpatch-") as empty:
        env = {k: v for k, v in os.environ.items() if k != "CHECKPATCH_CONFIG_DIR"}
        env["HOME"] = empty
        try:
            done = subprocess.run(argv, cwd=where.pop(), env=env, capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            raise LintError(f"checkpatch took longer than {timeout:g} s on {len(files)} "
                            "files") from err
    if done.stderr.strip() or done.returncode not in (0, 1):
        raise LintError(f"checkpatch failed (exit {done.returncode}): "
                        f"{(done.stderr or done.stdout).strip()[-1000:]}")
    findings = parse(done.stdout)
    if (done.returncode == 1) != bool(findings):
        raise LintError(f"checkpatch exited {done.returncode} with {len(findings)} findings: "
                        f"{done.stdout.strip()[-1000:]}")
    return findings

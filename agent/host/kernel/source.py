"""Debian's kernel source package, fetched through a private apt configuration.

Concepts: the tests and benches need a real kernel tree.  ``linux-source-7.3`` comes from
the Debian archive the host's apt configuration names (``images.mirror``), but apt is
pointed at a configuration of its own under ``<cache>/kernel/apt/`` (its sources list,
lists, cache and preferences): the host's apt sources and state are only read, never
written.  ``fetch_deb`` leaves ``<cache>/kernel/debs/<package>_<version>_all.deb``; once a
package is there it is used without touching the network again (``refresh`` asks apt
for a newer version).  The .deb gets a manifest (images/manifest.py) when it is
downloaded; ``fetch_intact`` checks it before a tree is unpacked from it and downloads a
damaged one again.  ``extract`` unpacks the tree the package carries into a directory.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from images import manifest
from images.cache import cache_dir, exclusive
from images.mirror import debian_mirror
from msixlab_common.lifetime import die_with_parent
from msixlab_common.removal import remove_tree

from agent.host.kernel.errors import SourceError

log = logging.getLogger(__name__)

PACKAGE = "linux-source-7.3"
SUITE = "trixie-backports"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_TIMEOUT = 30 * 60


@dataclass(frozen=True)
class SourcePackage:
    """A downloaded kernel source package: its name, version and .deb file."""
    name: str
    version: str
    deb: Path

    @property
    def key(self) -> str:
        """The version as a file-name-safe word (the epoch colon is dropped)."""
        return re.sub(r"[^A-Za-z0-9.+~-]", "_", self.version)


def kernel_cache() -> Path:
    """Where kernel sources, trees and the private apt configuration are cached."""
    return cache_dir() / "kernel"


def _apt_root() -> Path:
    return kernel_cache() / "apt"


def apt_argv(root: Path, *args: str) -> list[str]:
    """``apt-get``/``apt-cache`` argv that use only the private configuration at ``root``."""
    opts = {
        "Dir::State::Lists": root / "lists",
        "Dir::Cache": root / "cache",
        "Dir::Etc::SourceList": root / "sources.list",
        "Dir::Etc::SourceParts": root / "sources.list.d",
        "Dir::Etc::Preferences": root / "preferences",
        "Dir::Etc::PreferencesParts": root / "preferences.d",
        "Acquire::Languages": "none",
        "Acquire::Retries": "3",
        "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
    }
    argv = [args[0]]
    for key, value in opts.items():
        if value != "":
            argv += ["-o", f"{key}={value}"]
    return argv + list(args[1:])


def write_apt_config(root: Path, mirror: str) -> None:
    """Write msixlab's own apt configuration under ``root``: the dirs apt needs and a sources
    list for ``mirror``."""
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    signed = f" [signed-by={KEYRING}]" if KEYRING.is_file() else ""
    (root / "sources.list").write_text(f"deb{signed} {mirror} {SUITE} main\n")
    (root / "preferences").write_text("")


def _run(argv: list[str], log_path: Path, what: str, cwd: Path | None = None) -> str:
    log.info("%s: %s", what, " ".join(argv))
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT,
                              stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(signal.SIGTERM))
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SourceError(f"{what} failed: {err}", log=log_path) from err
    with open(log_path, "a") as out:
        out.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SourceError(f"{what} failed (exit {done.returncode}): {' / '.join(last)}",
                          log=log_path)
    return done.stdout


def cached_debs(package: str = PACKAGE) -> list[SourcePackage]:
    """The .deb files of ``package`` already downloaded, with their versions, sorted by file
    name."""
    debs = []
    for path in sorted((kernel_cache() / "debs").glob(f"{package}_*_all.deb")):
        version = path.name[len(package) + 1:-len("_all.deb")].replace("%3a", ":")
        debs.append(SourcePackage(package, version, path))
    return debs


def fetch_deb(package: str = PACKAGE, refresh: bool = False) -> SourcePackage:
    """The source package's .deb in the cache, downloaded first if there is none (or
    if ``refresh`` and the archive has a newer one)."""
    have = cached_debs(package)
    if have and not refresh:
        return have[-1]
    root = _apt_root()
    with exclusive(kernel_cache() / "apt.lock", timeout=APT_TIMEOUT,
                   what=f"another msixlab download of {package}"):
        have = cached_debs(package)
        if have and not refresh:
            return have[-1]
        write_apt_config(root, debian_mirror())
        log_path = kernel_cache() / "apt.log"
        _run(apt_argv(root, "apt-get", "-q", "update"), log_path, "apt-get update (private lists)")
        shown = _run(apt_argv(root, "apt-cache", "show", "--no-all-versions", package),
                     log_path, f"apt-cache show {package}")
        match = re.search(r"^Version: (\S+)$", shown, re.M)
        if not match:
            raise SourceError(f"the archive has no {package} in {SUITE}", log=log_path)
        version = match.group(1)
        debs = kernel_cache() / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        scratch = debs / f".download-{os.getpid()}"
        remove_tree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            _run(apt_argv(root, "apt-get", "-q", "download", f"{package}={version}"),
                 log_path, f"apt-get download {package}={version}", cwd=scratch)
            got = list(scratch.glob(f"{package}_*_all.deb"))
            if len(got) != 1:
                raise SourceError(f"apt-get download left {len(got)} packages, not one",
                                  log=log_path)
            os.replace(got[0], debs / got[0].name)
            manifest.record_file(debs / got[0].name)
        finally:
            remove_tree(scratch, ignore_errors=True)
    return next(p for p in cached_debs(package) if p.version == version)


def deb_problems(source: SourcePackage) -> list[manifest.Problem]:
    """How the cached .deb differs from its manifest (images/manifest.py), written when it
    was downloaded; a .deb from before manifests is recorded now (apt checked it against
    the archive's index when it downloaded it)."""
    if manifest.load(manifest.manifest_path(source.deb)) is None and source.deb.is_file():
        try:
            manifest.record_file(source.deb)
        except OSError as err:
            log.info("cannot record the manifest of %s: %s", source.deb, err)
            return []
    return manifest.file_problems(source.deb)


def fetch_intact(package: str = PACKAGE) -> SourcePackage:
    """``fetch_deb``, and when the cached .deb is damaged (``deb_problems``), the .deb
    removed and downloaded again."""
    source = fetch_deb(package)
    if damage := deb_problems(source):
        log.warning("cached %s is damaged (%s): downloading it again", source.deb,
                    "; ".join(p.what for p in damage))
        manifest.manifest_path(source.deb).unlink(missing_ok=True)
        source.deb.unlink(missing_ok=True)
        source = fetch_deb(package)
        if damage := deb_problems(source):
            raise SourceError(f"the downloaded {source.deb} does not match its manifest: "
                              + "; ".join(map(str, damage)))
    return source


def extract(source: SourcePackage, dest: Path, log_path: Path) -> None:
    """Unpack the kernel tree the package carries into ``dest`` (which must not exist)."""
    scratch = dest.with_name(dest.name + ".deb")
    remove_tree(scratch, ignore_errors=True)
    try:
        _run(["dpkg-deb", "-x", str(source.deb), str(scratch)], log_path, "dpkg-deb -x")
        tarballs = list((scratch / "usr/src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise SourceError(f"{source.deb.name} holds {len(tarballs)} source tarballs, not one",
                              log=log_path)
        dest.mkdir(parents=True)
        _run(["tar", "-x", "--strip-components=1", "-f", str(tarballs[0]), "-C", str(dest)],
             log_path, f"tar -x {tarballs[0].name}")
    finally:
        remove_tree(scratch, ignore_errors=True)
    if not (dest / "Makefile").is_file() or not (dest / "Kconfig").is_file():
        raise SourceError(f"{source.deb.name} did not unpack into a kernel tree at {dest}",
                          log=log_path)

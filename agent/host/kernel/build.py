"""Configuring and building a kernel tree: ``bzImage`` and ``modules``.

Concepts:
- ``KernelTree``: a directory that is a Linux source tree (its top Makefile names
  VERSION and PATCHLEVEL, it has Kconfig and arch/x86); built in place, as
  ``make -C TREE`` does.  ``release`` is ``include/config/kernel.release`` once built.
- ``configure``: a tree without ``.config`` starts from ``make tinyconfig``; the fragment
  is merged with ``scripts/kconfig/merge_config.sh -m`` and settled with ``make
  olddefconfig``.  A tree whose ``.config`` already carries every fragment option is left
  untouched, so an incremental build stays incremental.  A required option kconfig drops
  is a ``KernelBuildFailed`` naming it.
- ``build``: ``make -jN bzImage modules`` (``modules`` also writes ``Module.symvers``,
  without which the guest driver fails modpost), its output kept in a log and fed line by
  line to a callback for the progress display.  A failure quotes the first compiler,
  linker or make error (``first_error``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from msixlab_common import streamed

from agent.host.kernel import config as kconfig
from agent.host.kernel.errors import KernelBuildFailed, KernelTreeError
from agent.host.rundirs import make_results_dir

log = logging.getLogger(__name__)

OnLine = Callable[[str], None]
BUILD_TIMEOUT = 90 * 60
CONFIG_TIMEOUT = 10 * 60
BZIMAGE = Path("arch/x86/boot/bzImage")

# A kbuild progress line: "  CC      drivers/pci/msi/api.o", "  LD [M]  fs/9p/9p.ko".
PROGRESS = re.compile(r"^  ([A-Z][A-Z0-9_]*(?: \[M\])?)\s+(\S+)")
_ERRORS = (
    re.compile(r"^\S+:\d+(?::\d+)?: (?:fatal )?error: "),         # gcc, clang
    re.compile(r"^\S*ld(?:\.\w+)?: .*(?:undefined reference|multiple definition|cannot find)"),
    re.compile(r"^ERROR: modpost: "),
    re.compile(r"^\*\*\* "),                                       # kconfig, top Makefile
    re.compile(r"^make(?:\[\d+\])?: \*\*\* "),
)


@dataclass(frozen=True)
class KernelTree:
    """A Linux source tree at ``path``, built in place (``KernelTree.at`` checks it is one)."""
    path: Path

    @classmethod
    def at(cls, path: Path | str) -> "KernelTree":
        """The tree at ``path``; a ``KernelTreeError`` says why it is not one."""
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise KernelTreeError(f"{root} is not a directory", path=root)
        makefile = root / "Makefile"
        text = makefile.read_text(errors="replace")[:4096] if makefile.is_file() else ""
        if not (re.search(r"^VERSION = \d+", text, re.M) and (root / "Kconfig").is_file()
                and (root / "arch/x86").is_dir()):
            raise KernelTreeError(f"{root} is not a Linux kernel source tree (no top-level "
                                  "Makefile with VERSION, Kconfig and arch/x86)", path=root)
        return cls(root)

    @property
    def version(self) -> tuple[int, int]:
        """(VERSION, PATCHLEVEL) from the top Makefile, e.g. (7, 3)."""
        text = (self.path / "Makefile").read_text(errors="replace")[:4096]
        major = re.search(r"^VERSION = (\d+)", text, re.M)
        minor = re.search(r"^PATCHLEVEL = (\d+)", text, re.M)
        return int(major.group(1)), int(minor.group(1)) if minor else 0

    @property
    def config_path(self) -> Path:
        """The tree's ``.config``."""
        return self.path / ".config"

    @property
    def bzimage(self) -> Path:
        """Where the build leaves the bzImage (arch/x86/boot/bzImage)."""
        return self.path / BZIMAGE

    def config(self) -> dict[str, str]:
        """The tree's ``.config`` as options (empty when there is none)."""
        if not self.config_path.is_file():
            return {}
        return kconfig.parse_config(self.config_path.read_text(errors="replace"))

    def release(self) -> str | None:
        """The built kernel's release (``uname -r``), or None before a build."""
        path = self.path / "include/config/kernel.release"
        return path.read_text().strip() if path.is_file() else None


def first_error(lines: Iterable[str], context: int = 2) -> str:
    """The first compiler/linker/make error in a build's output, with ``context`` lines
    after it (a compiler error's caret and note); "" when none is recognised."""
    lines = list(lines)
    for pattern in _ERRORS:                 # the most specific kind of error wins
        for i, line in enumerate(lines):
            if pattern.search(line):
                return "\n".join(l.rstrip() for l in lines[i:i + 1 + context])
    return ""


@dataclass
class BuildResult:
    """A finished build: the tree, wall seconds, kbuild progress lines seen, the log,
    whether configure changed ``.config``, and the warnings of the configure step."""
    tree: KernelTree
    seconds: float
    steps: int                      # kbuild progress lines seen
    log: Path
    configured: bool                # whether configure changed .config
    warnings: list[str] = field(default_factory=list)


def _make(tree: KernelTree, args: list[str], log_file, on_line: OnLine | None,
          timeout: float, niceness: int, step: str, log_path: Path) -> int:
    """``make -C tree args``, streamed to ``log_file`` under a watchdog
    (``msixlab_common.streamed``): a make or compiler that hangs printing nothing is
    stopped at ``timeout`` all the same, with every job it started (kbuild's traps delete
    half-written objects on SIGTERM).  Returns the number of progress lines."""
    argv = ["make", "-C", str(tree.path), *args]
    log_file.write(f"$ {' '.join(argv)}\n")
    log_file.flush()
    steps = 0

    def line(text: str) -> None:
        nonlocal steps
        if PROGRESS.match(text):
            steps += 1
        if on_line:
            on_line(text)
    try:
        done = streamed.stream(argv, timeout=timeout, log=log_file, on_line=line,
                               niceness=niceness)
    except OSError as err:
        raise KernelBuildFailed(f"cannot run make: {err}", tree=tree.path, step=step,
                                log=log_path) from err
    if done.timed_out:
        raise KernelBuildFailed(f"{step} took longer than {timeout:.0f} s and was stopped",
                                tree=tree.path, step=step, log=log_path)
    if done.returncode != 0:
        text = log_path.read_text(errors="replace").splitlines()
        error = first_error(text)
        raise KernelBuildFailed(f"{step} of {tree.path} failed (make exit {done.returncode})",
                                tree=tree.path, step=step, log=log_path, first_error=error)
    return steps


def configure(tree: KernelTree, log_path: Path, *, fragment_path: Path = kconfig.FRAGMENT,
              niceness: int = 0) -> tuple[bool, list[str]]:
    """Make ``tree/.config`` carry the fragment.  Returns (changed, warnings): whether
    .config was (re)written, and the preferred options kconfig would not take."""
    fragment = kconfig.load_fragment(fragment_path)
    fresh = not tree.config_path.is_file()
    if not fresh and not kconfig.dropped(tree.config(), fragment):
        return False, []
    with open(log_path, "a") as out:
        if fresh:
            _make(tree, ["tinyconfig"], out, None, CONFIG_TIMEOUT, niceness, "configure", log_path)
        merge = ["sh", str(tree.path / "scripts/kconfig/merge_config.sh"), "-m", ".config",
                 str(fragment_path)]
        out.write(f"$ {' '.join(merge)}\n")
        out.flush()
        done = streamed.stream(merge, timeout=CONFIG_TIMEOUT, log=out, cwd=tree.path)
        if done.returncode != 0 or done.timed_out:
            raise KernelBuildFailed(f"merging the fragment into {tree.config_path} failed",
                                    tree=tree.path, step="configure", log=log_path)
        _make(tree, ["olddefconfig"], out, None, CONFIG_TIMEOUT, niceness, "configure", log_path)
    merged = tree.config()
    if hard := kconfig.check(merged, fragment):
        raise KernelBuildFailed(
            f"{tree.path}: kconfig would not take {len(hard)} option(s) the rig needs "
            "(a dependency is off, or this kernel lacks the option)",
            tree=tree.path, step="configure", log=log_path,
            first_error="\n".join(str(p) for p in hard))
    soft = [p for p in kconfig.dropped(merged, fragment) if p.option not in fragment.required]
    return True, [f"preferred option not taken: {p}" for p in soft]


def build(tree: KernelTree, log_path: Path, *, jobs: int | None = None,
          on_line: OnLine | None = None, niceness: int = 0,
          timeout: float = BUILD_TIMEOUT) -> BuildResult:
    """Configure (if needed) and build ``bzImage`` and ``modules`` in ``tree``."""
    started = time.monotonic()
    make_results_dir(log_path.parent)
    log_path.write_text("")
    changed, warnings = configure(tree, log_path, niceness=niceness)
    for warning in warnings:
        log.warning("%s", warning)
    jobs = jobs or os.cpu_count() or 1
    with open(log_path, "a") as out:
        steps = _make(tree, [f"-j{jobs}", "bzImage", "modules"], out, on_line, timeout,
                      niceness, "build", log_path)
    if not tree.bzimage.is_file() or not (tree.path / "Module.symvers").is_file():
        raise KernelBuildFailed(f"make succeeded but {tree.bzimage} or Module.symvers is "
                                "missing", tree=tree.path, step="build", log=log_path)
    return BuildResult(tree, time.monotonic() - started, steps, log_path, changed, warnings)

"""The few git operations a bisect needs, as argv lists with bounded waits.

Concepts: a ``Git`` is one work tree.  Every call runs ``git -C TREE ...`` with the
user's configuration but no pager and no prompts; a failure is a ``BisectError`` quoting
git's own message.  The bisect state (``BISECT_START``) is found through
``git rev-parse --git-path``, so worktrees and ``.git`` files work too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent.host.kernel.errors import BisectError

GIT_TIMEOUT = 300.0


class Git:
    """git commands on the work tree ``tree``."""
    def __init__(self, tree: Path):
        self.tree = tree

    def run(self, *args: str, check: bool = True,
            timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess:
        """``git -C TREE args...``, at most ``timeout`` seconds, no pager, no prompt.  With
        ``check`` a non-zero exit raises ``BisectError`` quoting git's last line; a timeout
        or a missing git is a ``BisectError`` too."""
        argv = ["git", "-C", str(self.tree), *args]
        env = {**os.environ, "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        try:
            done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired as err:
            raise BisectError(f"`git {' '.join(args)}` took longer than {timeout:g} s",
                              tree=self.tree) from err
        except OSError as err:
            raise BisectError(f"cannot run git: {err.strerror}", tree=self.tree) from err
        if check and done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            raise BisectError(f"`git {' '.join(args)}` failed: "
                              + (message[-1] if message else f"exit {done.returncode}"),
                              tree=self.tree)
        return done

    def toplevel(self) -> Path | None:
        """The top of the work tree holding ``tree``, or ``None`` if it is not in one."""
        done = self.run("rev-parse", "--show-toplevel", check=False)
        return Path(done.stdout.strip()).resolve() if done.returncode == 0 else None

    def commit(self, rev: str) -> str | None:
        """The full sha ``rev`` names, or None when it names no commit."""
        if not rev or rev.startswith("-"):
            return None
        done = self.run("rev-parse", "--verify", "--quiet", "--end-of-options",
                        f"{rev}^{{commit}}", check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def head(self) -> str:
        """The full sha of HEAD."""
        return self.run("rev-parse", "HEAD").stdout.strip()

    def branch(self) -> str | None:
        """The branch HEAD is on, or ``None`` when HEAD is detached."""
        done = self.run("symbolic-ref", "-q", "--short", "HEAD", check=False)
        return done.stdout.strip() or None

    def subject(self, sha: str) -> str:
        """The subject line of commit ``sha``."""
        return self.run("log", "-1", "--format=%s", sha).stdout.strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether ``older`` is an ancestor of ``newer`` (or the same commit)."""
        return self.run("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0

    def tracked_changes(self) -> list[str]:
        """``git status`` lines of tracked files that differ from HEAD (staged or not)."""
        done = self.run("status", "--porcelain", "--untracked-files=no")
        return [line for line in done.stdout.splitlines() if line.strip()]

    def git_path(self, name: str) -> Path:
        """The path of ``name`` inside the repository's git directory (worktrees included)."""
        path = Path(self.run("rev-parse", "--git-path", name).stdout.strip())
        return path if path.is_absolute() else self.tree / path

    def bisecting(self) -> bool:
        """Whether a git bisect is under way in the tree."""
        return self.git_path("BISECT_START").exists()

    def count(self, good: str, bad: str) -> int:
        """Commits in good..bad."""
        return int(self.run("rev-list", "--count", f"{good}..{bad}").stdout.strip())

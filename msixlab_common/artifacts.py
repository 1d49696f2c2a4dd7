"""Artifact files made without following a symbolic link.

Concepts: a run's artifacts (logs, summaries) are written by name into a results
directory that ``agent.host.rundirs.check_results_tree`` has shown no other user can
change.  As a second line, ``create_artifact`` makes each file with ``O_NOFOLLOW``: a
symbolic link where the file should be is refused (ELOOP) instead of written through,
and the file is truncated only once it is known to be a regular file of its own.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


def create_artifact(path: Path | str, mode: int = 0o644, *, text: bool = True) -> IO:
    """Open ``path`` for writing from its start (made if absent), never through a symbolic
    link (``OSError`` ELOOP) and never into anything but a regular file (``OSError``
    EINVAL naming it); the caller closes the returned file object."""
    fd = os.open(path, _FLAGS | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        return os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {}))
    except BaseException:
        os.close(fd)
        raise


def write_artifact(path: Path | str, content: str) -> Path:
    """Write ``content`` (UTF-8) to ``path`` as ``create_artifact`` opens it; return the path."""
    with create_artifact(path) as out:
        out.write(content)
    return Path(path)

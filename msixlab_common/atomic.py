"""One atomic write: a reader sees the old file or the whole new one, never a part.

``write_bytes``/``write_text``/``write_json`` write to a temporary file in the target's own
directory (so the rename stays on one filesystem), flush it to disk, set its mode (0644
unless told) and rename it over the target.  A failure at any point (a full disk, an
interruption) removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes(path: Path | str, data: bytes, *, mode: int = 0o644, fsync: bool = True) -> Path:
    """Put ``data`` at ``path`` atomically; returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_text(path: Path | str, text: str, **kwargs) -> Path:
    """Put ``text`` (UTF-8) at ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), **kwargs)


def write_json(path: Path | str, data: Any, *, indent: int | None = 2, sort_keys: bool = False,
               **kwargs) -> Path:
    """Put ``data`` as JSON (with a final newline) at ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n", **kwargs)

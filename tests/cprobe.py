"""Compile a C probe against a uapi header with the host compiler and read back the
``KIND NAME VALUE`` lines it prints (sizes, offsets, ioctl numbers, constants): the one
way the tests check a Python mirror of a kernel header."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def probe_values(work: Path, source: str, cflags: list[str], what: str) -> dict[str, int]:
    """Build ``source`` in ``work`` with ``cflags`` (include paths, defines) and run it;
    ``{"KIND NAME": value}``.  A build failure fails the test, naming ``what`` disagrees."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no host C compiler")
    (work / "probe.c").write_text(source)
    build = subprocess.run([cc, "-Wall", "-Werror", *cflags, "-o", str(work / "probe"),
                            str(work / "probe.c")], capture_output=True, text=True)
    assert build.returncode == 0, f"{what} disagree:\n{build.stderr}"
    run = subprocess.run([str(work / "probe")], capture_output=True, text=True, check=True)
    values = {}
    for line in run.stdout.splitlines():
        kind, name, value = line.split()
        values[f"{kind} {name}"] = int(value)
    return values

"""Damaged cache entries against real runs (images/manifest.py): a truncated initramfs and a
garbage guest driver are built again and the run passes on a real boot; a deleted kernel
image and a truncated python3 in the image rootfs end the run as 125 naming the file and
the fix.

Every test works on a cache of its own (``MSIXLAB_CACHE``) holding a hard-linked copy
of the shared image: a file is damaged by replacing it (unlink, then write), never in
place, so the shared cache's files are never touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.host.errors import EXIT_INFRA, EXIT_PASS
from agent.host.rundirs import PROJECT_DIR
from images import keyfiles, manifest
from images.image import Image


def _copy_image(image, root: Path) -> Path:
    """``root`` as a cache holding a hard-linked copy of ``image``'s directory, its key
    files recorded; returns the copy's rootfs."""
    (root / "images").mkdir(parents=True)
    final = root / "images" / image.rootfs.parent.name
    subprocess.run(["cp", "-al", str(image.rootfs.parent), str(final)], check=True)
    rootfs = final / "rootfs"
    keyfiles.verified(Image(rootfs))        # records the copy's key files if not yet
    return rootfs


def _replace(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` as a new file (a hard link's other names keep theirs)."""
    mode = path.stat().st_mode if path.exists() else 0o644
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    path.chmod(mode & 0o7777)


def _run(cache: Path, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.host", "run", "--results", str(results)],
                          cwd=PROJECT_DIR, env={**os.environ, "MSIXLAB_CACHE": str(cache)},
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def warm_cache(image, tmp_path_factory):
    """A cache of its own after one passing run: its initramfs and driver are built."""
    root = tmp_path_factory.mktemp("cache")
    _copy_image(image, root)
    done = _run(root, tmp_path_factory.mktemp("results"))
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    return root


def test_a_truncated_initramfs_is_built_again_and_the_run_passes(warm_cache, tmp_path):
    (archive,) = (warm_cache / "initramfs").glob("*.cpio.gz")
    good = archive.read_bytes()
    _replace(archive, good[:len(good) // 2])
    done = _run(warm_cache, tmp_path)
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    assert archive.read_bytes() == good and manifest.file_problems(archive) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_guest_driver_is_built_again_and_the_run_passes(warm_cache, tmp_path, damage):
    (ko,) = (warm_cache / "kmod").glob("*/msixlab.ko")
    good = ko.read_bytes()
    _replace(ko, os.urandom(len(good)) if damage == "garbage" else good[:len(good) - 4096])
    done = _run(warm_cache, tmp_path)
    assert done.returncode == EXIT_PASS, done.stderr[-4000:]
    assert manifest.file_problems(ko) == [] and ko.stat().st_size == len(good)


def _damaged_run(image, tmp_path: Path, damage) -> tuple[subprocess.CompletedProcess, Path]:
    rootfs = _copy_image(image, tmp_path / "cache")
    path = damage(rootfs)
    return _run(tmp_path / "cache", tmp_path / "results"), path


def _delete_kernel(image):
    def damage(rootfs: Path) -> Path:
        path = rootfs / image.kernel("default").image.relative_to(image.rootfs)
        path.unlink()
        return path
    return damage


def _truncate_python(image):
    def damage(rootfs: Path) -> Path:
        path = rootfs / f"usr/bin/python{image.python_version}"
        _replace(path, path.read_bytes()[:100_000])
        return path
    return damage


@pytest.mark.parametrize("damage", [_delete_kernel, _truncate_python],
                         ids=["deleted-kernel-image", "truncated-python3"])
def test_a_damaged_image_file_ends_the_run_as_125_naming_it_and_the_fix(image, tmp_path, damage):
    done, path = _damaged_run(image, tmp_path, damage(image))
    assert done.returncode == EXIT_INFRA, done.stderr[-4000:]
    text = " ".join(done.stderr.split())
    assert "build_failed" in text and str(path) in text, done.stderr[-4000:]
    assert "msixlab image clean" in text
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())

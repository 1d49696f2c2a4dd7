"""Host-only tests of the image recipe: mirror discovery, cache lock, cpio writer, argv."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from images import recipe
from images.cache import exclusive
from images.errors import ImageError
from images.initramfs import Cpio
from images.mirror import configured_uris, debian_mirror

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def apt_dir(tmp_path: Path, *, sources: str = "", lst: str = "", deb822: str = "") -> Path:
    (tmp_path / "sources.list.d").mkdir()
    if sources:
        (tmp_path / "sources.list").write_text(sources)
    if deb822:
        (tmp_path / "sources.list.d" / "debian.sources").write_text(deb822)
    if lst:
        (tmp_path / "sources.list.d" / "extra.list").write_text(lst)
    return tmp_path


def test_mirror_from_deb822_skips_security(tmp_path):
    d = apt_dir(tmp_path, deb822=DEB822.replace("mirror.example/debian\n", "mirror.example/debian/\n"))
    assert debian_mirror(d, environ={}) == "http://mirror.example/debian"


def test_mirror_from_one_line_list_with_options(tmp_path):
    d = apt_dir(tmp_path, sources="# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n")
    assert configured_uris(d) == ["http://m.example/debian"]
    assert debian_mirror(d, environ={}) == "http://m.example/debian"


def test_mirror_skips_disabled_and_non_debian(tmp_path):
    d = apt_dir(tmp_path, deb822="Types: deb\nURIs: http://x.example/debian\nEnabled: no\n\n"
                                 "Types: deb\nURIs: https://vendor.example/apt\n")
    with pytest.raises(ImageError, match="MSIXLAB_MIRROR"):
        debian_mirror(d, environ={})


def test_mirror_env_override_wins(tmp_path):
    d = apt_dir(tmp_path, deb822=DEB822)
    assert debian_mirror(d, environ={"MSIXLAB_MIRROR": "http://local.example/debian/"}) == \
        "http://local.example/debian"


def test_mmdebstrap_argv_uses_given_mirror_and_both_suites(tmp_path):
    argv = recipe.mmdebstrap_argv("http://m.example/debian", tmp_path / "rootfs")
    assert argv[0] == "mmdebstrap"
    assert "deb http://m.example/debian trixie main" in argv
    assert "deb http://m.example/debian trixie-backports main" in argv
    assert any("qemu-system-x86" in a and "linux-headers-amd64" in a for a in argv)
    assert 'APT::Default-Release "trixie-backports"' in " ".join(argv)
    assert str(tmp_path / "rootfs") in argv


def test_recipe_hash_follows_what_is_built_and_nothing_else(monkeypatch):
    original = recipe.recipe_hash()
    assert re.fullmatch(r"[0-9a-f]{12}", original)
    for name, value in (("PACKAGES", recipe.PACKAGES + ("strace",)),
                        ("SUITES", ("trixie",)),
                        ("DEFAULT_RELEASE", "trixie"),
                        ("LTS_HOOK", recipe.LTS_HOOK + "true\n")):
        with monkeypatch.context() as m:
            m.setattr(recipe, name, value)
            assert recipe.recipe_hash() != original, name
    # the mirror and the target are not part of the key; the same recipe, the same key
    assert recipe.recipe_hash() == original
    assert "MIRROR" in recipe.mmdebstrap_argv(recipe._ANY_MIRROR, recipe._ANY_TARGET)[-1]


def test_lock_excludes_a_second_holder(tmp_path):
    lock = tmp_path / "x.lock"
    with exclusive(lock, timeout=1, what="first"):
        with pytest.raises(ImageError, match="waiting for the lock"):
            with exclusive(lock, timeout=0.2, what="second"):
                pass
    with exclusive(lock, timeout=0.2, what="after release"):
        pass


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio tool needed to read the archive back")
def test_cpio_archive_reads_back_with_cpio_tool(tmp_path):
    archive = Cpio()
    archive.directory("bin")
    archive.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    archive.symlink("bin/sh", "hello")
    archive.file("odd-size", b"x" * 5)
    data = archive.finish()
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()]
    assert names == ["bin", "bin/hello", "bin/sh", "odd-size"]
    assert "-rwxr-xr-x" in listing and "bin/sh -> hello" in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id"], input=data, cwd=out, capture_output=True, check=True)
    assert (out / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "odd-size").read_bytes() == b"xxxxx"
    assert gzip.decompress(gzip.compress(data)) == data


def test_failed_build_step_is_named_and_its_log_kept(tmp_path):
    from images.build import _run_logged
    seen = []
    log = tmp_path / "step.log"
    with pytest.raises(ImageError) as info:
        _run_logged(["sh", "-c", "echo fetching; echo broken >&2; exit 3"], "mmdebstrap", log,
                    lambda step, line: seen.append((step, line)))
    assert info.value.step == "mmdebstrap" and info.value.log == log
    assert "step 'mmdebstrap' failed" in str(info.value) and "status 3" in str(info.value)
    assert "fetching" in log.read_text() and "broken" in log.read_text()
    assert ("mmdebstrap", "fetching") in seen      # progress saw the step's own lines


def test_find_image_needs_a_manifest(tmp_path):
    from images.build import find_image, image_key
    rootfs = tmp_path / "images" / image_key() / "rootfs"
    rootfs.mkdir(parents=True)
    assert find_image(tmp_path) is None            # half-built: no manifest yet
    (rootfs.parent / "manifest.json").write_text("{}")
    assert find_image(tmp_path).rootfs == rootfs


def test_silent_hung_step_is_killed_by_the_watchdog(tmp_path):
    from images.build import _run_logged
    with pytest.raises(ImageError, match="longer than 0.2 s and was killed") as info:
        _run_logged(["sleep", "30"], "mmdebstrap", tmp_path / "log", lambda *a: None, timeout=0.2)
    assert info.value.step == "mmdebstrap"

"""What the guest sees of the host: msixlab's guest files staged in the cache
(images/staging.py), the files the rig ships as package data (images/packaged.py), and the
tests' extra share.  The staged tree holds exactly the guest's files (never the checkout,
the working directory or site-packages), with their bytecode, checked against a manifest
before use and staged again when damaged or when a file changed."""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import pytest

from agent.host.lab import guest_spec as spec_mod
from agent.host.lab.qemu_argv import EXTRA_TAG, GuestSpec, Share, kernel_cmdline
from agent.host.rundirs import PROJECT_DIR
from agent.host.verdict.outcome import CouldNotJudge, Outcome
from images import packaged, staging
from images.image import Image

GUEST_TOP = {"agent", "msixlab_common", "images"}


class HostPythonImage(Image):
    """An image whose "Python" is the host's (the bytecode's tag is then the host's)."""

    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"

    def python_command(self) -> list[str]:
        return [sys.executable]


def test_the_guest_gets_its_agent_common_code_and_stage2_and_nothing_else():
    names = [f.name for f in staging.guest_files()]
    assert {n.split("/")[0] for n in names} == GUEST_TOP
    assert "agent/__init__.py" in names and "agent/guest/__main__.py" in names
    assert "agent/guest/bin/msixlab-guest" in names and "images/guest/stage2" in names
    assert "msixlab_common/jsonlines.py" in names
    # nothing of the host side, the device, the image code or the tests
    assert not [n for n in names if n.startswith(("agent/host", "agent/kmod", "qemu_device",
                                                  "images/guest/init", "tests", "guest_tests"))]
    assert [n for n in names if n.startswith("images/")] == ["images/guest/stage2"]
    assert not [n for n in names if "__pycache__" in n]


def test_staging_copies_compiles_and_records_outside_the_checkout(tmp_path):
    image = HostPythonImage(tmp_path / "rootfs")
    out = staging.ensure(image, root=tmp_path / "cache")
    assert out.parent == tmp_path / "cache" / "guest"
    assert PROJECT_DIR not in out.parents and Path.cwd() not in out.parents
    assert {p.name for p in out.iterdir()} == GUEST_TOP
    for f in staging.guest_files():
        assert (out / f.name).read_bytes() == f.source.read_bytes()
        assert stat.S_IMODE((out / f.name).stat().st_mode) == f.mode
    tag = sys.implementation.cache_tag
    assert out.name.endswith("-" + tag)
    assert (out / "agent/guest/__pycache__" / f"protocol.{tag}.pyc").is_file()
    assert staging.manifest_of(out).is_file()


def test_a_staged_tree_is_reused_and_a_damaged_one_staged_again(tmp_path):
    image = Image(tmp_path / "rootfs")                  # no Python: no bytecode
    out = staging.ensure(image, root=tmp_path)
    assert out.name.endswith("-nopython") and not list(out.rglob("*.pyc"))
    stage2 = out / "images/guest/stage2"
    before = stage2.stat().st_mtime_ns
    assert staging.ensure(image, root=tmp_path) == out
    assert stage2.stat().st_mtime_ns == before          # reused, not staged again
    good = stage2.read_bytes()
    stage2.write_bytes(good.replace(b"agent", b"AGENT", 1))   # same size, other bytes
    assert not staging.intact(out)
    assert staging.ensure(image, root=tmp_path) == out
    assert stage2.read_bytes() == good


def test_an_edited_guest_file_gets_a_staged_tree_of_its_own(tmp_path, monkeypatch):
    copy = tmp_path / "pkgs"
    for top in GUEST_TOP:
        shutil.copytree(packaged.package_dir(top), copy / top,
                        ignore=shutil.ignore_patterns("__pycache__"))
    where = {"agent": copy / "agent", "agent.guest": copy / "agent/guest",
             "msixlab_common": copy / "msixlab_common", "images": copy / "images"}
    monkeypatch.setattr(staging, "package_dir", lambda name: where[name])
    image = Image(tmp_path / "rootfs")
    first = staging.ensure(image, root=tmp_path / "cache")
    (copy / "agent/guest/protocol.py").write_text("# edited\n", "utf-8")
    second = staging.ensure(image, root=tmp_path / "cache")
    assert second != first and (second / "agent/guest/protocol.py").read_text() == "# edited\n"


def test_an_install_without_the_guests_files_is_a_named_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(staging, "package_dir", lambda name: empty)
    with pytest.raises(packaged.PackagedFileError, match="lacks the guest's agent/__init__.py"):
        staging.guest_files()


def test_packaged_files_are_found_and_a_missing_one_is_named():
    assert packaged.packaged("agent", "kmod", "build.sh").is_file()
    assert packaged.packaged("agent.host.kernel", "fragment.config").is_file()
    assert packaged.packaged("images", "guest", "init").is_file()
    with pytest.raises(packaged.PackagedFileError, match="missing from this msixlab install"):
        packaged.packaged("agent", "kmod", "no-such-file")


def test_the_extra_share_is_for_a_directory_only(tmp_path):
    assert spec_mod.extra_share({}) is None
    share = spec_mod.extra_share({spec_mod.EXTRA_ENV: str(tmp_path)})
    assert share == Share(EXTRA_TAG, tmp_path) and share.readonly
    with pytest.raises(CouldNotJudge, match="not a directory") as err:
        spec_mod.extra_share({spec_mod.EXTRA_ENV: str(tmp_path / "nope")})
    assert err.value.outcome is Outcome.BAD_OPTION


def test_the_guest_mounts_the_extra_share_only_when_it_is_there():
    base = dict(qemu=["qemu"], kernel=Path("/k"), initramfs=Path("/i"),
                console_log=Path("/c"), qmp_socket=Path("/q"))
    plain = GuestSpec(shares=(Share("rootfs", Path("/r")),), **base)
    extra = GuestSpec(shares=(Share("rootfs", Path("/r")), Share(EXTRA_TAG, Path("/x"))), **base)
    assert "msixlab.extra=1" not in kernel_cmdline(plain).split()
    assert "msixlab.extra=1" in kernel_cmdline(extra).split()
    init = packaged.packaged("images", "guest", "init").read_text()
    assert "msixlab.extra=1" in init and "/opt/msixlab-extra" in init


def test_no_module_reaches_for_files_through_its_own_path():
    """Package data is read through importlib.resources (images/packaged.py), never as a
    path relative to a module (``Path(__file__)``...``/"kmod"``) as the checkout had it."""
    offenders = []
    for top in ("agent", "images", "msixlab_common", "qemu_device"):
        for path in (PROJECT_DIR / top).rglob("*.py"):
            text = path.read_text()
            if "parents[" in text and "__file__" in text:
                offenders.append(str(path.relative_to(PROJECT_DIR)))
    assert offenders == []

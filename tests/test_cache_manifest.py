"""Cache entries checked before use (images/manifest.py): the manifest itself, the cached
initramfs rebuilt when damaged, the built guest driver's checks, and the image rootfs's
key files refused with the path and the fix (images/keyfiles.py)."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest

from agent.host.kernel import kmod
from agent.host.verdict.outcome import Outcome, RunVerdict, classify
from images import initramfs, keyfiles, manifest
from images.build import ensure_image, image_key
from images.image import Image

RELEASE = "7.3.4+deb13-amd64"


# --- the manifest -----------------------------------------------------------------------
def _entry(tmp_path: Path, data: bytes = b"x" * 5000) -> Path:
    entry = tmp_path / "entry.bin"
    entry.write_bytes(data)
    manifest.record_file(entry)
    return entry


def test_an_entry_as_recorded_has_no_problems(tmp_path):
    entry = _entry(tmp_path)
    record = json.loads(manifest.manifest_path(entry).read_text())
    assert record["files"]["entry.bin"]["size"] == 5000
    assert manifest.file_problems(entry) == []
    assert not list(tmp_path.glob(".*tmp*"))          # the manifest's temporary is gone


@pytest.mark.parametrize("damage, expect", [
    (lambda p: os.truncate(p, 100), "100 bytes, recorded 5000"),
    (lambda p: p.write_bytes(b"y" * 5000), "contents changed"),
    (lambda p: p.unlink(), "missing"),
])
def test_a_damaged_entry_is_named(tmp_path, damage, expect):
    entry = _entry(tmp_path)
    st = entry.stat()
    damage(entry)
    if entry.exists():              # same mtime too: only the hash can tell
        os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns))
    (problem,) = manifest.file_problems(entry)
    assert problem.path == entry and expect in problem.what


def test_an_entry_without_a_readable_manifest_is_a_problem(tmp_path):
    entry = _entry(tmp_path)
    manifest.manifest_path(entry).write_text("{not json")
    assert manifest.file_problems(entry)[0].what == "no readable manifest"
    manifest.manifest_path(entry).unlink()
    assert manifest.file_problems(entry)[0].what == "no readable manifest"


def test_a_symlink_is_recorded_by_its_target(tmp_path):
    (tmp_path / "python3.13").write_bytes(b"elf")
    (tmp_path / "python3").symlink_to("python3.13")
    path = tmp_path / "m.json"
    manifest.write(path, tmp_path, ["python3", "python3.13"])
    assert manifest.problems(path, tmp_path) == []
    (tmp_path / "python3").unlink()
    (tmp_path / "python3").symlink_to("python3.12")
    (problem,) = manifest.problems(path, tmp_path)
    assert "links to python3.12, recorded python3.13" in problem.what


# --- the initramfs ------------------------------------------------------------------------
def _fake_image(tmp_path: Path) -> Image:
    (tmp_path / "rootfs/usr/bin").mkdir(parents=True)
    (tmp_path / "rootfs/usr/bin/busybox").write_bytes(os.urandom(300_000))
    return Image(tmp_path / "rootfs")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-manifest"])
def test_a_damaged_cached_initramfs_is_built_again(tmp_path, damage):
    image = _fake_image(tmp_path)
    path = initramfs.ensure(image, [], "7.3.4-test", root=tmp_path / "cache")
    good = path.read_bytes()
    if damage == "truncate":
        os.truncate(path, len(good) // 2)
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(good)))
    else:
        manifest.manifest_path(path).unlink()
    assert initramfs.ensure(image, [], "7.3.4-test", root=tmp_path / "cache") == path
    assert path.read_bytes() == good and manifest.file_problems(path) == []


# --- the guest driver ---------------------------------------------------------------------
def fake_module(release: str = RELEASE, body: bytes = b"") -> bytes:
    """A minimal 64-bit relocatable ELF whose section headers come last, as a module's do."""
    payload = b"\0" * 64 + body + b"vermagic=" + release.encode() + b" SMP mod_unload \0"
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HH", header, 16, 1, 62)                 # ET_REL, x86-64
    struct.pack_into("<Q", header, 0x28, len(payload))         # e_shoff
    struct.pack_into("<HH", header, 0x3A, 64, 3)               # e_shentsize, e_shnum
    return bytes(header) + payload[64:] + b"\0" * 64 * 3


def test_a_module_is_checked_as_an_elf_module_for_its_release(tmp_path):
    ko = tmp_path / "msixlab.ko"
    ko.write_bytes(fake_module())
    assert kmod.elf_problem(ko, RELEASE) is None
    assert "vermagic" in kmod.elf_problem(ko, "6.12.117+deb13-amd64")
    ko.write_bytes(fake_module()[:-100])
    assert "truncated" in kmod.elf_problem(ko, RELEASE)
    ko.write_bytes(os.urandom(4096))
    assert "not a 64-bit" in kmod.elf_problem(ko, RELEASE)


def test_a_built_module_is_used_only_while_it_matches_its_manifest(tmp_path):
    ko = tmp_path / "msixlab.ko"
    ko.write_bytes(fake_module(body=b"a" * 1000))
    assert kmod.built_intact(ko, RELEASE)
    assert manifest.load(manifest.manifest_path(ko)) is not None   # recorded on first use
    ko.write_bytes(fake_module(body=b"b" * 1000))   # a valid module, not the one recorded
    assert not kmod.built_intact(ko, RELEASE)


def test_a_garbage_module_without_a_manifest_is_not_used(tmp_path):
    ko = tmp_path / "msixlab.ko"
    ko.write_bytes(b"garbage" * 100)
    assert not kmod.built_intact(ko, RELEASE)
    assert not manifest.manifest_path(ko).exists()


def test_a_damaged_build_directory_is_removed_whole(tmp_path):
    out = tmp_path / "kmod" / f"{RELEASE}-abc"
    out.mkdir(parents=True)
    (out / "msixlab.ko").write_bytes(b"garbage")
    kmod._discard(out)
    assert list((tmp_path / "kmod").iterdir()) == []


# --- the image rootfs ---------------------------------------------------------------------
STATUS = f"""Package: linux-image-amd64
Status: install ok installed
Depends: linux-image-{RELEASE}

Package: linux-image-{RELEASE}
Status: install ok installed
"""


def fake_cached_image(root: Path) -> Image:
    """An image directory as ``ensure_image`` finds it: a rootfs with a kernel dpkg lists,
    a python3 link and interpreter, and manifest.json."""
    final = root / "images" / image_key()
    rootfs = final / "rootfs"
    for rel, data in {"var/lib/dpkg/status": STATUS.encode(),
                      f"boot/vmlinuz-{RELEASE}": os.urandom(200_000),
                      "usr/bin/python3.13": os.urandom(100_000),
                      "usr/bin/busybox": b"busybox"}.items():
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_bytes(data)
    (rootfs / "usr/bin/python3").symlink_to("python3.13")
    (final / "manifest.json").write_text("{}")
    return Image(rootfs)


def test_the_key_files_are_recorded_with_their_links(tmp_path):
    image = fake_cached_image(tmp_path)
    names = keyfiles.key_files(image)
    assert {f"boot/vmlinuz-{RELEASE}", "usr/bin/python3", "usr/bin/python3.13",
            "usr/bin/busybox", "var/lib/dpkg/status"} <= set(names)
    assert ensure_image(root=tmp_path).rootfs == image.rootfs      # recorded at first use
    assert manifest.load(keyfiles.record_path(image)) is not None


@pytest.mark.parametrize("rel, damage, expect", [
    (f"boot/vmlinuz-{RELEASE}", "delete", "missing"),
    ("usr/bin/python3.13", "truncate", "bytes, recorded 100000"),
    ("usr/bin/python3.13", "garbage", "contents changed"),
])
def test_a_damaged_key_file_ends_the_run_naming_it_and_the_fix(tmp_path, rel, damage, expect):
    image = fake_cached_image(tmp_path)
    ensure_image(root=tmp_path)
    path = image.rootfs / rel
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        os.truncate(path, 4096)
    else:
        path.write_bytes(os.urandom(path.stat().st_size))
    with pytest.raises(manifest.CacheEntryError) as caught:
        ensure_image(root=tmp_path)
    err = caught.value
    assert err.path == path and expect in str(err)
    assert "msixlab image clean" in str(err) and str(path) in str(err)
    outcome, evidence = classify(err)
    assert outcome is Outcome.BUILD_FAILED and outcome.exit_code == 125
    assert evidence["path"] == str(path) and "msixlab image clean" in evidence["fix"]
    summary = RunVerdict.from_error(err).summary
    assert str(path) in summary and "msixlab image clean" in summary


def test_a_kernel_image_missing_before_the_first_record_is_refused(tmp_path):
    image = fake_cached_image(tmp_path)
    (image.rootfs / f"boot/vmlinuz-{RELEASE}").unlink()
    with pytest.raises(manifest.CacheEntryError, match=re.escape(f"vmlinuz-{RELEASE}: missing")):
        ensure_image(root=tmp_path)


# --- the guest agent's bytecode -----------------------------------------------------------
def test_bytecode_with_a_valid_header_over_garbage_is_compiled_again(tmp_path):
    import sys

    from images import bytecode
    for pkg in bytecode.GUEST_PACKAGES:
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
        (tmp_path / pkg / "mod.py").write_text(f"NAME = {pkg!r}\n")
    tag = sys.implementation.cache_tag
    assert bytecode.ensure([sys.executable], tag, tmp_path)
    pyc = tmp_path / "agent/guest/__pycache__" / f"mod.{tag}.pyc"
    good = pyc.read_bytes()
    pyc.write_bytes(good[:16] + os.urandom(len(good) - 16))   # the header still says fresh
    assert bytecode.is_fresh(tmp_path / "agent/guest/mod.py", tag)
    assert bytecode.stale(tmp_path, tag) == [tmp_path / "agent/guest/mod.py"]
    assert bytecode.ensure([sys.executable], tag, tmp_path)
    assert pyc.read_bytes() == good and bytecode.stale(tmp_path, tag) == []


# --- the cached test kernel tree ------------------------------------------------------------
def test_a_damaged_cached_kernel_tree_is_reopened_for_its_build_to_resume(tmp_path):
    from agent.host.kernel import testtrees
    tree = tmp_path / "trees" / "linux-source-7.3_7.3.4-abc"
    files = {"arch/x86/boot/bzImage": os.urandom(50_000), ".config": b"CONFIG_PCI=y\n",
             "include/config/kernel.release": b"7.3.4\n", "Module.symvers": b"",
             "modules.order": b"fs/9p/9p.o\n", "fs/9p/9p.ko": os.urandom(1000),
             "Makefile": b"# kbuild\n"}
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    stamp = tree.with_name(tree.name + ".json")
    stamp.write_text("{}")
    assert testtrees.tree_intact(tree)                      # recorded at first sight
    assert set(testtrees.tree_key_files(tree)) == set(files) - {"Makefile"}
    os.truncate(tree / "arch/x86/boot/bzImage", 10)
    assert not testtrees.tree_intact(tree)
    testtrees.reopen_damaged(tree)
    work = tree.with_name(tree.name + ".building")
    assert not tree.exists() and not stamp.exists() and (work / "Makefile").is_file()
    assert not (work / "arch/x86/boot/bzImage").exists()     # make builds it again
    assert (work / "fs/9p/9p.ko").read_bytes() == files["fs/9p/9p.ko"]


def test_a_cached_source_deb_is_recorded_and_a_damaged_one_named(tmp_path):
    from agent.host.kernel import source
    deb = tmp_path / "linux-source-7.3_7.3.4-1_all.deb"
    deb.write_bytes(os.urandom(20_000))
    package = source.SourcePackage("linux-source-7.3", "7.3.4-1", deb)
    assert source.deb_problems(package) == []                # recorded at first sight
    os.truncate(deb, 1000)
    (problem,) = source.deb_problems(package)
    assert problem.path == deb and "1000 bytes, recorded 20000" in problem.what


def test_doctor_names_a_damaged_image_file_and_the_fix(tmp_path, monkeypatch):
    from agent.host.jobs import doctor
    monkeypatch.setenv("MSIXLAB_CACHE", str(tmp_path))
    image = fake_cached_image(tmp_path)
    ensure_image(root=tmp_path)
    (image.rootfs / f"boot/vmlinuz-{RELEASE}").unlink()
    info = doctor.report("tcg")
    (damaged,) = [m for m in info["missing"] if "intact image" in m["what"]]
    assert f"vmlinuz-{RELEASE}: missing" in damaged["what"]
    assert damaged["fix"] == "make clean-cache image" and info["qemu"] is None

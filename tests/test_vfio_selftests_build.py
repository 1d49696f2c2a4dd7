"""The VFIO selftests' build cache without building: which source a kernel's selftests come
from (a tree too old to have them, or an image kernel older than them, is a named 125),
what the cache key covers and what it leaves out, and a damaged entry refused.  The real
build, from Debian's source, is in guest_tests/test_vfio_selftests.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.host.kernel import vfio_selftests as vs
from agent.host.kernel.under_test import DriverBuild, KernelUnderTest
from agent.host.verdict.outcome import Outcome
from images import manifest


def kernel(kdir: Path, release: str = "7.0.0", build=DriverBuild.KDIR) -> KernelUnderTest:
    return KernelUnderTest(label=f"tree {kdir}", bzimage=kdir / "bzImage", release=release,
                           kdir=kdir, driver_build=build, root_modules=())


def fake_tree(root: Path) -> Path:
    """A tree with one file under each key path (and files the key must ignore)."""
    for rel in vs.KEY_PATHS:
        path = root / rel
        if rel == "Makefile" or "." in Path(rel).name:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{rel}\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "a.h").write_text(f"{rel}/a.h\n")
    (root / vs.SELFTESTS / "Makefile").write_text("TEST_GEN_PROGS += t\n")
    (root / ".config").write_text("CONFIG_VFIO=y\n")
    (root / "drivers/vfio/pci").mkdir(parents=True)
    (root / "drivers/vfio/pci/vfio_pci_intrs.c").write_text("/* kernel code */\n")
    return root


def test_a_tree_without_the_selftests_is_a_named_could_not_judge(tmp_path):
    (tmp_path / "Makefile").write_text("VERSION = 6\n")
    with pytest.raises(vs.SelftestsMissing) as err:
        vs.source_for(kernel(tmp_path, "6.12.0"))
    assert err.value.outcome is Outcome.KERNEL_UNSUPPORTED and err.value.exit_code == 125
    assert vs.SELFTESTS in str(err.value) and "6.18" in str(err.value)


def test_a_tree_with_them_is_its_own_source_and_an_o_build_dir_its_source_link(tmp_path):
    tree = fake_tree(tmp_path / "linux")
    assert vs.source_for(kernel(tree)).path == tree.resolve()
    build = tmp_path / "build"
    build.mkdir()
    (build / "source").symlink_to(tree)
    source = vs.source_for(kernel(build))
    assert source.path == tree.resolve() and source.origin == "tree"


def test_an_image_kernel_older_than_the_selftests_is_refused_before_any_download(monkeypatch,
                                                                                 tmp_path):
    def no_download():
        raise AssertionError("the Debian source must not be fetched for 6.12")
    monkeypatch.setattr(vs, "debian_source", no_download)
    with pytest.raises(vs.SelftestsMissing) as err:
        vs.source_for(kernel(tmp_path, "6.12.117+deb13-amd64", DriverBuild.IMAGE))
    assert "6.12.117" in str(err.value) and "EOVERFLOW" in str(err.value)


def test_the_key_covers_the_selftests_and_the_uapi_not_the_config_or_drivers(tmp_path):
    tree = fake_tree(tmp_path / "linux")
    source = vs.SelftestSource("tree", tree, "tree")
    key = vs.build_key(source)
    assert key == vs.build_key(source) and len(key) == 16
    (tree / ".config").write_text("CONFIG_VFIO=m\n")
    (tree / "drivers/vfio/pci/vfio_pci_intrs.c").write_text("/* a bisect step */\n")
    assert vs.build_key(source) == key
    for rel in (f"{vs.SELFTESTS}/a.h", "include/uapi/a.h", "tools/include/a.h", "Makefile"):
        path = tree / rel
        before = path.read_text()
        path.write_text(before + "changed\n")
        assert vs.build_key(source) != key, rel
        path.write_text(before)
    assert vs.build_key(source) == key


def test_the_key_covers_msixlabs_own_files(monkeypatch, tmp_path):
    tree = fake_tree(tmp_path / "linux")
    source = vs.SelftestSource("tree", tree, "tree")
    key = vs.build_key(source)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "msixlab_iommu_mode.c").write_text("/* another constructor */\n")
    monkeypatch.setattr(vs, "SHIM_DIR", shim)
    assert vs.build_key(source) != key


def test_dangling_links_name_the_files_to_unpack(tmp_path):
    lib = tmp_path / vs.SELFTESTS / "lib/drivers/ioat"
    lib.mkdir(parents=True)
    (lib / "hw.h").symlink_to("../../../../../../../drivers/dma/ioat/hw.h")
    (lib / "ioat.c").write_text("")
    assert vs.dangling_links(tmp_path / vs.SELFTESTS, tmp_path) == ["drivers/dma/ioat/hw.h"]
    (tmp_path / "drivers/dma/ioat").mkdir(parents=True)
    (tmp_path / "drivers/dma/ioat/hw.h").write_text("")
    assert vs.dangling_links(tmp_path / vs.SELFTESTS, tmp_path) == []


def entry(tmp_path: Path) -> Path:
    out = tmp_path / "0123456789abcdef"
    (out / "bin").mkdir(parents=True)
    (out / "bin/vfio_pci_device_test").write_bytes(b"\x7fELF" + b"\0" * 60)
    manifest.write(manifest.manifest_path(out / "bin"), out / "bin", ["vfio_pci_device_test"])
    (out / "record.json").write_text(json.dumps({"binaries": ["vfio_pci_device_test"]}))
    return out


def test_an_intact_entry_is_used_and_a_damaged_or_unfinished_one_is_not(tmp_path):
    out = entry(tmp_path)
    assert vs.entry_intact(out)
    (out / "bin/vfio_pci_device_test").write_bytes(b"\x7fELF" + b"\1" * 60)  # same size
    assert not vs.entry_intact(out)
    out = entry(tmp_path / "again")
    (out / "record.json").unlink()             # the build never finished
    assert not vs.entry_intact(out)


def test_built_binaries_are_the_elf_programs_make_left(tmp_path):
    (tmp_path / "vfio_pci_device_test").write_bytes(b"\x7fELF...")
    (tmp_path / "vfio_pci_device_test").chmod(0o755)
    (tmp_path / "vfio_pci_device_test.o").write_bytes(b"\x7fELF...")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "libvfio").mkdir()
    assert vs.built_binaries(tmp_path) == ["vfio_pci_device_test"]


def test_dry_run_names_the_entry_without_building(monkeypatch, tmp_path):
    monkeypatch.setenv("MSIXLAB_CACHE", str(tmp_path / "cache"))
    tree = fake_tree(tmp_path / "linux")
    key = vs.build_key(vs.SelftestSource("tree", tree, "tree"))
    assert vs.planned_dir(kernel(tree)) == tmp_path / "cache/selftests" / key / "bin"
    old = kernel(tmp_path, "6.12.117+deb13-amd64", DriverBuild.IMAGE)
    assert vs.planned_dir(old) == tmp_path / "cache/selftests/<key>/bin"
    assert not (tmp_path / "cache/selftests").exists()     # nothing built or unpacked

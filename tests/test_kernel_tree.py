"""Kernel trees: recognising one, the first build error, the kernel under test built from
a tree or a prebuilt bzImage, the root modules of a tree, and the --qemu check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.host import cli
from agent.host.kernel import config as kconfig
from agent.host.kernel.build import KernelTree, first_error
from agent.host.kernel.errors import KernelTreeError, KernelUnsupported
from agent.host.kernel.under_test import KernelUnderTest, require_dynamic_msix
from agent.host.lab.qemu_binary import check_qemu
from agent.host.verdict.outcome import CouldNotJudge, Outcome
from images.initramfs import tree_modules


def fake_tree(root: Path, version=(7, 3), release: str | None = "7.3.4", config: str | None = None,
              symvers=True) -> Path:
    (root / "arch/x86/boot").mkdir(parents=True)
    (root / "Makefile").write_text(f"VERSION = {version[0]}\nPATCHLEVEL = {version[1]}\n")
    (root / "Kconfig").write_text("")
    if release:
        (root / "include/config").mkdir(parents=True)
        (root / "include/config/kernel.release").write_text(release + "\n")
        (root / "arch/x86/boot/bzImage").write_bytes(b"kernel")
    if config is None:
        config = "".join(f"{k}={v}\n" for k, v in kconfig.load_fragment().required.items())
    (root / ".config").write_text(config)
    if symvers:
        (root / "Module.symvers").write_text("")
    return root


def test_a_directory_that_is_not_a_kernel_tree_is_named(tmp_path):
    with pytest.raises(KernelTreeError, match="is not a Linux kernel source tree"):
        KernelTree.at(tmp_path)
    with pytest.raises(KernelTreeError, match="is not a directory"):
        KernelTree.at(tmp_path / "nope")


def test_tree_version_and_release(tmp_path):
    tree = KernelTree.at(fake_tree(tmp_path / "t", version=(6, 12), release="6.12.5-dirty"))
    assert tree.version == (6, 12)
    assert tree.release() == "6.12.5-dirty"


GCC_LOG = """\
  CC      drivers/pci/msi/api.o
drivers/pci/msi/api.c: In function 'pci_msix_alloc_irq_at':
drivers/pci/msi/api.c:159:9: error: 'bogus' undeclared (first use in this function)
  159 |         bogus = 1;
      |         ^~~~~
drivers/pci/msi/api.c:159:9: note: each undeclared identifier is reported only once
make[4]: *** [scripts/Makefile.build:287: drivers/pci/msi/api.o] Error 1
make[3]: *** [scripts/Makefile.build:556: drivers/pci/msi] Error 2
"""


def test_first_error_quotes_the_compiler_error_not_make():
    assert first_error(GCC_LOG.splitlines()) == (
        "drivers/pci/msi/api.c:159:9: error: 'bogus' undeclared (first use in this function)\n"
        "  159 |         bogus = 1;\n      |         ^~~~~")


@pytest.mark.parametrize("line", [
    "ld: vmlinux.o: in function `x': undefined reference to `pci_msix_free_irq'",
    "ERROR: modpost: \"pci_msix_alloc_irq_at\" [msixlab.ko] undefined!",
    "make[1]: *** No rule to make target 'bzImage'.  Stop.",
])
def test_first_error_finds_linker_modpost_and_make_errors(line):
    assert first_error(["  LD      vmlinux", line, "next"], context=0) == line


def test_no_error_found_is_empty():
    assert first_error(["  CC      a.o", "  LD      vmlinux"]) == ""


def test_kernel_under_test_from_a_built_tree(tmp_path):
    kernel = KernelUnderTest.from_tree(fake_tree(tmp_path / "t"))
    assert kernel.release == "7.3.4" and kernel.bzimage.name == "bzImage"
    assert kernel.root_modules == ()          # 9p and overlay built in
    kernel.check_supported()


def test_an_unbuilt_tree_says_to_build_it(tmp_path):
    with pytest.raises(KernelTreeError, match="build it first"):
        KernelUnderTest.from_tree(fake_tree(tmp_path / "t", release=None))


def test_a_tree_without_module_symvers_says_make_modules(tmp_path):
    with pytest.raises(KernelTreeError, match="Module.symvers"):
        KernelUnderTest.from_tree(fake_tree(tmp_path / "t", symvers=False))


def test_a_missing_option_is_a_named_could_not_judge(tmp_path):
    config = "".join(f"{k}={v}\n" for k, v in kconfig.load_fragment().required.items()
                     if k != "CONFIG_PCI_MSI")
    kernel = KernelUnderTest.from_tree(fake_tree(tmp_path / "t", config=config))
    with pytest.raises(KernelUnsupported, match="CONFIG_PCI_MSI is missing") as caught:
        kernel.check_supported()
    assert caught.value.outcome is Outcome.KERNEL_UNSUPPORTED and caught.value.exit_code == 125
    assert caught.value.evidence["options"] == ["CONFIG_PCI_MSI"]


def test_a_kernel_before_6_2_has_no_dynamic_msix(tmp_path):
    kernel = KernelUnderTest.from_tree(fake_tree(tmp_path / "t", version=(6, 1), release="6.1.90"))
    with pytest.raises(KernelUnsupported, match="no dynamic MSI-X"):
        kernel.check_supported()


@pytest.mark.parametrize("hello", [
    {"kernel": "7.3.4", "device": {"can_alloc_dyn": False}},
    {"kernel": "7.3.4", "device": {"dyn_alloc": False}},
    {"kernel": "7.3.4", "dyn_alloc": False, "device": {}},
])
def test_a_driver_that_cannot_allocate_dynamically_is_could_not_judge(hello):
    with pytest.raises(KernelUnsupported, match="pci_msix_can_alloc_dyn"):
        require_dynamic_msix(hello)


def test_a_driver_that_can_allocate_dynamically_passes():
    require_dynamic_msix({"device": {"can_alloc_dyn": True, "dyn_alloc": True}})


def test_prebuilt_kernel_needs_both_paths_to_exist(tmp_path):
    tree = fake_tree(tmp_path / "t")
    with pytest.raises(KernelTreeError, match="does not exist"):
        KernelUnderTest.from_prebuilt(tmp_path / "nope", tree)
    with pytest.raises(KernelTreeError, match="not a built kernel tree"):
        KernelUnderTest.from_prebuilt(tree / "arch/x86/boot/bzImage", tmp_path)
    kernel = KernelUnderTest.from_prebuilt(tree / "arch/x86/boot/bzImage", tree)
    assert kernel.kdir == tree.resolve()


def _module(path: Path, name: str, depends: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF junk\0license=GPL\0depends=" + depends.encode()
                     + b"\0name=" + name.encode() + b"\0vermagic=7.3.4\0")


def test_tree_modules_come_in_dependency_order(tmp_path):
    _module(tmp_path / "net/9p/9pnet.ko", "9pnet", "")
    _module(tmp_path / "net/9p/9pnet_virtio.ko", "9pnet_virtio", "9pnet")
    _module(tmp_path / "fs/netfs/netfs.ko", "netfs", "")
    _module(tmp_path / "fs/9p/9p.ko", "9p", "9pnet,netfs")
    (tmp_path / "modules.order").write_text(
        "fs/9p/9p.o\nfs/netfs/netfs.o\nnet/9p/9pnet.o\nnet/9p/9pnet_virtio.o\n")
    order = [p.name for p in tree_modules(tmp_path, ["9pnet_virtio", "9p"])]
    assert order == ["9pnet.ko", "9pnet_virtio.ko", "netfs.ko", "9p.ko"]


def test_a_modular_root_option_without_its_module_is_named(tmp_path):
    config = "".join(f"{k}={v}\n" for k, v in kconfig.load_fragment().required.items())
    tree = fake_tree(tmp_path / "t", config=config.replace("CONFIG_OVERLAY_FS=y", "CONFIG_OVERLAY_FS=m"))
    (tree / "modules.order").write_text("")
    with pytest.raises(KernelTreeError, match="module overlay is not built"):
        KernelUnderTest.from_tree(tree)


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


@pytest.mark.parametrize("body, why", [
    ('echo "QEMU emulator version 9.2.0"\n', "older than 10.1"),
    ('case "$1" in --version) echo "QEMU emulator version 10.1.0";; '
     '*) echo \'name "virtio-net-pci"\';; esac\n', "does not list vfio-user-pci"),
    ('echo "no version here"\n', "names no version"),
    ('exit 3\n', "failed with exit 3"),
])
def test_an_unsuitable_qemu_is_could_not_judge_with_the_reason(tmp_path, body, why):
    with pytest.raises(CouldNotJudge, match=why) as caught:
        check_qemu(_script(tmp_path / "qemu", body))
    assert caught.value.exit_code == 125


def test_a_suitable_qemu_passes(tmp_path):
    qemu = check_qemu(_script(tmp_path / "qemu", 'case "$1" in --version) echo "QEMU emulator '
                              'version 11.1.3";; *) echo \'name "vfio-user-pci", bus PCI\';; esac\n'))
    assert qemu.version == "11.1.3" and qemu.argv == [str(tmp_path / "qemu")]


def test_a_qemu_that_does_not_exist_exits_125_from_the_cli(tmp_path, capsys):
    assert cli.main(["run", "--qemu", str(tmp_path / "none")]) == 125
    assert "no executable file there" in capsys.readouterr().err


@pytest.mark.parametrize("argv, why", [
    (["run", "--build"], "--build needs --kernel-tree"),
    (["run", "--kernel", "/x"], "go together"),
    (["boot", "--kernel-tree", "/x", "--kdir", "/y"], "alternatives"),
])
def test_conflicting_kernel_options_are_named(argv, why, capsys):
    assert cli.main(argv) == 125
    assert why in capsys.readouterr().err


def test_run_on_a_kernel_missing_an_option_exits_125_naming_it(tmp_path, capsys):
    config = "".join(f"{k}={v}\n" for k, v in kconfig.load_fragment().required.items()
                     if k != "CONFIG_VIRTIO_CONSOLE")
    tree = fake_tree(tmp_path / "t", config=config + "# CONFIG_VIRTIO_CONSOLE is not set\n")
    code = cli.main(["run", "--kernel", str(tree / "arch/x86/boot/bzImage"), "--kdir", str(tree),
                     "--results", str(tmp_path / "results")])
    assert code == 125
    assert "CONFIG_VIRTIO_CONSOLE is not set; the rig needs y" in _flat(capsys.readouterr().err)


def test_run_on_a_kernel_before_6_2_exits_125(tmp_path, capsys):
    tree = fake_tree(tmp_path / "t", version=(6, 1), release="6.1.90")
    assert cli.main(["run", "--kernel-tree", str(tree), "--results", str(tmp_path / "r")]) == 125
    assert "has no dynamic MSI-X" in _flat(capsys.readouterr().err)


def _flat(text: str) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(text.split())


MAKEFILE = """\
VERSION = 7
PATCHLEVEL = 3
bzImage:
\t@echo '  CC      drivers/pci/msi/api.o'
\t@echo '  CC      drivers/pci/msi/msi.o'
\t@if [ -n "$$BREAK" ]; then echo "drivers/pci/msi/msi.c:12:3: error: expected ';' before '}' token"; exit 1; fi
\t@mkdir -p arch/x86/boot include/config && echo kernel > arch/x86/boot/bzImage
\t@echo 7.3.4-test > include/config/kernel.release
modules:
\t@echo '  MODPOST Module.symvers'
\t@touch Module.symvers
"""


def _make_tree(root: Path) -> KernelTree:
    (root / "arch/x86").mkdir(parents=True)
    (root / "Makefile").write_text(MAKEFILE)
    (root / "Kconfig").write_text("")
    (root / ".config").write_text("".join(f"{k}={v}\n" for k, v in
                                          kconfig.load_fragment().options.items() if v != "n"))
    return KernelTree.at(root)


def test_a_build_runs_make_and_counts_its_steps(tmp_path):
    from agent.host.kernel.build import build
    lines = []
    result = build(_make_tree(tmp_path / "t"), tmp_path / "logs/build.log", jobs=1,
                   on_line=lines.append)
    assert result.steps == 3 and result.configured is False
    assert "  CC      drivers/pci/msi/api.o" in lines
    assert (tmp_path / "t/arch/x86/boot/bzImage").is_file()
    assert "MODPOST" in (tmp_path / "logs/build.log").read_text()


def test_a_failed_build_quotes_the_first_compiler_error_and_keeps_the_log(tmp_path, monkeypatch):
    from agent.host.kernel.build import build
    from agent.host.kernel.errors import KernelBuildFailed
    monkeypatch.setenv("BREAK", "1")
    with pytest.raises(KernelBuildFailed) as caught:
        build(_make_tree(tmp_path / "t"), tmp_path / "build.log", jobs=1)
    err = caught.value
    assert err.first_error.startswith("drivers/pci/msi/msi.c:12:3: error: expected ';'")
    assert err.outcome is Outcome.BUILD_FAILED and err.exit_code == 125
    assert err.log == tmp_path / "build.log" and "error:" in err.log.read_text()
    assert "first error:" in str(err) and "msi.c:12:3" in str(err)


def test_kernel_build_cli_exits_125_naming_the_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BREAK", "1")
    tree = _make_tree(tmp_path / "t")
    assert cli.main(["kernel", "build", str(tree.path), "--results", str(tmp_path / "r")]) == 125
    err = _flat(capsys.readouterr().err)
    assert "msi.c:12:3: error: expected ';'" in err
    assert list((tmp_path / "r").glob("kernel-build-*/build.log"))


def test_the_initramfs_carries_exactly_the_given_modules_in_order(tmp_path):
    import gzip
    import subprocess as sp

    from images import initramfs
    from images.image import Image
    (tmp_path / "rootfs/usr/bin").mkdir(parents=True)
    (tmp_path / "rootfs/usr/bin/busybox").write_bytes(b"busybox")
    _module(tmp_path / "t/net/9p/9pnet.ko", "9pnet", "")
    _module(tmp_path / "t/fs/9p/9p.ko", "9p", "9pnet")
    image = Image(tmp_path / "rootfs")
    modules = [tmp_path / "t/net/9p/9pnet.ko", tmp_path / "t/fs/9p/9p.ko"]
    path = initramfs.ensure(image, modules, "7.3.4-test", root=tmp_path / "cache")
    listing = sp.run(["cpio", "-t"], input=gzip.decompress(path.read_bytes()),
                     capture_output=True).stdout.decode().split()
    assert {"lib/modules/9pnet.ko", "lib/modules/9p.ko", "init", "bin/busybox"} <= set(listing)
    sp.run(["cpio", "-id", "lib/modules/load-order"], cwd=tmp_path, check=True,
           input=gzip.decompress(path.read_bytes()), capture_output=True)
    assert (tmp_path / "lib/modules/load-order").read_text() == "9pnet.ko\n9p.ko\n"
    assert initramfs.ensure(image, [], "7.3.4-test", root=tmp_path / "cache") != path


def test_the_tree_driver_build_is_skipped_only_when_nothing_it_reads_is_newer(tmp_path):
    from agent.host.kernel import kmod
    tree = fake_tree(tmp_path / "t")
    (tree / "include/linux").mkdir(parents=True)
    (tree / "include/linux/msi.h").write_text("")
    (tree / "arch/x86/include/asm").mkdir(parents=True)
    (tree / "arch/x86/include/asm/msi.h").write_text("")
    kernel = KernelUnderTest.from_tree(tree)
    build = tmp_path / "build"
    kmod._sync_sources(build)
    assert not kmod._up_to_date(kernel, build)          # nothing built yet
    (build / "msixlab.ko").write_bytes(b"ko")
    later = (build / "msixlab.ko").stat().st_mtime_ns + 10**9
    for path in [*build.iterdir(), *tree.rglob("*")]:
        if path.is_file() and path.name != "msixlab.ko":
            os.utime(path, ns=(later - 2 * 10**9, later - 2 * 10**9))
    assert kmod._up_to_date(kernel, build)
    for newer in (tree / "arch/x86/include/asm/msi.h", tree / "Module.symvers",
                  build / "msixlab_group.c"):
        os.utime(newer, ns=(later, later))
        assert not kmod._up_to_date(kernel, build), newer
        os.utime(newer, ns=(later - 2 * 10**9, later - 2 * 10**9))


def test_an_error_message_with_brackets_is_printed_not_taken_for_markup(tmp_path, monkeypatch, capsys):
    """make's own lines look like rich markup ("[/root/linux/Makefile:1398: vmlinux]")."""
    monkeypatch.setenv("BREAK", "1")
    tree = _make_tree(tmp_path / "t")
    (tree.path / "Makefile").write_text(MAKEFILE.replace(
        "error: expected ';' before '}' token", "error: [/root/linux/Makefile:1398: vmlinux] [bold]"))
    assert cli.main(["kernel", "build", str(tree.path), "--results", str(tmp_path / "r")]) == 125
    assert "[/root/linux/Makefile:1398: vmlinux] [bold]" in _flat(capsys.readouterr().err)


def test_an_image_kernel_carries_debians_config_when_the_image_has_it(tmp_path, monkeypatch):
    from images import initramfs
    from images.image import Image
    release = "7.3.4+deb13-amd64"
    rootfs = tmp_path / "rootfs"
    (rootfs / "var/lib/dpkg").mkdir(parents=True)
    (rootfs / "var/lib/dpkg/status").write_text(
        f"Package: linux-image-amd64\nStatus: install ok installed\n"
        f"Depends: linux-image-{release}\n\n"
        f"Package: linux-image-{release}\nStatus: install ok installed\n\n")
    (rootfs / "boot").mkdir()
    (rootfs / f"boot/vmlinuz-{release}").write_bytes(b"bz")
    monkeypatch.setattr(initramfs, "debian_modules", lambda kernel: [])
    image = Image(rootfs)
    assert KernelUnderTest.from_flavor(image, "default").config is None     # no config there
    (rootfs / f"boot/config-{release}").write_text("CONFIG_PCI_MSI=y\n")
    kernel = KernelUnderTest.from_flavor(image, "default")
    assert kernel.config == rootfs / f"boot/config-{release}"
    assert kernel.as_json()["config"] == str(kernel.config)
    assert kernel.config_problems()            # a config lacking the fragment is judged


def test_a_qemu_probe_that_hangs_leaves_nothing_running(tmp_path):
    # subprocess.run's timeout killed only the wrapper script: its children (here two
    # sleeps, as a wrapper's QEMU would be) ran on after msixlab had given up on it.
    from agent.host.lab import qemu_binary
    from msixlab_common.deadline import wait_until
    from msixlab_common.lifetime import process_alive
    pids = tmp_path / "pids"
    qemu = _script(tmp_path / "qemu", f"sleep 300 &\necho $! > {pids}\nsleep 301 &\n"
                                      f"echo $! >> {pids}\nwait\n")
    with pytest.raises(CouldNotJudge, match="did not finish in 2 s"):
        qemu_binary._output(qemu, "--version", timeout=2)
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    wait_until(lambda: not any(process_alive(p) for p in children), 10,
               "the probe's children to be gone")

"""``KernelUnderTest``: the one description of the kernel a run boots.

Concepts: every boot (the ready check, the main job, a shell, a bisect step) needs the
same few facts about its kernel, whatever it came from:
- ``bzimage``: what QEMU boots; ``release``: its ``uname -r``;
- how the guest driver is built: ``DriverBuild.IMAGE`` (inside the image rootfs against
  the Debian headers package) or ``DriverBuild.KDIR`` (``make -C KDIR M=...`` on the host,
  against a kernel build tree with its ``Module.symvers``);
- ``root_modules``: the module files the initramfs loads to reach the root (9p, overlay;
  none when they are built in);
- ``config``: its ``.config``, checked against the rig's fragment before booting.
Three sources: an image flavor (``from_flavor``), a kernel tree built in place
(``from_tree``), and a prebuilt bzImage with the build tree it came from
(``from_prebuilt``).  ``check_supported`` turns what the rig cannot use (a missing option,
a kernel older than 6.2, which has no dynamic MSI-X) into a named could-not-judge.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from images import initramfs
from images.image import Image

from agent.host.kernel import config as kconfig
from agent.host.kernel.build import KernelTree
from agent.host.kernel.errors import KernelTreeError, KernelUnsupported

DYNAMIC_MSIX_SINCE = (6, 2)     # pci_msix_alloc_irq_at() and pci_msix_can_alloc_dyn()

# The options behind the initramfs' root modules, and the module each builds.
ROOT_OPTIONS = {"CONFIG_NET_9P_VIRTIO": "9pnet_virtio", "CONFIG_9P_FS": "9p",
                "CONFIG_OVERLAY_FS": "overlay"}


class DriverBuild(enum.Enum):
    """Where the guest driver is built: in the image rootfs against Debian's headers, or on the
    host against a kernel build dir."""
    IMAGE = "image"     # build.sh in the image rootfs, against linux-headers-RELEASE
    KDIR = "kdir"       # make -C KDIR M=... with the host's compiler


def release_version(release: str) -> tuple[int, int]:
    """(major, minor) of a release string such as ``7.3.4+deb13-amd64``."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if not match:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class KernelUnderTest:
    """One kernel to boot and judge: its ``label``, the ``bzimage`` QEMU boots, its
    ``release``, the ``kdir`` and ``driver_build`` the guest driver is built with, the
    ``root_modules`` the initramfs loads, its ``.config`` (if known) and image ``flavor`` (if
    it is one).  Made by ``from_flavor``, ``from_tree`` or ``from_prebuilt``."""
    label: str                      # "default", "lts", "tree /path", "bzImage /path"
    bzimage: Path
    release: str
    kdir: Path                      # what the driver is built against
    driver_build: DriverBuild
    root_modules: tuple[Path, ...]
    config: Path | None = None
    flavor: str | None = None       # the image flavor, when it is one

    @property
    def version(self) -> tuple[int, int]:
        """(major, minor) of the release."""
        return release_version(self.release)

    # --- the three sources --------------------------------------------------------------
    @classmethod
    def from_flavor(cls, image: Image, flavor: str) -> "KernelUnderTest":
        """The image's kernel of ``flavor``: driver built in the image, Debian's 9p/overlay
        modules, Debian's ``/boot/config-<release>`` as its ``.config`` (checked against
        the fragment and hashed into the results as any kernel's)."""
        kernel = image.kernel(flavor)
        config = kernel.image.parent / f"config-{kernel.version}"    # Debian's boot/config-*
        return cls(label=flavor, bzimage=kernel.image, release=kernel.version,
                   kdir=kernel.headers, driver_build=DriverBuild.IMAGE,
                   root_modules=tuple(initramfs.debian_modules(kernel)), flavor=flavor,
                   config=config if config.is_file() else None)

    @classmethod
    def from_tree(cls, tree: KernelTree | Path | str) -> "KernelUnderTest":
        """The kernel built in place in ``tree`` (``make bzImage modules`` done)."""
        tree = tree if isinstance(tree, KernelTree) else KernelTree.at(tree)
        if not tree.bzimage.is_file():
            raise KernelTreeError(f"{tree.path} has no {tree.bzimage.relative_to(tree.path)}: "
                                  "build it first (msixlab kernel build DIR, or --build)",
                                  path=tree.path)
        return cls._from_build_dir(f"tree {tree.path}", tree.bzimage, tree.path)

    @classmethod
    def from_prebuilt(cls, bzimage: Path | str, kdir: Path | str) -> "KernelUnderTest":
        """A bzImage built elsewhere, with ``kdir``: the build tree it came from (its
        .config, Module.symvers and, for modular 9p/overlay, the modules)."""
        image = Path(bzimage).expanduser().resolve()
        if not image.is_file():
            raise KernelTreeError(f"the kernel image {image} does not exist", path=image)
        return cls._from_build_dir(f"bzImage {image}", image, Path(kdir).expanduser().resolve())

    @classmethod
    def _from_build_dir(cls, label: str, bzimage: Path, kdir: Path) -> "KernelUnderTest":
        if not kdir.is_dir():
            raise KernelTreeError(f"the kernel build directory {kdir} does not exist", path=kdir)
        release_file = kdir / "include/config/kernel.release"
        if not release_file.is_file():
            raise KernelTreeError(f"{kdir} is not a built kernel tree (no "
                                  "include/config/kernel.release: run make there first)", path=kdir)
        config = kdir / ".config"
        if not config.is_file():
            raise KernelTreeError(f"{kdir} has no .config", path=kdir)
        if not (kdir / "Module.symvers").is_file():
            raise KernelTreeError(f"{kdir} has no Module.symvers: run `make modules` there "
                                  "(the guest driver needs it to link)", path=kdir)
        options = kconfig.parse_config(config.read_text(errors="replace"))
        wanted = [module for option, module in ROOT_OPTIONS.items() if options.get(option) == "m"]
        try:
            modules = tuple(initramfs.tree_modules(kdir, wanted)) if wanted else ()
        except FileNotFoundError as err:
            raise KernelTreeError(f"{err}: build it (make modules), or build 9p and overlay "
                                  "into the kernel (=y)", path=kdir) from err
        return cls(label=label, bzimage=bzimage, release=release_file.read_text().strip(),
                   kdir=kdir, driver_build=DriverBuild.KDIR, root_modules=modules,
                   config=config)

    # --- what the rig needs -------------------------------------------------------------
    def config_problems(self) -> list[kconfig.Problem]:
        """Every fragment option the ``.config`` lacks or sets wrong (none when there is no
        ``.config``)."""
        if self.config is None:
            return []
        return kconfig.check(kconfig.parse_config(self.config.read_text(errors="replace")),
                             kconfig.load_fragment())

    def check_supported(self) -> None:
        """Raise ``KernelUnsupported`` (125) naming why the rig cannot judge this kernel."""
        try:
            version = self.version
        except ValueError as err:
            raise KernelUnsupported(str(err), kernel=self.label) from err
        if version < DYNAMIC_MSIX_SINCE:
            raise KernelUnsupported(
                f"kernel {self.release} has no dynamic MSI-X: pci_msix_alloc_irq_at() arrived "
                "in 6.2", kernel=self.label, release=self.release)
        if problems := self.config_problems():
            raise KernelUnsupported(
                f"{self.config} lacks {len(problems)} option(s) the rig needs: "
                + "; ".join(str(p) for p in problems)
                + " (msixlab kernel config prints them all; msixlab kernel build merges them)",
                kernel=self.label, options=[p.option for p in problems])

    def initramfs(self, image: Image) -> Path:
        """The initramfs for this kernel (with its root modules), built and cached on first use."""
        return initramfs.ensure(image, self.root_modules, self.release)

    def as_json(self) -> dict:
        """The kernel as routing.json's metadata records it (paths as strings)."""
        return {"label": self.label, "bzimage": str(self.bzimage), "release": self.release,
                "kdir": str(self.kdir), "driver_build": self.driver_build.value,
                "root_modules": [str(p) for p in self.root_modules],
                "config": str(self.config) if self.config else None, "flavor": self.flavor}


def as_kernel(image: Image, kernel: "KernelUnderTest | str") -> KernelUnderTest:
    """A ``KernelUnderTest`` from either one or an image flavor name."""
    return kernel if isinstance(kernel, KernelUnderTest) else KernelUnderTest.from_flavor(image, kernel)


def require_dynamic_msix(hello: dict) -> None:
    """Raise ``KernelUnsupported`` when the guest driver's hello says the kernel cannot
    allocate MSI-X vectors dynamically on the device (``pci_msix_can_alloc_dyn()`` false):
    that is no verdict on the kernel, pass or fail."""
    device = hello.get("device") or {}
    for where in (hello, device):
        for key in ("dyn_alloc", "can_alloc_dyn"):
            if where.get(key) is False:
                raise KernelUnsupported(
                    f"kernel {hello.get('kernel')}: the guest driver reports that "
                    "pci_msix_can_alloc_dyn() is false on the NIC, so this kernel cannot "
                    "allocate MSI-X vectors dynamically here", kernel=hello.get("kernel"))

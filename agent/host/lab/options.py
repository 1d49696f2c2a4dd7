"""What to boot: one typed description of a lab, from the command line or from pytest.

Concepts owned here:
- ``LabOptions`` (frozen): the kernel under test (an image ``flavor``; a ``kernel_tree``,
  built first when ``build``, with ``jobs``; or a prebuilt ``kernel`` with its ``kdir``),
  another ``qemu``, the ``accel`` asked for (None: ``$MSIXLAB_ACCEL``, else tcg), the NICs
  (``vectors``, ``nics``, ``msix_maskable``, ``msix_noresize``) and the faults armed on
  them (``device_faults``), the guest (``cpus``, ``iommu``, ``append``) and the
  ``results`` root.  jobs/options.py builds one from the command line, the pytest plugin
  from its ``--msixlab-*`` options; ``flags`` is how those options are spelt there
  (``--`` or ``--msixlab-``), so that every message names the option the user typed.
- The one validation, ``problems()``: every value and combination the rig refuses, then
  every path, checked by the code that will use it (``KernelTree.at``,
  ``KernelUnderTest.from_tree``/``from_prebuilt``, ``check_qemu``), so that each rule has
  one place and one message.  ``check()`` raises them together as one ``OptionsError``
  (a bad option: exit 125) before anything starts.
- The kernel choice, ``kernel_under_test(image)``: the tree (built first when asked), the
  prebuilt kernel with its build tree, or the image's kernel of ``flavor``.
- ``lab(...)``: the ``Lab`` these options describe.
- ``record()``: the options as a run records them (``metadata.options`` of routing.json
  and soak.json, docs/routing.md), paths absolute; results/provenance.py's
  ``reproduce_command`` turns that record back into a command line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from images import recipe
from images.image import Image
from qemu_device.errors import QemuDeviceError
from qemu_device.faults import FaultTable

from agent.host.argtypes import bounded_int, cmdline_text, kernel_words, path_text
from agent.host.kernel import build as kbuild
from agent.host.kernel.errors import KernelTreeError
from agent.host.kernel.under_test import KernelUnderTest
from agent.host.lab import accel as accel_mod
from agent.host.lab.lab import Lab
from agent.host.lab.qemu_binary import check_qemu
from agent.host.rundirs import RunDirs, new_run_id
from agent.host.verdict.outcome import CouldNotJudge

MAX_VECTORS = 2048     # the MSI-X table size limit (PCI spec)
MAX_NICS = 8           # root ports and device servers the rig starts
MAX_CPUS = 64          # what the rig boots and reads back per-CPU counts for
MAX_JOBS = 1024        # ``make -jN`` bound for ``--jobs``

#: the fields that name a path
PATHS = ("kernel_tree", "kernel", "kdir", "qemu")

Build = Callable[[kbuild.KernelTree], object]


class OptionsError(KernelTreeError):
    """Options the rig refuses before anything starts (a bad option, exit 125);
    ``problems`` names each.  A ``KernelTreeError``, as most of them are about the kernel
    choice: whoever catches those catches these."""

    def __init__(self, problems: list[str] | tuple[str, ...]):
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)
        self.evidence = {"problems": list(problems)}


def flavor_from(given: str | None, environ: Mapping[str, str] = os.environ,
                flags: str = "--") -> str:
    """The image flavor asked for: ``given`` (the option), else ``$KERNEL_FLAVOR``, else the
    image's default.  A name the image does not have is an ``OptionsError`` naming where it
    came from."""
    known = ", ".join(sorted(recipe.FLAVORS))
    if given is not None:
        if given not in recipe.FLAVORS:
            raise OptionsError([f"{flags}flavor {given!r}: the image has {known}"])
        return given
    from_env = environ.get("KERNEL_FLAVOR")
    if from_env and from_env not in recipe.FLAVORS:
        raise OptionsError([f"KERNEL_FLAVOR must be one of {known}, not {from_env!r}"])
    return from_env or recipe.DEFAULT_FLAVOR


def fault_problems(faults, nics: int, flags: str = "--") -> list[str]:
    """What is wrong with the device faults ``faults`` for a run with ``nics`` NICs: a
    ``nic`` key (the NIC to arm it on; NIC 0 without one) that is not an integer
    0..``nics``-1, or a spec the device server would refuse once the guest is up (an
    unknown kind, a field that kind does not take, a value out of range: checked by the
    device's own ``FaultTable``)."""
    found = []
    for spec in faults:
        nic = spec.get("nic", 0)
        if isinstance(nic, bool) or not isinstance(nic, int) or not 0 <= nic < nics:
            found.append(f"{flags}device-fault {spec.get('kind')}: nic={nic!r} names no NIC "
                         f"of this run (0..{nics - 1}, {flags}nics {nics})")
            continue
        try:
            FaultTable().add({k: v for k, v in spec.items() if k != "nic"})
        except QemuDeviceError as err:
            found.append(f"{flags}device-fault {spec.get('kind')}: {err.message}")
    return found


@dataclass(frozen=True)
class LabOptions:
    """What lab to boot; see the module docstring.  A path may be given as text (a blank
    one is refused, never taken for the current directory) or as a ``Path``."""
    flavor: str = recipe.DEFAULT_FLAVOR
    kernel_tree: Path | str | None = None
    build: bool = False
    jobs: int | None = None
    kernel: Path | str | None = None
    kdir: Path | str | None = None
    qemu: Path | str | None = None
    accel: str | None = None
    vectors: int = 64
    cpus: int = 2
    nics: int = 1
    iommu: bool = False
    msix_maskable: bool = False
    msix_noresize: bool = False
    # the NIC's PM capability and sleep-safe virtio devices: set by a scenario that needs
    # them (NEEDS_POWER_MANAGEMENT, the suspend scenario), never typed; implied by the
    # scenario, so not recorded apart from it
    power_management: bool = False
    append: tuple[str, ...] = ()
    device_faults: tuple[Mapping[str, Any], ...] = ()
    results: Path | str = Path("results")
    flags: str = field(default="--", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "append", tuple(self.append))
        object.__setattr__(self, "device_faults", tuple(dict(f) for f in self.device_faults))

    # --- the one validation -------------------------------------------------------------
    def option(self, name: str) -> str:
        """Option ``name`` (a field) as the user spells it: ``--kernel-tree``,
        ``--msixlab-kernel-tree``."""
        return self.flags + name.replace("_", "-")

    def path(self, name: str) -> Path | None:
        """Path field ``name`` as a ``Path`` (None when not given)."""
        value = getattr(self, name)
        return None if value is None else Path(value)

    def problems(self, paths: bool = True) -> list[str]:
        """Everything wrong with these options (empty when nothing is): values out of
        range, blank paths, combinations that cannot go together, the flavor, the
        accelerator, the extra kernel parameters, the device faults; then, with ``paths``,
        each path as the code that uses it checks it."""
        found = self._value_problems() + self._choice_problems()
        if paths and not found:
            found += self._path_problems()
        return found

    def check(self, paths: bool = True) -> "LabOptions":
        """These options, if ``problems(paths)`` finds nothing; else ``OptionsError``."""
        found = self.problems(paths)
        if found:
            raise OptionsError(found)
        return self

    def _value_problems(self) -> list[str]:
        found = []
        for name, high in (("vectors", MAX_VECTORS), ("cpus", MAX_CPUS), ("nics", MAX_NICS),
                           ("jobs", MAX_JOBS)):
            value = getattr(self, name)
            if value is None and name == "jobs":
                continue
            try:
                bounded_int(self.option(name), 1, high)(str(value))
            except argparse.ArgumentTypeError as err:
                found.append(str(err))
        for name in PATHS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                try:
                    path_text(self.option(name))(str(value))
                except argparse.ArgumentTypeError as err:
                    found.append(str(err))
        if self.flavor not in recipe.FLAVORS:
            found.append(f"{self.option('flavor')} {self.flavor!r}: the image has "
                         f"{', '.join(sorted(recipe.FLAVORS))}")
        try:
            accel_mod.requested_name(self.accel)
        except CouldNotJudge as err:
            found.append(str(err))
        if self.append:
            try:
                kernel_words(self.option("append"))(cmdline_text(self.append))
            except argparse.ArgumentTypeError as err:
                found.append(f"{self.option('append')}: {err}")
        if any(problem.startswith(self.option("nics")) for problem in found):
            return found          # a fault's NIC cannot be judged against a bad --nics
        return found + fault_problems(self.device_faults, self.nics, self.flags)

    def _choice_problems(self) -> list[str]:
        """The kernel choice: a tree (``build`` only with one), or a prebuilt kernel with
        the build tree it came from, or neither (the image's flavor)."""
        opt = self.option
        if self.build and not self.kernel_tree:
            return [f"{opt('build')} needs {opt('kernel_tree')} DIR"]
        if self.kernel_tree and (self.kernel or self.kdir):
            return [f"{opt('kernel_tree')} and {opt('kernel')}/{opt('kdir')} are "
                    "alternatives: give one"]
        if self.kernel and not self.kdir:
            return [f"{opt('kernel')} {self.kernel} needs {opt('kdir')} DIR, the build tree it "
                    f"came from: {opt('kernel')} BZIMAGE and {opt('kdir')} DIR go together"]
        if self.kdir and not self.kernel:
            return [f"{opt('kdir')} {self.kdir} needs {opt('kernel')} BZIMAGE, the kernel built "
                    f"there: {opt('kernel')} BZIMAGE and {opt('kdir')} DIR go together"]
        return []

    def _path_problems(self) -> list[str]:
        found = []
        for check in (self._check_kernel, self._check_qemu):
            try:
                check()
            except (KernelTreeError, CouldNotJudge) as err:
                found.append(str(err))
        return found

    def _check_kernel(self) -> None:
        if self.kernel_tree:
            tree = kbuild.KernelTree.at(self.path("kernel_tree"))
            if not self.build:                   # built later: its bzImage may be missing
                KernelUnderTest.from_tree(tree)
        elif self.kernel:
            KernelUnderTest.from_prebuilt(self.path("kernel"), self.path("kdir"))

    def _check_qemu(self) -> None:
        if self.qemu:
            check_qemu(self.path("qemu"))

    # --- what they boot -----------------------------------------------------------------
    def kernel_under_test(self, image: Image, build: Build | None = None) -> KernelUnderTest:
        """The kernel these options name: the tree (built first by ``build(tree)`` when
        ``self.build``: by default ``kbuild.build`` with ``jobs``, its log under
        ``results/kernel-build-<id>/``), the prebuilt kernel with its build tree, or the
        image's kernel of ``flavor``."""
        if self.kernel_tree:
            tree = kbuild.KernelTree.at(self.path("kernel_tree"))
            if self.build:
                (build or self.build_tree)(tree)
            return KernelUnderTest.from_tree(tree)
        if self.kernel:
            return KernelUnderTest.from_prebuilt(self.path("kernel"), self.path("kdir"))
        return KernelUnderTest.from_flavor(image, self.flavor)

    def build_log(self) -> Path:
        """Where a ``build`` of the tree logs: a fresh ``results/kernel-build-<id>/build.log``."""
        return Path(self.results) / new_run_id("kernel-build") / "build.log"

    def build_tree(self, tree: kbuild.KernelTree) -> kbuild.BuildResult:
        """Build ``tree`` incrementally with ``jobs``, logging to ``build_log()``."""
        return kbuild.build(tree, self.build_log(), jobs=self.jobs)

    def qemu_argv(self) -> list[str] | None:
        """The argv prefix of the QEMU given (checked: ``check_qemu``), None for the image's."""
        return check_qemu(self.path("qemu")).argv if self.qemu else None

    def choose_accel(self, image: Image | None) -> accel_mod.AccelChoice:
        """The accelerator the lab runs under (kvm and auto prove themselves with a probe
        boot of ``flavor``: lab/accel.py)."""
        return accel_mod.choose(self.accel, image, self.flavor)

    def lab(self, image: Image, kernel: KernelUnderTest | str, dirs: RunDirs, *,
            accel: str, qemu: list[str] | None = None, **extra: Any) -> Lab:
        """The ``Lab`` these options describe, on ``kernel`` in ``dirs``, under ``accel``
        (``choose_accel``), with QEMU ``qemu`` (``qemu_argv``); ``extra`` goes to ``Lab``
        as is (``trace``, ``end_on_splat``)."""
        return Lab(image, kernel, dirs, accel=accel, vectors=self.vectors, cpus=self.cpus,
                   qemu=qemu, msix_maskable=self.msix_maskable,
                   msix_noresize=self.msix_noresize, iommu=self.iommu, nics=self.nics,
                   append=self.append, power_management=self.power_management, **extra)

    # --- what a run records -------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The options that decide what a run does, as routing.json and soak.json record
        them (``metadata.options``): paths absolute, the accelerator as asked (after
        ``$MSIXLAB_ACCEL``), the extra kernel parameters and device faults as lists."""
        def absolute(name: str) -> str | None:
            value = self.path(name)
            return None if value is None else str(value.expanduser().resolve())

        return {"flavor": self.flavor, "kernel_tree": absolute("kernel_tree"),
                "kernel": absolute("kernel"), "kdir": absolute("kdir"),
                "qemu": absolute("qemu"), "accel": accel_mod.requested_name(self.accel),
                "vectors": self.vectors, "cpus": self.cpus, "nics": self.nics,
                "iommu": self.iommu, "msix_maskable": self.msix_maskable,
                "msix_noresize": self.msix_noresize, "append": list(self.append),
                "device_faults": [dict(f) for f in self.device_faults]}

    def modes_text(self) -> str:
        """``, MSI-X maskable+noresize, intel-iommu with interrupt remapping`` (empty for
        neither), for the line a job prints when it starts."""
        modes = [m for m, on in (("maskable", self.msix_maskable),
                                 ("noresize", self.msix_noresize)) if on]
        iommu = ", intel-iommu with interrupt remapping" if self.iommu else ""
        return (f", MSI-X {'+'.join(modes)}" if modes else "") + iommu

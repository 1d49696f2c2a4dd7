"""The reproduce commands of ``run`` and ``soak`` (one ``reproduce_command``, made from
what a job records: results/provenance.py): parsed again, each gives back every option
that decides what was run (so a soak's seed replays the same churn on the same machine,
not on a default one)."""

from __future__ import annotations

import shlex

import pytest

from agent.host import cli
from agent.host.jobs.run import RunJob
from agent.host.jobs.soak import SoakJob

DECISIVE = ("flavor", "kernel_tree", "kernel", "kdir", "qemu", "vectors", "cpus",
            "msix_maskable", "msix_noresize", "iommu", "device_fault", "append")


def run_reproduce(args) -> str:
    return RunJob.from_args(args).reproduce()


def soak_reproduce(args, seed: int) -> str:
    return SoakJob.from_args(args, seed=seed).reproduce()


def reparsed(command: str):
    words = shlex.split(command)
    assert words[0] == "msixlab"
    return cli.parser().parse_args(words[1:])


def same_options(a, b, extra=()):
    for name in DECISIVE + tuple(extra):
        assert getattr(a, name, None) == getattr(b, name, None), name


@pytest.mark.parametrize("words", [
    [],
    ["--flavor", "lts", "--vectors", "300", "--cpus", "4"],
    ["--msix-maskable", "--msix-noresize", "--iommu", "--device-fault", "drop_raise:vector=3"],
    ["--nics", "3", "--device-fault", "drop_raise:nic=2,count=0"],
    ["--append", 'irqaffinity=1 dyndbg="file msi.c +p"', "--append", "nokaslr"],
])
def test_soak_reproduce_keeps_every_option(words, tmp_path):
    args = cli.parser().parse_args(["soak", "--seconds", "7", "--ops", "50", *words])
    again = reparsed(soak_reproduce(args, 1234))
    same_options(args, again, ("seconds", "ops", "nics"))
    assert again.seed == 1234


def test_soak_reproduce_keeps_the_kernel_under_test(tmp_path):
    tree = tmp_path / "linux"
    args = cli.parser().parse_args(["soak", "--kernel-tree", str(tree), "--qemu",
                                    str(tmp_path / "qemu")])
    again = reparsed(soak_reproduce(args, 1))
    assert again.kernel_tree == str(tree) and again.qemu == str(tmp_path / "qemu")
    image = tmp_path / "bzImage"
    args = cli.parser().parse_args(["soak", "--kernel", str(image), "--kdir", str(tmp_path)])
    again = reparsed(soak_reproduce(args, 1))
    assert (again.kernel, again.kdir) == (str(image), str(tmp_path))


def test_run_reproduce_keeps_every_option():
    args = cli.parser().parse_args(["run", "--scenario", "cpu-hotplug", "--cpus", "4",
                                    "--iommu", "--msix-maskable", "--nics", "2",
                                    "--device-fault", "drop_raise:vector=3",
                                    "--append", "irqaffinity=0 pci=noaer"])
    same_options(args, reparsed(run_reproduce(args)), ("scenario", "nics"))


@pytest.mark.parametrize("metadata, expect", [
    ({"flavor": "lts", "vectors": 128, "cpus": 4, "seed": 0, "accel": "tcg"},
     {"flavor": "lts", "vectors": 128, "cpus": 4}),
    ({"flavor": None, "vectors": 64, "cpus": 2,
      "kernel_under_test": {"label": "tree /src/linux", "kdir": "/src/linux",
                            "bzimage": "/src/linux/arch/x86/boot/bzImage"}},
     {"kernel_tree": "/src/linux"}),
    ({"vectors": 64, "cpus": 2,
      "kernel_under_test": {"label": "bzImage /k/bzImage", "bzimage": "/k/bzImage",
                            "kdir": "/k/build"}},
     {"kernel": "/k/bzImage", "kdir": "/k/build"}),
])
def test_the_fallback_reproduce_command_of_an_old_routing_json_parses(metadata, expect):
    from agent.host.results.model import reproduce_command
    again = reparsed(reproduce_command(metadata))
    for name, value in expect.items():
        assert getattr(again, name) == value, name

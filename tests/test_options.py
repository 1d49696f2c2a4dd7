"""One options type (agent/host/lab/options.py) for every job and the pytest plugin: built
from the command line (jobs/options.py ``from_args``), it names every problem in the
words of the options the user typed, makes the kernel choice, and records itself so that
the one ``reproduce_command`` gives the same options back."""

from __future__ import annotations

import shlex

import pytest

from agent.host import cli, scenarios
from agent.host.jobs.options import from_args
from agent.host.jobs.run import RunJob
from agent.host.jobs.soak import SoakJob
from agent.host.kernel.errors import KernelTreeError
from agent.host.lab.options import LabOptions, OptionsError, flavor_from
from agent.host.results.metadata import DEFAULT_SCENARIO
from agent.host.results.provenance import reproduce_command
from agent.host.verdict.outcome import Outcome, classify
from test_kernel_tree import fake_tree


def parsed(*words: str):
    return cli.parser().parse_args(list(words))


@pytest.mark.parametrize("words", [
    ["run"],
    ["run", "--flavor", "lts", "--vectors", "300", "--cpus", "4", "--nics", "2", "--iommu",
     "--msix-maskable", "--msix-noresize", "--accel", "auto", "--scenario", "cpu-hotplug",
     "--append", 'irqaffinity=1 dyndbg="file msi.c +p"',
     "--device-fault", "drop_raise:nic=1,vector=3,count=0"],
    ["soak", "--seconds", "7", "--ops", "50", "--seed", "3", "--nics", "3",
     "--device-fault", "drop_raise:nic=2,count=0"],
])
def test_the_recorded_options_reproduce_the_same_options(words):
    job = (RunJob if words[0] == "run" else SoakJob).from_args(parsed(*words))
    ident = job.identity()
    again = parsed(*shlex.split(reproduce_command(ident))[1:])
    assert again.command == words[0]
    rejob = (RunJob if words[0] == "run" else SoakJob).from_args(again)
    assert rejob.identity() == ident           # every recorded option, and the seed


def test_the_recorded_kernel_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = from_args(parsed("run", "--kernel", "bz", "--kdir", "k", "--qemu", "q")).record()
    assert (record["kernel"], record["kdir"], record["qemu"]) == tuple(
        str(tmp_path / name) for name in ("bz", "k", "q"))
    assert record["kernel_tree"] is None and record["accel"] == "tcg"


def test_the_default_scenario_is_the_registrys():
    assert DEFAULT_SCENARIO == scenarios.DEFAULT


def test_every_problem_is_named_at_once_in_the_words_typed():
    options = LabOptions(vectors=0, cpus=65, append=("quiet",), flags="--msixlab-")
    found = options.problems()
    assert found[0] == "--msixlab-vectors must be 1..2048, not 0"
    assert "--msixlab-cpus must be 1..64, not 65" in found
    assert any(p.startswith("--msixlab-append: 'quiet' sets what the rig owns") for p in found)
    with pytest.raises(OptionsError) as raised:
        options.check()
    assert raised.value.problems == tuple(found) and isinstance(raised.value, KernelTreeError)
    assert classify(raised.value)[0] is Outcome.BAD_OPTION


def test_paths_are_checked_only_once_the_values_are_sound(tmp_path):
    # a path problem behind a value problem would cost a QEMU probe for nothing
    options = LabOptions(vectors=0, qemu=tmp_path / "none")
    assert options.problems() == ["--vectors must be 1..2048, not 0"]
    assert LabOptions(qemu=tmp_path / "none").problems() == [
        f"--qemu {tmp_path / 'none'}: no executable file there"]
    assert LabOptions(qemu=tmp_path / "none").problems(paths=False) == []


@pytest.mark.parametrize("argv, says", [
    (["run", "--kernel", "/x/bzImage"], "--kernel /x/bzImage needs --kdir DIR"),
    (["soak", "--kdir", "/x"], "--kdir /x needs --kernel BZIMAGE"),
    (["boot", "--build"], "--build needs --kernel-tree DIR"),
    (["shell", "--kernel-tree", "/x", "--kernel", "/b", "--kdir", "/k"], "alternatives"),
    (["run", "--kernel-tree", "/nonexistent/linux"], "/nonexistent/linux is not a directory"),
])
def test_every_command_refuses_a_bad_kernel_choice_before_anything_starts(argv, says, capsys,
                                                                         tmp_path):
    assert cli.main([*argv, "--results", str(tmp_path)]) == 125
    err = " ".join(capsys.readouterr().err.split())
    assert "error (bad_option)" in err and says in err
    assert not any(tmp_path.iterdir())                  # nothing started, nothing written


def test_the_kernel_choice_builds_a_tree_first_when_asked(tmp_path):
    tree = fake_tree(tmp_path / "linux")
    bzimage = tree / "arch/x86/boot/bzImage"
    bzimage.unlink()                                    # not built yet
    options = LabOptions(kernel_tree=tree, build=True).check()     # --build: it will be
    with pytest.raises(KernelTreeError, match="build it first"):
        LabOptions(kernel_tree=tree).check()
    built = []

    def build(found):
        built.append(found.path)
        bzimage.write_bytes(b"kernel")

    kernel = options.kernel_under_test(None, build=build)
    assert built == [tree] and kernel.label == f"tree {tree}" and kernel.bzimage == bzimage
    prebuilt = LabOptions(kernel=bzimage, kdir=tree).kernel_under_test(None)
    assert prebuilt.label == f"bzImage {bzimage}" and prebuilt.kdir == tree


def test_the_flavor_comes_from_the_option_then_the_environment():
    assert flavor_from("lts", {"KERNEL_FLAVOR": "default"}) == "lts"
    assert flavor_from(None, {"KERNEL_FLAVOR": "lts"}) == "lts"
    assert flavor_from(None, {}) == "default"
    with pytest.raises(OptionsError, match="KERNEL_FLAVOR must be one of default, lts"):
        flavor_from(None, {"KERNEL_FLAVOR": "bogus"})
    with pytest.raises(OptionsError, match="--msixlab-flavor 'bogus': the image has"):
        flavor_from("bogus", {}, flags="--msixlab-")


def test_a_scenario_that_needs_the_viommu_adds_it_to_its_options_not_to_the_callers():
    given = from_args(parsed("run", "--scenario", "vfio-pci"))
    job = RunJob(given, "vfio-pci")
    job.check()
    assert job.options.iommu and not given.iommu     # frozen: the caller's stay as given

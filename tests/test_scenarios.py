"""The scenario registry and the cpu-hotplug scenario's own logic without a guest: the
listing, bad names and options refused before anything starts, every plan consistent,
and the pure judgements cpu-hotplug makes."""

from __future__ import annotations

import inspect

import pytest

from agent.host import cli, scenarios
from agent.host.jobs.run import RunJob, judge
from agent.host.scenarios import reset_step, default as scenario
from agent.host.scenarios import cpu_hotplug, hotplug, remove_rescan, suspend, vfio_pci, vfio_selftests
from agent.host.scenarios.cpu_hotplug import CpuHotplug
from agent.host.verdict import accounting, checks
from agent.host.verdict import vfio_checks
from agent.host.verdict.outcome import CouldNotJudge, Outcome
from agent.host.verdict.routing import CheckResult, Verdict, build_snapshot


def test_the_listing_names_every_scenario_once_with_one_line(capsys):
    assert cli.main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(scenarios.REGISTRY)
    assert {"default", "cpu-hotplug", "hotplug"} <= set(scenarios.REGISTRY)
    assert all(len(line.split(None, 1)[1]) > 20 for line in lines)


def test_an_unknown_scenario_is_a_bad_option_naming_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--scenario", "nope"])
    assert exited.value.code == 125
    assert "cpu-hotplug" in capsys.readouterr().err
    with pytest.raises(CouldNotJudge) as err:
        scenarios.get("nope")
    assert err.value.outcome is Outcome.BAD_OPTION and "default" in str(err.value)


def test_cpu_hotplug_on_one_cpu_is_refused_before_anything_starts(capsys):
    assert cli.main(["run", "--scenario", "cpu-hotplug", "--cpus", "1"]) == 125
    err = capsys.readouterr().err
    assert "bad_option" in err and "at least 2" in err
    scenarios.check_options(CpuHotplug, 2)        # enough CPUs: nothing raised


@pytest.mark.parametrize("cls", list(scenarios.REGISTRY.values()))
def test_every_plan_is_consistent(cls):
    assert cls.PLAN and cls.SUMMARY and "\n" not in cls.SUMMARY
    source = "".join(inspect.getsource(m) for m in (scenario, checks, accounting, cpu_hotplug,
                                                     hotplug, reset_step, remove_rescan,
                                                     vfio_pci, vfio_checks,
                                                     vfio_selftests, suspend))
    for step, names in cls.PLAN:
        assert callable(getattr(cls, "step_" + step.replace("-", "_"))), step
        assert names and len(set(names)) == len(names), step
        for name in names:
            assert f'"{name}"' in source, name


def test_judge_counts_the_scenarios_own_plan():
    s = CpuHotplug(lab=None)
    for step, names in CpuHotplug.PLAN:
        s.results += [CheckResult(name, None, Verdict.PASS, step=step) for name in names]
    verdict = judge(s, [])
    assert verdict.exit_code == 0
    assert verdict.counts["declared"] == sum(len(n) for _, n in CpuHotplug.PLAN)
    s.results = [r for r in s.results if r.name != "managed_shut_down"]
    (missing,) = s.not_judged()
    assert (missing.step, missing.name) == ("cpu-offline", "managed_shut_down")


def reproduce_command(args) -> str:
    """The reproduce line of the run ``args`` ask for (the one ``reproduce_command``)."""
    return RunJob.from_args(args).reproduce()


def test_the_reproduce_command_names_a_scenario_other_than_the_default():
    args = cli.parser().parse_args(["run", "--scenario", "cpu-hotplug", "--cpus", "4"])
    assert "--scenario cpu-hotplug" in reproduce_command(args)
    args = cli.parser().parse_args(["run"])
    assert "--scenario" not in reproduce_command(args)


def vector(index, effective, msg_addr=0xFEE00000, ctrl=0, total=(0, 0)):
    return {"index": index, "group": 1, "irq": 40 + index,
            "msg": {"address_lo": msg_addr, "address_hi": 0, "data": 0x30},
            "table": {"address_lo": msg_addr, "address_hi": 0, "data": 0x30, "ctrl": ctrl},
            "affinity": {"requested": None, "mask": [0, 1], "effective": list(effective)},
            "counts": list(total)}


def snap(guest, qemu_ctrl=0):
    qemu = {g["index"]: {"address_lo": g["msg"]["address_lo"], "address_hi": 0,
                         "data": 0x30, "ctrl": qemu_ctrl} for g in guest}
    return build_snapshot(guest=guest, qemu=qemu, device=[])


def test_moved_off_cpu_fails_a_vector_still_on_the_offline_cpu():
    on_1 = snap([vector(3, [1], msg_addr=0xFEE01000)])
    result = cpu_hotplug.moved_off_cpu(on_1.get(3), 3, 1)
    assert result.verdict is Verdict.FAIL and "offline CPU 1" in result.summary
    moved = snap([vector(3, [0])])
    assert cpu_hotplug.moved_off_cpu(moved.get(3), 3, 1).verdict is Verdict.PASS
    assert cpu_hotplug.moved_off_cpu(None, 3, 1).verdict is Verdict.FAIL


def test_managed_shut_down_needs_the_qemu_entry_masked():
    unmasked = snap([vector(4, [1], msg_addr=0xFEE01000)])
    assert cpu_hotplug.managed_shut_down(unmasked.get(4), 4).verdict is Verdict.FAIL
    masked = snap([vector(4, [1], msg_addr=0xFEE01000)], qemu_ctrl=1)
    assert cpu_hotplug.managed_shut_down(masked.get(4), 4).verdict is Verdict.PASS


def test_the_matrix_covers_every_mode_once_and_exits_with_the_worst():
    from agent.host.jobs import matrix
    cells = [" ".join(c) for c in matrix.cells()]
    assert len(cells) == len(set(cells)) == 51     # 48 across the modes, vfio-pci on 2 and 4, selftests
    assert sum("--iommu" in c and "--msix-maskable" in c and "--cpus 4" in c for c in cells) == 4
    assert {argv[1] for argv in matrix.cells()} == {"default", "cpu-hotplug", "remove-rescan",
                                                    "suspend", "vfio-pci",
                                                    "vfio-selftests"}   # no hotplug
    for cell in matrix.cells():                                  # every cell parses
        assert cli.parser().parse_args(["run", *cell]).scenario == cell[1]
    assert matrix.worst([0, 125, 1]) == 1 and matrix.worst([0, 125]) == 125
    assert matrix.worst([0, 0]) == 0


def test_nics_are_bounded_and_hotplug_takes_none(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--nics", "9"])
    assert exited.value.code == 125
    assert cli.main(["run", "--scenario", "hotplug", "--nics", "2"]) == 125
    assert "takes no --nics" in capsys.readouterr().err
    assert cli.main(["run", "--scenario", "remove-rescan", "--nics", "2"]) == 125
    assert "'remove-rescan' runs on nic0 only" in capsys.readouterr().err
    args = cli.parser().parse_args(["run", "--nics", "3"])
    assert "--nics 3" in reproduce_command(args)


def test_vfio_pci_adds_the_viommu_and_takes_no_nics(capsys):
    args = cli.parser().parse_args(["run", "--scenario", "vfio-pci"])
    assert not args.iommu
    job = RunJob.from_args(args)
    job.check()                                         # check_options, on the job's options
    assert job.scenario_cls.NAME == "vfio-pci" and job.options.iommu   # added by the scenario
    assert "--iommu" in job.reproduce()
    default = RunJob.from_args(cli.parser().parse_args(["run"]))
    default.check()
    assert not default.options.iommu
    assert cli.main(["run", "--scenario", "vfio-pci", "--nics", "2"]) == 125
    assert "'vfio-pci' runs on nic0 only: it takes no --nics" in capsys.readouterr().err


def test_per_nic_plan_prefixes_every_step_and_adds_isolation():
    from agent.host.scenarios.nics import PerNic
    plan = PerNic(None, CpuHotplug, 2).PLAN
    assert [step for step, _ in plan] == (
        [f"nic0/{s}" for s, _ in CpuHotplug.PLAN] + [f"nic1/{s}" for s, _ in CpuHotplug.PLAN]
        + ["isolation"])
    assert plan[-1][1] == ("raise_not_counted_on_other_nic", "nic_reads_its_own_driver")


def test_every_nic_runs_its_own_plan():
    """The default scenario on NIC i is variant i (groups A and F of 4 + i vectors): no two
    NICs' ledgers expect the same vectors."""
    from types import SimpleNamespace
    from agent.host.scenarios.default import Scenario
    from agent.host.scenarios.nics import NicView
    lab = SimpleNamespace(cpus=2)
    assert [Scenario(NicView(lab, nic)).variant for nic in range(3)] == [0, 1, 2]
    assert Scenario(lab).variant == 0


def test_each_nic_has_its_own_sockets_and_logs(tmp_path):
    from agent.host.lab.device_server import DeviceServer
    from agent.host.rundirs import RunDirs
    with RunDirs.create(tmp_path) as dirs:
        first, second = (DeviceServer.for_run(dirs, 64, nic=i) for i in (0, 1))
        assert first.socket_path.name == "nic0.sock" and second.socket_path.name == "nic1.sock"
        assert first.stderr_log.name == "device-server.log"           # NIC 0: as before
        assert second.stderr_log.name == "device-server-nic1.log"
        assert "device-events-nic1.jsonl" in " ".join(second.argv)


def test_hotplug_names_qemus_device_del_defect_and_its_upstream_patch():
    from agent.host.verdict.outcome import CouldNotJudge, Outcome
    from agent.host.scenarios.hotplug import UPSTREAM_FIX, name_qemu_defect
    err = CouldNotJudge(Outcome.PROCESS_FAILED, "QEMU exited (killed by SIGABRT)", pid=7)
    log = ("qemu-system-x86_64: ../system/memory.c:2617: memory_region_del_subregion: "
           "Assertion `subregion->container == mr' failed.\n")
    named = name_qemu_defect(err, log)
    assert named is not err and named.outcome is Outcome.PROCESS_FAILED
    assert f'"{UPSTREAM_FIX}"' in str(named) and "--qemu PATH" in str(named)
    assert "not the kernel's" in str(named)
    assert named.evidence["pid"] == 7 and named.evidence["upstream_patch"] == UPSTREAM_FIX
    assert name_qemu_defect(err, "qemu: some other abort\n") is err

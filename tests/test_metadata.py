"""One metadata layout for routing.json and soak.json (agent/host/results/metadata.py), both
at version 2, and readers that take version 1 too: the real run of tests/data/run-pass
(routing.json version 1) and a soak.json version 1 as jobs/soak.py wrote it before."""

from __future__ import annotations

import json
import shlex

import pytest

from agent.host import cli
from agent.host.results import model
from agent.host.results.metadata import upgrade
from agent.host.results.provenance import reproduce_command
from agent.host.results.routing_json import (
    SCHEMA_VERSION,
    ReportError,
    metadata_of,
    snapshot_from_document,
)
from agent.host.results.soak_json import (
    SoakJsonError,
    from_document,
    read_soak_json,
    write_soak_json,
)
from results_fixtures import DATA, RUN_ID, make_run

#: a soak.json of version 1, shaped as jobs/soak.py wrote it before (no schema, the
#: metadata at the top level beside an ``options`` object of its own)
SOAK_V1 = {
    "run_id": "soak-20261201-101010-0a1b2c3d4e5f", "kind": "soak", "scenario": "soak",
    "flavor": "lts", "vectors": 128, "cpus": 4, "nics": 2, "accel": "tcg", "steps": [],
    "seed": 4242, "verdict": {"outcome": "pass", "exit_code": 0},
    "options": {"seconds": 30.0, "ops": 500, "vectors": 128, "cpus": 4, "nics": 2,
                "flavor": "lts", "kernel_under_test": {"label": "lts"}, "accel": "tcg",
                "msix_maskable": True, "msix_noresize": False, "iommu": False,
                "device_faults": [{"kind": "drop_raise", "nic": 1, "count": 0}],
                "append": ["irqaffinity=1"]},
    "kernel": "6.12.57+deb13-amd64", "guest_cmdline": "console=ttyS0 irqaffinity=1",
    "qemu": "11.1.3", "kernel_under_test": {"label": "lts"}, "config_hash": "abc",
    "timings": {}, "boot_stalls": [], "wall_seconds": 33.0,
    "msixlab_commit": "0" * 40, "reproduce": "msixlab soak --seconds 30 --seed 4242",
    "nic_records": {"nic0": [], "nic1": []},
    "summary": {"ops": 500}, "checks_passed": {"no_interrupt_lost": 9}, "failures": [],
    "op_log": [{"op": "alloc", "nic": 0}],
}


def test_the_version_1_routing_json_of_a_real_run_reads_in_the_new_layout():
    document = json.loads((DATA / "routing.json").read_text())
    assert document["version"] == 1 and "options" not in document["metadata"]
    meta = metadata_of(document)
    assert meta["job"] == "run" and meta["run_id"] == RUN_ID
    options = meta["options"]
    assert (options["flavor"], options["vectors"], options["cpus"], options["nics"],
            options["scenario"]) == ("default", 64, 2, 1, "default")
    assert reproduce_command(meta) == "msixlab run --flavor default --vectors 64 --cpus 2"
    # and the result writers see the same metadata
    assert model.from_document(document, DATA).metadata["options"] == options


def test_a_version_2_metadata_is_read_as_written():
    meta = {"job": "soak", "options": {"seconds": 5, "ops": None}, "seed": 3, "x": 1}
    assert upgrade(meta) == meta
    doc = {"schema": "msixlab.routing", "version": SCHEMA_VERSION, "metadata": meta,
           "apic_map": None, "records": []}
    assert metadata_of(doc) == meta and snapshot_from_document(doc)[1].records == ()
    assert snapshot_from_document({**doc, "version": 1})[1].records == ()   # 1 is read too
    with pytest.raises(ReportError, match="unsupported msixlab.routing version 3"):
        snapshot_from_document({**doc, "version": 3})
    with pytest.raises(ReportError, match="metadata must be an object"):
        metadata_of({**doc, "metadata": []})


def test_a_version_1_soak_json_reads_as_version_2_and_reproduces_its_soak(tmp_path):
    path = tmp_path / "soak.json"
    path.write_text(json.dumps(SOAK_V1))
    doc = read_soak_json(path)
    assert (doc["schema"], doc["version"]) == ("msixlab.soak", 2)
    assert doc["op_log"] == SOAK_V1["op_log"] and doc["summary"] == {"ops": 500}
    meta = doc["metadata"]
    assert meta["job"] == "soak" and "kind" not in meta and meta["seed"] == 4242
    assert meta["nic_records"] == SOAK_V1["nic_records"] and "op_log" not in meta
    options = meta["options"]
    assert (options["seconds"], options["ops"], options["nics"], options["flavor"]) == (
        30.0, 500, 2, "lts")
    args = cli.parser().parse_args(shlex.split(reproduce_command(meta))[1:])
    assert (args.command, args.seconds, args.ops, args.seed, args.nics, args.flavor) == (
        "soak", 30.0, 500, 4242, 2, "lts")
    assert args.msix_maskable and args.append == ["irqaffinity=1"]
    assert args.device_fault == [{"kind": "drop_raise", "nic": 1, "count": 0}]


def test_soak_json_version_2_round_trips_and_the_reader_refuses_what_it_does_not_know(
        tmp_path):
    meta = {"job": "soak", "run_id": "soak-x", "options": {"seconds": 1}, "seed": 1}
    path = write_soak_json(tmp_path / "soak.json", meta, verdict={"exit_code": 0},
                           summary={}, checks_passed={}, failures=[], op_log=[])
    assert read_soak_json(path)["metadata"] == meta
    written = json.loads(path.read_text())
    assert list(written) == ["schema", "version", "metadata", "verdict", "summary",
                             "checks_passed", "failures", "op_log"]
    for change, says in (({"version": 3}, "unsupported msixlab.soak version 3"),
                         ({"schema": "msixlab.routing"}, "not a msixlab.soak document"),
                         ({"metadata": None}, "metadata must be an object")):
        with pytest.raises(SoakJsonError, match=says):
            from_document({**written, **change})
    with pytest.raises(TypeError, match="no field"):
        write_soak_json(tmp_path / "x.json", meta, nonsense=1)


def test_the_fallback_reproduce_line_of_a_version_1_run_keeps_what_it_recorded(tmp_path):
    def modes(doc):
        meta = doc["metadata"]
        del meta["reproduce"]
        meta.update(iommu=True, nics=2, append=["nokaslr"], accel="kvm",
                    msix_modes={"maskable": False, "noresize": True})
    run = model.load(make_run(tmp_path, modes))
    args = cli.parser().parse_args(shlex.split(run.provenance.reproduce)[1:])
    assert (args.iommu, args.nics, args.append, args.accel, args.msix_noresize) == (
        True, 2, ["nokaslr"], "kvm", True)


def test_kcidb_names_a_kernel_trees_checkout_after_the_tree(tmp_path):
    # metadata.kernel_tree was never written: a tree's checkout was "debian-None"
    from agent.host.results import kcidb

    def tree_run(doc):
        doc["metadata"].update(flavor=None, kernel_under_test={
            "label": "tree /src/linux", "kdir": "/src/linux",
            "bzimage": "/src/linux/arch/x86/boot/bzImage"})
    checkout = kcidb.render(model.load(make_run(tmp_path / "t", tree_run)))["checkouts"][0]
    assert checkout["tree_name"] == "src_linux"
    plain = kcidb.render(model.load(make_run(tmp_path / "p")))["checkouts"][0]
    assert plain["tree_name"] == "debian-default"

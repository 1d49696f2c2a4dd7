"""The machine-readable results (results.ktap, junit.xml, kcidb.json) of a real run
directory and of its failing, splat, could-not-judge and legacy variants."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from kcidb_io.schema import LATEST

from agent.host.results import FILES, ResultsError, write_all
from agent.host.results import kcidb, ktap
from agent.host.results.model import load
from agent.host.rundirs import PROJECT_DIR
from results_fixtures import RAISE_STEP, RUN_ID, failing, infra, legacy, make_run, splat

PROVENANCE = ("kernel release: 7.3.4+deb13-amd64", "config hash: 89bc6f06f53ece59",
              "QEMU version: 11.1.3", "seed: 7",
              "reproduce: msixlab run --flavor default --vectors 64 --cpus 2 --seed 7")
STEPS = ["raise before allocation", RAISE_STEP, "free B and raise its indices", "alloc E",
         "kernel view"]


@pytest.fixture(params=[None, failing, splat, infra, legacy],
                ids=["pass", "failing", "splat", "infra", "legacy"])
def any_run(request, tmp_path):
    return make_run(tmp_path, request.param)


# --- the model ------------------------------------------------------------------------

def test_model_reads_steps_checks_and_provenance(tmp_path):
    run = load(make_run(tmp_path))
    assert run.run_id == RUN_ID
    assert [s.name for s in run.steps] == STEPS
    assert run.counts() == {"total": 173, "pass": 173, "fail": 0, "skip": 0}
    assert run.provenance.msixlab_commit == json.loads(
        (tmp_path / RUN_ID / "routing.json").read_text())["metadata"]["msixlab_commit"]
    assert run.verdict.outcome == "pass" and run.checks_hold_verdict
    names = [(c.step, c.test_name) for c in run.checks()]
    assert len(set(names)) == len(names)                    # unique within each step


def test_legacy_run_degrades_to_one_step_and_a_derived_verdict(tmp_path):
    run = load(make_run(tmp_path, legacy))
    assert [s.name for s in run.steps] == ["main"]
    assert run.verdict.exit_code == 0 and run.verdict.outcome == "pass"
    assert (run.provenance.config_hash, run.provenance.seed) == ("unknown", "unknown")
    assert run.provenance.reproduce == "msixlab run --flavor default --vectors 64 --cpus 2"
    assert run.provenance.msixlab_commit != "unknown"       # taken from git
    # repeated checks in one step get distinct names
    assert "cached_msg_matches_table[1]~2" in {c.test_name for c in run.checks()}


@pytest.mark.parametrize("content,says", [
    (None, "holds no routing.json"),
    ("{not json", "cannot read it as JSON"),
    ('{"schema": "other"}', "is not a msixlab.routing document"),
    ('[1, 2]', "is not a msixlab.routing document"),
    ('{"schema": "msixlab.routing", "metadata": [], "records": []}', "metadata must be an object"),
])
def test_bad_run_directories_are_named_errors(tmp_path, content, says):
    if content is not None:
        (tmp_path / "routing.json").write_text(content)
    with pytest.raises(ResultsError, match=says):
        write_all(tmp_path)
    assert not any((tmp_path / name).exists() for name in FILES)


def test_cli_rewrites_results_and_reports_bad_dirs(tmp_path):
    run_dir = make_run(tmp_path)
    done = subprocess.run([sys.executable, "-m", "agent.host.results", str(run_dir),
                           str(tmp_path / "nope")], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.split() == [str(run_dir / name) for name in FILES]
    assert "nope holds no routing.json" in done.stderr and "Traceback" not in done.stderr


# --- KTAP -----------------------------------------------------------------------------

def test_ktap_one_test_per_check_nested_per_step(tmp_path):
    text = ktap.render(load(make_run(tmp_path)))
    assert text.startswith("KTAP version 1\n")
    for line in PROVENANCE:
        assert f"# {line}\n" in text
    tests = ktap.parse(text)
    assert [t.name for t in tests] == STEPS and all(t.ok for t in tests)
    assert sum(len(t.subtests) for t in tests) == 173
    assert tests[0].subtests[0].name == "pending_delivered_after_alloc[60]"
    assert "\n  KTAP version 1\n  # Subtest: alloc E\n" in text


def test_ktap_failed_check_fails_its_step_with_evidence(tmp_path):
    text = ktap.render(load(make_run(tmp_path, failing)))
    tests = {t.name: t for t in ktap.parse(text)}
    assert not tests[RAISE_STEP].ok and not tests["free B and raise its indices"].ok
    assert tests["alloc E"].ok
    (bad,) = [t for t in tests[RAISE_STEP].subtests if not t.ok]
    assert bad.name == "raise_counted_once_on_cpu[1]"
    assert bad.directive.startswith("vector 1: no CPU counted the raise")
    assert '  # device_deltas: {"delivered": 0, "raised": 1}\n' in text   # evidence
    assert "# exit 1 (check_failed): pass:171 fail:2 skip:0" in text


@pytest.mark.parametrize("variant,line", [
    (splat, "not ok 6 verdict # kernel_splat: the guest kernel reported BUG: kernel BUG at "
            "drivers/pci/msi/msi.c:700!"),
    (infra, "not ok 1 verdict # ERROR process_failed: QEMU exited while waiting for its QMP "
            "socket (exit code 1)"),
])
def test_ktap_verdict_test_for_an_end_no_check_holds(tmp_path, variant, line):
    text = ktap.render(load(make_run(tmp_path, variant)))
    assert line + "\n" in text
    assert not ktap.parse(text)[-1].ok


@pytest.mark.parametrize("bad,says", [
    ("1..1\nok 1 x\n", "expected 'KTAP version 1'"),
    ("KTAP version 1\n1..2\nok 1 x\n", "plan 2 but 1 test"),
    ("KTAP version 1\n1..1\nok 2 x\n", "test number 2, expected 1"),
    ("KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  not ok 1 a\nok 1 s\n",
     "'s' is ok but a subtest is not"),
    ("KTAP version 1\n1..1\nfine 1 x\n", "not a KTAP line"),
])
def test_ktap_parser_rejects_what_the_writer_must_not_write(bad, says):
    with pytest.raises(ktap.KtapError, match=says):
        ktap.parse(bad)


def test_ktap_names_never_carry_a_hash(tmp_path):
    def hashy(doc):
        doc["records"][1]["checks"][0].update(name="odd # name", verdict="fail", summary="a # b")
    text = ktap.render(load(make_run(tmp_path, hashy)))
    (line,) = [l for l in text.splitlines() if "odd" in l]
    assert re.fullmatch(r"not ok \d+ odd No\. name\[1\] # a No\. b", line.strip())
    ktap.parse(text)


# --- JUnit ----------------------------------------------------------------------------

def test_junit_suites_per_step_with_provenance(tmp_path):
    root = ET.fromstring(write_all(make_run(tmp_path, failing))["junit.xml"].read_bytes())
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("173", "2", "0")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == STEPS
    props = {p.get("name"): p.get("value") for p in suites["alloc E"].iter("property")}
    assert props["kernel_release"] == "7.3.4+deb13-amd64" and props["seed"] == "7"
    assert props["config_hash"] == "89bc6f06f53ece59" and props["qemu_version"] == "11.1.3"
    assert props["reproduce"].startswith("msixlab run ") and len(props["msixlab_commit"]) >= 40
    (failure,) = suites[RAISE_STEP].iter("failure")
    assert failure.get("message").startswith("vector 1: no CPU counted")
    assert json.loads(failure.text)["device_deltas"] == {"raised": 1, "delivered": 0}
    case = next(c for c in suites["free B and raise its indices"].iter("testcase")
                if c.find("failure") is not None)
    assert case.get("classname") == "msixlab.free B and raise its indices"
    assert "<ctrl=0x0> &" in case.find("failure").get("message")     # escaped, round-trips


def test_junit_splat_carries_the_console_and_infra_is_an_error(tmp_path):
    root = ET.fromstring(write_all(make_run(tmp_path / "s", splat))["junit.xml"].read_bytes())
    case = [c for c in root.iter("testcase") if c.get("name") == "verdict"][0]
    assert case.find("failure").get("type") == "kernel_splat"
    assert "Oops: invalid opcode" in case.find("system-out").text
    root = ET.fromstring(write_all(make_run(tmp_path / "i", infra))["junit.xml"].read_bytes())
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("1", "1", "0")
    assert root.find("testsuite/testcase/error").get("type") == "process_failed"


def test_junit_control_characters_do_not_break_the_xml(tmp_path):
    def control(doc):
        doc["records"][1]["checks"][0].update(verdict="fail", summary="bell\x07 and nul\x00 <&>")
    root = ET.fromstring(write_all(make_run(tmp_path, control))["junit.xml"].read_bytes())
    (failure,) = root.iter("failure")
    assert failure.get("message") == "bell? and nul? <&>"


# --- KCIDB ----------------------------------------------------------------------------

def test_kcidb_validates_for_every_variant(any_run):
    doc = json.loads(write_all(any_run)["kcidb.json"].read_text())
    LATEST.validate(doc)
    ids = [t["id"] for t in doc["tests"]]
    assert len(ids) == len(set(ids))
    assert all(t["build_id"] == doc["builds"][0]["id"] for t in doc["tests"])
    assert doc["builds"][0]["checkout_id"] == doc["checkouts"][0]["id"]


def test_kcidb_tests_carry_status_path_and_provenance(tmp_path):
    doc = kcidb.render(load(make_run(tmp_path, failing)))
    by_path = {}
    for test in doc["tests"]:
        by_path.setdefault(test["path"], []).append(test)
    (bad,) = by_path["msixlab.raise_every_vector_device_doorbell.raise_counted_once_on_cpu.1"]
    assert bad["status"] == "FAIL" and bad["comment"].startswith("vector 1:")
    assert bad["misc"]["evidence"]["device_deltas"] == {"raised": 1, "delivered": 0}
    assert bad["misc"]["seed"] == "7" and bad["misc"]["config_hash"] == "89bc6f06f53ece59"
    assert "QEMU 11.1.3" in bad["environment"]["comment"]
    assert sum(t["status"] == "PASS" for t in doc["tests"]) == 171
    assert doc["builds"][0]["misc"]["kernel_release"] == "7.3.4+deb13-amd64"


def test_kcidb_environment_carries_the_guests_command_line_and_boot_stalls(tmp_path):
    def booted_twice(doc):
        doc["metadata"].update(iommu=True, guest_cmdline="console=ttyS0 irqaffinity=1",
                               boot_stalls=[{"attempt": 1, "reason": "no hello",
                                             "logs": "boot-attempt-1"}])
    doc = kcidb.render(load(make_run(tmp_path, booted_twice)))
    LATEST.validate(doc)
    misc = doc["tests"][0]["environment"]["misc"]
    assert misc["guest_cmdline"] == "console=ttyS0 irqaffinity=1" and misc["iommu"] is True
    assert misc["boot_stalls"][0]["logs"] == "boot-attempt-1"
    plain = kcidb.render(load(make_run(tmp_path / "plain")))["tests"][0]["environment"]["misc"]
    assert not {"guest_cmdline", "boot_stalls", "iommu"} & set(plain)


def test_kcidb_log_links_only_with_a_results_url(tmp_path):
    run = load(make_run(tmp_path))
    assert "log_url" not in kcidb.render(run)["tests"][0]
    doc = kcidb.render(run, "https://ci.example.org/artifacts/")
    LATEST.validate(doc)
    test = doc["tests"][0]
    assert test["log_url"] == f"https://ci.example.org/artifacts/{RUN_ID}/console.log"
    assert {"name": "device-events.jsonl",
            "url": f"https://ci.example.org/artifacts/{RUN_ID}/device-events.jsonl"} in test["output_files"]


def test_kcidb_invalid_document_is_caught_by_the_validator(tmp_path):
    """The validation above would catch a writer bug: a status KCIDB does not know."""
    doc = kcidb.render(load(make_run(tmp_path)))
    doc["tests"][0]["status"] = "OK"
    with pytest.raises(Exception, match="OK"):
        LATEST.validate(doc)


def test_write_all_is_atomic_and_complete(tmp_path):
    run_dir = make_run(tmp_path)
    written = write_all(run_dir)
    assert list(written) == list(FILES)
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]   # no temporaries
    for path in written.values():
        assert path.stat().st_size > 0 and path.stat().st_mode & 0o644 == 0o644


def test_table_wide_results_are_reported_from_the_results_list(tmp_path):
    """Checks with no vector index (the live set, IRQ_TOTAL, groups) live only in the
    document's ``results``: they must reach every format, nested in their step."""
    def with_results(doc):
        doc["results"] = [
            {"name": "raise_counted_once_on_cpu", "index": 1, "verdict": "pass",
             "summary": "", "evidence": {}, "step": "raise-device"},
            {"name": "live_vectors_match_driver", "index": None, "verdict": "fail",
             "summary": "the driver's read-out lacks [0]", "evidence": {"expected": [0, 1]},
             "step": "alloc"}]
    run_dir = make_run(tmp_path, with_results)
    write_all(run_dir)
    text = (run_dir / "results.ktap").read_text()
    assert re.search(r"not ok \d+ live_vectors_match_driver", text), text
    assert "alloc" in text and "raise-device" in text
    suites = ET.parse(run_dir / "junit.xml").getroot()
    failures = [case.get("name") for case in suites.iter("testcase")
                if case.find("failure") is not None]
    assert any("live_vectors_match_driver" in name for name in failures), failures

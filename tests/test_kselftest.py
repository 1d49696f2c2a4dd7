"""Reading kselftest output, and the vfio-selftests scenario's judgments of it.

The outputs under tests/data/kselftest/ are what 7.3.4's VFIO selftests printed in the
guest against the NIC (7.3.4 and 6.12.117, TCG); the listings below are their ``-l``
tables, copied from the same runs.  Every judgment is shown failing on the input that
should fail it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.host.scenarios import kselftest
from agent.host.scenarios.vfio_selftests import (MSI_ONLY_REASON, case_result,
                                                 cases_reported, excluded_variants,
                                                 left_clean, msi_variant_skipped)
from agent.host.verdict.routing import CheckResult, Verdict

DATA = Path(__file__).parent / "data" / "kselftest"

DEVICE_TEST_LISTING = """\
# FIXTURE            VARIANT                   TEST
global                                         
--------------------------------------------------------------------------------
vfio_pci_device_test                           config_space_read_write
                                               validate_bars
                                               reset
--------------------------------------------------------------------------------
vfio_pci_irq_test    msi                       enable_trigger_disable
                     msix                      
"""

# a fixture name wider than its column, and a test's printf flushed after the table
PERF_LISTING = """\
# FIXTURE            VARIANT                   TEST
global                                         
--------------------------------------------------------------------------------
vfio_pci_device_init_perf_test vfio_type1_iommu          init
                     vfio_type1v2_iommu        
                     iommufd_compat_type1      
                     iommufd_compat_type1v2    
                     iommufd                   
Testing parallel initialization of 1 devices:
    0000:01:00.0
"""

LIMIT_LISTING = """\
# FIXTURE            VARIANT                   TEST
vfio_dma_map_limit_test vfio_type1_iommu          unmap_range
                     vfio_type1v2_iommu        unmap_all
                     iommufd_compat_type1      overflow
                     iommufd_compat_type1v2    
                     iommufd                   
"""


def test_listing_without_variants_and_with_a_variant_column():
    fixtures = kselftest.parse_listing(DEVICE_TEST_LISTING)
    assert [f.name for f in fixtures] == ["global", "vfio_pci_device_test", "vfio_pci_irq_test"]
    names = [n for f in fixtures for n in f.case_names()]
    assert names == ["vfio_pci_device_test.config_space_read_write",
                     "vfio_pci_device_test.validate_bars", "vfio_pci_device_test.reset",
                     "vfio_pci_irq_test.msi.enable_trigger_disable",
                     "vfio_pci_irq_test.msix.enable_trigger_disable"]


def test_listing_pairs_every_variant_with_every_test_and_stops_at_a_printf():
    (perf,) = [f for f in kselftest.parse_listing(PERF_LISTING) if f.tests]
    assert perf.variants == ["vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1",
                             "iommufd_compat_type1v2", "iommufd"]
    assert perf.tests == ["init"]
    (limit,) = kselftest.parse_listing(LIMIT_LISTING)
    assert limit.tests == ["unmap_range", "unmap_all", "overflow"]
    assert len(limit.case_names()) == 15
    assert "vfio_dma_map_limit_test.iommufd.overflow" in limit.case_names()


def test_a_binary_that_never_reached_its_harness_has_no_listing():
    with pytest.raises(kselftest.ListingError):
        kselftest.parse_listing("No driver found for device 0000:01:00.0\n")


def test_iommufd_variants_are_left_out_only_without_dev_iommu():
    fixtures = kselftest.parse_listing(LIMIT_LISTING)
    assert excluded_variants(fixtures, dev_iommu=False) == [
        "iommufd", "iommufd_compat_type1", "iommufd_compat_type1v2"]
    assert excluded_variants(fixtures, dev_iommu=True) == []


def test_output_of_a_passing_run_with_a_skip():
    out = kselftest.parse_output((DATA / "vfio_pci_device_test.log").read_text())
    assert out.plan == 5 and out.complete and out.skip_all is None
    assert [c.verdict for c in out.cases] == ["pass", "pass", "pass", "skip", "pass"]
    msi = out.cases[3]
    assert msi.name == "vfio_pci_irq_test.msi.enable_trigger_disable"
    assert msi.reason == "MSI: not supported"
    assert any("Enabled Bus Mastering" in line for line in out.cases[0].diagnostics)


def test_output_of_a_failing_run_keeps_the_assertion():
    out = kselftest.parse_output((DATA / "vfio_dma_mapping_test-6.12.log").read_text())
    failed = [c for c in out.cases if c.verdict == "fail"]
    assert [c.name for c in failed] == ["vfio_dma_map_limit_test.vfio_type1_iommu.overflow",
                                        "vfio_dma_map_limit_test.vfio_type1v2_iommu.overflow"]
    why = kselftest.failure_lines(failed[0])
    assert any("Expected rc (-22) == -EOVERFLOW (-75)" in line for line in why)
    result = case_result(failed[0])
    assert result.verdict is Verdict.FAIL and "EOVERFLOW" in result.summary


def test_skip_all_plan_and_a_skip_without_plan():
    out = kselftest.parse_output("1..0 # SKIP SR-IOV may not be supported by the PF: x\n")
    assert out.plan == 0 and out.skip_all == "SR-IOV may not be supported by the PF: x"
    assert out.complete and not out.cases
    out = kselftest.parse_output("No driver found for device 0000:01:00.0\n")
    assert out.plan is None and out.preamble == ["No driver found for device 0000:01:00.0"]


def test_a_result_before_its_plan_and_a_short_plan_are_seen():
    out = kselftest.parse_output("ok 1 a\n1..2\n")
    assert out.problems and not out.complete
    out = kselftest.parse_output("TAP version 13\n1..3\nok 1 a\nnot ok 2 b\n")
    assert not out.complete and [c.verdict for c in out.cases] == ["pass", "fail"]


def test_a_not_ok_skip_is_a_skip():
    (case,) = kselftest.parse_output("1..1\nnot ok 1 a # SKIP no device\n").cases
    assert case.verdict == "skip" and case.reason == "no device"


def test_the_msi_variant_skip_names_why_it_cannot_apply():
    out = kselftest.parse_output((DATA / "vfio_pci_device_test.log").read_text())
    results = [case_result(c) for c in out.cases]
    msi = results[3]
    assert msi.verdict is Verdict.SKIP and MSI_ONLY_REASON in msi.summary
    assert "MSI: not supported" in msi.summary
    judged = msi_variant_skipped(results)
    assert judged.verdict is Verdict.PASS and MSI_ONLY_REASON in judged.summary


def test_an_msi_variant_that_passes_fails_the_check():
    results = [CheckResult("vfio_pci_irq_test.msi.enable_trigger_disable", None, Verdict.PASS),
               CheckResult("vfio_pci_irq_test.msix.enable_trigger_disable", None, Verdict.PASS)]
    judged = msi_variant_skipped(results)
    assert judged.verdict is Verdict.FAIL and "cannot apply" in judged.summary
    assert msi_variant_skipped(results[1:]).verdict is Verdict.SKIP


def _run(output: str, code: int, timed_out: bool = False) -> dict:
    return {"returncode": code, "timed_out": timed_out, "output": output, "timeout_s": 60}


@pytest.mark.parametrize("text, code, expected, problem", [
    ("1..2\nok 1 a\nok 2 b\n", 0, ["a", "b"], None),
    ("1..2\nok 1 a\nnot ok 2 b\n", 1, ["a", "b"], None),
    ("1..0 # SKIP no PF\n", 4, None, None),
    ("No driver found\n", 4, None, None),
    ("1..2\nok 1 a\n", 1, ["a", "b"], "plan 1..2 but 1 result"),
    ("1..2\nok 1 a\nnot ok 2 b\n", 0, ["a", "b"], "exit 0 with 1 failed case"),
    ("1..1\nok 1 a\n", 1, ["a"], "exit 1 (failure) although no case failed"),
    ("1..1\nok 1 a\n", 0, ["a", "c"], "1 listed case(s) not reported"),
    ("Segmentation fault\n", -11, None, "killed by signal 11"),
    ("1..1\n", 0, None, "plan 1..1 but 0 result"),
    ("garbage\n", 0, None, "no TAP plan"),
    ("1..1\nok 1 a\n", 3, ["a"], "exit status 3"),
])
def test_cases_reported(text, code, expected, problem):
    result = cases_reported(_run(text, code), kselftest.parse_output(text), expected)
    if problem is None:
        assert result.verdict is Verdict.PASS, result.summary
    else:
        assert result.verdict is Verdict.FAIL and problem in result.summary, result.summary


def test_a_timed_out_binary_is_not_reported_complete():
    result = cases_reported(_run("1..1\n", -9, timed_out=True), kselftest.parse_output("1..1\n"),
                            None)
    assert result.verdict is Verdict.FAIL and "no exit within its 60 s" in result.summary


CLEAN = {"dma_maps": [], "errors": {"eventfd_write_failed": 0}}


def _state(enabled=False, eventfd=None, dma=(), errors=0):
    return {"msix": {"enabled": enabled},
            "vectors": [{"index": i, "eventfd": i == eventfd} for i in range(4)],
            "dma_maps": list(dma), "errors": {"eventfd_write_failed": errors}}


@pytest.mark.parametrize("view, state, problem", [
    ({"irqs": []}, _state(), None),
    ({"irqs": [{"irq": 35, "index": 0}]}, _state(), "msi_irqs still holds IRQs [35]"),
    ({"irqs": []}, _state(enabled=True), "still sees MSI-X enabled"),
    ({"irqs": []}, _state(eventfd=2), "holds eventfds for [2]"),
    ({"irqs": []}, _state(dma=[{"iova": 0, "size": 4096}]), "1 DMA map(s), 0 before"),
    ({"irqs": []}, _state(errors=1), "device error counters"),
])
def test_device_left_clean(view, state, problem):
    result = left_clean(view, state, CLEAN)
    if problem is None:
        assert result.verdict is Verdict.PASS
    else:
        assert result.verdict is Verdict.FAIL and problem in result.summary, result.summary

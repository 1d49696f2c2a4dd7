"""The ``vfio-selftests`` scenario: the kernel's own VFIO selftests against the NIC.

Concepts: before the guest boots, ``tools/testing/selftests/vfio`` is built for the kernel
under test (kernel/vfio_selftests.py: a tree's own, else Debian's linux-source-7.3; cached
by source and build) and shared with the guest.  The run adds the vIOMMU
(``NEEDS_IOMMU``), binds the NIC to vfio-pci as the ``vfio-pci`` scenario does, and runs
each selftest binary in the guest against it, one step per binary, the NIC's address as
its argument (the selftests also read ``VFIO_SELFTESTS_BDF``).  A separate scenario, not
a step of ``vfio-pci``: the selftests open the device and its group themselves (the
``vfio-pci`` client must not hold them), reset it and map DMA of their own, take about a
minute more than ``vfio-pci``'s budget, and need the kernel source.

What each step judges:
- every case the binary reports is a result of that step, named as the harness names it
  (``fixture[.variant].test``): ``ok`` passes, ``not ok`` fails (exit 1), a SKIP is a
  skip with the selftest's reason;
- a case the rig does not run is a skip with its reason named: on a kernel without
  ``/dev/iommu`` (CONFIG_IOMMUFD not set: Debian's 7.3 and 6.12) every ``iommufd*``
  variant, and ``vfio_iommufd_setup_test`` as a whole; the tests that take no mode of
  their own run in the legacy container then (``MSIXLAB_VFIO_IOMMU_MODE``,
  agent/selftests/msixlab_iommu_mode.c), which the record says;
- ``msi_variant_skipped``: the NIC has MSI-X and no MSI capability, so the MSI variant of
  the IRQ test cannot apply: it must be a skip (a pass would mean vfio-pci reported MSI
  vectors the NIC does not have), and the skip's reason says why;
- ``selftest_cases_reported``: the binary ended by itself within its time, with a
  complete plan (or a skip of its own, with its reason), an exit status that agrees with
  its results, and a result for every case its ``-l`` listing says it runs;
- ``device_left_clean``: once it exited, vfio-pci left nothing behind: no IRQ in the
  NIC's ``msi_irqs``, the device sees MSI-X off and holds no eventfd, its DMA maps and
  error counters are what they were before the selftests.
Each binary's output is kept as ``selftest-<binary>.log`` in the run directory; the
record (routing.json's ``metadata.vfio``) holds the build, what the guest offered, and
per binary its command, exit status, time and counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.host.kernel.vfio_selftests import ensure_selftests, planned_dir
from agent.host.scenarios import kselftest
from agent.host.scenarios.default import Scenario
from agent.host.scenarios.vfio_pci import bind_nic
from agent.host.verdict.routing import CheckResult, Snapshot, Verdict

log = logging.getLogger(__name__)

BINARIES = ("vfio_pci_device_test", "vfio_dma_mapping_test", "vfio_dma_mapping_mmio_test",
            "vfio_iommufd_setup_test", "vfio_pci_device_init_perf_test",
            "vfio_pci_driver_test", "vfio_pci_sriov_uapi_test")
# opens /dev/iommu and the device's vfio cdev in its fixture, for every test
IOMMUFD_ONLY = frozenset({"vfio_iommufd_setup_test"})
LEGACY_MODE = "vfio_type1v2_iommu"           # the container the others get without iommufd
NO_IOMMUFD = ("needs /dev/iommu: the kernel under test has no iommufd "
              "(CONFIG_IOMMUFD is not set)")
MSI_ONLY_REASON = "the NIC has MSI-X only, no MSI capability"
HUGEPAGES = 4                                # 2 MiB pages: the HugeTLB 2 MiB variants run
LIST_TIMEOUT_S = 60
CASE_TIMEOUT_S = 35                          # the harness's own limit is 30 s per test
EACH = ("selftest_cases_reported", "device_left_clean")
PLAN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bind", ("bound_to_vfio_pci",)),
    ("vfio_pci_device_test", EACH + ("msi_variant_skipped",)),
) + tuple((binary, EACH) for binary in BINARIES[1:])


def excluded_variants(fixtures: list[kselftest.Fixture], dev_iommu: bool) -> list[str]:
    """The variants the rig leaves out: every ``iommufd*`` one without /dev/iommu."""
    if dev_iommu:
        return []
    return sorted({v for f in fixtures for v in f.variants if v.startswith("iommufd")})


def case_result(case: kselftest.Case) -> CheckResult:
    """One reported case as a result: pass, fail (with the lines that say why) or skip
    (with the selftest's reason; an MSI variant's says why it cannot apply)."""
    verdict = {"pass": Verdict.PASS, "fail": Verdict.FAIL, "skip": Verdict.SKIP}[case.verdict]
    if verdict is Verdict.FAIL:
        why = kselftest.failure_lines(case)
        return CheckResult(case.name, None, verdict, "; ".join(why[-3:]) or "not ok",
                           {"output": why, "directive": case.directive})
    reason = case.reason
    if verdict is Verdict.SKIP and is_msi_variant(case.name):
        reason = f"{reason} ({MSI_ONLY_REASON})" if reason else MSI_ONLY_REASON
    elif case.directive and verdict is Verdict.PASS:
        reason = f"{case.directive} {reason}".strip()
    return CheckResult(case.name, None, verdict, reason)


def is_msi_variant(name: str) -> bool:
    """Whether a case name is of the ``msi`` variant (``fixture.msi.test``)."""
    parts = name.split(".")
    return len(parts) == 3 and parts[1] == "msi"


def cases_reported(run: dict, output: kselftest.Output, expected: list[str] | None
                   ) -> CheckResult:
    """``selftest_cases_reported``: the binary ended by itself, its plan is complete (or it
    skipped itself, saying why), its exit status agrees with its results, and every case
    its listing names (``expected``, None when it gave none) was reported."""
    problems = []
    code = run["returncode"]
    if run["timed_out"]:
        problems.append(f"no exit within its {run['timeout_s']} s: killed")
    elif code < 0:
        problems.append(f"killed by signal {-code}")
    elif code not in (kselftest.KSFT_PASS, kselftest.KSFT_FAIL, kselftest.KSFT_SKIP):
        problems.append(f"exit status {code}, not 0, 1 or 4")
    failed = [c.name for c in output.cases if c.verdict == "fail"]
    if output.plan is None:
        if code != kselftest.KSFT_SKIP:
            problems.append("no TAP plan, and no skip (exit 4) either")
    elif not output.complete:
        problems.append(f"plan 1..{output.plan} but {len(output.cases)} result(s) numbered "
                        f"{[c.number for c in output.cases][:20]}")
    if failed and code == kselftest.KSFT_PASS:
        problems.append(f"exit 0 with {len(failed)} failed case(s)")
    if not failed and output.cases and code == kselftest.KSFT_FAIL:
        problems.append("exit 1 (failure) although no case failed")
    reported = {c.name for c in output.cases}
    missing = [name for name in expected or () if name not in reported]
    if missing and output.plan:
        problems.append(f"{len(missing)} listed case(s) not reported: {missing[:8]}")
    evidence = {"returncode": code, "plan": output.plan, "reported": len(output.cases),
                "tail": run["output"].splitlines()[-12:]} if problems else {}
    return CheckResult("selftest_cases_reported", None,
                       Verdict.FAIL if problems else Verdict.PASS, "; ".join(problems),
                       evidence)


def msi_variant_skipped(results: list[CheckResult]) -> CheckResult:
    """``msi_variant_skipped``: every MSI variant case is a skip (the NIC has no MSI)."""
    msi = [r for r in results if is_msi_variant(r.name)]
    if not msi:
        return CheckResult("msi_variant_skipped", None, Verdict.SKIP,
                           "the binary reported no MSI variant")
    wrong = [f"{r.name}: {r.verdict}" for r in msi if r.verdict is not Verdict.SKIP]
    return CheckResult("msi_variant_skipped", None, Verdict.FAIL if wrong else Verdict.PASS,
                       (f"{'; '.join(wrong)}: the MSI variant cannot apply, "
                        f"{MSI_ONLY_REASON}") if wrong else msi[0].summary,
                       {"cases": wrong} if wrong else {})


def left_clean(view: dict, state: dict, baseline: dict) -> CheckResult:
    """``device_left_clean``: no IRQ left in ``msi_irqs``, MSI-X off at the device with no
    eventfd, DMA maps and error counters as in ``baseline`` (before the selftests)."""
    problems = []
    if view["irqs"]:
        problems.append(f"msi_irqs still holds IRQs {[k['irq'] for k in view['irqs']]}")
    if state["msix"]["enabled"]:
        problems.append("the device still sees MSI-X enabled")
    eventfds = [v["index"] for v in state["vectors"] if v.get("eventfd")]
    if eventfds:
        problems.append(f"the device still holds eventfds for {eventfds[:16]}")
    if state["dma_maps"] != baseline["dma_maps"]:
        problems.append(f"{len(state['dma_maps'])} DMA map(s), "
                        f"{len(baseline['dma_maps'])} before the selftests")
    if state["errors"] != baseline["errors"]:
        problems.append(f"device error counters {state['errors']}, before {baseline['errors']}")
    return CheckResult("device_left_clean", None, Verdict.FAIL if problems else Verdict.PASS,
                       "; ".join(problems),
                       {"eventfds": eventfds, "dma_maps": state["dma_maps"][:8]}
                       if problems else {})


class VfioSelftests(Scenario):
    """The kernel's VFIO selftests against the NIC bound to vfio-pci (module docstring)."""

    NAME = "vfio-selftests"
    SUMMARY = ("(adds the vIOMMU) the kernel's own VFIO selftests (tools/testing/selftests/"
               "vfio, built from the kernel's source) run in the guest against the NIC bound "
               "to vfio-pci: every case a result; iommufd and the MSI variant named skips")
    PLAN = PLAN
    MIN_CPUS = 1
    NEEDS_IOMMU = True

    def __init__(self, lab, **kwargs):
        super().__init__(lab, **kwargs)
        self.record: dict = {"binaries": {}}
        self.build = None
        lab.before_boot.append(self._build)

    @staticmethod
    def dry_run_shares(image, kernel) -> tuple[tuple[str, Path], ...]:
        """The share ``--dry-run`` shows (tag, directory): where the build is, or will be,
        in the cache."""
        return (("selftests", planned_dir(kernel)),)

    def _build(self, lab) -> None:
        """Before boot: build (or find) the selftests and share them with the guest."""
        self.build = ensure_selftests(lab.image, lab.kernel)
        lab.timings["selftests_build_s"] = self.build.seconds
        lab.add_share("selftests", self.build.dir)
        self.record["build"] = self.build.as_json()

    def not_judged(self) -> list[CheckResult]:
        """As the base scenario's, except that a declared check skipped with its reason
        named (a binary the kernel under test cannot run) counts as judged."""
        skipped = {(r.step, r.name) for r in self.results if r.verdict is Verdict.SKIP}
        return [r for r in super().not_judged() if (r.step, r.name) not in skipped]

    # --- the steps -------------------------------------------------------------------------
    def step_bind(self) -> Snapshot:
        """Step ``bind``: the NIC to vfio-pci, the selftests' share mounted, huge pages
        reserved; what the guest offers a VFIO user recorded, the device's state kept as
        the baseline ``device_left_clean`` compares with."""
        self.bdf = bind_nic(self, self.record)["bdf"]
        self.offer = self.record["guest"] = self.lab.agent("selftests_prepare",
                                                           hugepages=HUGEPAGES)
        missing = sorted(set(BINARIES) - set(self.offer["binaries"]))
        self.record["iommu_mode"] = "iommufd" if self.offer["dev_iommu"] else LEGACY_MODE
        self.record["not_built"] = missing
        state = self.lab.device_command("state")
        self.baseline = {"dma_maps": state["dma_maps"], "errors": state["errors"]}
        self.say(f"vfio-selftests: {self.bdf} bound to vfio-pci; "
                 f"{len(self.offer['binaries'])} selftests in the guest; IOMMU mode "
                 f"{self.record['iommu_mode']}")
        return Snapshot(())

    def step_vfio_pci_device_test(self) -> Snapshot:
        """Step ``vfio_pci_device_test``: config space, BARs, reset, MSI and MSI-X."""
        results = self._selftest("vfio_pci_device_test")
        self._add(msi_variant_skipped(results))
        return Snapshot(())

    def step_vfio_dma_mapping_test(self) -> Snapshot:
        """Step ``vfio_dma_mapping_test``: DMA map and unmap in every IOMMU mode."""
        self._selftest("vfio_dma_mapping_test")
        return Snapshot(())

    def step_vfio_dma_mapping_mmio_test(self) -> Snapshot:
        """Step ``vfio_dma_mapping_mmio_test``: the NIC's BARs mapped for DMA."""
        self._selftest("vfio_dma_mapping_mmio_test")
        return Snapshot(())

    def step_vfio_iommufd_setup_test(self) -> Snapshot:
        """Step ``vfio_iommufd_setup_test``: the device cdev bound to iommufd."""
        self._selftest("vfio_iommufd_setup_test")
        return Snapshot(())

    def step_vfio_pci_device_init_perf_test(self) -> Snapshot:
        """Step ``vfio_pci_device_init_perf_test``: the device opened in every mode."""
        self._selftest("vfio_pci_device_init_perf_test")
        return Snapshot(())

    def step_vfio_pci_driver_test(self) -> Snapshot:
        """Step ``vfio_pci_driver_test``: needs a device its library has a driver for (it
        skips itself on the NIC, saying so)."""
        self._selftest("vfio_pci_driver_test")
        return Snapshot(())

    def step_vfio_pci_sriov_uapi_test(self) -> Snapshot:
        """Step ``vfio_pci_sriov_uapi_test``: needs an SR-IOV PF (it skips itself)."""
        self._selftest("vfio_pci_sriov_uapi_test")
        return Snapshot(())

    # --- one binary --------------------------------------------------------------------------
    def _skip_binary(self, binary: str, reason: str) -> list[CheckResult]:
        results = [CheckResult(binary, None, Verdict.SKIP, reason),
                   CheckResult("selftest_cases_reported", None, Verdict.SKIP, reason)]
        self._add(results)
        self.record["binaries"][binary] = {"skipped": reason}
        return results

    def _selftest(self, binary: str) -> list[CheckResult]:
        """Run ``binary`` against the NIC and judge it (module docstring); returns the
        results of its cases."""
        dev_iommu = self.offer["dev_iommu"]
        if binary not in self.offer["binaries"]:
            results = self._skip_binary(binary, f"not built from {self.build.source.label}")
        elif binary in IOMMUFD_ONLY and not dev_iommu:
            results = self._skip_binary(binary, NO_IOMMUFD)
        else:
            results = self._run_binary(binary, dev_iommu)
        self._left_clean()
        return results

    def _run_binary(self, binary: str, dev_iommu: bool) -> list[CheckResult]:
        env = {} if dev_iommu else {"MSIXLAB_VFIO_IOMMU_MODE": LEGACY_MODE}
        listed = self.lab.agent("selftest_run", binary=binary, args=["-l", self.bdf], env=env,
                                timeout_s=LIST_TIMEOUT_S)
        try:
            fixtures = kselftest.parse_listing(listed["output"])
        except kselftest.ListingError:
            fixtures = []            # it gave up before its harness: the run says why
        leave_out = excluded_variants(fixtures, dev_iommu)
        expected = [name for f in fixtures for name in f.case_names()] if fixtures else None
        left_out = [f"{f.name}.{v}.{t}" for f in fixtures for v in f.variants
                    if v in leave_out for t in f.tests]
        args = [word for v in leave_out for word in ("-V", v)] + [self.bdf]
        timeout_s = min(900, 60 + CASE_TIMEOUT_S * max(1, len(expected or ()) - len(left_out)))
        run = self.lab.agent("selftest_run", binary=binary, args=args, env=env,
                             timeout_s=timeout_s)
        run["timeout_s"] = timeout_s
        self.lab.save(f"selftest-{binary}.log", f"$ {' '.join(run['argv'])}\n{run['output']}")
        output = kselftest.parse_output(run["output"])
        results = [case_result(case) for case in output.cases]
        results += [CheckResult(name, None, Verdict.SKIP, NO_IOMMUFD) for name in left_out]
        if not output.cases:
            reason = output.skip_all or next(
                (line.strip() for line in reversed(run["output"].splitlines()) if line.strip()),
                f"exit {run['returncode']} without a result")
            results.append(CheckResult(binary, None, Verdict.SKIP if run["returncode"] ==
                                       kselftest.KSFT_SKIP else Verdict.FAIL, reason))
        self._add(results)
        self._add(cases_reported(run, output, [n for n in expected or ()
                                               if n not in set(left_out)]))
        counts = {v: sum(r.verdict is v for r in results) for v in Verdict}
        self.record["binaries"][binary] = {
            "argv": run["argv"], "env": env, "returncode": run["returncode"],
            "seconds": run["seconds"], "timed_out": run["timed_out"],
            "left_out": leave_out, "counts": {str(v): n for v, n in counts.items()}}
        self.say(f"{binary}: {counts[Verdict.PASS]} passed, {counts[Verdict.FAIL]} failed, "
                 f"{counts[Verdict.SKIP]} skipped ({run['seconds']:.1f} s)")
        return results

    def _left_clean(self) -> None:
        view = self.lab.agent("vfio_view")
        state = self.lab.device_command("state")
        self._add(left_clean(view, state, self.baseline))

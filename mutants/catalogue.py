"""The mutant catalogue: every bug ``make mutate`` plants, and what must catch it.

Concepts owned here:
- An ``Edit`` is one exact textual replacement in one file of the project: ``old`` must
  occur exactly once in the file (else the catalogue has rotted and the runner refuses
  the mutant, loudly), and is replaced by ``new``.
- A mutant runs the main job's default scenario unless it names one (``scenario``): the
  vfio-pci mutants plant bugs only ``--scenario vfio-pci`` exercises.
- A ``Mutant`` is a named bug: one or more edits, a one-line description of the bug they
  plant, and its *expected set*: check names (as in ``scenario.PLAN``) or run outcomes
  (``outcome.Outcome`` values such as ``kernel_splat``), and the scenario whose run can
  see it (``default`` unless it names another).  The main job run against the
  mutated copy kills the mutant only if it exits 1 and its verdict names at least one
  member of the expected set (a failed check, or the outcome itself).  A mutant killed
  by its outcome names the splat it causes (``splat``, a regular expression the
  verdict's first console line must match), so an unrelated crash cannot kill it.
- A mutant's ``command`` is the job its bug is judged by: the main job (``run``, the
  default) or, for a bug only churn can reach, a soak of a fixed seed and op count.
- Kinds: ``bug`` plants a bug in the device model or the guest driver; ``unjudged``
  makes a host check stop running (the "declared but not judged" rule must catch it);
  ``weakened`` loosens one host check *and* plants the bug it guards, so the verdict
  must still catch the bug through another check (a loosened comparison alone cannot
  change a correct run: tests/ pins each check on its own).
- A mutant whose bug only shows with several NICs names the main job's options
  (``args``, e.g. ``--nics 2``); the others run it plain.
- Equivalent mutants (no run can tell them apart from the original) are not in the
  catalogue; ``EQUIVALENT`` records each one considered, and why it was left out.
"""

from __future__ import annotations

from dataclasses import dataclass

DEVICE = "qemu_device/device"
KMOD = "agent/kmod"
HOST = "agent/host"


@dataclass(frozen=True)
class Edit:
    """One exact replacement in one file: ``old`` (which must occur once) becomes ``new``."""
    path: str     # relative to the project root
    old: str      # must occur exactly once in the file
    new: str


@dataclass(frozen=True)
class Mutant:
    """One named bug: its kind, description, expected set, edits and, for a splat, the console
    line it must cause."""
    name: str
    kind: str                   # "bug", "unjudged" or "weakened"
    description: str            # the bug it plants, one line
    expected: frozenset[str]    # check names or outcomes; one must be in the verdict
    edits: tuple[Edit, ...]
    splat: str | None = None    # the console line an expected kernel_splat must match
    command: tuple[str, ...] = ("run",)     # the msixlab job the mutant is judged by

    @property
    def paths(self) -> tuple[str, ...]:
        """The files the mutant edits, each once, in edit order."""
        return tuple(dict.fromkeys(e.path for e in self.edits))


def _m(name: str, kind: str, description: str, expected: set[str], *edits: Edit,
       splat: str | None = None, command: tuple[str, ...] = ("run",)) -> Mutant:
    return Mutant(name, kind, description, frozenset(expected), tuple(edits), splat, command)


# The soak a soak mutant is judged by: a fixed seed and op count, so it replays.
SOAK = ("soak", "--ops", "80", "--seed", "7", "--seconds", "600")


MSIX = f"{DEVICE}/msix.py"
REGS = f"{DEVICE}/registers.py"
NIC = f"{DEVICE}/nic.py"
GROUP = f"{KMOD}/msixlab_group.c"
ROUTE = f"{KMOD}/msixlab_route.c"
CHECKS = f"{HOST}/verdict/checks.py"
ACCOUNTING = f"{HOST}/verdict/accounting.py"
SCENARIO = f"{HOST}/scenarios/default.py"
AGENT = "agent/guest/commands.py"

# Plants shared by a bug mutant and the weakened-check mutant that pairs with it.
_HANDLER_COUNTS_TWICE = Edit(GROUP, "\tthis_cpu_inc(*vec->counts);",
                             "\tthis_cpu_add(*vec->counts, 2);")
_FREE_KEEPS_ENTRY = Edit(
    GROUP, "\tif (vec->dynamic)\n\t\tpci_msix_free_irq(ml->pdev, vec->map);\n", "")

DEVICE_MUTANTS = (
    _m("dev-pba-never-clears", "bug",
       "the guest-visible PBA keeps every bit the guest ever saw set, even after delivery",
       {"pba_matches_pending"},
       Edit(MSIX, "        return bytes(self.pending[offset:offset + count])",
            "        self.sticky = bytes(a | b for a, b in zip(\n"
            "            getattr(self, 'sticky', bytes(len(self.pending))), self.pending))\n"
            "        return self.sticky[offset:offset + count]")),
    _m("dev-maskall-ignored", "bug",
       "the device ignores the function mask (MASKALL) of config writes: raises go through",
       {"raise_held_while_function_masked", "device_counters_match"},
       Edit(NIC, "self.config.msix_listener = self.msix.set_control",
            "self.config.msix_listener = lambda on, fmask: self.msix.set_control(on, False)")),
    _m("dev-mask-view-wrong", "bug",
       "the device's state reports a vector raised more than once as masked by the client",
       {"device_masks_match_qemu_table"},
       Edit(MSIX, '"masked": bool(self.masked[v]), "raised"',
            '"masked": bool(self.masked[v]) or self.raised[v] > 1, "raised"')),
    _m("dev-raised-not-counted-while-pending", "bug",
       "RAISED is not counted for a raise the device holds pending (only deliverable ones)",
       {"device_counters_match"},
       Edit(MSIX, "        self.raised[v] += 1\n", "        self.raised[v] += self.deliverable(v)\n")),
    _m("dev-irq-total-miscounted", "bug",
       "the IRQ total register does not count a doorbell raise of vector 0",
       {"irq_total_matches"},
       Edit(REGS, "        else:\n            self.irq_total += 1",
            "        else:\n            self.irq_total += vector > 0")),
    _m("dev-spurious-on-first-eventfd", "bug",
       "a vector that first gets its eventfd is signalled once, spuriously",
       {"counts_match_raises", "pending_delivered_after_alloc", "raise_counted_once_on_cpu"},
       Edit(MSIX, '            self._emit("eventfd_assign", start + i)\n',
            '            self._emit("eventfd_assign", start + i)\n'
            "            if old is None:\n"
            "                self.fds.signal(fd)\n")),
    _m("dev-wrong-vector-raise", "bug",
       "a raise signals the eventfd of the neighbouring vector (v ^ 1)",
       {"raise_counted_once_on_cpu", "counts_match_raises"},
       Edit(MSIX, "        fd = self.eventfds[v]\n        if (fd is not None and self.enabled",
            "        fd = self.eventfds[v ^ 1]\n        if (fd is not None and self.enabled")),
    _m("dev-lost-raise", "bug",
       "every second delivery of a vector is counted but its eventfd is never written",
       {"raise_counted_once_on_cpu", "doorbell_raise_counted_once_on_cpu",
        "counts_match_raises"},
       Edit(MSIX, "            self.fds.signal(fd)\n        except OSError",
            "            if self.delivered[v] % 2 == 0:\n"
            "                self.fds.signal(fd)\n        except OSError")),
    _m("dev-pending-redelivered", "bug",
       "a pending raise delivered at a flush keeps its pending bit: every later flush "
       "delivers it again (duplicates)",
       {"pba_matches_pending", "device_counters_match", "counts_match_raises",
        "pending_delivered_after_alloc"},
       Edit(MSIX, "                    self.pending[v >> 3] &= ~(1 << (v & 7))\n", "")),
    _m("dev-eventfd-does-not-flush", "bug",
       "a vector that gets its eventfd does not deliver the raise held pending for it",
       {"pending_delivered_after_alloc", "counts_match_raises", "device_counters_match"},
       Edit(MSIX, "        self.flush_pending(range(start, start + len(fds)))\n", "")),
    _m("dev-raise-without-eventfd-dropped", "bug",
       "a raise the device cannot deliver is dropped instead of held pending (no PBA bit)",
       {"pba_matches_pending", "pending_delivered_after_alloc", "device_counters_match"},
       Edit(MSIX, "        self.pending[v >> 3] |= 1 << (v & 7)\n        self._emit(\"pend\"",
            "        self._emit(\"pend\"")),
    _m("dev-doorbell-5-bit-vector", "bug",
       "the ICS doorbell decodes only 5 bits of the vector number (60 raises 28)",
       {"doorbell_raise_counted_once_on_cpu", "counts_match_raises", "device_counters_match"},
       Edit(REGS, "        self.msix.raise_vector(vector, source)",
            "        self.msix.raise_vector(vector & 0x1F, source)")),
)

KMOD_MUTANTS = (
    _m("kmod-request-irq-failure-leaks", "bug",
       "a vector whose request_irq() fails is not given back (pci_msix_free_irq skipped): "
       "its index and IRQ outlive the failed group",
       {"request_irq_failure_unwound", "no_leak_after_free"},
       Edit(GROUP, "\tret = msixlab_vec_attach(ml, vec, grp);\n\tif (ret)\n\t\tgoto err_free_map;",
            "\tret = msixlab_vec_attach(ml, vec, grp);\n\tif (ret)\n\t\tgoto err_destroy;")),
    _m("kmod-affinity-hint-ignored", "bug",
       "the driver allocates a group asked for one CPU without its affinity descriptor",
       {"requested_affinity_honoured"},
       Edit(GROUP, "ret = msixlab_grp_fill(ml, grp, affd);",
            "ret = msixlab_grp_fill(ml, grp, NULL);")),
    _m("kmod-affinity-wrong-cpu", "bug",
       "the affinity descriptor names the CPU after the one asked for",
       {"requested_affinity_honoured"},
       Edit(GROUP, "cpumask_copy(&affd->mask, cpumask_of(req->cpu));",
            "cpumask_copy(&affd->mask, cpumask_of((req->cpu + 1) % nr_cpu_ids));")),
    _m("kmod-start-first-only", "bug",
       "an explicit start is honoured for the group's first vector only (C = [60, 7, 8])",
       {"group_allocated_as_requested"},
       Edit(GROUP, "ret = msixlab_vec_alloc(ml, grp, index, affd);",
            "ret = msixlab_vec_alloc(ml, grp, i ? MSI_ANY_INDEX : index, affd);")),
    _m("kmod-group-id-reused-while-live", "bug",
       "group ids wrap at 4: the fifth group gets id 1 while group 1 is still live",
       {"group_id_unique"},
       Edit(GROUP, "\tml->next_group++;", "\tml->next_group = ml->next_group % 4 + 1;")),
    _m("kmod-readout-omits-index0", "bug",
       "the driver's read-out of allocated vectors starts at index 1 (omits group 0)",
       {"live_vectors_match_driver", "counts_match_raises"},
       Edit(GROUP, "\tfor (i = 0; i < ml->table_size; i++)\n\t\tif (ml->vecs[i] && (!grp",
            "\tfor (i = 1; i < ml->table_size; i++)\n\t\tif (ml->vecs[i] && (!grp")),
    _m("kmod-handler-counts-twice", "bug",
       "the interrupt handler counts every interrupt twice (a duplicated delivery)",
       {"pending_delivered_after_alloc", "raise_counted_once_on_cpu", "counts_match_raises"},
       _HANDLER_COUNTS_TWICE),
    _m("kmod-free-keeps-table-entry", "bug",
       "freeing a vector frees its handler but never its MSI-X index (not reusable, still in msi_irqs)",
       {"freed_entry_masked_and_cleared", "msi_irqs_match_driver", "freed_index_reused"},
       _FREE_KEEPS_ENTRY),
    _m("kmod-doorbell-wrong-index", "bug",
       "the RAISE ioctl rings the doorbell of the neighbouring index (index ^ 1)",
       {"doorbell_raise_counted_once_on_cpu", "counts_match_raises"},
       Edit(ROUTE, "\twritel(r->index, ml->regs + MSIXLAB_REG_ICS);",
            "\twritel(r->index ^ 1, ml->regs + MSIXLAB_REG_ICS);")),
    _m("kmod-function-mask-never-set", "bug",
       "the FUNCTION_MASK ioctl never sets MASKALL (reports success)",
       {"raise_held_while_function_masked"},
       Edit(ROUTE, "\t\tcontrol |= PCI_MSIX_FLAGS_MASKALL;", "\t\tcontrol |= 0;")),
    _m("kmod-pba-readout-low-half", "bug",
       "the driver's PBA read-out drops the upper dword of each 64-bit PBA word",
       {"pba_matches_pending", "pending_delivered_after_alloc",
        "raise_held_while_function_masked"},
       Edit(ROUTE, "\t\tu64 hi = readl(ml->pba + i * 8 + 4);", "\t\tu64 hi = 0;")),
    _m("kmod-min-not-honoured", "bug",
       "a group whose min cannot be met is accepted with fewer vectors",
       {"exhausted_with_enospc", "group_allocated_as_requested"},
       Edit(GROUP, "\tif (grp->count >= grp->min)\n\t\treturn 0;",
            "\tif (grp->count >= 1)\n\t\treturn 0;")),
    _m("kmod-full-table-ebusy", "bug",
       "a full table is reported as EBUSY instead of ENOSPC for an any-index group",
       {"exhausted_with_enospc"},
       Edit(GROUP, "return any_index ? -ENOSPC : -EBUSY;", "return -EBUSY;")),
    _m("kmod-refuses-inside-cpu-budget", "bug",
       "the driver refuses (ENOSPC) any vector past 40, far inside the table and the CPUs' "
       "vector budget",
       {"driver_error"},
       Edit(GROUP, "\t\tret = msixlab_vec_alloc(ml, grp, index, affd);",
            "\t\tret = ml->nr_vectors >= 40 ? -ENOSPC :\n"
            "\t\t      msixlab_vec_alloc(ml, grp, index, affd);")),
    _m("kmod-double-free-irq", "bug",
       "freeing a vector calls free_irq() twice (the kernel WARNs)",
       {"kernel_splat"},
       Edit(GROUP, "\tfree_irq(vec->map.virq, vec);\n",
            "\tfree_irq(vec->map.virq, vec);\n\tfree_irq(vec->map.virq, vec);\n"),
       splat=r"free_irq|already-free IRQ"),
    _m("kmod-silent-taint", "bug",
       "freeing a vector reports a WARN in a form no console pattern knows (a warning line "
       "and the W taint, no WARNING: headline, no register dump)",
       {"kernel_splat"},
       Edit(GROUP, "\tmsixlab_vec_detach(ml, vec);\n\tif (vec->dynamic)",
            "\tmsixlab_vec_detach(ml, vec);\n\tpr_warn(\"msixlab: vector %u freed oddly\\n\", "
            "vec->map.index);\n\tadd_taint(TAINT_WARN, LOCKDEP_STILL_OK);\n\tif (vec->dynamic)"),
       splat=r"^tainted \d+ -> \d+$"),
)

HOST_MUTANTS = (
    _m("checks-affinity-honoured-not-run", "unjudged",
       "affinity_honoured dropped from the record checks (it never runs)",
       {"affinity_honoured"},
       Edit(CHECKS, "RECORD_CHECKS = (cached_msg_matches_table, destination_matches_affinity, "
                    "affinity_honoured)",
            "RECORD_CHECKS = (cached_msg_matches_table, destination_matches_affinity)")),
    _m("checks-destination-always-skips", "unjudged",
       "destination_matches_affinity skips every physical-mode message (test inverted)",
       {"destination_matches_affinity"},
       Edit(CHECKS, "    if decoded.dest_mode is DestMode.LOGICAL:",
            "    if decoded.dest_mode is not DestMode.LOGICAL:")),
    _m("accounting-affinity-only-moved", "unjudged",
       "requested_affinity_honoured judges only vectors moved at run time",
       {"requested_affinity_honoured"},
       Edit(ACCOUNTING, "    for index in sorted(ledger.live()):\n        wanted = "
                        "ledger.requested_cpus(index)",
            "    for index in sorted(ledger.moved):\n        wanted = "
            "ledger.requested_cpus(index)")),
    _m("scenario-account-skips-device", "unjudged",
       "the per-step accounting no longer reads the device's counters",
       {"device_counters_match", "irq_total_matches"},
       Edit(SCENARIO, '        self._add(accounting.device_counters_match(self.ledger, state))\n'
                      '        self._add(accounting.device_masks_match_qemu(snap, state))\n',
            '        self._add(accounting.device_masks_match_qemu(snap, state))\n')),
    _m("scenario-function-mask-unjudged", "unjudged",
       "the function-mask step computes its held-raise verdict but never records it",
       {"raise_held_while_function_masked"},
       Edit(SCENARIO, '        self._add(CheckResult("raise_held_while_function_masked", index,',
            '        (CheckResult("raise_held_while_function_masked", index,')),
    _m("scenario-exhaustion-table-unjudged", "unjudged",
       "the exhaustion step no longer compares the table around the failed allocation",
       {"failed_alloc_leaves_table_unchanged"},
       Edit(SCENARIO, "        self._add(self._unchanged(before, after, stale_masked_ok=fill < size))\n",
            "")),
    _m("weakened-counts-allow-extra", "weakened",
       "counts_match_raises only flags lost interrupts (>=), with a handler that counts "
       "twice",
       {"pending_delivered_after_alloc", "raise_counted_once_on_cpu"},
       Edit(ACCOUNTING, "problems = [] if total == expected else [",
            "problems = [] if total >= expected else ["),
       _HANDLER_COUNTS_TWICE),
    _m("weakened-raise-ignores-device", "weakened",
       "raise_counted_once_on_cpu no longer compares the device's raised/delivered, with a "
       "device that counts every delivery twice",
       {"device_counters_match"},
       Edit(CHECKS, "    elif device and device_deltas != {\"raised\": raises, \"delivered\": raises}:",
            "    elif False:"),
       Edit(MSIX, "        self.delivered[v] += 1\n        return True",
            "        self.delivered[v] += 2\n        return True")),
    _m("weakened-raise-count-ignored", "weakened",
       "raise_counted_once_on_cpu no longer compares the counts (only irq, device, strays), "
       "with raises that signal the neighbouring vector",
       {"counts_match_raises"},
       Edit(CHECKS, "    if deltas != ({str(cpu): raises} if raises else {}):",
            "    if False:"),
       Edit(MSIX, "        fd = self.eventfds[v]\n        if (fd is not None and self.enabled",
            "        fd = self.eventfds[v ^ 1]\n        if (fd is not None and self.enabled")),
)

RESET_STEP = f"{HOST}/scenarios/reset_step.py"

# The function reset (the default scenario's reset step): only its checks can see these.
LIFECYCLE_MUTANTS = (
    _m("dev-reset-keeps-pending", "bug",
       "a function reset leaves the PBA as it was: a raise held before the reset survives it",
       {"held_raise_discarded_by_reset"},
       Edit(MSIX, "        self.pending[:] = bytes(len(self.pending))\n"
                  "        self.masked[:] = bytes(self.n)\n",
            "        self.masked[:] = bytes(self.n)\n")),
    _m("dev-reset-leaves-vectors-unmasked", "bug",
       "a function reset leaves MSI-X enabled and unmasked at the device, so it sends a raise "
       "inside the reset window (bus master off: QEMU drops the message) instead of holding it",
       {"raise_during_reset_delivered_once"},
       Edit(MSIX, "        self.enabled = self.function_mask = False\n        self.low_power = False\n"
                  "        self.reset_table()\n\n    def reset_counters",
            "        self.function_mask = False\n        self.low_power = False\n"
            "        self.reset_table()\n\n    def reset_counters")),
    _m("kmod-remove-skips-a-group", "bug",
       "the driver's remove path skips the newest group: its vectors stay requested",
       {"no_interrupts_left", "kernel_irqs_freed", "msi_irqs_gone", "kernel_splat"},
       Edit(f"{KMOD}/msixlab_group.c",
            "\t\tif (grp == &ml->grp0)\n\t\t\tcontinue;\n\t\tmsixlab_grp_release(ml, grp);",
            "\t\tif (grp == &ml->grp0 || grp == list_last_entry(&ml->groups,\n"
            "\t\t\t\t\t\t\t      struct msixlab_grp, node))\n"
            "\t\t\tcontinue;\n\t\tmsixlab_grp_release(ml, grp);"),
       splat=r"WARNING: .*(remove_proc_entry|msi)",
       command=("run", "--scenario", "remove-rescan")),
    _m("reset-step-table-unjudged", "unjudged",
       "the reset step stops comparing QEMU's restored table entries with those before it",
       {"reset_entry_restored"},
       Edit(RESET_STEP, "        sc._add(entry_restored(before, after, index,\n"
                        "                               transition.offlines_cpus and "
                        "_off_boot_cpu(before.get(index))))\n", "")),
)

PM_C = f"{KMOD}/msixlab_pm.c"
SUSPEND_SCENARIO = f"{HOST}/scenarios/suspend.py"
SUSPEND = ("run", "--scenario", "suspend")
# Power management (issue 18): only the suspend scenario takes the NIC through D3hot and
# the guest through system sleep, so only its checks can see these.
SUSPEND_MUTANTS = (
    _m("dev-d3hot-exit-keeps-state", "bug",
       "leaving D3hot does not reset the function although No_Soft_Reset is clear: the "
       "raises held in D3hot survive and are delivered when the kernel restores MSI-X",
       {"function_reset_reached_device", "held_raise_discarded_by_reset"},
       Edit(NIC, "        if before == PCI_D3HOT and after == PCI_D0:\n"
                 "            self.reset(source=\"d3hot\")\n", ""),
       command=SUSPEND),
    _m("dev-d3hot-delivers", "bug",
       "the function keeps sending messages in D3hot (it never holds a raise there)",
       {"raise_held_in_d3hot"},
       Edit(MSIX, "        self.low_power = low\n", "        self.low_power = False\n"),
       command=SUSPEND),
    _m("kmod-runtime-resume-skips-enable", "bug",
       "the driver's runtime resume counts itself but never enables its vectors again",
       {"driver_pm_callbacks_ran", "raise_counted_once_on_cpu",
        "raise_during_reset_delivered_once", "counts_match_raises"},
       Edit(PM_C, "\tmsixlab_quiesce(ml, false, &ml->pm.runtime_resumes);",
            "\tml->pm.runtime_resumes++;"),
       command=SUSPEND),
    _m("kmod-system-resume-skips-enable", "bug",
       "the driver's system resume counts itself but never enables its vectors again",
       {"driver_pm_callbacks_ran", "raise_counted_once_on_cpu",
        "raise_during_reset_delivered_once", "counts_match_raises"},
       Edit(PM_C, "\tmsixlab_quiesce(ml, false, &ml->pm.system_resumes);",
            "\tml->pm.system_resumes++;"),
       command=SUSPEND),
    _m("kmod-no-runtime-pm", "bug",
       "the driver keeps the usage count the PCI core took for its probe: it never "
       "runtime-suspends, whatever power/control says",
       {"low_power_state_reached"},
       Edit(PM_C, "\tpm_runtime_put_noidle(dev);\n", ""),
       command=SUSPEND),
    _m("kmod-system-suspend-fails", "bug",
       "the driver's system suspend callback fails (EIO): the kernel aborts every system "
       "sleep",
       {"resumed_from_low_power", "low_power_state_reached"},
       Edit(PM_C, "\tmsixlab_quiesce(ml, true, &ml->pm.system_suspends);\n\treturn 0;",
            "\tmsixlab_quiesce(ml, true, &ml->pm.system_suspends);\n"
            "\tmsixlab_quiesce(ml, false, &ml->pm.system_resumes);\n\treturn -EIO;"),
       command=SUSPEND),
    _m("reset-step-s3-table-unjudged", "unjudged",
       "after a transition that takes CPUs down (S3) the restore checks stop comparing "
       "QEMU's table entries",
       {"reset_entry_restored"},
       Edit(RESET_STEP, "        sc._add(entry_restored(before, after, index,\n",
            "        sc._add([] if transition.offlines_cpus else entry_restored(before, after, "
            "index,\n"),
       command=SUSPEND),
    _m("suspend-held-unjudged", "unjudged",
       "the suspend scenario stops judging the raises it made while the NIC was in D3hot",
       {"raise_held_in_d3hot"},
       Edit(SUSPEND_SCENARIO, "        self._add(held_in_d3hot(before, after, live))\n", ""),
       command=SUSPEND),
)

# Bugs only the soak's churn reaches, judged by a soak (``SOAK``).
SOAK_MUTANTS = (
    _m("kmod-any-index-refused", "bug",
       "the driver refuses every any-index group of min 5 or more with ENOSPC, table free or not",
       {"enospc_only_when_full"},
       Edit(GROUP, "\tfor (i = 0; i < grp->max; i++) {\n"
                   "\t\tunsigned int index = any ? MSI_ANY_INDEX : grp->start + i;\n",
            "\tif (any && grp->min > 4)\n\t\treturn -ENOSPC;\n"
            "\tfor (i = 0; i < grp->max; i++) {\n"
            "\t\tunsigned int index = any ? MSI_ANY_INDEX : grp->start + i;\n"),
       command=SOAK),
    _m("dev-live-raise-held", "bug",
       "the device holds every third control raise of a vector pending although it has the "
       "vector's eventfd and nothing masks it, and never delivers it",
       {"held_raise_delivered"},
       Edit(MSIX, "        if (fd is not None and self.enabled and not self.function_mask\n"
                  "                and not self.masked[v] and not self.low_power):\n",
            "        if (fd is not None and self.enabled and not self.function_mask\n"
            "                and not self.masked[v] and not self.low_power\n"
            "                and (self.raised[v] % 3 or source != \"control\")):\n"),
       command=SOAK),
)

# Bugs only interrupt remapping shows, judged by the main job with --iommu.
IOMMU_MUTANTS = (
    _m("lab-irte-last-unread", "unjudged",
       "under --iommu the snapshot resolves every message's handle through its IRTE but the "
       "highest one's, whose destination went unjudged (the effective CPU stood in for it)",
       {"destination_matches_affinity"},
       Edit(f"{HOST}/lab/lab.py",
            "        irtes = {handle: qemu_view.read_irte(self, irta, handle) for handle in handles}",
            "        irtes = {handle: qemu_view.read_irte(self, irta, handle)\n"
            "                 for handle in sorted(handles)[:-1]}"),
       command=("run", "--iommu")),
)

VFIO_COMMANDS = "agent/guest/vfio_commands.py"
VFIO_CLIENT = "agent/guest/vfio.py"
VFIO_SCENARIO = f"{HOST}/scenarios/vfio_pci.py"
VFIO = ("run", "--scenario", "vfio-pci")
VFIO_MUTANTS = (
    _m("vfio-client-wrong-eventfd", "bug",
       "the guest VFIO client hands vfio-pci vector 0's eventfd for every later vector",
       {"device_raise_fires_own_eventfd", "kernel_trigger_none_fires_eventfd"},
       Edit(VFIO_COMMANDS, '        fd = self.eventfds.new(index) if action == "new" else -1\n',
            '        fd = self.eventfds.new(index) if action == "new" else -1\n'
            '        fd = self.eventfds.by_index.get(0, fd) if fd >= 0 else fd\n'),
       command=VFIO),
    _m("vfio-client-swap-reads-old", "bug",
       "after an eventfd swap the guest client keeps reading the old eventfd",
       {"held_raise_delivered_once_on_refill", "device_raise_fires_own_eventfd",
        "kernel_trigger_none_fires_eventfd"},
       Edit(VFIO_CLIENT, "        self.by_index[index] = fd\n        return fd",
            "        self.by_index.setdefault(index, fd)\n        return fd"),
       command=VFIO),
    _m("vfio-client-bool-sets-all", "bug",
       "the guest client's DATA_BOOL sets every bit, whatever it was asked",
       {"kernel_trigger_bool_fires_eventfd"},
       Edit(VFIO_CLIENT, "bytes(int(bool(b)) for b in bools)", "bytes(1 for b in bools)"),
       command=VFIO),
    _m("dev-disable-keeps-eventfds", "bug",
       "the device keeps QEMU's eventfds when QEMU turns MSI-X off (SET_IRQS count 0)",
       {"nothing_left_after_disable", "device_eventfds_match"},
       Edit(MSIX, '        self.requests["disable_all"] += 1\n        self.deassign_all()\n',
            '        self.requests["disable_all"] += 1\n'),
       command=VFIO),
    _m("dev-raise-lost-after-retrigger", "bug",
       "the device loses the first raise of a vector after QEMU gave it an eventfd again "
       "(vfio-pci's refill and swap make QEMU re-send the vector's eventfd)",
       {"device_raise_fires_own_eventfd"},
       Edit(MSIX, "            self.eventfds[start + i] = fd\n",
            "            self.eventfds[start + i] = fd\n"
            "            self.lose_next = start + i if old is not None else None\n"),
       Edit(MSIX, "        self.raised[v] += 1\n",
            "        self.raised[v] += 1\n"
            "        if getattr(self, 'lose_next', None) == v:\n"
            "            self.lose_next = None\n"
            "            return Outcome.DROPPED\n"),
       command=VFIO),
    _m("chk-vfio-handlers-unjudged", "unjudged",
       "the vfio-pci scenario stops comparing /proc/interrupts' vfio-msix handlers",
       {"vfio_handlers_match_triggers"},
       Edit(VFIO_SCENARIO, "                   vc.handlers_match_triggers(views[\"view\"], "
            "self.triggered),\n", ""),
       command=VFIO),
    _m("chk-vfio-nothing-left-unjudged", "unjudged",
       "the vfio-pci scenario stops checking what is left after MSI-X is disabled",
       {"nothing_left_after_disable"},
       Edit(VFIO_SCENARIO, '        self._add(vc.nothing_left(views["view"], views["table"], '
            'views["state"]))\n', ""),
       command=VFIO),
)

CONFIG = f"{DEVICE}/config_space.py"
# Cases of the kernel's VFIO selftests a mutant may expect: no scenario declares them (each
# binary's own listing decides its cases), but the vfio-selftests run names each failed one
# as a check result, ``fixture[.variant].test``.
SELFTEST_CASES = frozenset({"vfio_pci_device_test.config_space_read_write"})
KSELFTEST = f"{HOST}/scenarios/kselftest.py"
SELFTEST_SCENARIO = f"{HOST}/scenarios/vfio_selftests.py"
SELFTESTS = ("run", "--scenario", "vfio-selftests")
SELFTEST_MUTANTS = (
    _m("dev-bus-master-sticky", "bug",
       "the device's Bus Master Enable bit, once set, ignores a config write that clears it "
       "(only the kernel's own selftest reads the bit back after clearing it)",
       set(SELFTEST_CASES),
       Edit(CONFIG, "        result = ((old & ~rw) | (new & rw)) & ~(new & rw1c)\n",
            "        result = ((old & ~rw) | (new & rw)) & ~(new & rw1c)\n"
            "        if offset == PCI_COMMAND:\n"
            "            result |= old & PCI_COMMAND_MASTER\n"),
       command=SELFTESTS),
    _m("chk-selftest-not-ok-read-as-ok", "weakened",
       "the kselftest reader takes every result line for ok, and the device's Bus Master "
       "Enable bit is sticky: the binary's exit status must still give the failure away",
       {"selftest_cases_reported"},
       Edit(KSELFTEST, '                        result.group(1) == "ok", ',
            "                        True, "),
       Edit(CONFIG, "        result = ((old & ~rw) | (new & rw)) & ~(new & rw1c)\n",
            "        result = ((old & ~rw) | (new & rw)) & ~(new & rw1c)\n"
            "        if offset == PCI_COMMAND:\n"
            "            result |= old & PCI_COMMAND_MASTER\n"),
       command=SELFTESTS),
    _m("chk-selftest-left-clean-unjudged", "unjudged",
       "the vfio-selftests scenario stops checking what vfio-pci left after each binary",
       {"device_left_clean"},
       Edit(SELFTEST_SCENARIO, "        self._left_clean()\n", ""),
       command=SELFTESTS),
)

# Issue 21 items 1-3: bugs that only a run telling NICs apart, holding several raises
# pending at once, raising the table's last index, or judging the device's own error and
# bookkeeping counters can see.
BLIND_SPOT_MUTANTS = (
    _m("agent-select-nic-keeps-driver", "bug",
       "the guest agent, selecting a NIC it opened before, keeps the current NIC's driver",
       {"nic_reads_its_own_driver"},
       Edit(AGENT, "            chosen, asked = self.others.pop(bdf)",
            "            chosen, asked = self.driver, self.asked"),
       command=("run", "--nics", "2")),
    _m("dev-pba-set-overwrites-byte", "bug",
       "setting a PBA bit overwrites its byte: a raise held in the same byte is lost",
       {"pending_bits_match_device", "raise_held_while_function_masked",
        "pba_matches_pending", "device_registers_match", "counts_match_raises",
        "raise_counted_once_on_cpu"},
       Edit(MSIX, "        self.pending[v >> 3] |= 1 << (v & 7)\n",
            "        self.pending[v >> 3] = 1 << (v & 7)\n")),
    _m("dev-last-index-out-of-range", "bug",
       "a raise of the table's last index is refused as out of range (counted, dropped)",
       {"device_errors_zero", "counts_match_raises", "device_counters_match",
        "raise_counted_once_on_cpu", "doorbell_raise_counted_once_on_cpu",
        "raise_held_while_function_masked", "pending_bits_match_device"},
       Edit(MSIX, "        if not 0 <= v < self.n:\n            self.errors",
            "        if not 0 <= v < self.n - 1:\n            self.errors")),
    _m("dev-pending-count-bytes", "bug",
       "PENDING_COUNT counts the PBA's non-zero bytes, not its bits",
       {"device_registers_match"},
       Edit(REGS, 'REG_PENDING_COUNT: lambda: sum(bin(b).count("1") for b in msix.pending),',
            "REG_PENDING_COUNT: lambda: sum(1 for b in msix.pending if b),")),
    _m("dev-last-vector-stale", "bug",
       "LAST_VECTOR is never updated by a doorbell raise",
       {"device_registers_match"},
       Edit(REGS, "        self.last_vector = vector\n", "")),
    _m("dev-doorbell-error-at-last-index", "bug",
       "the ICS doorbell counts a register error for the table's last index (the raise "
       "still goes through)",
       {"device_errors_zero"},
       Edit(REGS, "        if vector >= self.msix.n:\n            self.errors += 1\n"
                  "        else:\n            self.irq_total += 1",
            "        if vector >= self.msix.n - 1:\n            self.errors += 1\n"
            "        if vector < self.msix.n:\n            self.irq_total += 1")),
    _m("dev-flush-counted-as-write-failure", "bug",
       "a held raise delivered at a flush is also counted as a failed eventfd write",
       {"device_errors_zero"},
       Edit(MSIX, '                    self._emit("deliver_pending", v)\n',
            '                    self._emit("deliver_pending", v)\n'
            '                    self.errors["eventfd_write_failed"] += 1\n')),
    _m("scenario-bookkeeping-unjudged", "unjudged",
       "the accounting after every step no longer judges the device's error counters and "
       "registers",
       {"device_errors_zero", "device_registers_match"},
       Edit(SCENARIO, "        self._add(accounting.device_masks_match_qemu(snap, state))\n"
                      "        self._add(accounting.device_bookkeeping_match(self.ledger, state))\n",
            "        self._add(accounting.device_masks_match_qemu(snap, state))\n")),
)

MUTANTS: tuple[Mutant, ...] = (DEVICE_MUTANTS + KMOD_MUTANTS + HOST_MUTANTS + BLIND_SPOT_MUTANTS
                               + LIFECYCLE_MUTANTS + SOAK_MUTANTS + IOMMU_MUTANTS
                               + VFIO_MUTANTS + SELFTEST_MUTANTS + SUSPEND_MUTANTS)

# Considered and left out: no run of the main job can tell them from the original.
EQUIVALENT = {
    "dev-signal-twice":
        "writing the eventfd twice per delivery: an eventfd is a counter that QEMU drains "
        "with one read, so back-to-back writes coalesce into one interrupt",
    "dev-vector-mask-ignored":
        "ignoring the per-vector mask bits: QEMU 11.1.3 never sends SET_IRQS MASK/UNMASK "
        "for MSI-X (docs/device.md), so the bits never get set",
    "dev-maskall-clear-loses-pending":
        "the device not flushing its pending raises when MASKALL clears: QEMU 11.1.3 "
        "re-sends SET_IRQS ACTION_TRIGGER for every vector in use right after the config "
        "write that clears MASKALL (its unmask vector notifiers), and the eventfd "
        "assignment delivers what is pending (dev-eventfd-does-not-flush covers that "
        "path); seen in the device event log, the mutant passed every check",
    "dev-reset-keeps-msix":
        "DEVICE_RESET leaving MSI-X state alone: QEMU resets the device before the guest "
        "enables MSI-X, when nothing is pending or enabled yet",
    "dev-swap-signals-old-fd":
        "a held or in-flight raise signalled to the eventfd a per-vector SET_IRQS TRIGGER "
        "replaced: under TCG QEMU never swaps a live vector's eventfd (KVM's mask and "
        "unmask do), so no run can tell; tests/test_device_eventfd_swap.py fails on it",
    "dev-d3hot-exit-leaves-msix-on":
        "leaving D3hot resets the function but leaves MSI-X enabled, so the raise inside "
        "the reset window is sent at once instead of held for the restore: QEMU still "
        "forwards it (the kernel does not clear Bus Master for a PM transition, as it does "
        "around an FLR), and the driver's vectors are disabled across the suspend, so the "
        "kernel holds the message and replays it once at enable_irq(): counts and device "
        "counters are those of a correct device (run, it passed all 429 results)",
    "kmod-handler-irq-none":
        "the handler returning IRQ_NONE: the kernel's spurious-IRQ detector needs 99,900 "
        "unhandled of 100,000 interrupts, far more than a run raises",
}


def by_name() -> dict[str, Mutant]:
    """The catalogue by mutant name."""
    return {m.name: m for m in MUTANTS}

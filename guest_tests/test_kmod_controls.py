"""The driver's controls the verdict needs, against the real driver in the real guest.

Fault injection (``crash``), the MSI-X Function Mask (``function_mask``), run-time
affinity changes (``set_affinity``), the kernel's MSI IRQ list (``msi_irqs``), the
dynamic-allocation report (``dyn_alloc``) and the routing read-out's ``requested``.
One guest serves the module; the ``clean`` fixture frees what a test allocated and
leaves the Function Mask clear, so no test depends on another.  The panic test boots a
guest of its own, since the panic ends it.
"""

from __future__ import annotations

import os
import re

import pytest

from agent.host.errors import GuestAgentError
from agent.host.lab.console import find_splat
from agent.host.lab.lab import Lab
from agent.host.rundirs import RunDirs
from images.recipe import DEFAULT_FLAVOR
from msixlab_common.deadline import wait_until

MASKALL = 0x4000
TABLE = 64
FLAVOR = os.environ.get("KERNEL_FLAVOR", DEFAULT_FLAVOR)   # KERNEL_FLAVOR=lts for 6.12


@pytest.fixture(scope="module")
def lab(image, tmp_path_factory):
    with RunDirs.create(tmp_path_factory.mktemp("kmod-controls")) as dirs, \
            Lab(image, FLAVOR, dirs, vectors=TABLE, end_on_splat=False) as lab:
        yield lab           # this module provokes kernel reports on purpose and goes on


@pytest.fixture
def clean(lab):
    yield lab
    lab.agent("function_mask", masked=False)
    for group in lab.agent("list_groups"):
        if group["group"] != 0:
            lab.agent("free_group", group=group["group"])


def refused(lab, cmd, **args) -> dict:
    with pytest.raises(GuestAgentError) as info:
        lab.agent(cmd, **args)
    return info.value.error


def console(lab) -> str:
    return lab.machine.spec.console_log.read_text(errors="replace")


def splats(text: str) -> list[tuple[str, str]]:
    """(kind, line) of every console line the host's console watcher takes for a splat."""
    return [(kind, line) for line in text.splitlines() if (kind := find_splat(line))]


def device_vector(lab, index) -> dict:
    return lab.device.state()["vectors"][index]


# --- hello / info ---------------------------------------------------------------------

def test_hello_and_info_report_dynamic_allocation(clean):
    assert clean.hello["dyn_alloc"] is True
    info = clean.agent("info")
    assert info["dyn_alloc"] is True and info["uapi_version"] == 3
    assert info["fault_injection"] is True          # the rig loads it with fault_injection=1
    assert info["bdf"] == clean.hello["device"]["bdf"]


# --- the read-out ---------------------------------------------------------------------

def test_routing_has_index_0_and_says_what_was_requested(clean):
    b = clean.agent("alloc_group", min=2, max=2, cpu=1)
    c = clean.agent("alloc_group", min=3, max=3, start=60)
    assert c["indices"] == [60, 61, 62]            # an explicit start, honoured exactly
    assert b["group"] != c["group"]
    routing = {v["index"]: v for v in clean.agent("routing")}
    assert sorted(routing) == sorted([0] + b["indices"] + c["indices"])
    assert routing[0]["group"] == 0 and routing[0]["affinity"]["requested"] is None
    for index in b["indices"]:
        assert routing[index]["affinity"]["requested"] == [1]
        assert routing[index]["affinity"]["effective"] == [1]
    for index in c["indices"]:
        assert routing[index]["affinity"]["requested"] is None
        assert routing[index]["affinity"]["mask"] == [0, 1]


def test_group_ids_are_never_reused_while_bound(clean):
    first = clean.agent("alloc_group", min=1, max=1)
    clean.agent("free_group", group=first["group"])
    second = clean.agent("alloc_group", min=1, max=1)
    assert second["group"] > first["group"]
    assert second["indices"] == first["indices"]   # the index is reused, the id is not


# --- msi_irqs -------------------------------------------------------------------------

def test_msi_irqs_lists_every_live_vector(clean):
    group = clean.agent("alloc_group", min=3, max=3)
    irqs = {v["irq"] for v in clean.agent("routing")}
    listed = clean.agent("msi_irqs")
    assert listed["bdf"] == clean.hello["device"]["bdf"]
    assert {e["irq"] for e in listed["irqs"]} == irqs and len(irqs) == 4
    assert {e["mode"] for e in listed["irqs"]} == {"msix"}
    clean.agent("free_group", group=group["group"])
    assert [e["irq"] for e in clean.agent("msi_irqs")["irqs"]] == \
        [v["irq"] for v in clean.agent("routing")]


# --- function mask --------------------------------------------------------------------

def test_function_mask_reads_back_in_the_control_word(clean):
    masked = clean.agent("function_mask", masked=True)
    assert masked["masked"] is True and masked["control"] & MASKALL
    assert clean.agent("info")["msix_control"] == masked["control"]
    assert "MSI-X: Enable+ Count=%d Masked+" % TABLE in clean.agent("lspci")["stdout"]
    cleared = clean.agent("function_mask", masked=False)
    assert cleared["masked"] is False and not cleared["control"] & MASKALL
    assert cleared["control"] == masked["control"] & ~MASKALL
    assert "Masked-" in clean.agent("lspci")["stdout"]


def test_raise_under_function_mask_is_held_then_delivered_once(clean):
    index = clean.agent("alloc_group", min=1, max=1)["indices"][0]
    before = device_vector(clean, index)
    clean.agent("function_mask", masked=True)
    assert refused(clean, "raise", index=index, timeout_ms=300)["code"] == "ETIMEDOUT"
    held = device_vector(clean, index)
    assert held["pending"] and held["delivered"] == before["delivered"]
    assert index in clean.agent("read_pba")["pending"]
    assert clean.agent("vector", index=index)["total"] == 0
    clean.agent("function_mask", masked=False)
    vector = wait_until(lambda: (v := clean.agent("vector", index=index))["total"] and v,
                        10, f"vector {index} to count the held interrupt")
    after = device_vector(clean, index)
    assert vector["total"] == 1 and not after["pending"]
    assert after["delivered"] - before["delivered"] == 1
    assert index not in clean.agent("read_pba")["pending"]


def test_function_mask_takes_a_bool(clean):
    error = refused(clean, "function_mask", masked=1)
    assert (error["code"], error["argument"]) == ("EINVAL", "masked")


# --- set_affinity ---------------------------------------------------------------------

def test_set_affinity_moves_the_vector(clean):
    index = clean.agent("alloc_group", min=1, max=1)["indices"][0]
    old = clean.agent("vector", index=index)["affinity"]["effective"][0]
    new = 1 - old
    moved = clean.agent("set_affinity", index=index, cpus=[new])
    assert moved["affinity"]["requested"] == [new]
    assert moved["move_pending"] == (moved["affinity"]["mask"] != [new])
    proc = clean.agent("irq_sysfs", irq=moved["irq"])["proc"]
    assert proc["smp_affinity_list"] == [new]
    # x86 without interrupt remapping applies the move in the vector's next interrupt
    clean.agent("raise", index=index, timeout_ms=5000)
    vector = clean.agent("vector", index=index)
    assert vector["affinity"] == {"requested": [new], "mask": [new], "effective": [new]}
    assert vector["msg"] == {k: vector["table"][k] for k in vector["msg"]}
    qemu = clean.qemu_table()[index]
    assert (qemu["address_lo"], qemu["data"]) == (vector["msg"]["address_lo"],
                                                  vector["msg"]["data"])
    assert (vector["msg"]["address_lo"] >> 12) & 0xFF == new   # identity APIC ids under TCG
    assert clean.agent("raise", index=index, timeout_ms=5000)["cpu"] == new


@pytest.mark.parametrize("cpus,code,source", [
    ([], "EINVAL", "request"),
    ([0, "1"], "EINVAL", "request"),
    ([True], "EINVAL", "request"),
    ([7], "ERANGE", "guest"),          # past nr_cpu_ids: the kernel refuses the write
])
def test_set_affinity_refuses_bad_cpus(clean, cpus, code, source):
    index = clean.agent("alloc_group", min=1, max=1)["indices"][0]
    error = refused(clean, "set_affinity", index=index, cpus=cpus)
    assert (error["code"], error["source"], error["argument"]) == (code, source, "cpus")


def test_set_affinity_on_a_managed_vector_is_refused_by_the_kernel(clean):
    index = clean.agent("alloc_group", min=1, max=1, cpu=1, managed=True)["indices"][0]
    error = refused(clean, "set_affinity", index=index, cpus=[0])
    assert (error["code"], error["source"]) == ("EPERM", "guest"), error
    assert clean.agent("vector", index=index)["affinity"]["requested"] == [1]


def test_set_affinity_on_a_free_index_is_enoent(clean):
    assert refused(clean, "set_affinity", index=40, cpus=[0])["code"] == "ENOENT"


# --- crash ----------------------------------------------------------------------------

def test_crash_warn_reaches_the_console_and_the_guest_keeps_answering(clean):
    result = clean.agent("crash", kind="warn")
    assert result == {"kind": "warn", "delay_ms": 0}
    line = wait_until(lambda: re.search(r"WARNING: .*msixlab_crash_warn.*", console(clean)),
                      10, "the WARNING line on the console").group(0)
    assert "[msixlab]" in line
    watched = [(kind, text) for kind, text in splats(console(clean))
               if "msixlab_crash_warn" in text]            # what the host's watcher sees
    assert watched[0][0] == "WARN" and line in watched[0][1], watched
    # then only the WARN's own register dump (RIP: 0010:msixlab_crash_warn+...)
    assert [kind for kind, _ in watched[1:]] == ["register dump"], watched
    index = clean.agent("alloc_group", min=1, max=1)["indices"][0]
    assert clean.agent("raise", index=index, timeout_ms=5000)["total"] == 1


def test_crash_oops_kills_only_the_asking_child(clean):
    result = clean.agent("crash", kind="oops")
    assert result["kind"] == "oops" and result["signal"] == 9
    report = wait_until(lambda: re.search(r"oops requested[\s\S]*end trace", console(clean)),
                        10, "the oops report on the console").group(0)
    assert "BUG: kernel NULL pointer dereference" in report
    assert re.search(r"RIP: \S+:msixlab_crash_oops\+", report)
    assert [kind for kind, _ in splats(report)][:2] == ["BUG", "oops"]
    # the oops did not hold the device lock: every ioctl still works
    index = clean.agent("alloc_group", min=1, max=1)["indices"][0]
    assert clean.agent("raise", index=index, timeout_ms=5000)["total"] == 1


@pytest.mark.parametrize("args,argument", [
    ({"kind": "boom"}, "kind"),
    ({"kind": "warn", "delay_ms": 5}, "delay_ms"),
    ({"kind": "panic", "delay_ms": 10001}, "delay_ms"),
])
def test_crash_bad_arguments_are_refused(clean, args, argument):
    error = refused(clean, "crash", **args)
    assert (error["code"], error["source"], error["argument"]) == ("EINVAL", "request",
                                                                   argument)


def test_crash_needs_fault_injection(clean):
    try:
        info = clean.agent("reload_module", fault_injection=False)
        assert info["fault_injection"] is False
        for kind in ("warn", "oops", "panic"):
            error = refused(clean, "crash", kind=kind)
            assert (error["code"], error["source"]) == ("EACCES", "driver"), error
        assert clean.agent("reload_module")["fault_injection"] is False   # kept as loaded
    finally:
        assert clean.agent("reload_module", fault_injection=True)["fault_injection"] is True


def irq_views(lab) -> tuple:
    """The driver's indices and IRQs, msi_irqs, the device's /proc/interrupts rows and
    the guest's reading of the first MSI-X table entries, as far as they are in effect (a
    masked entry's message is not: 7.3.4 leaves a never-started vector's early-activation
    message behind the mask when it frees it)."""
    entries = [lab.agent("read_entry", index=i) for i in range(8)]
    return (lab.agent("info")["allocated"], lab.agent("msi_irqs")["irqs"],
            lab.agent("interrupts")["rows"],
            ["masked" if e["ctrl"] & 1 else e for e in entries])   # as irq_fault.in_effect


@pytest.mark.parametrize("nth, start", [(1, None), (2, None), (3, 5)])
def test_a_request_irq_failure_unwinds_the_whole_group_and_leaks_nothing(clean, nth, start):
    before = irq_views(clean)
    assert clean.agent("fail_request_irq", nth=nth) == {"nth": nth}
    where = {} if start is None else {"start": start}
    error = refused(clean, "alloc_group", min=3, max=3, **where)
    assert (error["code"], error["source"]) == ("ENOMEM", "driver"), error
    assert irq_views(clean) == before                    # all or nothing
    group = clean.agent("alloc_group", min=3, max=3, **where)  # one-shot: this one works
    assert group["indices"] == ([1, 2, 3] if start is None else [5, 6, 7])
    clean.agent("free_group", group=group["group"])
    assert irq_views(clean) == before                    # nothing leaked


def test_a_request_irq_fault_past_min_is_a_partial_group_and_zero_disarms(clean):
    clean.agent("fail_request_irq", nth=3)
    group = clean.agent("alloc_group", min=1, max=4)
    assert group["count"] == 2 and group["indices"] == [1, 2]   # stopped at the 3rd
    clean.agent("free_group", group=group["group"])
    clean.agent("fail_request_irq", nth=1)
    clean.agent("fail_request_irq", nth=0)
    clean.agent("free_group", group=clean.agent("alloc_group", min=1, max=1)["group"])


def test_fail_request_irq_needs_fault_injection(clean):
    try:
        clean.agent("reload_module", fault_injection=False)
        error = refused(clean, "fail_request_irq", nth=1)
        assert (error["code"], error["source"]) == ("EACCES", "driver"), error
    finally:
        assert clean.agent("reload_module", fault_injection=True)["fault_injection"] is True


def test_crash_panic_replies_then_panics(image, tmp_path):
    with RunDirs.create(tmp_path) as dirs, Lab(image, FLAVOR, dirs) as lab:
        assert lab.agent("crash", kind="panic", delay_ms=200) == {"kind": "panic",
                                                                  "delay_ms": 200}
        wait_until(lambda: not lab.machine.is_running(), 60, "QEMU to stop after the panic")
        text = console(lab)
        assert "Kernel panic - not syncing: msixlab0: panic requested" in text
        assert "msixlab_crash_work" in text
        assert [kind for kind, _ in splats(text)] == ["panic"]


# --- reload_module with a bad path ------------------------------------------------------

def test_reload_module_of_a_missing_file_unloads_nothing(clean):
    group = clean.agent("alloc_group", min=2, max=2)
    error = refused(clean, "reload_module", path="/nonexistent/msixlab.ko")
    assert (error["code"], error["argument"]) == ("ENOENT", "path"), error
    assert [g["group"] for g in clean.agent("list_groups")] == [0, group["group"]]


def test_reload_module_that_insmod_refuses_loads_the_booted_one_again(clean):
    """An ELF file that is no module: rmmod runs, insmod refuses it; the booted module
    (msixlab.kmod=) goes back in with the same fault injection, and the agent serves it."""
    error = refused(clean, "reload_module", path="/usr/bin/python3")
    assert (error["code"], error["argument"]) == ("EIO", "path"), error
    assert "loaded again instead" in error["message"], error
    info = clean.agent("info")
    assert info["fault_injection"] is True and info["nr_groups"] == 1
    index = clean.agent("alloc_group", min=1, max=1)["indices"][0]
    assert clean.agent("raise", index=index, timeout_ms=5000)["total"] == 1


def test_totals_want_outside_the_table_names_the_argument(clean):
    error = refused(clean, "totals", want={str(TABLE): 1})
    assert (error["code"], error["source"], error["argument"]) == ("EINVAL", "request",
                                                                   "want"), error


# --- an offline CPU ----------------------------------------------------------------------

def test_offline_cpu_is_einval_and_a_managed_group_on_it_frees_clean(clean):
    """A group asked on an offline CPU is EINVAL (nothing allocated); a managed group whose
    CPU goes offline is shut down by the kernel (its entry masked) and can still be
    freed; nothing of it is left and the kernel reports nothing."""
    before = len(splats(console(clean)))
    managed = clean.agent("alloc_group", min=2, max=2, cpu=1, managed=True)
    clean.agent("cpu_online", cpu=1, online=False)
    try:
        for managed_flag in (False, True):
            error = refused(clean, "alloc_group", min=1, max=1, cpu=1, managed=managed_flag)
            assert (error["code"], error["source"]) == ("EINVAL", "driver"), error
        vector = clean.agent("vector", index=managed["indices"][0])
        assert vector["table"]["ctrl"] & 1                  # shut down: the entry is masked
        assert clean.agent("free_group", group=managed["group"])["freed"] == 2
        assert clean.agent("info")["allocated"] == [0]
    finally:
        clean.agent("cpu_online", cpu=1, online=True)
    index = clean.agent("alloc_group", min=1, max=1, cpu=1, managed=True)["indices"][0]
    assert clean.agent("raise", index=index, timeout_ms=5000)["cpu"] == 1
    assert len(splats(console(clean))) == before

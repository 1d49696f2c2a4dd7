"""Interrupt remapping (--iommu): a remappable message's destination from its IRTE.

The values are those of a real run (QEMU 11.1.3 intel-iommu, intremap=on, xAPIC mode,
Debian 7.3.4 guest): vector at index 1 had message address 0xfee003b8 (handle 29), its
IRTE named APIC ID 1, vector 0x28; the IRTA register read 0x..f (65536 entries)."""

from __future__ import annotations

import pytest

from agent.host.errors import HostError
from agent.host.lab import qemu_view
from agent.host.lab.qemu_argv import GuestSpec, Share, build_argv, kernel_cmdline
from agent.host.verdict.checks import (
    destination_matches_affinity,
    raise_counted_once_on_cpu,
    target_cpu,
)
from agent.host.verdict.routing import (
    ApicMap,
    MsiFormat,
    Verdict,
    build_snapshot,
    decode_irte,
    decode_msi,
    resolve_remapped,
)
from pathlib import Path

REMAPPED_ADDR = 4276093880            # 0xfee003b8: handle 29, remappable format
IRTE_CPU1 = {"lo": 0x00000100_00280001, "hi": 0x0000_0000_0004_0100}


class FakeMonitor:
    def __init__(self, *texts: str):
        self.texts, self.asked = list(texts), []

    def hmp(self, command: str) -> str:
        self.asked.append(command)
        return self.texts.pop(0)


def remapped_vector(index=1, effective=(1,), counts=(0, 0)):
    msg = {"address_lo": REMAPPED_ADDR, "address_hi": 0, "data": 0}
    return {"index": index, "group": 1, "irq": 40, "msg": msg, "table": {**msg, "ctrl": 0},
            "affinity": {"requested": None, "mask": [0, 1], "effective": list(effective)},
            "counts": list(counts)}


def snapshot(guest):
    return build_snapshot(guest=[guest], qemu={guest["index"]: {**guest["msg"], "ctrl": 0}})


def test_the_handle_of_a_real_remappable_message():
    decoded = decode_msi(snapshot(remapped_vector()).get(1).guest.msg)
    assert decoded.format is MsiFormat.REMAPPABLE and decoded.remap_handle == 29


def test_the_irte_names_destination_vector_and_cpu():
    decoded = decode_msi(snapshot(remapped_vector()).get(1).guest.msg)
    got = decode_irte(decoded, IRTE_CPU1, ApicMap.identity())
    assert (got.dest_apic_id, got.vector, got.cpu, got.irte_present) == (1, 0x28, 1, True)
    assert got.delivery_mode == "fixed" and str(got.dest_mode) == "physical"
    x2 = decode_irte(decoded, {"lo": 0x00000005_00280001, "hi": 0}, ApicMap.identity(),
                     x2apic=True)
    assert x2.dest_apic_id == 5
    assert decode_irte(decoded, {"lo": 0, "hi": 0}, ApicMap.identity()).irte_present is False


def test_destination_is_judged_through_the_irte():
    snap = snapshot(remapped_vector(effective=(1,)))
    unread = destination_matches_affinity(snap.get(1))
    assert unread.verdict is Verdict.FAIL and "IRTE 29, which was not read" in unread.summary
    assert target_cpu(snap.get(1)) is None            # not the effective CPU: unknown
    resolved = resolve_remapped(snap, {29: IRTE_CPU1}, ApicMap.identity())
    assert destination_matches_affinity(resolved.get(1)).verdict is Verdict.PASS
    assert target_cpu(resolved.get(1)) == 1
    elsewhere = resolve_remapped(snapshot(remapped_vector(effective=(0,))), {29: IRTE_CPU1},
                                 ApicMap.identity())
    result = destination_matches_affinity(elsewhere.get(1))
    assert result.verdict is Verdict.FAIL and "CPU 1 not in effective" in result.summary
    gone = resolve_remapped(snap, {29: {"lo": 0, "hi": 0}}, ApicMap.identity())
    result = destination_matches_affinity(gone.get(1))
    assert result.verdict is Verdict.FAIL and "not present" in result.summary


def test_a_raise_is_judged_on_the_irtes_cpu_not_the_effective_one():
    before = resolve_remapped(snapshot(remapped_vector(effective=(0,))), {29: IRTE_CPU1},
                              ApicMap.identity())
    after = resolve_remapped(snapshot(remapped_vector(effective=(0,), counts=(1, 0))),
                             {29: IRTE_CPU1}, ApicMap.identity())
    result = raise_counted_once_on_cpu(before, after, 1, 1, device=False)
    assert result.verdict is Verdict.FAIL and result.evidence["cpu"] == 1


def test_irta_and_irte_are_read_from_the_iommu_and_guest_memory():
    monitor = FakeMonitor("00000000fed900b8: 0x3f6c000f 0x00000000\r\n",
                          "000000003f6c01d0: 0x00280001 0x00000100 0x00040100 0x00000000\r\n")
    irta = qemu_view.read_irta(monitor)
    assert irta == {"base": 0x3F6C0000, "entries": 65536, "x2apic": False}
    assert qemu_view.read_irte(monitor, irta, 29) == IRTE_CPU1
    assert monitor.asked == ["xp /2wx 0xfed900b8", "xp /4wx 0x3f6c01d0"]
    with pytest.raises(HostError, match="outside the remapping table"):
        qemu_view.read_irte(monitor, irta, 65536)


def test_iommu_in_argv_and_on_the_kernel_command_line():
    spec = GuestSpec(qemu=["qemu"], kernel=Path("/k"), initramfs=Path("/i"),
                     console_log=Path("/c"), qmp_socket=Path("/q"),
                     shares=(Share("rootfs", Path("/r")),), nic_sockets=(Path("/s"),),
                     iommu=True)
    argv = build_argv(spec)
    iommu = argv.index("intel-iommu,intremap=on,caching-mode=on")
    assert iommu < argv.index("pcie-root-port,id=rp0,chassis=1,slot=1")   # before devices
    words = kernel_cmdline(spec).split()
    assert {"intel_iommu=on", "no_timer_check"} <= set(words) and len(set(words)) == len(words)
    kvm = build_argv(GuestSpec(**{**spec.__dict__, "accel": "kvm"}))
    assert "kernel-irqchip=split" in kvm[kvm.index("-machine") + 1]
    plain = build_argv(GuestSpec(**{**spec.__dict__, "iommu": False}))
    assert not any("iommu" in a for a in plain)


def test_a_kernel_without_dynamic_allocation_is_a_named_could_not_judge():
    from agent.host.lab.lab import check_hello
    from agent.host.verdict.outcome import CouldNotJudge, Outcome
    device = {"bdf": "0000:01:00.0", "dyn_alloc": True}
    check_hello({"kernel": "7.3", "device": device, "dyn_alloc": True})
    with pytest.raises(CouldNotJudge) as err:
        check_hello({"kernel": "7.3", "device": {**device, "dyn_alloc": False},
                     "dyn_alloc": False})
    assert err.value.outcome is Outcome.KERNEL_UNSUPPORTED and err.value.exit_code == 125
    with pytest.raises(CouldNotJudge) as err:
        check_hello({"kernel": "7.3", "device": None, "device_error": "no /dev/msixlab0"})
    assert err.value.outcome is Outcome.PROCESS_FAILED

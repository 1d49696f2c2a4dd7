"""Unit tests for agent.host.verdict.routing: MSI decoding, APIC map, views, records."""

from dataclasses import replace

import pytest

from agent.host.verdict.routing import (
    ApicMap,
    CheckResult,
    DestMode,
    MsiFormat,
    MsiMessage,
    RoutingViewError,
    Trigger,
    Verdict,
    build_record,
    build_snapshot,
    decode_for_cpu,
    decode_msi,
    pba_pending_indices,
    record_from_dict,
)


def msi_addr(apic: int, logical: bool = False, hint: bool = False) -> int:
    return (0xFEE00000 | (apic & 0xFF) << 12 | ((apic >> 8) & 0x7F) << 5
            | (hint << 3) | (logical << 2))


def guest_entry(index, apic=0, vector=0x21, irq=40, group=0, effective=(0,), counts=(0, 0)):
    msg = {"address_lo": msi_addr(apic), "address_hi": 0, "data": vector}
    return {"group": group, "index": index, "irq": irq, "msg": msg,
            "table": {**msg, "ctrl": 0},
            "affinity": {"requested": None, "mask": [0, 1], "effective": list(effective)},
            "counts": list(counts)}


def device_entry(index, eventfd=True, raised=0, delivered=0, pending=False):
    return {"index": index, "eventfd": eventfd, "raised": raised,
            "delivered": delivered, "pending": pending}


# --- decoding ------------------------------------------------------------------

@pytest.mark.parametrize("apic", [0, 1, 0x7F, 0xFF, 0x100, 0x1234, 0x7FFF])
def test_decode_compat_destination_with_extended_dest_id(apic):
    decoded = decode_msi(MsiMessage(msi_addr(apic), 0, 0x0031))
    assert decoded.format is MsiFormat.COMPAT
    assert decoded.dest_apic_id == apic
    assert decoded.vector == 0x31


def test_decode_x2apic_destination_in_address_hi():
    decoded = decode_msi(MsiMessage(0xFEE34000, 0x00001200, 0x41))
    assert decoded.dest_apic_id == 0x1234


def test_decode_modes_and_flags():
    plain = decode_msi(MsiMessage(msi_addr(3), 0, 0x0021))
    assert plain.dest_mode is DestMode.PHYSICAL
    assert plain.redirection_hint is False
    assert plain.delivery_mode == "fixed"
    assert plain.trigger is Trigger.EDGE and plain.level_assert is False

    flagged = decode_msi(MsiMessage(msi_addr(3, logical=True, hint=True), 0,
                                    0xC000 | 1 << 8 | 0xEF))
    assert flagged.dest_mode is DestMode.LOGICAL
    assert flagged.redirection_hint is True
    assert flagged.delivery_mode == "lowprio"
    assert flagged.trigger is Trigger.LEVEL and flagged.level_assert is True
    assert flagged.vector == 0xEF


@pytest.mark.parametrize("bits,name", [(2, "smi"), (4, "nmi"), (5, "init"), (7, "extint"),
                                       (3, "reserved(3)"), (6, "reserved(6)")])
def test_decode_delivery_modes(bits, name):
    assert decode_msi(MsiMessage(msi_addr(0), 0, bits << 8)).delivery_mode == name


@pytest.mark.parametrize("lo", [0, 0xFED00000, 0x12345678])
def test_decode_non_msi_address(lo):
    decoded = decode_msi(MsiMessage(lo, 0, 0x21))
    assert decoded.format is MsiFormat.NOT_MSI
    assert decoded.vector is None and decoded.dest_apic_id is None


def test_decode_remappable_handle():
    lo = 0xFEE00000 | 1 << 4 | (0x1ABC << 5) | 1 << 2  # handle bit 15 in bit 2
    decoded = decode_msi(MsiMessage(lo, 0, 0))
    assert decoded.format is MsiFormat.REMAPPABLE
    assert decoded.remap_handle == 0x1ABC | 1 << 15
    assert decoded.vector is None and decoded.dest_apic_id is None
    with_subhandle = decode_msi(MsiMessage(0xFEE00000 | 1 << 4 | 1 << 3 | 10 << 5, 0, 3))
    assert with_subhandle.remap_handle == 13


# --- APIC map --------------------------------------------------------------------

def test_apic_map_identity_and_explicit():
    assert ApicMap.identity().cpu_for(5) == 5
    apic_map = ApicMap.from_apic_ids([0, 2, 4, 6])
    assert apic_map.cpu_for(4) == 2
    assert apic_map.cpu_for(1) is None
    assert ApicMap.from_apic_ids({0: 0, 3: 9}).cpu_for(9) == 3
    assert apic_map.to_dict() == {"0": 0, "1": 2, "2": 4, "3": 6}
    assert ApicMap.identity().to_dict() is None


def test_apic_map_rejects_duplicate_apic_ids():
    with pytest.raises(ValueError, match="not unique"):
        ApicMap.from_apic_ids([0, 1, 1])


def test_decode_for_cpu_physical_only():
    apic_map = ApicMap.from_apic_ids([0, 2])
    assert decode_for_cpu(MsiMessage(msi_addr(2), 0, 0x21), apic_map).cpu == 1
    assert decode_for_cpu(MsiMessage(msi_addr(2, logical=True), 0, 0x21), apic_map).cpu is None
    assert decode_for_cpu(MsiMessage(0, 0, 0), apic_map).cpu is None


# --- records ----------------------------------------------------------------------

def test_build_record_allocated():
    record = build_record(3, guest_entry(3, apic=1, irq=44, group=2, effective=(1,)),
                          {"address_lo": msi_addr(1), "address_hi": 0, "data": 0x21,
                           "ctrl": 0}, device_entry(3, raised=4, delivered=4))
    assert (record.index, record.group, record.irq) == (3, 2, 44)
    assert record.allocated
    assert record.guest.affinity.effective == (1,)
    assert record.decoded.cpu == 1 and record.decoded.vector == 0x21
    assert record.qemu.masked is False
    assert record.device.raised == 4


def test_build_record_freed_decodes_qemu_entry():
    record = build_record(5, None, {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 1},
                          device_entry(5, eventfd=False))
    assert not record.allocated
    assert record.group is None and record.irq is None
    assert record.qemu.masked and record.qemu.cleared
    assert record.decoded.format is MsiFormat.NOT_MSI


def test_build_record_with_no_views():
    record = build_record(7)
    assert record.decoded is None and record.guest is None


def test_hex_strings_accepted():
    record = build_record(0, None, {"address_lo": "0xfee01000", "address_hi": "0",
                                    "data": "0x21", "ctrl": "0x1"})
    assert record.qemu.address_lo == 0xFEE01000 and record.qemu.ctrl == 1


@pytest.mark.parametrize("mutate,field", [
    (lambda g: g["msg"].pop("data"), "data"),
    (lambda g: g["table"].update(ctrl=True), "ctrl"),
    (lambda g: g.update(counts="3"), "counts"),
    (lambda g: g["affinity"].update(effective=[-1]), "effective"),
    (lambda g: g.pop("affinity"), "affinity"),
    (lambda g: g["affinity"].pop("requested"), "requested"),
    (lambda g: g["affinity"].update(requested=[0, "x"]), "requested"),
    (lambda g: g["affinity"].pop("mask"), "mask"),
    (lambda g: g.update(irq="x"), "irq"),
])
def test_malformed_guest_view_names_the_field(mutate, field):
    guest = guest_entry(2)
    mutate(guest)
    with pytest.raises(RoutingViewError) as info:
        build_record(2, guest)
    assert info.value.view == "guest" and info.value.index == 2 and info.value.field == field


def test_malformed_device_view():
    with pytest.raises(RoutingViewError, match="device view of vector 1: eventfd"):
        build_record(1, device={"eventfd": 1, "raised": 0, "delivered": 0, "pending": False})


def test_snapshot_union_of_indices():
    snapshot = build_snapshot(
        guest=[guest_entry(1)],
        qemu={1: {"address_lo": msi_addr(0), "address_hi": 0, "data": 0x21, "ctrl": 0},
              2: {"address_lo": 0, "address_hi": 0, "data": 0, "ctrl": 1}},
        device=[device_entry(i) for i in range(4)])
    assert [r.index for r in snapshot.records] == [0, 1, 2, 3]
    assert [r.index for r in snapshot.allocated()] == [1]
    assert snapshot.get(2).qemu.cleared
    assert snapshot.get(9) is None


def test_snapshot_rejects_duplicate_index():
    with pytest.raises(RoutingViewError, match="appears twice"):
        build_snapshot(device=[device_entry(1), device_entry(1)])


def test_with_checks_attaches_by_index():
    snapshot = build_snapshot(device=[device_entry(0), device_entry(1)])
    result = CheckResult("x", 1, Verdict.FAIL, "bad", {"k": 1})
    checked = snapshot.with_checks([result])
    assert checked.get(1).checks == (result,)
    assert checked.get(0).checks == ()
    assert checked.results() == (result,)
    assert snapshot.get(1).checks == ()  # the original is untouched
    with pytest.raises(ValueError, match="no record"):
        snapshot.with_checks([CheckResult("x", 9, Verdict.PASS)])


def test_record_round_trips_through_dict():
    apic_map = ApicMap.from_apic_ids([0, 2])
    record = build_record(1, guest_entry(1, apic=2, effective=(1,)), None,
                          device_entry(1), apic_map)
    record = replace(record, checks=(CheckResult("c", 1, Verdict.FAIL, "why", {"k": [1]}),))
    assert record_from_dict(record.to_dict(), apic_map) == record


def test_pba_pending_indices():
    assert pba_pending_indices([0b101, 1 << 63]) == {0, 2, 127}
    assert pba_pending_indices([0x1, 0x2], word_bits=32) == {0, 33}
    assert pba_pending_indices([]) == frozenset()


def test_view_errors_mean_could_not_judge():
    from agent.host.errors import EXIT_INFRA, HostError
    with pytest.raises(HostError) as info:
        build_record(0, qemu={"address_lo": 0})
    assert info.value.exit_code == EXIT_INFRA
    assert isinstance(info.value, ValueError)

"""Routing records: one MSI-X vector seen from three sides at once.

Concepts owned here:
- The x86 MSI message format (compatibility and remappable) and its decoding into
  destination APIC ID, vector, destination mode, redirection hint, delivery mode and
  trigger (arch/x86/include/asm/msi.h).
- The APIC ID -> CPU map that names the CPU a message targets (an input: the guest's
  per-CPU APIC IDs; identity by default).
- The three views of one table entry, parsed from the raw dicts of
  docs/architecture.md: the guest's (driver: cached message, live table entry,
  affinity, per-CPU counts), QEMU's (its emulated table entry) and the device's
  (eventfd assigned, raised, delivered, pending).
- The routing record that puts the views side by side with the decoding and the
  verdicts of the checks, and a snapshot: every record at one moment.

Pure data and parsing; no I/O. Judging lives in checks.py, output in results/routing_json.py and results/terminal.py.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.host.errors import HostError

# address_lo, compatibility format
MSI_ADDR_BASE = 0xFEE  # address_lo[31:20]
MSI_ADDR_BASE_SHIFT = 20
MSI_ADDR_DEST_ID_SHIFT = 12  # destid_0_7 [19:12]
MSI_ADDR_DEST_ID_MASK = 0xFF
MSI_ADDR_EXT_DEST_ID_SHIFT = 5  # virt_destid_8_14 [11:5], KVM extended dest ID
MSI_ADDR_EXT_DEST_ID_MASK = 0x7F
MSI_ADDR_REMAPPABLE = 1 << 4  # dmar_format: the remappable (IRTE handle) format
MSI_ADDR_REDIRECTION_HINT = 1 << 3
MSI_ADDR_DEST_MODE_LOGICAL = 1 << 2
# address_lo, remappable format
MSI_ADDR_IR_HANDLE_SHIFT = 5  # dmar_index_0_14 [19:5]
MSI_ADDR_IR_HANDLE_MASK = 0x7FFF
MSI_ADDR_IR_HANDLE_15 = 1 << 2  # dmar_index_15
MSI_ADDR_IR_SHV = 1 << 3  # dmar_subhandle_valid
# address_hi: destid_8_31 [31:8], x2APIC IDs above 255
MSI_ADDR_HI_DEST_ID_SHIFT = 8
# data
MSI_DATA_VECTOR_MASK = 0xFF
MSI_DATA_DELIVERY_MODE_SHIFT = 8  # [10:8]
MSI_DATA_DELIVERY_MODE_MASK = 0x7
MSI_DATA_LEVEL_ASSERT = 1 << 14  # Linux: active_low
MSI_DATA_TRIGGER_LEVEL = 1 << 15  # Linux: is_level
# MSI-X vector control
PCI_MSIX_ENTRY_CTRL_MASKBIT = 1 << 0

MSG_FIELDS = ("address_lo", "address_hi", "data")
TABLE_FIELDS = (*MSG_FIELDS, "ctrl")


class RoutingViewError(HostError, ValueError):
    """A raw view is malformed: names the view, the vector index and the field.
    A run that ends in it could not judge (HostError: exit 125)."""

    def __init__(self, view: str, index: int | None, field_name: str, message: str):
        self.view = view
        self.index = index
        self.field = field_name
        super().__init__(f"{view} view of vector {index}: {field_name}: {message}")


class MsiFormat(enum.StrEnum):
    """How an MSI message is to be read: compatibility format, remappable (an IRTE handle), or
    not an MSI at all."""
    COMPAT = "compat"  # destination and vector in the message itself
    REMAPPABLE = "remappable"  # an IRTE handle: destination and vector in the IOMMU
    NOT_MSI = "not_msi"  # address_lo is not 0xFEExxxxx (e.g. a cleared entry)


class DestMode(enum.StrEnum):
    """The destination mode bit of a compatibility-format address: physical or logical APIC ID."""
    PHYSICAL = "physical"
    LOGICAL = "logical"


class DeliveryMode(enum.IntEnum):
    """The delivery mode field of the MSI data word (fixed, lowest priority, SMI, NMI, INIT,
    ExtINT)."""
    FIXED = 0
    LOWPRIO = 1
    SMI = 2
    NMI = 4
    INIT = 5
    EXTINT = 7


class Trigger(enum.StrEnum):
    """The trigger mode bit of the MSI data word."""
    EDGE = "edge"
    LEVEL = "level"


class Verdict(enum.StrEnum):
    """A check's result on one vector: pass, fail, or skip (does not apply, or views missing)."""
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # the check does not apply, or the views needed are missing


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict on one vector (``index``), or on the whole table or a group
    (``index`` None); ``step`` is the scenario step that ran it; evidence says what was
    seen when it failed."""

    name: str
    index: int | None
    verdict: Verdict
    summary: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    step: str = ""

    @property
    def label(self) -> str:
        """``step/name[index]``, the name a failure is reported under."""
        where = "" if self.index is None else f"[{self.index}]"
        return f"{self.step + '/' if self.step else ''}{self.name}{where}"

    def to_dict(self) -> dict[str, Any]:
        """The result as routing.json holds it: name, index, verdict, summary, evidence, step."""
        return {"name": self.name, "index": self.index, "verdict": str(self.verdict),
                "summary": self.summary, "evidence": dict(self.evidence), "step": self.step}


@dataclass(frozen=True)
class MsiMessage:
    """One MSI message: the three 32-bit words (address low, address high, data)."""
    address_lo: int
    address_hi: int
    data: int

    def to_dict(self) -> dict[str, int]:
        """The words as integers, by name."""
        return {name: getattr(self, name) for name in MSG_FIELDS}

    def to_hex(self) -> dict[str, str]:
        """The words as ``0x%08x`` strings, by name."""
        return {name: f"{getattr(self, name):#010x}" for name in MSG_FIELDS}


@dataclass(frozen=True)
class TableEntry:
    """One 16-byte MSI-X table entry: message plus vector control."""

    address_lo: int
    address_hi: int
    data: int
    ctrl: int

    @property
    def message(self) -> MsiMessage:
        """The entry's message words, without vector control."""
        return MsiMessage(self.address_lo, self.address_hi, self.data)

    @property
    def masked(self) -> bool:
        """Whether the entry's vector control has the mask bit set."""
        return bool(self.ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    @property
    def cleared(self) -> bool:
        """Address and data all zero, as Linux leaves a freed entry."""
        return self.address_lo == 0 and self.address_hi == 0 and self.data == 0

    def to_dict(self) -> dict[str, int]:
        """The four words as integers, by name."""
        return {name: getattr(self, name) for name in TABLE_FIELDS}

    def to_hex(self) -> dict[str, str]:
        """The four words as ``0x%08x`` strings, by name."""
        return {name: f"{getattr(self, name):#010x}" for name in TABLE_FIELDS}


@dataclass(frozen=True)
class Affinity:
    """A vector's CPUs: what its allocation or a set_affinity asked for (``requested``,
    None when nothing was asked), the kernel's affinity mask and its effective affinity."""

    requested: tuple[int, ...] | None
    mask: tuple[int, ...]
    effective: tuple[int, ...]

    @property
    def allowed(self) -> tuple[int, ...]:
        """Where the vector may land: what was asked, else the kernel's mask."""
        return self.mask if self.requested is None else self.requested

    def to_dict(self) -> dict[str, list[int] | None]:
        """The three CPU lists (``requested`` is ``None`` when nothing was asked)."""
        return {"requested": None if self.requested is None else list(self.requested),
                "mask": list(self.mask), "effective": list(self.effective)}


@dataclass(frozen=True)
class GuestView:
    """The driver's view: cached message, live table read, affinity, per-CPU counts."""

    msg: MsiMessage
    table: TableEntry
    affinity: Affinity
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        """Interrupts the guest counted on this vector, all CPUs."""
        return sum(self.counts)

    def to_dict(self) -> dict[str, Any]:
        """The guest's view as routing.json holds it: cached message, table entry, affinity,
        per-CPU counts."""
        return {"msg": self.msg.to_dict(), "table": self.table.to_dict(),
                "affinity": self.affinity.to_dict(), "counts": list(self.counts)}


@dataclass(frozen=True)
class DeviceView:
    """The device server's view: is an eventfd assigned, and its counters."""

    eventfd: bool
    raised: int
    delivered: int
    pending: bool

    def to_dict(self) -> dict[str, Any]:
        """The device's view as routing.json holds it: eventfd assigned, raised, delivered,
        pending."""
        return {"eventfd": self.eventfd, "raised": self.raised,
                "delivered": self.delivered, "pending": self.pending}


@dataclass(frozen=True)
class DecodedMsi:
    """An x86 MSI message taken apart; fields a format does not carry are None."""

    format: MsiFormat
    dest_apic_id: int | None = None
    dest_mode: DestMode | None = None
    redirection_hint: bool | None = None
    vector: int | None = None
    delivery_mode: str | None = None
    trigger: Trigger | None = None
    level_assert: bool | None = None
    remap_handle: int | None = None
    cpu: int | None = None  # filled from the APIC map for physical destinations
    irte_present: bool | None = None  # remappable: the IRTE was read (and is present)

    def to_dict(self) -> dict[str, Any]:
        """The decoding as routing.json holds it (``irte_present`` only for remappable
        messages)."""
        extra = {} if self.format is not MsiFormat.REMAPPABLE else {
            "irte_present": self.irte_present}
        return extra | {
            "format": str(self.format), "dest_apic_id": self.dest_apic_id,
            "dest_mode": None if self.dest_mode is None else str(self.dest_mode),
            "redirection_hint": self.redirection_hint, "vector": self.vector,
            "delivery_mode": self.delivery_mode,
            "trigger": None if self.trigger is None else str(self.trigger),
            "level_assert": self.level_assert, "remap_handle": self.remap_handle,
            "cpu": self.cpu,
        }


def _delivery_mode_name(bits: int) -> str:
    try:
        return DeliveryMode(bits).name.lower()
    except ValueError:
        return f"reserved({bits})"


def decode_msi(msg: MsiMessage) -> DecodedMsi:
    """Decode an x86 MSI message; never raises, cleared entries give NOT_MSI."""
    lo, hi, data = msg.address_lo, msg.address_hi, msg.data
    if (lo >> MSI_ADDR_BASE_SHIFT) & 0xFFF != MSI_ADDR_BASE:
        return DecodedMsi(MsiFormat.NOT_MSI)
    if lo & MSI_ADDR_REMAPPABLE:
        handle = (lo >> MSI_ADDR_IR_HANDLE_SHIFT) & MSI_ADDR_IR_HANDLE_MASK
        if lo & MSI_ADDR_IR_HANDLE_15:
            handle |= 1 << 15
        if lo & MSI_ADDR_IR_SHV:
            handle += data & 0xFFFF
        return DecodedMsi(MsiFormat.REMAPPABLE, remap_handle=handle)
    dest = (lo >> MSI_ADDR_DEST_ID_SHIFT) & MSI_ADDR_DEST_ID_MASK
    dest |= ((lo >> MSI_ADDR_EXT_DEST_ID_SHIFT) & MSI_ADDR_EXT_DEST_ID_MASK) << 8
    dest |= (hi >> MSI_ADDR_HI_DEST_ID_SHIFT) << 8
    return DecodedMsi(
        MsiFormat.COMPAT,
        dest_apic_id=dest,
        dest_mode=DestMode.LOGICAL if lo & MSI_ADDR_DEST_MODE_LOGICAL else DestMode.PHYSICAL,
        redirection_hint=bool(lo & MSI_ADDR_REDIRECTION_HINT),
        vector=data & MSI_DATA_VECTOR_MASK,
        delivery_mode=_delivery_mode_name(
            (data >> MSI_DATA_DELIVERY_MODE_SHIFT) & MSI_DATA_DELIVERY_MODE_MASK),
        trigger=Trigger.LEVEL if data & MSI_DATA_TRIGGER_LEVEL else Trigger.EDGE,
        level_assert=bool(data & MSI_DATA_LEVEL_ASSERT),
    )


@dataclass(frozen=True)
class ApicMap:
    """APIC ID -> CPU number. `pairs` holds (cpu, apic_id); None means identity."""

    pairs: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def identity(cls) -> ApicMap:
        """The map that takes APIC ID n to CPU n (the default)."""
        return cls(None)

    @classmethod
    def from_apic_ids(cls, apic_ids: Mapping[int, int] | Sequence[int]) -> ApicMap:
        """From {cpu: apicid} (e.g. /proc/cpuinfo) or a list indexed by CPU number."""
        items = apic_ids.items() if isinstance(apic_ids, Mapping) else enumerate(apic_ids)
        pairs = tuple(sorted((int(cpu), int(apic)) for cpu, apic in items))
        apics = [apic for _, apic in pairs]
        if len(set(apics)) != len(apics):
            raise ValueError(f"APIC IDs not unique across CPUs: {dict(pairs)}")
        return cls(pairs)

    def cpu_for(self, apic_id: int) -> int | None:
        """The CPU whose APIC ID is ``apic_id``, or ``None`` if no CPU has it."""
        if self.pairs is None:
            return apic_id
        for cpu, apic in self.pairs:
            if apic == apic_id:
                return cpu
        return None

    def to_dict(self) -> dict[str, int] | None:
        """JSON form {"cpu": apic_id}; None for the identity map."""
        return None if self.pairs is None else {str(cpu): apic for cpu, apic in self.pairs}


def decode_for_cpu(msg: MsiMessage, apic_map: ApicMap) -> DecodedMsi:
    """Decode and name the target CPU (physical destination mode only)."""
    decoded = decode_msi(msg)
    if decoded.format is MsiFormat.COMPAT and decoded.dest_mode is DestMode.PHYSICAL:
        return replace(decoded, cpu=apic_map.cpu_for(decoded.dest_apic_id))
    return decoded


def decode_irte(decoded: DecodedMsi, irte: Mapping[str, int], apic_map: ApicMap,
                x2apic: bool = False) -> DecodedMsi:
    """A remappable message's target, from the IRTE its handle names (VT-d remapped
    format): present (bit 0), destination mode (2), trigger (4), delivery mode (7:5),
    vector (23:16), destination ID (63:32; xAPIC mode: bits 47:40).  A non-present
    entry names no destination."""
    lo = irte["lo"]
    if not lo & 1:
        return replace(decoded, irte_present=False)
    dest = (lo >> 32) & 0xFFFFFFFF
    if not x2apic:
        dest = (dest >> 8) & 0xFF
    mode = DestMode.LOGICAL if lo & (1 << 2) else DestMode.PHYSICAL
    cpu = apic_map.cpu_for(dest) if mode is DestMode.PHYSICAL else None
    return replace(decoded, dest_apic_id=dest, dest_mode=mode, vector=(lo >> 16) & 0xFF,
                   delivery_mode=_delivery_mode_name((lo >> 5) & 0x7),
                   trigger=Trigger.LEVEL if lo & (1 << 4) else Trigger.EDGE, cpu=cpu,
                   irte_present=True)


def resolve_remapped(snapshot: "Snapshot", irtes: Mapping[int, Mapping[str, int]],
                     apic_map: ApicMap, x2apic: bool = False) -> "Snapshot":
    """The snapshot with every remappable message's destination taken from its IRTE
    (``irtes``: handle -> {"lo", "hi"}); records whose handle was not read keep none."""
    records = []
    for record in snapshot.records:
        decoded = record.decoded
        if (decoded is not None and decoded.format is MsiFormat.REMAPPABLE
                and decoded.remap_handle in irtes):
            decoded = decode_irte(decoded, irtes[decoded.remap_handle], apic_map, x2apic)
            record = replace(record, decoded=decoded)
        records.append(record)
    return Snapshot(tuple(records))


# --- parsing the raw views -------------------------------------------------------------

def _int(raw: Mapping[str, Any], key: str, view: str, index: int | None) -> int:
    if key not in raw:
        raise RoutingViewError(view, index, key, "missing")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RoutingViewError(view, index, key, f"not an integer: {value!r}")
    try:
        number = value if isinstance(value, int) else int(value, 0)
    except ValueError as err:
        raise RoutingViewError(view, index, key, f"not an integer: {value!r}") from err
    if number < 0:
        raise RoutingViewError(view, index, key, f"negative: {number}")
    return number


def _ints(raw: Mapping[str, Any], key: str, view: str, index: int | None) -> tuple[int, ...]:
    values = raw.get(key)
    if not isinstance(values, (list, tuple)):
        raise RoutingViewError(view, index, key, f"not a list: {values!r}")
    return tuple(_int({key: v}, key, view, index) for v in values)


def _optional_ints(raw: Mapping[str, Any], key: str, view: str,
                   index: int | None) -> tuple[int, ...] | None:
    if key not in raw:
        raise RoutingViewError(view, index, key, "missing")
    return None if raw[key] is None else _ints(raw, key, view, index)


def _sub(raw: Mapping[str, Any], key: str, view: str, index: int | None) -> Mapping:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        raise RoutingViewError(view, index, key, f"not an object: {value!r}")
    return value


def table_entry_from_dict(raw: Mapping[str, Any], view: str = "qemu",
                          index: int | None = None) -> TableEntry:
    """A ``TableEntry`` from the raw dict of ``view`` (``qemu`` or ``guest``) for vector
    ``index``; a missing, non-integer or negative word raises ``RoutingViewError`` naming the
    view, the index and the field."""
    return TableEntry(*(_int(raw, name, view, index) for name in TABLE_FIELDS))


def message_from_dict(raw: Mapping[str, Any], view: str = "guest",
                      index: int | None = None) -> MsiMessage:
    """An ``MsiMessage`` from the raw dict of ``view`` for vector ``index``; a missing,
    non-integer or negative word raises ``RoutingViewError`` naming the view, index and
    field."""
    return MsiMessage(*(_int(raw, name, view, index) for name in MSG_FIELDS))


def guest_view_from_dict(raw: Mapping[str, Any], index: int | None = None) -> GuestView:
    """One element of the guest agent's `routing` list (group/index/irq read elsewhere)."""
    affinity = _sub(raw, "affinity", "guest", index)
    return GuestView(
        msg=message_from_dict(_sub(raw, "msg", "guest", index), "guest", index),
        table=table_entry_from_dict(_sub(raw, "table", "guest", index), "guest", index),
        affinity=Affinity(_optional_ints(affinity, "requested", "guest", index),
                          _ints(affinity, "mask", "guest", index),
                          _ints(affinity, "effective", "guest", index)),
        counts=_ints(raw, "counts", "guest", index),
    )


def device_view_from_dict(raw: Mapping[str, Any], index: int | None = None) -> DeviceView:
    """One element of the device server's `state.vectors`."""
    for key in ("eventfd", "pending"):
        if not isinstance(raw.get(key), bool):
            raise RoutingViewError("device", index, key, f"not a bool: {raw.get(key)!r}")
    return DeviceView(eventfd=raw["eventfd"], raised=_int(raw, "raised", "device", index),
                      delivered=_int(raw, "delivered", "device", index),
                      pending=raw["pending"])


# --- records and snapshots ---------------------------------------------------------------

@dataclass(frozen=True)
class RoutingRecord:
    """One vector: its three views, the decoded message and the checks' verdicts.

    A freed or never-allocated index has no guest view (and no group or irq).
    `decoded` comes from the guest's cached message, else from QEMU's table entry.
    """

    index: int
    group: int | None
    irq: int | None
    guest: GuestView | None
    qemu: TableEntry | None
    device: DeviceView | None
    decoded: DecodedMsi | None
    checks: tuple[CheckResult, ...] = ()

    @property
    def allocated(self) -> bool:
        """Whether the guest has this vector allocated (it has a guest view)."""
        return self.guest is not None

    def to_dict(self) -> dict[str, Any]:
        """The record as routing.json holds it: index, group, IRQ, the three views, the
        decoding, the checks."""
        def opt(view):
            return None if view is None else view.to_dict()
        return {"index": self.index, "group": self.group, "irq": self.irq,
                "guest": opt(self.guest), "qemu": opt(self.qemu),
                "device": opt(self.device), "decoded": opt(self.decoded),
                "checks": [result.to_dict() for result in self.checks]}


def build_record(index: int, guest: Mapping[str, Any] | None = None,
                 qemu: Mapping[str, Any] | None = None,
                 device: Mapping[str, Any] | None = None,
                 apic_map: ApicMap | None = None) -> RoutingRecord:
    """Build one record from whichever raw views exist for `index`."""
    apic_map = apic_map or ApicMap.identity()
    guest_view = None if guest is None else guest_view_from_dict(guest, index)
    qemu_view = None if qemu is None else table_entry_from_dict(qemu, "qemu", index)
    device_view = None if device is None else device_view_from_dict(device, index)
    group = irq = None
    if guest is not None:
        group = _int(guest, "group", "guest", index)
        irq = _int(guest, "irq", "guest", index)
    source = guest_view.msg if guest_view else qemu_view.message if qemu_view else None
    decoded = None if source is None else decode_for_cpu(source, apic_map)
    return RoutingRecord(index, group, irq, guest_view, qemu_view, device_view, decoded)


def record_from_dict(raw: Mapping[str, Any], apic_map: ApicMap | None = None) -> RoutingRecord:
    """Rebuild a record from its routing.json form (checks included)."""
    index = _int(raw, "index", "record", None)
    guest = raw.get("guest")
    if guest is not None:
        guest = {**guest, "group": raw.get("group"), "irq": raw.get("irq")}
    record = build_record(index, guest, raw.get("qemu"), raw.get("device"), apic_map)
    checks = tuple(CheckResult(c["name"], c["index"], Verdict(c["verdict"]),
                               c.get("summary", ""), c.get("evidence", {}), c.get("step", ""))
                   for c in raw.get("checks", ()))
    return replace(record, checks=checks)


@dataclass(frozen=True)
class Snapshot:
    """Every record at one moment, sorted by index."""

    records: tuple[RoutingRecord, ...]

    def get(self, index: int) -> RoutingRecord | None:
        """The record of table index ``index``, or ``None``."""
        for record in self.records:
            if record.index == index:
                return record
        return None

    def allocated(self) -> tuple[RoutingRecord, ...]:
        """The records of the vectors the guest has allocated."""
        return tuple(record for record in self.records if record.allocated)

    def with_checks(self, results: Iterable[CheckResult]) -> Snapshot:
        """A copy with each result appended to its index's record."""
        by_index: dict[int, list[CheckResult]] = {}
        for result in results:
            if result.index is not None:      # table-wide results belong to no record
                by_index.setdefault(result.index, []).append(result)
        unknown = set(by_index) - {record.index for record in self.records}
        if unknown:
            raise ValueError(f"check results for indices with no record: {sorted(unknown)}")
        return Snapshot(tuple(
            replace(record, checks=record.checks + tuple(by_index.get(record.index, ())))
            for record in self.records))

    def results(self) -> tuple[CheckResult, ...]:
        """Every check result of every record, in record order."""
        return tuple(result for record in self.records for result in record.checks)


def _by_index(items: Iterable[Mapping[str, Any]], view: str) -> dict[int, Mapping[str, Any]]:
    out: dict[int, Mapping[str, Any]] = {}
    for item in items:
        index = _int(item, "index", view, None)
        if index in out:
            raise RoutingViewError(view, index, "index", "appears twice")
        out[index] = item
    return out


def build_snapshot(guest: Iterable[Mapping[str, Any]] = (),
                   qemu: Mapping[int, Mapping[str, Any]] | None = None,
                   device: Iterable[Mapping[str, Any]] = (),
                   apic_map: ApicMap | None = None) -> Snapshot:
    """One record per index present in any view.

    guest: the guest agent's `routing` result (list, each with "index").
    qemu: {index: table entry} as read through QMP.
    device: the device server's `state.vectors` (list, each with "index").
    """
    guest_by = _by_index(guest, "guest")
    device_by = _by_index(device, "device")
    qemu_by = {int(index): entry for index, entry in (qemu or {}).items()}
    indices = sorted(set(guest_by) | set(device_by) | set(qemu_by))
    return Snapshot(tuple(
        build_record(i, guest_by.get(i), qemu_by.get(i), device_by.get(i), apic_map)
        for i in indices))


def pba_pending_indices(words: Sequence[int], word_bits: int = 64) -> frozenset[int]:
    """Indices whose Pending Bit Array bit is set; `words` as read, lowest first."""
    return frozenset(w * word_bits + bit for w, word in enumerate(words)
                     for bit in range(word_bits) if (word >> bit) & 1)

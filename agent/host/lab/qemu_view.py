"""QEMU's own view of the MSI-X table, read through QMP.

Concepts: QEMU emulates the MSI-X table itself (guest table accesses never reach the
device server), so QEMU's copy is the one the interrupts are delivered from.  The host
finds the NIC's BAR addresses with ``query-pci`` and dumps table entries with the HMP
``xp`` command (through QMP ``human-monitor-command``): four dwords per entry, address
low, address high, data, vector control.  With interrupt remapping (``--iommu``) a
remappable message names an IRTE by its handle: the host reads the IOMMU's IRTA register
(q35's DMAR unit at 0xfed90000, register 0xB8: the table's address, size and x2APIC
mode) and the 16-byte entry from guest memory, as QEMU's intel-iommu does to deliver.
"""

from __future__ import annotations

import re

from agent.host.errors import HostError

NIC_VENDOR, NIC_DEVICE = 0x1234, 0x11E9


def _walk(devices: list[dict]):
    for dev in devices:
        yield dev
        bridge = dev.get("pci_bridge") or {}
        yield from _walk(bridge.get("devices", []))


def find_nic(query_pci: list[dict], nth: int = 0, qdev_id: str | None = None) -> dict:
    """The ``nth`` msixlab NIC of query-pci, or the one whose QEMU id is ``qdev_id``."""
    nics = [d for bus in query_pci for d in _walk(bus.get("devices", []))
            if d.get("id", {}).get("vendor") == NIC_VENDOR
            and d.get("id", {}).get("device") == NIC_DEVICE]
    if qdev_id is not None:
        found = [d for d in nics if d.get("qdev_id") == qdev_id]
        if not found:
            raise HostError(f"query-pci shows no msixlab NIC with id {qdev_id!r}")
        return found[0]
    if len(nics) <= nth:
        raise HostError(f"query-pci shows {len(nics)} msixlab NIC(s); wanted number {nth}")
    return nics[nth]


def find_nic_bars(query_pci: list[dict], nth: int = 0,
                  qdev_id: str | None = None) -> dict[int, int]:
    """BAR number -> guest physical address of the ``nth`` msixlab NIC (or ``qdev_id``)."""
    return {r["bar"]: r["address"] for r in find_nic(query_pci, nth, qdev_id).get("regions", [])
            if r.get("type") == "memory"}


def nic_bdf(query_pci: list[dict], qdev_id: str) -> str:
    """The guest's PCI address (domain 0) of the NIC whose QEMU id is ``qdev_id``."""
    nic = find_nic(query_pci, qdev_id=qdev_id)
    return f"0000:{nic['bus']:02x}:{nic['slot']:02x}.{nic.get('function', 0)}"


XP_LINE = re.compile(r"^[0-9a-fx]+:((?:\s+0x[0-9a-f]+)+)\s*$", re.I)


def parse_xp(text: str) -> list[int]:
    """The dwords of an HMP ``xp /Nwx`` dump."""
    words: list[int] = []
    for line in text.splitlines():
        match = XP_LINE.match(line.strip())
        if not match:
            raise HostError(f"unexpected xp output line: {line!r}")
        words += [int(w, 16) for w in match.group(1).split()]
    return words


def read_table(machine, table_address: int, count: int) -> dict[int, dict]:
    """Entries 0..count-1 of the MSI-X table at ``table_address``, as QEMU holds them."""
    words = parse_xp(machine.hmp(f"xp /{count * 4}wx {table_address:#x}"))
    if len(words) != count * 4:
        raise HostError(f"xp returned {len(words)} dwords for {count} table entries")
    return {i: {"address_lo": words[4 * i], "address_hi": words[4 * i + 1],
                "data": words[4 * i + 2], "ctrl": words[4 * i + 3]} for i in range(count)}


DMAR_BASE = 0xFED90000          # q35's intel-iommu register block
DMAR_IRTA_REG = 0xB8            # Interrupt Remapping Table Address
IRTA_EIME = 1 << 11             # extended interrupt mode (x2APIC destination IDs)
IRTA_SIZE_MASK = 0xF            # the table has 2^(S+1) entries
IRTE_BYTES = 16


def read_irta(machine) -> dict:
    """The IOMMU's interrupt remapping table: {"base", "entries", "x2apic"}."""
    lo, hi = parse_xp(machine.hmp(f"xp /2wx {DMAR_BASE + DMAR_IRTA_REG:#x}"))
    irta = lo | hi << 32
    return {"base": irta & ~0xFFF, "entries": 1 << ((irta & IRTA_SIZE_MASK) + 1),
            "x2apic": bool(irta & IRTA_EIME)}


def read_irte(machine, irta: dict, handle: int) -> dict:
    """IRTE ``handle`` as two little-endian quadwords {"lo", "hi"}, read from guest memory."""
    if not irta["base"] or not 0 <= handle < irta["entries"]:
        raise HostError(f"IRTE {handle} is outside the remapping table {irta}")
    words = parse_xp(machine.hmp(f"xp /4wx {irta['base'] + handle * IRTE_BYTES:#x}"))
    if len(words) != 4:
        raise HostError(f"xp returned {len(words)} dwords for IRTE {handle}")
    return {"lo": words[0] | words[1] << 32, "hi": words[2] | words[3] << 32}

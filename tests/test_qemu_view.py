"""QEMU's table view: finding the NIC in query-pci and parsing HMP xp dumps."""

from __future__ import annotations

import pytest

from agent.host.errors import HostError
from agent.host.lab.qemu_view import find_nic_bars, parse_xp, read_table

# Shaped like QEMU 11.1's query-pci on the msixlab q35 guest (trimmed): the NIC sits
# behind a PCIe root port, so it is only found by walking pci_bridge.devices.
QUERY_PCI = [{"bus": 0, "devices": [
    {"bus": 0, "slot": 1, "id": {"vendor": 0x1AF4, "device": 0x1009},
     "regions": [{"bar": 0, "type": "io", "address": 0xC0C0, "size": 32}]},
    {"bus": 0, "slot": 5, "id": {"vendor": 0x1B36, "device": 0x000C}, "regions": [],
     "pci_bridge": {"bus": {"number": 1}, "devices": [
         {"bus": 1, "slot": 0, "id": {"vendor": 0x1234, "device": 0x11E9}, "regions": [
             {"bar": 0, "type": "memory", "address": 0xFE400000, "size": 32768},
             {"bar": 2, "type": "memory", "address": 0xFE408000, "size": 4096},
             {"bar": 4, "type": "memory", "address": 0xFE409000, "size": 4096}]}]}},
]}]

XP = ("fe408000: 0xfee01000 0x00000000 0x00000027 0x00000000\r\n"
      "fe408010: 0x00000000 0x00000000 0x00000000 0x00000001\r\n")


def test_nic_found_behind_the_root_port():
    assert find_nic_bars(QUERY_PCI) == {0: 0xFE400000, 2: 0xFE408000, 4: 0xFE409000}


def test_missing_nic_is_named():
    with pytest.raises(HostError, match="shows 1 msixlab NIC"):
        find_nic_bars(QUERY_PCI, nth=1)


def test_parse_xp_reads_every_dword():
    assert parse_xp(XP) == [0xFEE01000, 0, 0x27, 0, 0, 0, 0, 1]


def test_parse_xp_refuses_an_error_message():
    with pytest.raises(HostError, match="unexpected xp output"):
        parse_xp("Cannot access memory\r\n")


class FakeMonitor:
    def __init__(self, text: str):
        self.text, self.asked = text, []

    def hmp(self, command: str) -> str:
        self.asked.append(command)
        return self.text


def test_read_table_splits_entries_and_asks_for_the_right_range():
    monitor = FakeMonitor(XP)
    table = read_table(monitor, 0xFE408000, 2)
    assert monitor.asked == ["xp /8wx 0xfe408000"]
    assert table[0] == {"address_lo": 0xFEE01000, "address_hi": 0, "data": 0x27, "ctrl": 0}
    assert table[1]["ctrl"] == 1


def test_read_table_refuses_a_short_dump():
    with pytest.raises(HostError, match="returned 8 dwords for 3"):
        read_table(FakeMonitor(XP), 0xFE408000, 3)


def test_a_nic_is_found_by_its_qemu_id_and_named_by_its_address():
    from agent.host.lab.qemu_view import find_nic_bars, nic_bdf
    two = [{"bus": 0, "devices": [
        {"bus": 0, "slot": 5, "id": {"vendor": 0x1B36, "device": 0x000C}, "regions": [],
         "pci_bridge": {"bus": {"number": 2}, "devices": [
             {"bus": 2, "slot": 0, "function": 0, "qdev_id": "nic1",
              "id": {"vendor": 0x1234, "device": 0x11E9},
              "regions": [{"bar": 2, "type": "memory", "address": 0xFE608000, "size": 4096}]}]}},
        {"bus": 0, "slot": 4, "id": {"vendor": 0x1B36, "device": 0x000C}, "regions": [],
         "pci_bridge": {"bus": {"number": 1}, "devices": [
             {"bus": 1, "slot": 0, "function": 0, "qdev_id": "nic0",
              "id": {"vendor": 0x1234, "device": 0x11E9},
              "regions": [{"bar": 2, "type": "memory", "address": 0xFE408000, "size": 4096}]}]}},
    ]}]
    assert find_nic_bars(two, qdev_id="nic0") == {2: 0xFE408000}      # not the first listed
    assert nic_bdf(two, "nic1") == "0000:02:00.0"
    with pytest.raises(HostError, match="no msixlab NIC with id 'nic2'"):
        nic_bdf(two, "nic2")

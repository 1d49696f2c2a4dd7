"""The guest agent's views of /proc and /sys: parsed from text captured in a real guest.

SAMPLE is /proc/interrupts of the Debian 7.3.4 guest (q35, TCG, 2 CPUs) with msixlab.ko
bound to two stand-in functions (0000:00:04.0 as msixlab0, 0000:00:05.0 as msixlab1)
after group allocations at any index and at index 10, and a group free.
"""

from __future__ import annotations

import errno

import pytest

from agent.guest import sysview
from agent.guest.errors import GuestError

SAMPLE = """\
            CPU0       CPU1       
   0:        124          0  IO-APIC                  2-edge      timer
   1:          0         13  IO-APIC                  1-edge      i8042
   4:          0        306  IO-APIC                  4-edge      ttyS0
   8:          1          0  IO-APIC                  8-edge      rtc0
   9:          0          0  IO-APIC                  9-fasteoi   acpi
  12:          3          0  IO-APIC                 12-edge      i8042
  24:          0          0  PCI-MSIX-0000:00:01.0    0-edge      virtio0-config
  25:          0       1500  PCI-MSIX-0000:00:01.0    1-edge      virtio0-requests
  26:          0          0  PCI-MSIX-0000:00:02.0    0-edge      virtio1-config
  27:          0        101  PCI-MSIX-0000:00:02.0    1-edge      virtio1-requests
  28:          0          0  PCI-MSIX-0000:00:03.0    0-edge      virtio2-config
  29:          0         14  PCI-MSIX-0000:00:03.0    1-edge      virtio2-requests
  30:          0          0  PCI-MSIX-0000:00:04.0    0-edge      msixlab0[0]
  31:          0          0  PCI-MSIX-0000:00:05.0    0-edge      msixlab1[0]
  32:          0          0  PCI-MSIX-0000:00:04.0    1-edge      msixlab0[1]
  33:          0          0  PCI-MSIX-0000:00:04.0    2-edge      msixlab0[2]
  36:          0          0  PCI-MSIX-0000:00:04.0   10-edge      msixlab0[10]
  37:          0          0  PCI-MSIX-0000:00:04.0   11-edge      msixlab0[11]
  38:          0          0  PCI-MSIX-0000:00:04.0   12-edge      msixlab0[12]
 NMI:          0          0  Non-maskable interrupts
 LOC:       2185       2185  Local timer interrupts
 PMI:          0          0  Performance monitoring interrupts
 IWI:          4          0  IRQ work interrupts
 RES:         33         39  Rescheduling interrupts
 CAL:       2370        856  Function call interrupts
 TLB:         12          9  TLB shootdowns
 TRM:          0          0  Thermal event interrupts
 THR:          0          0  Threshold APIC interrupts
 DFR:          0          0  Deferred Error APIC interrupts
 MCE:          0          0  Machine check exceptions
 MCP:          0          0  Machine check polls
 PIN:          0          0  Posted-interrupt notification event
 NPI:          0          0  Nested posted-interrupt event
 PIW:          0          0  Posted-interrupt wakeup event
VPMI:          0          0  Perf Guest Mediated PMI
"""


def test_header_and_cpu_count():
    parsed = sysview.parse_interrupts(SAMPLE)
    assert parsed["cpus"] == ["CPU0", "CPU1"]
    assert all(len(row["counts"]) == 2 for row in parsed["rows"])


def test_msix_row_fields():
    rows = {row["irq"]: row for row in sysview.parse_interrupts(SAMPLE)["rows"]}
    assert rows[36] == {"irq": 36, "counts": [0, 0], "chip": "PCI-MSIX-0000:00:04.0",
                        "hwirq": 10, "handler": "edge", "actions": ["msixlab0[10]"]}
    assert rows[25]["counts"] == [0, 1500] and rows[25]["actions"] == ["virtio0-requests"]
    assert rows[9]["chip"] == "IO-APIC" and rows[9]["handler"] == "fasteoi"


def test_named_rows_are_kept_apart():
    parsed = sysview.parse_interrupts(SAMPLE)
    other = {row["name"]: row for row in parsed["other"]}
    assert other["LOC"]["counts"] == [2185, 2185]
    assert other["LOC"]["description"] == "Local timer interrupts"
    assert "VPMI" in other and all(isinstance(r["irq"], int) for r in parsed["rows"])


def test_device_rows_select_one_device_only():
    parsed = sysview.parse_interrupts(SAMPLE)
    rows = sysview.device_rows(parsed, "0000:00:04.0", "msixlab0")
    assert [(r["irq"], r["hwirq"]) for r in rows] == [
        (30, 0), (32, 1), (33, 2), (36, 10), (37, 11), (38, 12)]
    other = sysview.device_rows(parsed, "0000:00:05.0", "msixlab1")
    assert [r["irq"] for r in other] == [31]


def test_device_rows_by_action_name_without_bdf():
    parsed = sysview.parse_interrupts(SAMPLE)
    assert [r["irq"] for r in sysview.device_rows(parsed, None, "msixlab1")] == [31]
    assert sysview.device_rows(parsed, None, None) == []


def test_shared_actions_and_missing_hwirq():
    text = "   CPU0 CPU1\n 40: 1 2 weird-chip act-a, act b\n 41: 3 4\n"
    rows = sysview.parse_interrupts(text)["rows"]
    assert rows[0]["hwirq"] is None and rows[0]["actions"] == ["act-a", "act b"]
    assert rows[1] == {"irq": 41, "counts": [3, 4], "chip": None, "hwirq": None,
                       "handler": None, "actions": []}


def test_not_proc_interrupts():
    with pytest.raises(ValueError, match="CPU header"):
        sysview.parse_interrupts("hello\n")


@pytest.fixture
def irq_tree(tmp_path):
    sysdir = tmp_path / "sys/kernel/irq/36"
    sysdir.mkdir(parents=True)
    for name, value in {"chip_name": "PCI-MSIX-0000:00:04.0", "hwirq": "10", "name": "edge",
                        "type": "edge", "wakeup": "disabled", "actions": "msixlab0[10]",
                        "per_cpu_count": "0,7"}.items():
        (sysdir / name).write_text(value + "\n")
    procdir = tmp_path / "proc/irq/36"
    procdir.mkdir(parents=True)
    (procdir / "smp_affinity_list").write_text("0-1,3\n")
    (procdir / "effective_affinity_list").write_text("1\n")
    (procdir / "node").write_text("-1\n")
    msi = tmp_path / "sys/bus/pci/devices/0000:00:04.0/msi_irqs"
    msi.mkdir(parents=True)
    (msi / "36").write_text("msix\n")
    return tmp_path


def test_irq_sysfs_reads_every_view(irq_tree):
    out = sysview.irq_sysfs(36, "0000:00:04.0", str(irq_tree))
    assert out["sys"]["hwirq"] == 10 and out["sys"]["per_cpu_count"] == [0, 7]
    assert out["proc"]["smp_affinity_list"] == [0, 1, 3]
    assert out["proc"]["effective_affinity_list"] == [1]
    assert out["msi_irqs"] == "msix"


def test_irq_sysfs_freed_msi_irq_is_none(irq_tree):
    (irq_tree / "sys/bus/pci/devices/0000:00:04.0/msi_irqs/36").unlink()
    assert sysview.irq_sysfs(36, "0000:00:04.0", str(irq_tree))["msi_irqs"] is None


def test_irq_sysfs_unknown_irq(irq_tree):
    with pytest.raises(GuestError) as err:
        sysview.irq_sysfs(99, None, str(irq_tree))
    assert err.value.errno == errno.ENOENT and "IRQ 99" in err.value.message


def test_run_tool_missing_program():
    with pytest.raises(GuestError) as err:
        sysview.run_tool(["/nonexistent/msixlab-tool"])
    assert err.value.errno == errno.ENOENT and "not installed" in err.value.message


def test_run_tool_output():
    out = sysview.run_tool(["printf", "a\\nb"])
    assert out["returncode"] == 0 and out["stdout"] == "a\nb"


def test_msi_irqs_lists_the_directory_by_irq(irq_tree):
    msi = irq_tree / "sys/bus/pci/devices/0000:00:04.0/msi_irqs"
    (msi / "120").write_text("msix\n")
    (msi / "7").write_text("msi\n")
    out = sysview.msi_irqs("0000:00:04.0", str(irq_tree))
    assert out == {"bdf": "0000:00:04.0", "irqs": [{"irq": 7, "mode": "msi"},
                                                  {"irq": 36, "mode": "msix"},
                                                  {"irq": 120, "mode": "msix"}]}


def test_msi_irqs_without_msi_is_empty_and_an_unknown_device_is_enoent(irq_tree):
    device = irq_tree / "sys/bus/pci/devices/0000:00:04.0"
    for entry in (device / "msi_irqs").iterdir():
        entry.unlink()
    (device / "msi_irqs").rmdir()                  # the kernel removes it with MSI-X off
    assert sysview.msi_irqs("0000:00:04.0", str(irq_tree))["irqs"] == []
    with pytest.raises(GuestError) as err:
        sysview.msi_irqs("0000:00:05.0", str(irq_tree))
    assert err.value.errno == errno.ENOENT and "0000:00:05.0" in err.value.message


def test_write_affinity_writes_a_cpu_list(irq_tree):
    sysview.write_affinity(36, [0, 2, 5], str(irq_tree))
    assert (irq_tree / "proc/irq/36/smp_affinity_list").read_text() == "0,2,5\n"


def test_write_affinity_names_the_file_and_the_argument(irq_tree):
    with pytest.raises(GuestError) as err:
        sysview.write_affinity(99, [1], str(irq_tree))
    assert err.value.errno == errno.ENOENT
    assert "proc/irq/99/smp_affinity_list" in err.value.message
    assert err.value.fields["argument"] == "cpus"

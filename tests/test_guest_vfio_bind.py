"""The guest agent's ``vfio_bind`` on a sysfs tree: what the kernel lacks is reported by
name (the host makes it a could-not-judge), and a kernel with vfio-pci gets the device's
``driver_override`` and a reprobe.  ``step_bind``/``step_irq_info`` of the host scenario
turn those replies into the verdict classes."""

from __future__ import annotations

import os

import pytest

from agent.guest.commands import Agent
from agent.guest.vfio_commands import VfioCommands
from agent.host.scenarios.vfio_pci import VfioPci
from agent.host.verdict.ledger import Ledger
from agent.host.verdict.outcome import CouldNotJudge, Outcome
from agent.host.verdict.routing import Verdict

BDF = "0000:01:00.0"


def tree(tmp_path, vfio_pci: bool, group: bool):
    device = tmp_path / "sys/bus/pci/devices" / BDF
    device.mkdir(parents=True)
    (device / "driver_override").write_text("")
    (tmp_path / "sys/bus/pci/drivers_probe").write_text("")
    if vfio_pci:
        (tmp_path / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True)
        (tmp_path / "dev/vfio").mkdir(parents=True)
        (tmp_path / "dev/vfio/vfio").write_text("")
    if group:
        (tmp_path / "sys/kernel/iommu_groups/7").mkdir(parents=True)
        os.symlink(tmp_path / "sys/kernel/iommu_groups/7", device / "iommu_group")
    commands = VfioCommands(Agent(device="/nonexistent/msixlab0", root=str(tmp_path)),
                            modprobe=("true",))
    commands.bdf = BDF                     # as after the msixlab driver's unbind
    return commands, device


def test_a_kernel_without_vfio_pci_or_an_iommu_group_is_reported_by_name(tmp_path):
    commands, device = tree(tmp_path, vfio_pci=False, group=False)
    bound = commands.bind()
    assert any("vfio-pci" in m for m in bound["missing"])
    assert any("IOMMU group" in m for m in bound["missing"])
    assert any("/dev/vfio/vfio" in m for m in bound["missing"])
    assert (device / "driver_override").read_text() == ""     # nothing bound


def test_a_vfio_pci_module_the_guest_cannot_load_is_named_with_modprobe_s_words(tmp_path):
    """A kernel tree with CONFIG_VFIO_PCI=m: its modules are not in the image, so modprobe
    fails; the missing vfio-pci is reported with what modprobe said."""
    commands, device = tree(tmp_path, vfio_pci=False, group=True)
    commands.modprobe = ["sh", "-c", "echo 'modprobe: FATAL: Module vfio-pci not found in "
                         "directory /lib/modules/7.3.4' >&2; exit 1"]
    missing = commands.bind()["missing"][0]
    assert missing.startswith("vfio-pci (no /sys/bus/pci/drivers/vfio-pci after modprobe; ")
    assert "said: modprobe: FATAL: Module vfio-pci not found in directory /lib/modules/7.3.4" \
        in missing
    commands.modprobe = ["true"]                  # modprobe said nothing: nothing quoted
    assert commands.bind()["missing"][0] == \
        "vfio-pci (no /sys/bus/pci/drivers/vfio-pci after modprobe)"


def test_a_cdev_without_dev_iommu_is_no_way_in(tmp_path):
    """vfio-pci with a device cdev but neither /dev/iommu nor a container: reported."""
    commands, device = tree(tmp_path, vfio_pci=True, group=True)
    (tmp_path / "dev/vfio/vfio").unlink()
    (device / "vfio-dev/vfio0").mkdir(parents=True)
    assert any("iommufd" in m for m in commands.bind()["missing"])
    (tmp_path / "dev/iommu").write_text("")
    assert commands.bind()["missing"] == []


def test_a_kernel_with_vfio_pci_gets_the_override_and_a_reprobe(tmp_path):
    commands, device = tree(tmp_path, vfio_pci=True, group=True)
    bound = commands.bind()
    assert bound["missing"] == [] and bound["iommu_group"] == "7"
    assert (device / "driver_override").read_text() == "vfio-pci"
    assert (tmp_path / "sys/bus/pci/drivers_probe").read_text() == BDF


class Lab:
    """The replies a guest gave (the host side of the scenario alone)."""
    def __init__(self, kernel: str, **replies):
        self.hello, self.replies = {"kernel": kernel}, replies

    def agent(self, cmd, timeout=30.0, **args):
        return self.replies[cmd]


def scenario(kernel="7.3.4+deb13-amd64", **replies) -> VfioPci:
    s = VfioPci(Lab(kernel, **replies), say=lambda text: None)
    s.ledger, s.step = Ledger(64, 2), "bind"
    return s


def test_host_makes_a_missing_vfio_pci_a_named_could_not_judge():
    s = scenario(vfio_bind={"missing": ["vfio-pci (no /sys/bus/pci/drivers/vfio-pci)"]})
    with pytest.raises(CouldNotJudge) as err:
        s.step_bind()
    assert err.value.outcome is Outcome.KERNEL_UNSUPPORTED and "vfio-pci" in str(err.value)


@pytest.mark.parametrize("kernel, flags, judged", [
    ("7.3.4+deb13-amd64", 0x1, Verdict.PASS),
    ("7.3.4+deb13-amd64", 0x9, Verdict.FAIL),     # 6.5+: vfio-pci must grow MSI-X
    ("6.1.0-18-amd64", 0x9, None),                # before 6.5: could not judge
])
def test_noresize_is_a_failure_from_6_5_and_could_not_judge_before(kernel, flags, judged):
    s = scenario(kernel)
    s.step = "irq-info"
    s.record["irq_info"] = {"flags": flags, "count": 64}
    if judged is None:
        with pytest.raises(CouldNotJudge) as err:
            s.step_irq_info()
        assert err.value.outcome is Outcome.KERNEL_UNSUPPORTED and "NORESIZE" in str(err.value)
        return
    s.step_irq_info()
    (noresize,) = [r for r in s.results if r.name == "irq_info_noresize_clear"]
    assert noresize.verdict is judged

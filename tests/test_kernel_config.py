"""The rig's kernel fragment and the .config check (sans-I/O), and `kernel config`."""

from __future__ import annotations

import pytest

from agent.host import cli
from agent.host.kernel import config as kconfig

FRAGMENT = """\
# comment
#@ required
CONFIG_64BIT=y
CONFIG_NR_CPUS=8
#@ module-ok: CONFIG_9P_FS
CONFIG_9P_FS=y
CONFIG_OVERLAY_FS=y
#@ preferred
CONFIG_PVH=y
# CONFIG_SWAP is not set
"""


def test_fragment_sections_and_module_ok():
    fragment = kconfig.parse_fragment(FRAGMENT)
    assert fragment.required == {"CONFIG_64BIT": "y", "CONFIG_NR_CPUS": "8",
                                 "CONFIG_9P_FS": "y", "CONFIG_OVERLAY_FS": "y"}
    assert fragment.preferred == {"CONFIG_PVH": "y", "CONFIG_SWAP": "n"}
    assert fragment.module_ok == {"CONFIG_9P_FS"}


@pytest.mark.parametrize("line", ["#@ optional", "CONFIG_X", "bogus text"])
def test_fragment_rejects_what_it_does_not_know(line):
    with pytest.raises(ValueError, match="fragment line 2"):
        kconfig.parse_fragment("#@ required\n" + line + "\n")


def test_check_names_missing_unset_and_wrong_options():
    fragment = kconfig.parse_fragment(FRAGMENT)
    config = kconfig.parse_config("CONFIG_64BIT=y\nCONFIG_NR_CPUS=4\n# CONFIG_OVERLAY_FS is not set\n")
    problems = {p.option: p for p in kconfig.check(config, fragment)}
    assert set(problems) == {"CONFIG_NR_CPUS", "CONFIG_9P_FS", "CONFIG_OVERLAY_FS"}
    assert str(problems["CONFIG_NR_CPUS"]) == "CONFIG_NR_CPUS is 4; the rig needs 8"
    assert "is missing" in str(problems["CONFIG_9P_FS"]) and "y or m" in str(problems["CONFIG_9P_FS"])
    assert str(problems["CONFIG_OVERLAY_FS"]) == "CONFIG_OVERLAY_FS is not set; the rig needs y"


def test_module_ok_accepts_m_only_where_named():
    fragment = kconfig.parse_fragment(FRAGMENT)
    config = kconfig.parse_config("CONFIG_64BIT=y\nCONFIG_NR_CPUS=8\nCONFIG_9P_FS=m\nCONFIG_OVERLAY_FS=m\n")
    assert [p.option for p in kconfig.check(config, fragment)] == ["CONFIG_OVERLAY_FS"]


def test_preferred_options_are_never_required_but_are_reported_dropped():
    fragment = kconfig.parse_fragment(FRAGMENT)
    config = kconfig.parse_config("CONFIG_64BIT=y\nCONFIG_NR_CPUS=8\nCONFIG_9P_FS=y\nCONFIG_OVERLAY_FS=y\n")
    assert kconfig.check(config, fragment) == []
    assert [p.option for p in kconfig.dropped(config, fragment)] == ["CONFIG_PVH"]   # absent: not set
    config["CONFIG_SWAP"] = "y"
    assert [p.option for p in kconfig.dropped(config, fragment)] == ["CONFIG_PVH", "CONFIG_SWAP"]


def test_the_real_fragment_parses_and_needs_what_the_guest_uses():
    fragment = kconfig.load_fragment()
    for option in ("CONFIG_PCI_MSI", "CONFIG_9P_FS", "CONFIG_OVERLAY_FS", "CONFIG_VIRTIO_CONSOLE",
                   "CONFIG_MODULES", "CONFIG_ACPI", "CONFIG_PRINTK_TIME", "CONFIG_64BIT"):
        assert fragment.required[option] == "y", option
    assert fragment.module_ok >= {"CONFIG_9P_FS", "CONFIG_OVERLAY_FS"}


def test_kernel_config_prints_the_fragment(capsys):
    assert cli.main(["kernel", "config"]) == 0
    assert capsys.readouterr().out == kconfig.FRAGMENT.read_text()


def test_kernel_config_names_a_missing_option(tmp_path, capsys):
    fragment = kconfig.load_fragment()
    lines = [f"{k}={v}" for k, v in fragment.required.items() if k != "CONFIG_PCI_MSI"]
    (tmp_path / ".config").write_text("\n".join(lines) + "\n# CONFIG_PCI_MSI is not set\n")
    assert cli.main(["kernel", "config", str(tmp_path)]) == 125
    err = capsys.readouterr().err
    assert "CONFIG_PCI_MSI is not set; the rig needs y" in err
    assert "1 option(s)" in err


def test_kernel_config_passes_a_complete_config(tmp_path):
    fragment = kconfig.load_fragment()
    (tmp_path / ".config").write_text("".join(f"{k}={v}\n" for k, v in fragment.required.items()))
    assert cli.main(["kernel", "config", str(tmp_path)]) == 0


def test_kernel_config_of_a_dir_without_config_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["kernel", "config", str(tmp_path)]) == 125
    assert "has no .config" in capsys.readouterr().err


def test_scenario_sections_are_merged_and_checked_only_when_named(tmp_path, capsys):
    fragment = kconfig.parse_fragment(FRAGMENT + "#@ scenario: vfio-pci\nCONFIG_VFIO_PCI=y\n")
    assert fragment.scenarios == {"vfio-pci": {"CONFIG_VFIO_PCI": "y"}}
    assert fragment.options["CONFIG_VFIO_PCI"] == "y" and "CONFIG_VFIO_PCI" not in fragment.required
    config = kconfig.parse_config("CONFIG_64BIT=y\nCONFIG_NR_CPUS=8\nCONFIG_9P_FS=y\n"
                                  "CONFIG_OVERLAY_FS=y\n")
    assert kconfig.check(config, fragment) == []
    [problem] = kconfig.check(config, fragment, scenarios=("vfio-pci",))
    assert str(problem) == ("CONFIG_VFIO_PCI is missing (this kernel may not have the option); "
                            "--scenario vfio-pci needs y")


def test_kernel_config_names_the_vfio_pci_options_a_tree_lacks(tmp_path, capsys):
    """`msixlab kernel config DIR` names every option of the real fragment's vfio-pci
    section a .config lacks (here one with every required option and nothing of VFIO);
    the check still passes: only that scenario needs them."""
    fragment = kconfig.load_fragment()
    assert {"CONFIG_VFIO_PCI", "CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV", "CONFIG_INTEL_IOMMU",
            "CONFIG_IRQ_REMAP"} <= set(fragment.scenarios["vfio-pci"])
    (tmp_path / ".config").write_text("".join(f"{k}={v}\n" for k, v in fragment.required.items()))
    assert cli.main(["kernel", "config", str(tmp_path)]) == 0     # other scenarios run
    captured = capsys.readouterr()
    said = captured.out + captured.err
    for option in fragment.scenarios["vfio-pci"]:
        assert f"{option} is missing" in said, option
    assert "--scenario vfio-pci needs y" in said


def test_iommufd_s_vfio_container_is_asked_for_with_vfio_s_own_container_off():
    """kconfig offers IOMMUFD_VFIO_CONTAINER only with VFIO_CONTAINER off (its Kconfig:
    depends on VFIO_GROUP && !VFIO_CONTAINER); asked for alone it was never taken, and
    every build of a tree merged the fragment again.  Both are preferred, not checked: the
    guest's VFIO client works with either container, so a kernel with VFIO's own (Debian's)
    lacks nothing for the vfio-pci scenario."""
    fragment = kconfig.load_fragment()
    assert fragment.preferred["CONFIG_IOMMUFD_VFIO_CONTAINER"] == "y"
    assert fragment.preferred["CONFIG_VFIO_CONTAINER"] == "n"
    assert "CONFIG_IOMMUFD_VFIO_CONTAINER" not in fragment.scenarios["vfio-pci"]
    debian_like = {**fragment.required, **fragment.scenarios["vfio-pci"],
                   "CONFIG_VFIO_CONTAINER": "y"}
    assert kconfig.check(debian_like, fragment, ("vfio-pci",)) == []

"""The guest agent's teardown helpers on a directory tree standing in for / ."""

from __future__ import annotations

import errno

import pytest

from agent.guest import binding
from agent.guest.errors import GuestError


@pytest.fixture
def root(tmp_path):
    (tmp_path / binding.DRIVER_DIR).mkdir(parents=True)
    (tmp_path / "dev").mkdir()
    (tmp_path / "proc").mkdir()
    return tmp_path


def test_bind_writes_the_address_and_returns_the_device(root):
    (root / "dev" / "msixlab0").touch()
    assert binding.bind("0000:01:00.0", str(root)) == str(root / "dev" / "msixlab0")
    assert (root / binding.DRIVER_DIR / "bind").read_text() == "0000:01:00.0"


def test_unbind_times_out_naming_what_it_waited_for(root, monkeypatch):
    (root / "dev" / "msixlab0").touch()          # the node never goes away here
    monkeypatch.setattr(binding, "WAIT_S", 0.05)
    with pytest.raises(GuestError) as info:
        binding.unbind("0000:01:00.0", str(root))
    assert info.value.errno == errno.ETIMEDOUT
    assert "did not go away" in str(info.value)


def test_write_to_a_missing_driver_names_the_file(tmp_path):
    with pytest.raises(GuestError) as info:
        binding.bind("0000:01:00.0", str(tmp_path))
    assert "drivers/msixlab/bind" in str(info.value)


@pytest.mark.parametrize("cmdline,path", [
    ("console=ttyS0 msixlab.mode=agent msixlab.kmod=/opt/kmod/msixlab.ko\n", "/opt/kmod/msixlab.ko"),
    ("console=ttyS0 msixlab.mode=agent\n", None),
])
def test_module_path_comes_from_the_kernel_command_line(root, cmdline, path):
    (root / "proc" / "cmdline").write_text(cmdline)
    assert binding.module_path(str(root)) == path


@pytest.mark.parametrize("value,expected", [("Y\n", True), ("N\n", False), (None, False)])
def test_fault_injection_reads_the_module_parameter(root, value, expected):
    if value is not None:
        param = root / binding.FAULT_INJECTION
        param.parent.mkdir(parents=True)
        param.write_text(value)
    assert binding.fault_injection(str(root)) is expected


def test_wait_devices_returns_the_devices_once_present(root):
    (root / "dev" / "msixlab3").touch()
    assert binding.wait_devices(True, str(root), timeout=0.05) == [str(root / "dev/msixlab3")]

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


def sysfs_device(root, methods="flr bus\n"):
    device = root / "sys/bus/pci/devices/0000:01:00.0"
    device.mkdir(parents=True)
    if methods is not None:
        (device / "reset_method").write_text(methods)
        (device / "reset").touch()
    return device


def test_reset_function_writes_the_reset_file(root):
    device = sysfs_device(root)
    done = binding.reset_function("0000:01:00.0", str(root))
    assert (device / "reset").read_text() == "1"
    assert (device / "reset_method").read_text() == "flr bus\n"      # untouched
    assert (done["reset_method"], done["method"]) == (["flr", "bus"], "flr")


def test_reset_function_with_a_method_allows_only_it_then_the_default(root, monkeypatch):
    device = sysfs_device(root)
    writes = []
    real = binding.write_sysfs
    monkeypatch.setattr(binding, "write_sysfs", lambda path, value: (writes.append(
        (path.rsplit("/", 1)[1], value)), real(path, value)))
    assert binding.reset_function("0000:01:00.0", str(root), "bus")["method"] == "bus"
    assert writes == [("reset_method", "bus"), ("reset", "1"), ("reset_method", "default")]
    assert (device / "reset_method").read_text() == "default"


def test_reset_function_names_what_is_missing(root):
    sysfs_device(root, methods=None)
    with pytest.raises(GuestError) as info:
        binding.reset_function("0000:01:00.0", str(root))
    assert info.value.errno == errno.ENOTTY and "no reset file" in str(info.value)


def test_reset_function_refuses_a_method_not_offered(root):
    device = sysfs_device(root, methods="bus\n")
    with pytest.raises(GuestError) as info:
        binding.reset_function("0000:01:00.0", str(root), "flr")
    assert "offers reset methods ['bus'], not 'flr'" in str(info.value)
    assert (device / "reset").read_text() == ""                       # nothing reset

"""The guest agent's power management commands on a directory tree standing in for / :
the runtime PM control written and waited on, the sleep states read, a system sleep
handed to a child process and collected, and every refusal named."""

from __future__ import annotations

import errno

import pytest

from agent.guest import power
from agent.guest.errors import GuestError, RequestError

BDF = "0000:01:00.0"


class FakeAgent:
    """What PowerCommands asks of the agent: its root and the selected NIC's address."""

    def __init__(self, root, bdf=BDF):
        self.root, self.bdf, self.device_error = str(root), bdf, "no driver"

    def _bdf(self):
        return self.bdf


@pytest.fixture
def root(tmp_path):
    device = tmp_path / "sys/bus/pci/devices" / BDF
    (device / "power").mkdir(parents=True)
    (device / "power/control").write_text("on\n")
    (device / "power/runtime_status").write_text("active\n")
    (device / "power/runtime_suspended_time").write_text("0\n")
    (device / "power/runtime_active_time").write_text("1234\n")
    (device / "power_state").write_text("D0\n")
    sys_power = tmp_path / "sys/power"
    (sys_power / "suspend_stats").mkdir(parents=True)
    (sys_power / "state").write_text("freeze mem disk\n")
    (sys_power / "mem_sleep").write_text("s2idle [deep]\n")
    (sys_power / "suspend_stats/success").write_text("2\n")
    (sys_power / "suspend_stats/fail").write_text("0\n")
    (sys_power / "suspend_stats/last_failed_dev").write_text("\n")
    keyboard = tmp_path / power.KEYBOARD_WAKEUP
    keyboard.parent.mkdir(parents=True)
    keyboard.write_text("disabled\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/console").write_text("")
    return tmp_path


@pytest.fixture
def commands(root):
    return power.PowerCommands(FakeAgent(root))


def test_runtime_pm_writes_control_and_waits_for_the_status(root, commands):
    device = root / "sys/bus/pci/devices" / BDF
    (device / "power/runtime_status").write_text("suspended\n")     # the kernel followed
    (device / "power_state").write_text("D3hot\n")
    done = commands.runtime_pm("auto", 1)
    assert (device / "power/control").read_text() == "auto"
    assert (done["runtime_status"], done["power_state"], done["runtime_active_ms"]) == (
        "suspended", "D3hot", 1234)


def test_runtime_pm_that_the_status_does_not_follow_times_out(commands):
    with pytest.raises(GuestError) as info:
        commands.runtime_pm("auto", 1)              # runtime_status stays "active"
    assert info.value.errno == errno.ETIMEDOUT
    assert "still active" in info.value.message and "suspended" in info.value.message
    assert info.value.fields["power"]["control"] == "auto"


def test_runtime_pm_without_runtime_pm_is_enotsup(root, commands):
    (root / "sys/bus/pci/devices" / BDF / "power/control").unlink()
    with pytest.raises(GuestError) as info:
        commands.runtime_pm("on", 1)
    assert info.value.errno == errno.ENOTSUP and "CONFIG_PM" in info.value.message


@pytest.mark.parametrize("command,args", [("runtime_pm", ("sleep", 1)),
                                          ("system_sleep", ("disk", 0))])
def test_bad_arguments_are_refused(commands, command, args):
    with pytest.raises(RequestError) as info:
        getattr(commands, command)(*args)
    assert info.value.errno == errno.EINVAL


def test_no_nic_selected_is_enodev(root):
    with pytest.raises(GuestError) as info:
        power.PowerCommands(FakeAgent(root, bdf=None)).runtime_pm("auto", 1)
    assert info.value.errno == errno.ENODEV


def test_sleep_states_reads_what_the_kernel_offers(root, commands):
    assert commands.sleep_states() == {"states": ["freeze", "mem", "disk"],
                                       "mem_sleep": ["s2idle", "[deep]"], "s3": True,
                                       "s2idle": True, "keyboard_wakeup": "disabled"}
    (root / "sys/power/mem_sleep").write_text("[s2idle]\n")
    assert commands.sleep_states()["s3"] is False


def test_mem_sleeps_in_a_child_and_is_collected(root, commands):
    started = commands.system_sleep("mem", 0)
    assert started["state"] == "mem" and started["offered"]["s3"]
    assert (root / "sys/power/mem_sleep").read_text() == "deep"
    done = commands.sleep_result(5)
    assert (root / "sys/power/state").read_text() == "mem"    # the child's write
    assert (done["state"], done["errno"]) == ("mem", 0)
    assert done["stats"]["success"] == 2 and done["stats"]["pm_wakeup_irq"] is None
    assert done["boottime_s"] >= 0 and commands.child is None
    assert (root / "dev/console").read_text() == "\nMSIXLAB-RESUMED: seq=1 state=mem errno=0\n"
    assert commands.system_sleep("mem", 0)["seq"] == 2 and commands.sleep_result(5)["errno"] == 0


def test_freeze_makes_the_keyboard_a_wakeup_source_for_the_sleep_only(root, commands):
    keyboard = root / power.KEYBOARD_WAKEUP
    commands.system_sleep("freeze", 0)
    assert keyboard.read_text() == "enabled"
    assert commands.sleep_result(5)["errno"] == 0
    assert keyboard.read_text() == "disabled"


def test_a_refused_write_is_reported_with_its_errno(root, commands):
    commands.state_file = str(root / "nowhere/state")       # the write fails: ENOENT
    commands.system_sleep("mem", 0)
    done = commands.sleep_result(5)
    assert done["errno"] == errno.ENOENT and done["message"]
    assert "seq=1 state=mem errno=2" in (root / "dev/console").read_text()
    assert commands.child is None


def test_a_second_sleep_before_the_first_is_collected_is_ebusy(commands):
    commands.system_sleep("mem", 200)
    with pytest.raises(GuestError) as info:
        commands.system_sleep("freeze", 0)
    assert info.value.errno == errno.EBUSY
    assert commands.sleep_result(5)["errno"] == 0


def test_sleep_result_waits_bounded_for_a_child_still_asleep(commands):
    commands.system_sleep("mem", 2000)              # the child waits 2 s before writing
    with pytest.raises(GuestError) as info:
        commands.sleep_result(1)
    assert info.value.errno == errno.ETIMEDOUT and "has not ended" in info.value.message
    assert commands.sleep_result(10)["errno"] == 0


def test_sleep_result_without_a_sleep_is_einval(commands):
    with pytest.raises(GuestError) as info:
        commands.sleep_result(1)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("state,edit,why", [
    ("mem", ("sys/power/mem_sleep", "[s2idle]\n"), "no S3"),
    ("freeze", ("sys/power/state", "mem\n"), "no suspend-to-idle"),
    ("freeze", (power.KEYBOARD_WAKEUP, None), "no keyboard"),
])
def test_a_state_the_kernel_does_not_offer_is_enotsup(root, commands, state, edit, why):
    path, text = edit
    if text is None:
        (root / path).unlink()
    else:
        (root / path).write_text(text)
    with pytest.raises(GuestError) as info:
        commands.system_sleep(state, 0)
    assert info.value.errno == errno.ENOTSUP and why in info.value.message
    assert commands.child is None

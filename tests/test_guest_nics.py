"""The guest agent with several NICs bound, and commands that must not tear down on bad input.

On the host there is no msixlab.ko: ``Nic`` stands in for ``agent.guest.driver.Driver`` (the
``opener`` the agent takes), a device node under a directory tree that is bound to one PCI
address.  The tree stands in for / (the /dev nodes, the driver's sysfs bind/unbind files);
the test plays the kernel by creating and removing the nodes.  Every request goes through
the real command table and session.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from agent.guest import binding
from agent.guest.commands import Agent
from agent.guest.protocol import Session

NIC1, NIC2 = "0000:01:00.0", "0000:02:00.0"


class Nic:
    """A driver file on a fake device node; ``BOUND`` maps node paths to addresses."""

    BOUND: dict[str, str] = {}

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "no such device", path)
        self.path = path
        self.closed = False

    def info(self) -> dict[str, object]:
        return {"bdf": self.BOUND[self.path], "path": self.path}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def tree(tmp_path, monkeypatch):
    (tmp_path / "dev").mkdir()
    (tmp_path / binding.DRIVER_DIR).mkdir(parents=True)
    for name, bdf in (("msixlab0", NIC1), ("msixlab1", NIC2)):
        (tmp_path / "dev" / name).touch()
        Nic.BOUND[str(tmp_path / "dev" / name)] = bdf
    monkeypatch.setattr(binding, "WAIT_S", 0.3)
    return tmp_path


@pytest.fixture
def agent(tree):
    return Agent(root=str(tree), opener=Nic)


def ask(agent: Agent, cmd: str, **args) -> dict:
    session = Session(agent.commands())
    out = session.receive_data(json.dumps({"id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
    return json.loads(out)


def test_select_nic_switches_and_keeps_the_other_open(agent):
    assert ask(agent, "info")["result"]["bdf"] == NIC1
    assert ask(agent, "select_nic", bdf=NIC2)["result"]["bdf"] == NIC2
    assert ask(agent, "info")["result"]["bdf"] == NIC2
    assert ask(agent, "select_nic", bdf=NIC1)["result"]["bdf"] == NIC1
    assert not any(driver.closed for driver, _ in agent.others.values())


def test_select_nic_of_an_unknown_address_keeps_the_selected_nic(agent):
    reply = ask(agent, "select_nic", bdf="0000:09:00.0")
    assert reply["error"]["code"] == "ENODEV" and reply["error"]["argument"] == "bdf"
    assert "0000:09:00.0" in reply["error"]["message"]
    assert ask(agent, "info")["result"]["bdf"] == NIC1      # still served, still NIC 1
    assert not agent.driver.closed


def test_unbind_and_bind_of_one_nic_while_another_stays_bound(agent, tree):
    ask(agent, "select_nic", bdf=NIC2)
    (tree / "dev/msixlab1").unlink()                 # the kernel drops the node at once
    reply = ask(agent, "unbind")
    assert reply.get("result") == {"unbound": NIC2}, reply     # not waiting for msixlab0 to go
    assert (tree / binding.DRIVER_DIR / "unbind").read_text() == NIC2
    (tree / "dev/msixlab2").touch()                  # the rebound NIC's new node
    Nic.BOUND[str(tree / "dev/msixlab2")] = NIC2
    assert ask(agent, "bind")["result"]["bdf"] == NIC2        # not msixlab0, NIC 1's node
    assert ask(agent, "select_nic", bdf=NIC1)["result"]["bdf"] == NIC1


def test_await_device_gone_waits_for_its_own_node_only(agent, tree):
    ask(agent, "select_nic", bdf=NIC2)
    (tree / "dev/msixlab1").unlink()
    assert ask(agent, "await_device", present=False, timeout_s=1)["result"] == {"devices": []}
    (tree / "dev/msixlab1").touch()                  # hot-added again
    assert ask(agent, "await_device", present=True, timeout_s=1)["result"]["bdf"] == NIC2


def test_reload_module_of_a_missing_file_unloads_nothing(agent, tree):
    reply = ask(agent, "reload_module", path="/nonexistent/msixlab.ko")
    assert (reply["error"]["code"], reply["error"]["argument"]) == ("ENOENT", "path")
    assert "nothing was unloaded" in reply["error"]["message"]
    assert not agent.driver.closed and ask(agent, "info")["result"]["bdf"] == NIC1


def test_reload_module_of_a_file_that_is_no_module_unloads_nothing(agent, tree):
    (tree / "notes.txt").write_text("not a kernel module\n")
    reply = ask(agent, "reload_module", path="/notes.txt")
    assert (reply["error"]["code"], reply["error"]["argument"]) == ("ENOEXEC", "path")
    assert not agent.driver.closed and ask(agent, "info")["result"]["bdf"] == NIC1


def test_await_device_present_while_one_is_open_closes_the_old_file(agent, tree):
    old = agent.driver
    assert ask(agent, "await_device", present=True, timeout_s=1)["result"]["bdf"] == NIC1
    assert old.closed and agent.driver is not old


def test_bind_after_selecting_another_nic_keeps_that_one_open(agent, tree):
    ask(agent, "select_nic", bdf=NIC2)
    (tree / "dev/msixlab1").unlink()
    ask(agent, "unbind")
    nic1 = ask(agent, "select_nic", bdf=NIC1)["result"]
    assert nic1["bdf"] == NIC1
    first = agent.driver
    (tree / "dev/msixlab1").touch()
    assert ask(agent, "bind")["result"]["bdf"] == NIC2
    assert not first.closed and agent.others[NIC1][0] is first   # kept, not leaked
    assert ask(agent, "select_nic", bdf=NIC1)["result"]["bdf"] == NIC1

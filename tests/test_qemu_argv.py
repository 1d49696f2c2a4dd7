"""The QEMU argv builder: escaping, the shared-memory backend vfio-user needs, devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.host.lab.qemu_argv import GuestSpec, Share, build_argv, escape, kernel_cmdline


def spec(**kw) -> GuestSpec:
    base = dict(qemu=["qemu"], kernel=Path("/k/vmlinuz"), initramfs=Path("/k/initrd"),
                console_log=Path("/r/console.log"), qmp_socket=Path("/run/x/qmp.sock"),
                shares=(Share("rootfs", Path("/img,1/rootfs")),))
    base.update(kw)
    return GuestSpec(**base)


def option_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_escape_doubles_commas():
    assert escape("/a,b,,c") == "/a,,b,,,,c"


def test_memory_is_shared_memfd_and_tcg_is_default():
    argv = build_argv(spec(memory_mb=512))
    assert "memory-backend-memfd,id=mem0,size=512M,share=on" in option_after(argv, "-object")
    assert option_after(argv, "-machine") == ["q35,memory-backend=mem0"]
    assert option_after(argv, "-accel") == ["tcg,thread=multi"]
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_share_path_with_comma_is_escaped():
    fsdev = option_after(build_argv(spec()), "-fsdev")
    assert fsdev == ["local,id=fs_rootfs,path=/img,,1/rootfs,security_model=none,readonly=on"]


def test_nics_sit_behind_root_ports_as_json():
    argv = build_argv(spec(nic_sockets=(Path("/run/x/nic0.sock"), Path("/run/x/nic1.sock"))))
    devices = option_after(argv, "-device")
    nics = [json.loads(d) for d in devices if d.startswith("{")]
    assert [n["bus"] for n in nics] == ["rp0", "rp1"]
    assert nics[1]["socket"] == {"type": "unix", "path": "/run/x/nic1.sock"}
    assert "pcie-root-port,id=rp1,chassis=2,slot=2" in devices


def test_agent_port_and_kmod_reach_the_guest():
    s = spec(agent_socket=Path("/run/x/agent.sock"), kmod="/opt/kmod/msixlab.ko", mode="agent")
    argv = build_argv(s)
    assert any("name=org.msixlab.agent" in d for d in option_after(argv, "-device"))
    assert "msixlab.mode=agent" in kernel_cmdline(s).split()
    assert "msixlab.kmod=/opt/kmod/msixlab.ko" in option_after(argv, "-append")[0].split()


def test_unknown_accelerator_is_refused_by_name():
    with pytest.raises(ValueError, match="'hvf'"):
        build_argv(spec(accel="hvf"))


@pytest.mark.parametrize("interactive,chardev", [
    (False, "file,id=console0,path=/r/console.log"),
    (True, "stdio,id=console0,mux=on,signal=off"),
])
def test_console_goes_to_a_file_or_the_terminal(interactive, chardev):
    argv = build_argv(spec(interactive=interactive))
    assert chardev in option_after(argv, "-chardev")
    assert option_after(argv, "-serial") == ["chardev:console0"]
    assert option_after(argv, "-mon") == (["chardev=console0,mode=readline"] if interactive else [])


@pytest.mark.parametrize("sleep_safe", [False, True])
def test_sleep_safe_puts_every_virtio_device_behind_a_no_soft_reset_root_port(sleep_safe):
    s = spec(shares=(Share("rootfs", Path("/img")), Share("msixlab", Path("/src"))),
             agent_socket=Path("/run/x/agent.sock"), nic_sockets=(Path("/run/x/nic0.sock"),),
             sleep_safe=sleep_safe)
    devices = option_after(build_argv(s), "-device")
    virtio = [d for d in devices if d.startswith("virtio-")]
    assert len(virtio) == 3                              # two 9p shares, the agent's serial
    ports = [d for d in devices if d.startswith("pcie-root-port,id=rpsleep")]
    if not sleep_safe:
        assert not ports and not any("bus=" in d or "no-soft-reset" in d for d in virtio)
        return
    assert ports == [f"pcie-root-port,id=rpsleep{k},chassis={32 + k},slot={32 + k},"
                     f"addr={0x10 + k:#x}" for k in range(3)]
    for k, device in enumerate(virtio):
        assert device.endswith(f",bus=rpsleep{k},x-pcie-pm-no-soft-reset=on")
    assert "pcie-root-port,id=rp0,chassis=1,slot=1" in devices      # the NIC's, unchanged

"""The pytest plugin as a user meets it: test files in a temporary directory outside the
project, run by a separate pytest that finds the plugin through its entry point, against
real guests.  The first file is the one docs/writing-tests.md shows (copied from the page),
run serially and with ``-n 2``; the others leave a mess for the known state to clean and
oops the guest kernel.  (Bad options, which boot nothing, are in tests/test_testlab.py.)"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.host.lab.guest_spec import EXTRA_ENV
from agent.host.rundirs import PROJECT_DIR
from images import recipe
from images.cache import exclusive
from msixlab_common.removal import remove_tree

pytestmark = pytest.mark.guest
DOC = PROJECT_DIR / "docs" / "writing-tests.md"
SPLAT_SRC = Path(__file__).parent / "splat_kmod"


def doc_test_files() -> dict[str, str]:
    """The python blocks of docs/writing-tests.md whose first line names a test file."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    files = {}
    for block in blocks:
        first = block.splitlines()[0]
        if re.fullmatch(r"# (test_\w+\.py)", first):
            files[first[2:]] = block
    return files


def run_user_pytest(where: Path, files: dict[str, str], *args: str,
                    timeout: float = 900) -> tuple[subprocess.CompletedProcess, dict]:
    """Write ``files`` into ``where`` (outside the project) and run pytest there as a
    user would; return the process and {test name: outcome} from its JUnit file."""
    for name, text in files.items():
        (where / name).write_text(text)
    junit = where / "junit.xml"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                           f"--junitxml={junit}", "--msixlab-results", str(where / "labs"),
                           *args], cwd=where, env=env, capture_output=True, text=True,
                          timeout=timeout)
    outcomes = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    return done, outcomes


@pytest.fixture
def outside(tmp_path) -> Path:
    where = tmp_path / "my-project"
    where.mkdir()
    assert PROJECT_DIR not in where.resolve().parents
    return where


def test_the_documented_test_file_passes_from_outside_the_project(outside):
    files = doc_test_files()
    assert list(files) == ["test_my_msix.py"]
    done, outcomes = run_user_pytest(outside, files)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert len(outcomes) == 5 and set(outcomes.values()) == {"passed"}, outcomes
    assert "msixlab: flavor" in done.stdout                  # the plugin's header
    (lab,) = (outside / "labs").iterdir()                     # one boot served all tests
    assert (lab / "console.log").stat().st_size > 0


def test_xdist_gives_each_worker_its_own_lab(outside):
    done, outcomes = run_user_pytest(outside, doc_test_files(), "-n", "2")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert len(outcomes) == 5 and set(outcomes.values()) == {"passed"}, outcomes
    labs = sorted(p.name for p in (outside / "labs").iterdir())
    assert [name.split("-")[1] for name in labs] == ["gw0", "gw1"], labs


MESS = '''
import pytest
from agent.host.testkit.lab import wait_until

def test_1_leaves_a_mess(msixlab_guest, msixlab_device):
    kept = msixlab_guest.request("alloc_group", min=4, max=4)
    freed = msixlab_guest.request("alloc_group", min=2, max=2, start=30)
    msixlab_guest.request("free_group", group=freed["group"])
    msixlab_device.request("raise", vectors=[30, 31])     # held by QEMU behind the mask
    msixlab_device.request("raise", vectors=[50])         # pending in the device
    msixlab_device.request("fault", kind="drop_raise", count=0)
    assert msixlab_device.request("state")["vectors"][50]["pending"]

@pytest.mark.parametrize("start", [30, 50])
def test_2_finds_the_known_state(msixlab_guest, msixlab_device, start):
    assert [g["group"] for g in msixlab_guest.request("list_groups")] == [0]
    state = msixlab_device.request("state")
    assert state["faults"] == [] and not any(v["pending"] for v in state["vectors"])
    group = msixlab_guest.request("alloc_group", min=2, max=2, start=start)
    # nothing left over arrives on the new vectors ...
    for index in group["indices"]:
        assert msixlab_guest.request("vector", index=index)["total"] == 0
    # ... and raises are delivered again (the drop fault is gone)
    msixlab_device.request("raise", vectors=[start])
    wait_until(lambda: msixlab_guest.request("vector", index=start)["total"] == 1, 10,
               "the raise to be counted")

def test_3_lab_was_restored_not_rebooted(msixlab_lab):
    assert msixlab_lab.boots == 1 and msixlab_lab.restores >= 3, msixlab_lab.reboot_reasons
'''


def test_known_state_is_restored_between_tests(outside):
    done, outcomes = run_user_pytest(outside, {"test_mess.py": MESS})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert len(outcomes) == 4 and set(outcomes.values()) == {"passed"}, outcomes


LEFTOVERS = '''
import time

def test_1_leaves_a_timer_and_an_offline_cpu(msixlab_guest, msixlab_device):
    msixlab_device.request("fault", kind="delay_raise", vector=0, delay_ms=2000)
    assert msixlab_device.request("raise", vectors=[0])["results"][0]["outcome"] == "delayed"
    assert msixlab_guest.request("cpu_online", cpu=1, online=False)["online_cpus"] == [0]

def test_2_no_timer_fires_and_every_cpu_is_online(msixlab_guest, msixlab_device):
    # /proc/interrupts has a column per online CPU
    assert msixlab_guest.request("interrupts")["cpus"] == ["CPU0", "CPU1"]
    assert msixlab_device.request("state")["delayed"] == []
    time.sleep(2.5)                                   # past test 1's delay
    state = msixlab_device.request("state")
    assert [v["index"] for v in state["vectors"] if v["delivered"] or v["pending"]] == []
    assert msixlab_guest.request("vector", index=0)["total"] == 0
'''


def test_timers_and_offline_cpus_do_not_outlive_their_test(outside):
    done, outcomes = run_user_pytest(outside, {"test_leftovers.py": LEFTOVERS})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert outcomes == {"test_1_leaves_a_timer_and_an_offline_cpu": "passed",
                        "test_2_no_timer_fires_and_every_cpu_is_online": "passed"}, outcomes


def splat_module(image, flavor: str) -> tuple[Path, str]:
    """Build (once per kernel and source) the module that oopses on load; return the
    directory to share with the guest (``$MSIXLAB_GUEST_EXTRA``) and the module's path
    inside the guest."""
    sources = sorted(SPLAT_SRC.iterdir())
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    kernel = image.kernel(flavor).version
    out = PROJECT_DIR / "build" / "test-kmod" / f"splat-{kernel}-{digest}"
    if not (out / "msixlab.ko").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(out.parent / (out.name + ".lock"), timeout=600, what="the splat module build"):
            if not (out / "msixlab.ko").is_file():
                src = out.with_name(out.name + ".src")
                remove_tree(src, ignore_errors=True)
                shutil.copytree(SPLAT_SRC, src)
                for name in ("build.sh", "Makefile"):
                    shutil.copy(PROJECT_DIR / "agent" / "kmod" / name, src / name)
                done = subprocess.run(["sh", str(src / "build.sh"), str(image.rootfs), str(out)],
                                      env={**os.environ, "MSIXLAB_KVER": kernel},
                                      capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, done.stderr[-3000:]
    return out, "/opt/msixlab-extra/msixlab.ko"


def test_a_kernel_oops_during_a_test_fails_it_with_the_console(image, outside, monkeypatch):
    shared, module = splat_module(image, recipe.DEFAULT_FLAVOR)
    monkeypatch.setenv(EXTRA_ENV, str(shared))          # the user's pytest inherits it
    files = {"test_oops.py": f'''
from agent.host.testkit.lab import CommandError

def test_1_oopses_but_asserts_nothing(msixlab_guest):
    try:
        msixlab_guest.request("reload_module", path={module!r}, timeout=60)
    except CommandError:
        pass                       # insmod died with the oops; the test itself "passes"

def test_2_runs_on_a_fresh_lab(msixlab_lab, msixlab_guest):
    assert msixlab_lab.boots == 2
    assert "BUG" in msixlab_lab.reboot_reasons[0] or "oops" in msixlab_lab.reboot_reasons[0]
    assert [g["group"] for g in msixlab_guest.request("list_groups")] == [0]
'''}
    done, outcomes = run_user_pytest(outside, files)
    assert outcomes == {"test_1_oopses_but_asserts_nothing": "failure",
                        "test_2_runs_on_a_fresh_lab": "passed"}, done.stdout[-4000:]
    assert done.returncode == 1
    assert "the guest kernel reported" in done.stdout
    assert "msixlab guest console" in done.stdout
    assert "kernel BUG at" in done.stdout and "msixlab.c" in done.stdout

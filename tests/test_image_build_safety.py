"""No host data loss from the image build or ``image clean``; clean waits for runs.

Each case runs ``msixlab image build`` / ``image clean`` as a real process, with a private
``MSIXLAB_CACHE``, in a private mount namespace (tests/mountns.py) whose ``/dev/shm`` is a
stand-in tmpfs holding a canary.  The build command is a stand-in ``mmdebstrap`` first in
``PATH`` that mounts under its target what mmdebstrap's root mode mounts (proc, sysfs and
a bind of ``/dev/shm``), says so, and works on.  Killed mid-build (SIGTERM, SIGKILL),
rerun and cleaned, the canary must survive and nothing may stay mounted or running.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from images.build import ensure_image, image_key
from images.lock import holders, release_all
from msixlab_common.deadline import wait_until
from msixlab_common.removal import MountsInTheWay

from mountns import in_private_mount_ns, mount, mounted_under, needs_mount_ns

ROOT = Path(__file__).resolve().parents[1]
MSIXLAB = [sys.executable, "-m", "agent.host.cli"]
SLOW = 120      # s: bound of each wait on an msixlab process (a loaded 2-CPU host)

FAKE_MMDEBSTRAP = r"""#!/bin/sh
# A stand-in for mmdebstrap in root mode: the mounts it makes under its target, then work.
for arg; do case $arg in */rootfs) target=$arg;; esac; done
mkdir -p "$target/proc" "$target/sys" "$target/dev/shm"
mount -t proc proc "$target/proc"
mount -t sysfs sysfs "$target/sys"
mount --bind /dev/shm "$target/dev/shm"
echo "fake mmdebstrap: mounted under $target"
echo "$target" > "$FAKE_MARK"
[ "$FAKE_MODE" = fail ] && exit 1
exec sleep "$FAKE_SLEEP"
"""


class Rig:
    """The stand-ins of one case: cache, ``/dev/shm`` canary, fake mmdebstrap."""

    def __init__(self, base: Path):
        self.base, self.cache = base, base / "cache"
        self.bin, self.mark = base / "bin", base / "mounted"
        self.sleep = f"600.{os.getpid() % 100000:05d}{time.monotonic_ns() % 1000:03d}"
        self.procs: list[subprocess.Popen] = []
        self.bin.mkdir()
        fake = self.bin / "mmdebstrap"
        fake.write_text(FAKE_MMDEBSTRAP)
        fake.chmod(0o755)
        mount("-t", "tmpfs", "standin-shm", "/dev/shm")     # this namespace's only
        Path("/dev/shm/canary").write_text("host data")

    def env(self, mode: str = "work") -> dict[str, str]:
        """The environment of an msixlab started by this case."""
        return dict(os.environ, MSIXLAB_CACHE=str(self.cache), MSIXLAB_MIRROR="file:///nowhere/debian",
                    PATH=f"{self.bin}:{os.environ['PATH']}", FAKE_MARK=str(self.mark),
                    FAKE_MODE=mode, FAKE_SLEEP=self.sleep, PYTHONPATH=str(ROOT))

    def start(self, *args: str, mode: str = "work") -> subprocess.Popen:
        """``msixlab ARGS`` started, its output in ``base/<args>.log``."""
        with open(self.base / ("-".join(args) + ".log"), "a") as out:
            proc = subprocess.Popen([*MSIXLAB, *args], cwd=ROOT, env=self.env(mode), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc) -> None:
        """Whatever the case's outcome, nothing it started outlives it."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in self.fake_pids():
            os.kill(pid, signal.SIGKILL)

    def run(self, *args: str, mode: str = "work", timeout: float = SLOW) -> int:
        """``msixlab ARGS`` run to its end; its exit code."""
        return self.start(*args, mode=mode).wait(timeout)

    def log(self, *args: str) -> str:
        """What ``msixlab ARGS`` printed."""
        return (self.base / ("-".join(args) + ".log")).read_text()

    def mid_build(self) -> tuple[subprocess.Popen, list[str]]:
        """``msixlab image build`` once the fake has mounted, and the mounts of the build
        seen in this namespace meanwhile (there must be none: they are the build's own)."""
        proc = self.start("image", "build")
        wait_until(lambda: self.mark.exists() or proc.poll() is not None, SLOW,
                   "the stand-in mmdebstrap's mounts")
        assert proc.poll() is None, self.log("image", "build")
        return proc, mounted_under(self.cache)

    def fake_pids(self) -> list[int]:
        """The stand-in mmdebstraps (their ``sleep``) still running."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if self.sleep.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
        return found

    def assert_safe(self) -> None:
        """The canary survived; nothing is mounted in the cache or left running."""
        assert Path("/dev/shm/canary").read_text() == "host data"
        assert mounted_under(self.cache) == []
        wait_until(lambda: not self.fake_pids(), SLOW, "the stand-in build to be gone")

    def build_dirs(self) -> list[str]:
        """The build directories left in the cache."""
        images = self.cache / "images"
        return sorted(p.name for p in images.iterdir() if p.name.startswith(".tmp-"))


def _sigterm_mid_build(rig: Rig) -> None:
    proc, leaked = rig.mid_build()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(SLOW) == 125, rig.log("image", "build")
    rig.assert_safe()
    assert leaked == [], "the build's mounts were in the host's namespace"
    assert rig.build_dirs() == [], "the build's own directory is removed"
    assert rig.run("image", "clean") == 0, rig.log("image", "clean")
    rig.assert_safe()


def _sigkill_mid_build_then_rerun_and_clean(rig: Rig) -> None:
    proc, leaked = rig.mid_build()
    proc.kill()
    proc.wait(SLOW)
    assert Path("/dev/shm/canary").read_text() == "host data"
    assert leaked == [], "the build's mounts were in the host's namespace"
    rig.assert_safe()                       # the build died with msixlab, mounts and all
    left = rig.build_dirs()
    assert len(left) == 1, left             # SIGKILL left its directory: the rerun reaps it
    assert rig.run("image", "build", mode="fail") == 125
    assert left[0] not in rig.build_dirs(), rig.log("image", "build")
    rig.assert_safe()
    assert rig.run("image", "clean") == 0, rig.log("image", "clean")
    assert sorted(p.name for p in (rig.cache / "images").iterdir()) == [f"{image_key()}.lock"]
    rig.assert_safe()


def _build_itself_killed(rig: Rig) -> None:
    """SIGKILL of the build command itself (not of msixlab): a failed step, 125, and the
    same cleanup."""
    proc, leaked = rig.mid_build()
    for pid in rig.fake_pids():
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(SLOW) == 125
    assert "mmdebstrap exited with status" in rig.log("image", "build")
    rig.assert_safe()
    assert leaked == [] and rig.build_dirs() == []


def _dead_build_with_mounts_in_the_host_namespace(rig: Rig) -> None:
    """What a build killed before containment left: its mounts in the host's namespace.
    The rerun and the clean unmount them (a dead build's are ours) and never delete
    through them."""
    for action in ("build", "clean"):
        dead = rig.cache / "images" / f".tmp-{image_key()}-4194304" / "rootfs"
        (dead / "dev" / "shm").mkdir(parents=True)
        (dead / "proc").mkdir()
        mount("--bind", "/dev/shm", str(dead / "dev" / "shm"))
        mount("-t", "proc", "proc", str(dead / "proc"))
        code = rig.run("image", action, mode="fail")
        assert code == (125 if action == "build" else 0), rig.log("image", action)
        assert not dead.parent.exists()
        rig.assert_safe()


def _clean_refuses_a_mount_no_build_made(rig: Rig) -> None:
    image = rig.cache / "images" / image_key()
    (image / "rootfs" / "mnt").mkdir(parents=True)
    (image / "manifest.json").write_text("{}")
    mount("--bind", "/dev/shm", str(image / "rootfs" / "mnt"))
    assert rig.run("image", "clean") == 125
    assert f"{image}/rootfs/mnt" in rig.log("image", "clean").replace("\n", "")
    assert (image / "manifest.json").exists(), "nothing is deleted before refusing"
    assert Path("/dev/shm/canary").read_text() == "host data"


@needs_mount_ns
@pytest.mark.parametrize("case", [_sigterm_mid_build, _sigkill_mid_build_then_rerun_and_clean,
                                  _build_itself_killed,
                                  _dead_build_with_mounts_in_the_host_namespace,
                                  _clean_refuses_a_mount_no_build_made])
def test_no_host_data_loss(tmp_path, case):
    in_private_mount_ns(_with_rig, case, tmp_path, timeout=4 * SLOW)


def _with_rig(case, base: Path) -> None:
    with Rig(base) as rig:
        case(rig)


def _fake_image(cache: Path) -> Path:
    image = cache / "images" / image_key()
    (image / "rootfs").mkdir(parents=True)
    (image / "manifest.json").write_text(json.dumps({"key": image_key()}))
    return image


def test_ensure_image_holds_the_image_lock_shared_for_the_process(tmp_path):
    _fake_image(tmp_path)
    try:
        ensure_image(root=tmp_path)
        held = holders(tmp_path / "images" / f"{image_key()}.lock")
        assert len(held) == 1, held
        assert held[0].startswith(f"pid {os.getpid()} (") and held[0].endswith(", read)")
    finally:
        release_all()


def test_a_dead_build_that_cannot_be_reaped_does_not_stop_a_run(tmp_path, monkeypatch, caplog):
    from images import build
    _fake_image(tmp_path)
    dead = tmp_path / "images" / f".tmp-{image_key()}-4194304"
    dead.mkdir()

    def refuse(path, **kw):
        raise MountsInTheWay(path, [str(path / "rootfs" / "proc")])
    monkeypatch.setattr(build, "remove_tree", refuse)
    try:
        assert ensure_image(root=tmp_path).rootfs == tmp_path / "images" / image_key() / "rootfs"
    finally:
        release_all()
    assert dead.is_dir() and "could not remove what a dead build" in caplog.text


def test_clean_locks_every_image_and_build_even_without_a_lock_file(tmp_path):
    from images.cache import _image_keys
    images = tmp_path / "images"
    for name in ("trixie-aaa", ".tmp-trixie-bbb-12"):         # an image, a build, no locks
        (images / name).mkdir(parents=True)
    for name in ("trixie-ccc.lock", "notes.txt"):
        (images / name).touch()
    assert _image_keys(images) == ["trixie-aaa", "trixie-bbb", "trixie-ccc"]


HOLD_IMAGE = ("import sys, time; from pathlib import Path; from images.build import ensure_image;"
              "ensure_image(root=Path(sys.argv[1])); print('holding', flush=True); time.sleep(600)")


def test_clean_waits_for_a_run_using_the_image_and_refuses_at_the_bound(tmp_path):
    image = _fake_image(tmp_path / "cache")
    env = dict(os.environ, MSIXLAB_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    run = subprocess.Popen([sys.executable, "-c", HOLD_IMAGE, str(tmp_path / "cache")], cwd=ROOT,
                           env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([run.stdout], [], [], SLOW)[0], "the run never took the image"
        assert run.stdout.readline() == "holding\n"
        refused = subprocess.run([*MSIXLAB, "image", "clean", "--wait", "1"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=SLOW)
        assert refused.returncode == 125
        said = " ".join(refused.stderr.split())
        assert "waiting" in said and f"{image_key()}.lock" in said and f"pid {run.pid}" in said
        assert (image / "manifest.json").exists()
        clean = subprocess.Popen([*MSIXLAB, "image", "clean", "--wait", str(SLOW)], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.5)
        assert clean.poll() is None and (image / "manifest.json").exists()
        run.kill()
        assert clean.wait(SLOW) == 0
        assert not image.exists()
    finally:
        run.kill()
        run.wait()

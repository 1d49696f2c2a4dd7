"""Results are never written through another user's directory or symbolic link (issue 22,
part 3): a results root whose path another user controls is refused before anything is
made in it.  The other user is ``nobody``, acting through setpriv; root only."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.host.rundirs import PROJECT_DIR, RunDirs, check_results_root
from agent.host.verdict.outcome import CouldNotJudge, Outcome
from msixlab_common.removal import remove_tree

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to act as another user")


def as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    *argv], check=True, timeout=30)


@pytest.fixture
def place():
    """A directory other users can reach (pytest's tmp_path is 0700), removed after."""
    where = Path(tempfile.mkdtemp(prefix="msixlab-safety-"))
    os.chmod(where, 0o755)
    yield where
    remove_tree(where)


def refused(root: Path, needle: str) -> CouldNotJudge:
    with pytest.raises(CouldNotJudge) as info:
        RunDirs.create(root)
    assert info.value.outcome is Outcome.HOST_RESOURCE and info.value.outcome.exit_code == 125
    assert str(root) in str(info.value) and needle in str(info.value), str(info.value)
    with pytest.raises(CouldNotJudge):
        check_results_root(root)
    return info.value


def test_another_users_results_symlink_in_a_sticky_dir_is_not_followed(place):
    public, victim = place / "public", place / "victim"
    public.mkdir(mode=0o1777)
    os.chmod(public, 0o1777)
    victim.mkdir()
    as_nobody("ln", "-s", str(victim), str(public / "results"))
    refused(public / "results", f"is a symbolic link owned by uid {NOBODY}")
    assert list(victim.iterdir()) == []                     # nothing was made through it


def test_a_results_dir_inside_another_users_directory_is_refused(place):
    theirs, victim = place / "theirs", place / "victim"
    theirs.mkdir()
    victim.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    # they could rename our run dir away and put a symlink farm in its place
    refused(theirs / "results", f"{theirs} is owned by uid {NOBODY}")
    assert list(theirs.iterdir()) == []                     # refused before making anything


def test_a_results_root_owned_by_another_user_or_writable_by_others_is_refused(place):
    theirs = place / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    refused(theirs, f"{theirs} is owned by uid {NOBODY}")
    shared = place / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    refused(shared / "results", "writable by other users (mode 777)")


def test_our_sticky_root_and_our_own_symlink_are_fine(place):
    ours = place / "ours"
    ours.mkdir()
    os.chmod(ours, 0o1777)                                  # sticky and ours: allowed
    with RunDirs.create(ours) as dirs:
        assert dirs.results.parent == ours and dirs.results.is_dir()
        # the sticky bit keeps another user from swapping our run dir for theirs
        with pytest.raises(subprocess.CalledProcessError):
            as_nobody("mv", str(dirs.results), str(ours / "moved"))
        assert dirs.results.is_dir() and not dirs.results.is_symlink()
    (place / "link").symlink_to(ours)
    with RunDirs.create(place / "link" / "sub") as dirs:
        assert (ours / "sub" / dirs.run_id).is_dir()


def test_an_artifact_is_never_written_through_a_symlink(tmp_path):
    from msixlab_common.artifacts import create_artifact, write_artifact
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "qemu.log").symlink_to(victim)
    with pytest.raises(OSError) as info:
        write_artifact(tmp_path / "qemu.log", "overwritten")
    assert info.value.errno == errno.ELOOP and victim.read_text() == "keep me"
    os.mkfifo(tmp_path / "fifo")                            # never blocks, never written
    with pytest.raises(OSError) as info:
        create_artifact(tmp_path / "fifo")
    assert info.value.errno in (errno.ENXIO, errno.EINVAL)   # no reader, or not a file
    (tmp_path / "log").write_text("an older, longer text")
    assert write_artifact(tmp_path / "log", "new").read_text() == "new"


def test_msixlab_refuses_the_results_root_before_anything_starts(place):
    public = place / "public"
    public.mkdir()
    os.chmod(public, 0o1777)
    as_nobody("ln", "-s", str(place), str(public / "results"))
    done = subprocess.run([sys.executable, "-m", "agent.host", "run", "--dry-run", "--results",
                           str(public / "results")], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 125, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())     # the console wraps lines
    assert "host_resource" in said and f"a symbolic link owned by uid {NOBODY}" in said, said

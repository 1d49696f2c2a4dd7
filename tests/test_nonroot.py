"""msixlab as a normal user: the image build's user-namespace needs (images/userns.py), each
missing piece a named error with its fix; a rootfs owned by subordinate ids handed back to
the user; and a failed driver build whose error names its reason on its first line
(agent/host/kernel/kmod.py), never an empty one."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.host.kernel import kmod
from agent.host.verdict.outcome import Outcome, RunVerdict
from images import userns
from images.errors import ImageError
from msixlab_common.removal import remove_tree

TEST_USER = os.environ.get("MSIXLAB_TEST_USER", "msixlab-tester")


def test_subordinate_ids_are_found_by_name_or_number(tmp_path, monkeypatch):
    monkeypatch.setattr(userns, "_user", lambda: "kdev")
    table = tmp_path / "subuid"
    table.write_text("other:100000:65536\nkdev:165536:65536\n")
    assert userns.subordinate("uid", table) == (165536, 65536)
    table.write_text(f"{os.getuid()}:200000:1000\n")
    assert userns.subordinate("uid", table) == (200000, 1000)
    table.write_text("other:100000:65536\n")
    assert userns.subordinate("uid", table) is None
    assert userns.subordinate("uid", tmp_path / "none") is None


def test_no_subordinate_ids_is_a_named_error_with_the_fix(monkeypatch):
    monkeypatch.setattr(userns, "subordinate", lambda kind, path=None: None)
    monkeypatch.setattr(userns, "_user", lambda: "kdev")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageError, match="/etc/subuid and /etc/subgid give kdev no "
                                         "subordinate ids.*usermod --add-subuids"):
        userns.check_unshare_mode()


def test_user_namespaces_refused_is_a_named_error_with_the_fix(monkeypatch):
    """What Ubuntu 24.04 answers (newuidmap or unshare refused): the probe's last line and
    the sysctl to allow it."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(userns, "_as_owner", lambda argv: [
        sys.executable, "-c", "import sys; sys.exit('unshare: write failed "
                              "/proc/self/uid_map: Operation not permitted')"])
    with pytest.raises(ImageError) as err:
        userns.check_unshare_mode()
    text = str(err.value)
    assert "uid_map: Operation not permitted" in text
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in text and "sudo msixlab" in text
    assert RunVerdict.from_error(err.value).outcome is Outcome.BUILD_FAILED


def test_as_root_there_is_nothing_to_check_or_reclaim(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(userns, "_as_owner", lambda argv: pytest.fail("no namespace as root"))
    userns.check_unshare_mode()
    userns.reclaim(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files owned by another "
                    "user's subordinate ids and to switch to that user")
def test_reclaim_hands_a_subordinate_owned_tree_to_the_user():
    """The real thing: a tree owned (as mmdebstrap's unshare mode leaves it) by the test
    user's subordinate ids, mode 0700 and 0600, which that user can neither read nor
    delete; after ``reclaim`` run as that user, it can do both."""
    try:
        user = pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.skip(f"no user {TEST_USER} (guest_tests/test_installed.py makes it)")
    tmp_path = Path(tempfile.mkdtemp(prefix="msixlab-reclaim-"))   # as the user's cache is
    os.chown(tmp_path, user.pw_uid, user.pw_gid)
    try:
        _reclaim_as(user, tmp_path)
    finally:
        remove_tree(tmp_path, ignore_errors=True)


def _reclaim_as(user: pwd.struct_passwd, tmp_path: Path) -> None:
    table = Path("/etc/subuid").read_text().splitlines()
    start = next(int(line.split(":")[1]) for line in table
                 if line.split(":")[0] in (user.pw_name, str(user.pw_uid)))
    top = tmp_path / "rootfs"
    (top / "root").mkdir(parents=True)
    (top / "root" / "secret").write_text("x")
    os.symlink("root/secret", top / "link")
    os.chmod(top / "root", 0o700)
    os.chmod(top / "root" / "secret", 0o600)
    for path in (top, top / "root", top / "root" / "secret"):
        os.chown(path, start, start)                       # mmdebstrap's root
    os.lchown(top / "link", start + 42, start + 42)        # another of its users
    as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
               "--", "env", "-i", "PATH=/usr/bin:/bin", f"PYTHONPATH={Path.cwd()}"]
    code = ("import sys; from pathlib import Path; from images import userns; "
            "userns.reclaim(Path(sys.argv[1]))")
    before = subprocess.run([*as_user, "cat", str(top / "root" / "secret")],
                            capture_output=True, text=True, timeout=60)
    assert before.returncode != 0                          # not readable before
    done = subprocess.run([*as_user, "python3", "-c", code, str(top)],
                          capture_output=True, text=True, timeout=120, cwd=Path.cwd())
    assert done.returncode == 0, done.stderr
    for path in (top, top / "root", top / "root" / "secret", top / "link"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid), path
    gone = subprocess.run([*as_user, "rm", "-r", str(top)], capture_output=True, text=True,
                          timeout=60)
    assert gone.returncode == 0 and not top.exists(), gone.stderr


# --- a failed driver build says why, on its first line ------------------------------------
@pytest.mark.parametrize("stderr, stdout, reason", [
    ("", "", "exit status 2, no output"),
    ("unshare: unshare failed: Operation not permitted\n", "",
     "unshare: unshare failed: Operation not permitted"),
    ("  CC [M]  a.o\na.c:3:1: error: expected ';' before '}' token\n    3 | }\nmake: *** "
     "[a.o] Error 1\nbuild.sh: build failed (log: /x/build.log)\n", "",
     "a.c:3:1: error: expected ';' before '}' token"),
    ("", "only on stdout\n\n", "only on stdout"),
])
def test_a_failed_driver_build_names_its_reason_on_the_first_line(tmp_path, stderr, stdout,
                                                                  reason):
    done = subprocess.CompletedProcess(["sh", "build.sh"], 2, stdout=stdout, stderr=stderr)
    err = kmod.build_failed("building msixlab.ko for 7.3.4", done, tmp_path / "build.log")
    first = str(err).splitlines()[0]
    assert first == f"building msixlab.ko for 7.3.4 failed: {reason}"
    assert RunVerdict.from_error(err).summary == first
    assert RunVerdict.from_error(err).outcome is Outcome.BUILD_FAILED
    assert (stderr or stdout).strip()[-40:] in str(err)        # and the tail after it


def test_build_sh_refuses_a_rootfs_without_headers_saying_so(tmp_path):
    """The real build.sh against a rootfs that has no kernel headers: exit 1 and the
    reason, which the error's first line then carries."""
    (tmp_path / "rootfs" / "usr" / "src").mkdir(parents=True)
    done = subprocess.run(["sh", str(kmod.KMOD_DIR / "build.sh"), str(tmp_path / "rootfs"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MSIXLAB_KVER": "7.3.4+deb13-amd64"})
    assert done.returncode == 1
    err = kmod.build_failed("building msixlab.ko for 7.3.4+deb13-amd64", done,
                            tmp_path / "out" / "build.log")
    assert str(err).splitlines()[0].endswith(
        "failed: " + f"{kmod.KMOD_DIR / 'build.sh'}: no linux-headers-7.3.4+deb13-amd64 in "
        f"{tmp_path / 'rootfs'}/usr/src")

"""msixlab as a kernel developer installs it: a wheel built from the checkout (``pip
wheel``), installed (not editable) into a fresh venv outside the checkout, and run by a
non-root user with an empty HOME from an empty directory and from inside a built kernel
tree (``--kernel-tree .``), each run a pass (exit 0) with its results in ``./results/``.

The checkout is hidden from that user: every command runs in a mount namespace of its own
where a tmpfs covers the checkout, so a file read from the checkout (rather than from the
install) fails the run.  The user's image is built in its own cache, as that user (the
real mmdebstrap build, about 2.5 minutes on 2 cores; cached per user in
``~USER/.cache/msixlab``, so only the first run of this module pays it).  The user is
``$MSIXLAB_TEST_USER`` (default ``msixlab-tester``), made with ``useradd`` when missing
(it then gets its subordinate ids from ``/etc/login.defs``).  Needs root, to make the user,
switch to it and hide the checkout.  The seconds each step took are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agent.host.kernel import testtrees
from agent.host.rundirs import PROJECT_DIR
from msixlab_common.removal import remove_tree

pytestmark = [pytest.mark.timeout(3600),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it makes a non-root "
                                 "user, switches to it and hides the checkout from it")]

USER = os.environ.get("MSIXLAB_TEST_USER", "msixlab-tester")
RUN_TIMEOUT_S = 1800            # a cold cache builds the image first


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True,
                       capture_output=True, timeout=60)
        return pwd.getpwnam(USER)


def _snapshot(dest: Path) -> None:
    """The checkout's files as git would commit them (tracked and new, not ignored)."""
    names = subprocess.run(["git", "-C", str(PROJECT_DIR), "ls-files", "-z", "--cached",
                            "--others", "--exclude-standard"], capture_output=True,
                           check=True, timeout=60).stdout.split(b"\0")
    for name in filter(None, names):
        source = PROJECT_DIR / os.fsdecode(name)
        if source.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / os.fsdecode(name))


class Installed:
    """The wheel installed for ``user`` under ``base``; ``run`` runs a command as that user
    with the checkout hidden."""

    def __init__(self, user: pwd.struct_passwd, base: Path):
        self.user, self.base = user, base
        self.home = base / "home"                     # empty, the user's HOME
        self.venv = base / "venv"
        self.cache = Path(user.pw_dir) / ".cache" / "msixlab"     # kept: the image
        self.seconds: dict[str, float] = {}

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}   # the registry
        return {**keep, "HOME": str(self.home), "USER": self.user.pw_name,
                "LOGNAME": self.user.pw_name, "LANG": "C.UTF-8", "TERM": "dumb",
                "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin",
                "MSIXLAB_CACHE": str(self.cache)}

    def run(self, argv: list[str], cwd: Path, *, timeout: float = RUN_TIMEOUT_S,
            overlay: tuple[Path, Path] | None = None) -> subprocess.CompletedProcess:
        """``argv`` as the user in ``cwd``, in a mount namespace where the checkout is an
        empty tmpfs (and ``overlay`` = (lower, merged): a writable overlay of lower)."""
        script = ['mount -t tmpfs -o mode=0,size=64k msixlab-hides-the-checkout "$1"']
        if overlay:
            lower, merged = overlay
            upper = merged.with_name(merged.name + "-upper")
            work = merged.with_name(merged.name + "-work")
            for d in (upper, work, merged):
                d.mkdir(exist_ok=True)
            os.chown(upper, self.user.pw_uid, self.user.pw_gid)   # results/ go there
            script.append(f'mount -t overlay overlay -o "lowerdir={lower},upperdir={upper},'
                          f'workdir={work}" "{merged}"')
        script.append('cd "$2" && shift 2 && exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
                "\n".join(script), "sh", str(PROJECT_DIR), str(cwd),
                "setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                "--init-groups", "--", "env", "-i",
                *(f"{k}={v}" for k, v in self.env().items()), *argv]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        self.seconds[" ".join(argv[-3:])] = round(time.monotonic() - started, 1)
        return done

    def mkdir(self, name: str) -> Path:
        path = self.base / name
        path.mkdir()
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    user = _user()
    base = Path(tempfile.mkdtemp(prefix="msixlab-installed-"))   # not under root's 0700 tmp
    os.chmod(base, 0o755)
    try:
        src, dist = tmp_path_factory.mktemp("src"), base / "dist"
        _snapshot(src)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(dist), str(src)], check=True, capture_output=True, timeout=600)
        wheel_s = time.monotonic() - started
        (wheel,) = dist.glob("msixlab-*.whl")
        box = Installed(user, base)
        for d in (box.home, box.venv):
            box.mkdir(d.name)
        started = time.monotonic()
        done = box.run(["sh", "-c", f"python3 -m venv {box.venv} && "
                        f"{box.venv}/bin/pip install -q {wheel}"], box.home, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        print(f"\nwheel built in {wheel_s:.1f} s, installed in {time.monotonic() - started:.1f} s")
        yield box
        print(f"\nseconds per command as {user.pw_name}: {json.dumps(box.seconds)}")
    finally:
        remove_tree(base, ignore_errors=True)


def test_the_user_cannot_see_the_checkout_and_runs_the_install(installed):
    """The ground the other tests stand on: the checkout is hidden from the user's
    commands, and ``msixlab`` is the wheel's (no commit: not a checkout)."""
    done = installed.run(["sh", "-c", f"ls -A {PROJECT_DIR}; test ! -e {PROJECT_DIR}/pyproject.toml"
                          " && id -u && command -v msixlab && msixlab --version"],
                         installed.home, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == str(installed.user.pw_uid) != "0"
    assert lines[1] == f"{installed.venv}/bin/msixlab"
    assert re.fullmatch(r"msixlab \S+", " ".join(lines[2:])), done.stdout   # no "(commit"
    site = next(installed.venv.glob("lib/python*/site-packages"))
    assert (site / "agent" / "kmod" / "build.sh").is_file()                 # package data
    assert not (site / "agent" / "host" / "__editable__").exists()
    assert not list(site.glob("__editable__*msixlab*")), "an editable install"


def test_run_from_an_empty_directory_passes_with_results_there(installed):
    empty = installed.mkdir("empty")
    done = installed.run(["msixlab", "run"], empty)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = (empty / "results").glob("run-*")
    meta = json.loads((run / "routing.json").read_text())["metadata"]
    assert meta["msixlab_commit"].startswith("msixlab ")                # the package version
    assert meta["reproduce"].startswith("msixlab run ")
    assert (run / "kcidb.json").is_file() and (run / "junit.xml").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["results"]       # nothing else here


def test_the_guest_sees_neither_the_working_directory_nor_site_packages(installed):
    """What the guest mounts (the dry run's QEMU command): the image rootfs, the staged
    guest files and the driver, all in the user's cache, all read-only."""
    here = installed.mkdir("here")
    done = installed.run(["msixlab", "run", "--dry-run"], here, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shares = re.findall(r"local,id=fs_(\w+),path=(\S+?),security_model=none(,readonly=on)?",
                        done.stdout)
    assert [tag for tag, _, _ in shares] == ["rootfs", "msixlab", "kmod"], shares
    for tag, path, readonly in shares:
        assert readonly and Path(path).is_relative_to(installed.cache), (tag, path)
    staged = Path(shares[1][1])
    assert staged.parent == installed.cache / "guest"
    assert str(here) not in done.stdout and str(installed.venv) not in \
        done.stdout.split("qemu-system-x86_64", 1)[1]


def test_shell_dry_run_as_the_user(installed):
    done = installed.run(["msixlab", "shell", "--dry-run"], installed.home, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "qemu-system-x86_64" in done.stdout and "msixlab.mode=shell" in done.stdout


def test_run_with_kernel_tree_dot_from_inside_a_built_tree(installed):
    """``cd ~/linux && msixlab run --kernel-tree .``: the tests' built minimal kernel,
    seen by the user through a writable overlay (its results go into the tree's
    ``results/``), the driver built against it as that user."""
    tree = testtrees.ensure_test_kernel(niceness=10).path
    merged = installed.base / "linux"
    done = installed.run(["msixlab", "run", "--kernel-tree", "."], merged,
                         overlay=(tree, merged))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    upper = installed.base / "linux-upper"
    (run,) = (upper / "results").glob("run-*")
    meta = json.loads((run / "routing.json").read_text())["metadata"]
    assert meta["kernel_under_test"]["driver_build"] == "kdir"
    assert (run / "kmod" / "msixlab.ko").is_file()

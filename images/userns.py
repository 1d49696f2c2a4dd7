"""Building the image as a normal user: mmdebstrap's unshare mode and the ids it leaves.

Concepts: without root, mmdebstrap builds in *unshare mode*: inside a user namespace in
which root is the user's first *subordinate* uid (``/etc/subuid``, ``/etc/subgid``,
mapped by ``newuidmap``/``newgidmap``).  Its rootfs is then owned, on the host, by those
subordinate ids, not by the user: the user could not read its 0600 files (QEMU's 9p
server serves them to the guest) nor delete any of it (``image clean``).  So a build
``reclaim``s what it made: one ``chown -R 0:0`` run in a user namespace where 0 is the
user and 1.. are the subordinate ids, which hands every file to the user.  The same
mapping, running ``true``, is the probe ``check_unshare_mode`` makes before a build:
subordinate ids missing, ``newuidmap`` missing, or user namespaces refused (Ubuntu 24.04's
AppArmor restriction, a ``kernel.unprivileged_userns_clone=0`` kernel) each end the build
at once with an ``ImageError`` naming the fix, never after minutes of mmdebstrap.  As root
none of this applies: mmdebstrap runs in root mode and everything is root's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .errors import ImageError

TIMEOUT_S = 600          # a chown of the rootfs: about 55,000 files
PROBE_TIMEOUT_S = 30


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def subordinate(kind: str, path: Path | None = None) -> tuple[int, int] | None:
    """The first range (start, count) of subordinate ``kind`` ids (``"uid"``/``"gid"``)
    ``/etc/sub{kind}`` gives this user (by name or number), or None."""
    path = path or Path(f"/etc/sub{kind}")
    names = {_user(), str(os.getuid())}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in names and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[1]), int(parts[2])
    return None


def _as_owner(argv: list[str]) -> list[str]:
    """``argv`` run in a user namespace where 0 is this user and 1.. its subordinate ids
    (``ImageError`` naming the fix when there are none or no newuidmap)."""
    user = _user()
    uids, gids = subordinate("uid"), subordinate("gid")
    if uids is None or gids is None:
        missing = " and ".join(f"/etc/sub{k}" for k, r in (("uid", uids), ("gid", gids))
                               if r is None)
        raise ImageError(f"{missing} give {user} no subordinate ids, which building the "
                         "image without root needs (mmdebstrap's unshare mode); fix: sudo "
                         f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
                         f"{user}", step="mmdebstrap")
    for tool in ("unshare", "newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            package = "util-linux" if tool == "unshare" else "uidmap"
            raise ImageError(f"{tool} is not installed, which building the image without "
                             f"root needs; fix: install {package} (msixlab setup)",
                             step="mmdebstrap")
    return ["unshare", "--map-user=0", "--map-group=0",
            f"--map-users={uids[0]},1,{uids[1]}", f"--map-groups={gids[0]},1,{gids[1]}",
            "--", *argv]


def check_unshare_mode() -> None:
    """Before a build as a normal user: that a user namespace with this user's subordinate
    ids can be made (what mmdebstrap's unshare mode and ``reclaim`` need); ``ImageError``
    naming the fix when it cannot.  Nothing to check as root."""
    if os.geteuid() == 0:
        return
    argv = _as_owner(["true"])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as err:
        raise ImageError(f"cannot try a user namespace ({' '.join(argv)}): {err}",
                         step="mmdebstrap") from err
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ImageError(f"this user cannot make a user namespace with its subordinate ids "
                         f"({why}), which building the image without root needs "
                         "(mmdebstrap's unshare mode); fix: allow unprivileged user "
                         "namespaces (Ubuntu 24.04: sudo sysctl "
                         "kernel.apparmor_restrict_unprivileged_userns=0; older Debian: sudo "
                         "sysctl kernel.unprivileged_userns_clone=1), or build the image as "
                         "root (sudo msixlab image build) and point MSIXLAB_CACHE at that "
                         "cache", step="mmdebstrap")


def reclaim(tree: Path) -> None:
    """Hand every file under ``tree`` (a rootfs mmdebstrap built in unshare mode, owned by
    this user's subordinate ids) to this user, so that it can read all of it and delete
    it; ``ImageError`` if the chown fails.  Nothing to do as root."""
    if os.geteuid() == 0 or not tree.exists():
        return
    argv = _as_owner(["chown", "-R", "-h", "0:0", "--", str(tree)])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as err:
        raise ImageError(f"cannot take ownership of {tree}: {err}", step="reclaim") from err
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ImageError(f"cannot take ownership of {tree} ({why})", step="reclaim")

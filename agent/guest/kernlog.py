"""The kernel's own record of what it reported: taint flags and the log's levels.

Concepts: ``KernelLog`` reads ``/proc/sys/kernel/tainted`` (the mask the kernel sets on
a WARN, an oops, a bad page, ...) and follows ``/dev/kmsg`` from the moment it is made:
``warnings()`` returns the kernel's own messages (facility kern) at KERN_WARNING or worse
logged since the last call, whatever their text says, so a report in a form no console
pattern knows is still seen.  The host compares the taint with the hello's and judges
the difference (agent/host/lab/lab.py).  Without ``/dev/kmsg`` (a test tree) only the taint
is read.
"""

from __future__ import annotations

import errno
import os

#: the worst level kept: KERN_WARNING (0 emerg .. 4 warning .. 7 debug)
WARNING_LEVEL = 4
MAX_KEPT = 50          # messages kept per call; the rest are counted


class KernelLog:
    """Taint flags and warning-or-worse kernel messages of the guest kernel under ``root``."""

    def __init__(self, root: str = "/"):
        self.root = root
        self._fd: int | None = None
        try:
            self._fd = os.open(os.path.join(root, "dev/kmsg"), os.O_RDONLY | os.O_NONBLOCK
                               | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)          # only what is logged from now on
        except OSError:
            self._fd = None

    def tainted(self) -> int | None:
        """The kernel's taint mask, None when it cannot be read."""
        try:
            with open(os.path.join(self.root, "proc/sys/kernel/tainted")) as source:
                return int(source.read().strip())
        except (OSError, ValueError):
            return None

    def warnings(self) -> dict[str, object]:
        """Kernel messages at KERN_WARNING or worse since the last call: ``count``, the
        first ``MAX_KEPT`` as ``messages`` (``level`` and ``text``), ``lost`` (records the
        ring buffer overwrote before they were read) and ``readable`` (False: no
        /dev/kmsg)."""
        found: list[dict[str, object]] = []
        count = lost = 0
        while self._fd is not None:
            try:
                record = os.read(self._fd, 8192)
            except OSError as err:
                if err.errno == errno.EPIPE:             # overwritten: read on
                    lost += 1
                    continue
                break                                     # EAGAIN: nothing more now
            if not record:
                break
            parsed = parse_record(record)
            if parsed is not None and parsed["level"] <= WARNING_LEVEL:
                count += 1
                if len(found) < MAX_KEPT:
                    found.append(parsed)
        return {"count": count, "messages": found, "lost": lost,
                "readable": self._fd is not None}


def parse_record(record: bytes) -> dict[str, object] | None:
    """One /dev/kmsg record (``pri,seq,usec,flags;text``) as level and text, or None
    when it is not the kernel's own (a facility other than kern: user space wrote it)."""
    head, sep, body = record.decode("utf-8", errors="replace").partition(";")
    if not sep:
        return None
    try:
        pri = int(head.split(",", 1)[0])
    except ValueError:
        return None
    if pri >> 3:                                          # facility != kern
        return None
    return {"level": pri & 7, "text": body.split("\n", 1)[0]}

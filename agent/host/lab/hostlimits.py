"""Host limits a run needs, checked before anything starts.

Concepts: QEMU's 9p server holds a host file descriptor for every file the guest keeps
open; with a low open-file limit (``RLIMIT_NOFILE``, e.g. ``prlimit --nofile=32``) it
fails with EMFILE, the rig's init dies in the guest, and the kernel panics over it.
``ensure_fd_limit`` raises the soft limit to the hard one (children inherit it) and
refuses, as ``host_resource`` (125) naming the limit and the fix, a hard limit below
``MIN_NOFILE``, so the guest never starts short of descriptors.
"""

from __future__ import annotations

import logging
import resource

from agent.host.verdict.outcome import CouldNotJudge, Outcome

log = logging.getLogger(__name__)

#: the fewest open files the rig runs with (QEMU with 9p, the device servers, the host)
MIN_NOFILE = 1024


def ensure_fd_limit(minimum: int = MIN_NOFILE) -> int:
    """Raise the soft open-file limit to the hard limit; return the limit now.  A hard
    limit below ``minimum`` is ``CouldNotJudge`` (host_resource) naming both limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < minimum:
        raise CouldNotJudge(Outcome.HOST_RESOURCE,
                            f"the open-file limit (RLIMIT_NOFILE) is {soft} (hard {hard}); "
                            f"the rig needs at least {minimum} (QEMU's 9p holds a host fd "
                            f"per open guest file): raise it, e.g. `ulimit -n {minimum}` "
                            "or LimitNOFILE= for a service",
                            resource="RLIMIT_NOFILE", soft=soft, hard=hard, needed=minimum)
    if soft == resource.RLIM_INFINITY or soft >= minimum and soft == hard:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.debug("open-file limit raised from %s to %s", soft, hard)
    return hard

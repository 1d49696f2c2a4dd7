"""One way to wait: a deadline, and a poll loop bounded by it.

Concepts: a ``Deadline`` is a point on the monotonic clock plus the name of what is being
waited for; it answers how much time is left and, once expired, builds the
``WaitTimeout`` that names the wait.  ``wait_until`` polls a condition under a deadline and
returns the condition's first truthy value.  Every wait in msixlab (on QEMU, the guest, a
socket, an interrupt count) goes through these, so every timeout says what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import WaitTimeout


class Deadline:
    """``seconds`` from now, for ``what``."""

    def __init__(self, seconds: float, what: str, *, clock: Callable[[], float] = time.monotonic):
        if not seconds >= 0:            # also rejects NaN
            raise ValueError(f"a deadline needs a non-negative number of seconds, not {seconds!r}")
        self.seconds, self.what, self._clock = float(seconds), what, clock
        self.ends = clock() + self.seconds

    def remaining(self) -> float:
        """Seconds left, never below zero."""
        return max(0.0, self.ends - self._clock())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self._clock() >= self.ends

    def timeout(self, detail: str = "") -> WaitTimeout:
        """The error that says this wait expired (to ``raise``)."""
        return WaitTimeout(self.what, self.seconds, detail)

    def check(self, detail: Callable[[], str] | str = "") -> None:
        """Raise the wait's ``WaitTimeout`` if the deadline has passed."""
        if self.expired():
            raise self.timeout(detail() if callable(detail) else detail)


def wait_until(condition: Callable[[], object], timeout: float | Deadline, what: str = "",
               *,
               interval: float = 0.02, detail: Callable[[], str] | None = None,
               sleep: Callable[[float], None] = time.sleep) -> object:
    """Poll ``condition`` every ``interval`` seconds until it returns something truthy,
    and return that.  Past the deadline (``timeout`` seconds, or a shared ``Deadline``)
    raise ``WaitTimeout`` naming ``what`` and, if given, ``detail()``.  The condition is
    always tried at least once, and once more at the deadline."""
    deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout, what)
    while True:
        expired = deadline.expired()
        value = condition()
        if value:
            return value
        if expired:
            raise deadline.timeout(detail() if detail else "")
        sleep(min(interval, max(deadline.remaining(), 0.001)))

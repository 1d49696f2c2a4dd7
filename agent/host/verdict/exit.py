"""The verdict contract for a bare list of check results: the exit code they mean.

``judge_exit``: 0 every judged check passed, 1 a check failed (each failure named
``name[index]``), 125 nothing could be judged (no results, or every one skipped).  A whole
run's verdict is a ``RunVerdict`` (outcome.py); this is what a list of results alone says.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from agent.host.errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS
from agent.host.verdict.routing import CheckResult, Verdict

log = logging.getLogger(__name__)

EXIT_CANNOT_JUDGE = EXIT_INFRA  # the contract's 125: nothing could be judged


@dataclass(frozen=True)
class ExitStatus:
    """The exit code a set of check results means, the failed checks (``name[index]``) and a
    message."""
    code: int
    failed: tuple[str, ...]  # "name[index]" of each failed check
    message: str


def judge_exit(results: Iterable[CheckResult]) -> ExitStatus:
    """0 if every judged check passed, 1 naming the failures, 125 if none was judged
    (no results, or every one skipped). Pure; exit_status() also logs the outcome."""
    results = list(results)
    failed = tuple(f"{r.name}[{r.index}]" for r in results if r.verdict is Verdict.FAIL)
    passed = sum(r.verdict is Verdict.PASS for r in results)
    if failed:
        return ExitStatus(EXIT_FAIL, failed,
                          f"{len(failed)} check(s) failed: " + ", ".join(failed))
    if passed:
        return ExitStatus(EXIT_PASS, (), f"all {passed} judged check(s) passed")
    return ExitStatus(EXIT_CANNOT_JUDGE, (),
                      f"no check could judge ({len(results)} result(s), all skipped)")


def exit_status(results: Iterable[CheckResult]) -> ExitStatus:
    """judge_exit(), logged: failures and 'cannot judge' at ERROR, success at INFO."""
    status = judge_exit(results)
    log.log(logging.INFO if status.code == EXIT_PASS else logging.ERROR, "%s",
            status.message)
    return status

"""``msixlab bisect``: find the commit of a kernel tree that broke dynamic MSI-X.

Concepts:
- A *step* tests the commit git bisect checked out: build the tree incrementally (a
  build failure is a skip: it says nothing about the regression), then run the main job
  on it as a separate ``msixlab run --kernel-tree`` process, ``repeat`` times.  A run's
  exit code maps as ``git bisect run`` maps it (0 good, 125 skip, any other code below
  128 bad; 128 and above, a run killed by a signal, ends the bisect).  A run that could
  not judge although its console shows a kernel report (oops, panic, BUG, ...: the
  splats of ``console``) is bad: an oops is never a skip.  With repeats the
  step is bad if any run was bad (an intermittent regression is still caught), else a
  skip if any run could not judge, else good.
- Everything a step leaves goes to ``results/bisect-<id>/<sha>/`` (build log, the runs'
  own results, ``step.json``); ``summary.json`` beside them holds good, bad, every step
  (commit, verdict, failed checks, build and run seconds) and ``first_bad``; it is
  rewritten after every step, so an interrupted bisect still leaves what it learnt.
- Safety: the revisions and the tree are checked before anything is touched (a tree
  with tracked changes, a bisect already under way, unknown or equal revisions, a good
  revision that is not an ancestor of the bad one are refused, and so is a second msixlab
  bisect of the same tree while one runs).  Once started, the tree
  always ends with ``git bisect reset``, on success, error, Ctrl-C or SIGTERM alike.
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import re
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from msixlab_common import atomic
from msixlab_common import streamed

from agent.host.kernel.build import BuildResult, KernelTree
from agent.host.kernel.errors import BisectError, KernelBuildFailed
from agent.host.kernel.git import Git
from agent.host.lab.console import ConsoleWatch, Splat
from agent.host.rundirs import PROJECT_DIR, make_results_dir, new_run_id

log = logging.getLogger(__name__)

BuildFn = Callable[[KernelTree, Path], BuildResult]
# (step directory, attempt) -> (exit code, failed checks, one-line reason)
RunFn = Callable[[Path, int], tuple[int, list[str], str]]
Say = Callable[[str], None]
RUN_TIMEOUT = 30 * 60
STOP_GRACE = 60.0


class StepVerdict(enum.StrEnum):
    """What one bisect step says of its commit: good, bad, or skip (could not tell)."""
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


def verdict_of(exit_code: int) -> StepVerdict:
    """What ``git bisect run`` makes of one exit code; codes it would abort on raise."""
    if exit_code == 0:
        return StepVerdict.GOOD
    if exit_code == 125:
        return StepVerdict.SKIP
    if 0 < exit_code < 128:
        return StepVerdict.BAD
    raise BisectError(f"a run ended with exit code {exit_code} (killed by a signal or out of "
                      "git bisect's range): the bisect stops")


def combine(verdicts: list[StepVerdict]) -> StepVerdict:
    """One step's verdict from its repeated runs: bad if any is bad, else skip if any
    is a skip, else good."""
    for verdict in (StepVerdict.BAD, StepVerdict.SKIP):
        if verdict in verdicts:
            return verdict
    return StepVerdict.GOOD


@dataclass
class Step:
    """One bisect step: the ``commit`` and its ``subject``, its ``verdict``, each run's exit
    code, the failed checks and reason of the run that decided, build and run seconds, and
    the directory holding its ``results``."""
    commit: str
    subject: str
    verdict: StepVerdict | None = None
    exit_codes: list[int] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    reason: str = ""
    build_seconds: float = 0.0
    run_seconds: float = 0.0
    results: str = ""

    def as_json(self) -> dict:
        """The step as summary.json and step.json hold it (seconds rounded to 0.01)."""
        out = asdict(self)
        out["verdict"] = str(self.verdict) if self.verdict else None
        out["build_seconds"] = round(self.build_seconds, 2)
        out["run_seconds"] = round(self.run_seconds, 2)
        return out


def failed_checks(run_dir: Path, output: str) -> tuple[list[str], str]:
    """The checks a run failed and its one-line reason, from its routing.json (the
    verdict, else the failed checks) or, when it wrote none, from its output."""
    doc_path = run_dir / "routing.json"
    if doc_path.is_file():
        try:
            doc = json.loads(doc_path.read_text())
        except ValueError:
            doc = {}
        verdict = doc.get("verdict") or {}
        if verdict.get("failed") or verdict.get("summary"):
            return list(verdict.get("failed") or []), str(verdict.get("summary") or "")
        failed = (doc.get("checks") or {}).get("failed") or []
        names = [f"{c.get('name')}[{c.get('index')}]: {c.get('summary', '')}".rstrip(": ")
                 for c in failed]
        if names:
            return names, f"{len(names)} check(s) failed"
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    fails = [l for l in lines if l.startswith("FAIL ")]
    reason = next((l for l in reversed(lines)
                   if re.match(r"(error|could not judge|verdict|the guest kernel)", l, re.I)), "")
    return fails, reason or (lines[-1] if lines else "")


def console_splat(results: Path) -> Splat | None:
    """The first kernel report (oops, panic, BUG, ...) on a run's console, if any."""
    for console in sorted(results.glob("*/console.log")):
        if splat := ConsoleWatch(console).finish():
            return splat
    return None


@contextmanager
def sigterm_interrupts():
    """Inside: SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so cleanup runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:            # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Bisect:
    """One ``msixlab bisect`` of ``tree`` between ``good`` and ``bad``: ``validate()`` checks
    everything first, then ``run()`` drives ``git bisect``, building each step with ``build``
    and running the main job ``repeat`` times with ``run_options`` (and ``qemu``).  Results
    go under ``results_root/bisect-<id>/``; progress lines go to ``say``."""
    def __init__(self, tree: KernelTree, good: str, bad: str, *, results_root: Path,
                 build: BuildFn, repeat: int = 1, run_options: tuple[str, ...] = (),
                 qemu: str | None = None, say: Say = lambda text: log.info("%s", text),
                 run_timeout: float = RUN_TIMEOUT, runner: RunFn | None = None):
        """``runner`` runs the main job once for a step (default: ``msixlab run
        --kernel-tree`` in a separate process)."""
        if repeat < 1:
            raise BisectError(f"--repeat must be at least 1, not {repeat}")
        self.tree, self.git = tree, Git(tree.path)
        self.good_rev, self.bad_rev = good, bad
        self.results_root, self.build_fn, self.repeat = results_root, build, repeat
        self.run_options, self.qemu, self.say = tuple(run_options), qemu, say
        self.run_timeout = run_timeout
        self.runner = runner or self._run_once
        self.steps: list[Step] = []
        self.good = self.bad = ""
        self.first_bad: dict | None = None
        self.candidates: list[str] = []
        self.dir: Path | None = None

    # --- before anything is touched -----------------------------------------------------
    def validate(self) -> None:
        """Check the tree and the revisions; raises ``BisectError`` having changed nothing."""
        top = self.git.toplevel()
        if top is None:
            raise BisectError(f"{self.tree.path} is not a git work tree", tree=self.tree.path)
        if top != self.tree.path:
            raise BisectError(f"{self.tree.path} is inside the git work tree {top}, not its "
                              "top: give the top as --kernel-tree", tree=self.tree.path)
        if self.git.bisecting():
            raise BisectError(f"a git bisect is already under way in {self.tree.path}: finish "
                              "it or run `git bisect reset` there first", tree=self.tree.path)
        if changes := self.git.tracked_changes():
            raise BisectError(f"{self.tree.path} has changes to tracked files (commit or stash "
                              f"them first): {'; '.join(changes[:5])}", tree=self.tree.path)
        for name, rev in (("--good", self.good_rev), ("--bad", self.bad_rev)):
            if self.git.commit(rev) is None:
                raise BisectError(f"{name} {rev!r} names no commit in {self.tree.path}",
                                  tree=self.tree.path)
        self.good, self.bad = self.git.commit(self.good_rev), self.git.commit(self.bad_rev)
        if self.good == self.bad:
            raise BisectError(f"--good {self.good_rev} and --bad {self.bad_rev} are the same "
                              f"commit ({self.good[:12]})", tree=self.tree.path)
        if not self.git.is_ancestor(self.good, self.bad):
            raise BisectError(f"--good {self.good_rev} ({self.good[:12]}) is not an ancestor of "
                              f"--bad {self.bad_rev} ({self.bad[:12]})", tree=self.tree.path)

    # --- the bisect ---------------------------------------------------------------------
    def run(self) -> dict:
        """Bisect; returns the summary (also written to summary.json)."""
        with self._tree_lock():
            return self._run()

    @contextmanager
    def _tree_lock(self):
        """One msixlab bisect per tree at a time (refused at once, not waited for)."""
        if self.git.toplevel() is None:
            raise BisectError(f"{self.tree.path} is not a git work tree", tree=self.tree.path)
        with open(self.git.git_path("msixlab-bisect.lock"), "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BisectError(f"another msixlab bisect is running in {self.tree.path}",
                                  tree=self.tree.path) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run(self) -> dict:
        self.validate()
        self.dir = self.results_root / new_run_id("bisect")
        make_results_dir(self.dir, exist_ok=False)
        self.started = time.monotonic()
        start_head, branch = self.git.head(), self.git.branch()
        self.say(f"bisect {self.dir.name}: {self.git.count(self.good, self.bad)} commit(s) in "
                 f"{self.good[:12]}..{self.bad[:12]}; results in {self.dir}")
        with sigterm_interrupts():
            try:
                self.git.run("bisect", "start", self.bad, self.good, "--")
                self._loop()
            finally:
                try:
                    self._reset(start_head, branch)
                finally:
                    self.write_summary()
        return self.summary()

    def _loop(self) -> None:
        limit = self.git.count(self.good, self.bad) + 2
        for _ in range(limit):
            step = self.step(self.git.head())
            done = self.git.run("bisect", str(step.verdict), check=False)
            text = done.stdout + done.stderr
            if match := re.search(r"^([0-9a-f]{40}) is the first bad commit", text, re.M):
                self._found(match.group(1))
                return
            if "only 'skip'ped commits left" in text:
                self.candidates = re.findall(r"^([0-9a-f]{40})$", text, re.M)
                self.say(f"only skipped commits left: the first bad commit is one of "
                         f"{', '.join(c[:12] for c in self.candidates)}")
                return
            if done.returncode != 0:
                raise BisectError(f"git bisect {step.verdict} failed: {text.strip()[-300:]}",
                                  tree=self.tree.path)
        raise BisectError(f"the bisect did not converge in {limit} steps", tree=self.tree.path)

    def _found(self, sha: str) -> None:
        tested = next((s for s in self.steps if s.commit == sha), None)
        self.first_bad = {"commit": sha, "subject": self.git.subject(sha),
                          "failed_checks": tested.failed_checks if tested else [],
                          "reason": tested.reason if tested else
                          "the --bad revision itself (not run by this bisect)"}

    def _reset(self, start_head: str, branch: str | None) -> None:
        done = self.git.run("bisect", "reset", check=False)
        if done.returncode != 0 or self.git.head() != start_head:
            log.error("git bisect reset: %s", (done.stderr or done.stdout).strip())
            raise BisectError(f"`git bisect reset` did not bring {self.tree.path} back to "
                              f"{branch or start_head[:12]}: {(done.stderr or '').strip()}",
                              tree=self.tree.path)

    # --- one step -----------------------------------------------------------------------
    def step(self, sha: str) -> Step:
        """Test commit ``sha`` (checked out by git bisect): build it (a build failure is a
        skip), then run the main job up to ``repeat`` times, stopping at the first bad run.
        Records the step (step.json, the summary) and returns it."""
        step = Step(sha, self.git.subject(sha))
        step_dir = self.dir / sha
        step_dir.mkdir(exist_ok=True)
        step.results = str(step_dir)
        self.steps.append(step)
        self.say(f"step {len(self.steps)}: {sha[:12]} {step.subject}")
        started = time.monotonic()
        try:
            self.build_fn(self.tree, step_dir / "build.log")
        except KernelBuildFailed as err:
            step.build_seconds = time.monotonic() - started
            step.verdict, step.exit_codes = StepVerdict.SKIP, [125]
            step.reason = f"build failed: {err.first_error or err}"
            return self._record(step)
        step.build_seconds = time.monotonic() - started
        verdicts = []
        for attempt in range(1, self.repeat + 1):
            code, failed, reason = self.runner(step_dir, attempt)
            step.exit_codes.append(code)
            verdicts.append(verdict_of(code))
            if verdicts[-1] is not StepVerdict.GOOD and not step.reason:
                step.failed_checks, step.reason = failed, reason
            if verdicts[-1] is StepVerdict.BAD:
                step.failed_checks, step.reason = failed, reason
                break
        step.run_seconds = time.monotonic() - started - step.build_seconds
        step.verdict = combine(verdicts)
        return self._record(step)

    def _record(self, step: Step) -> Step:
        atomic.write_json(Path(step.results) / "step.json", step.as_json())
        detail = f": {step.reason}" if step.reason and step.verdict is not StepVerdict.GOOD else ""
        self.say(f"  {step.verdict} (build {step.build_seconds:.1f} s, run "
                 f"{step.run_seconds:.1f} s){detail}")
        self.write_summary()
        return step

    def run_argv(self, results: Path) -> list[str]:
        """The ``msixlab run --kernel-tree`` command of one step's run, results under
        ``results``."""
        argv = [sys.executable, "-m", "agent.host", "run", "--kernel-tree", str(self.tree.path),
                "--results", str(results)]
        if self.qemu:
            argv += ["--qemu", self.qemu]
        return argv + list(self.run_options)

    def _run_once(self, step_dir: Path, attempt: int) -> tuple[int, list[str], str]:
        results = step_dir / f"run-{attempt}"
        results.mkdir(exist_ok=True)
        output = results / "run.log"
        argv = self.run_argv(results)
        with open(output, "w") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            done = streamed.stream(argv, timeout=self.run_timeout, log=out, cwd=PROJECT_DIR,
                                   stop_sig=signal.SIGINT, grace=STOP_GRACE)
            code = done.returncode
            if done.timed_out:
                code = 125
                out.write(f"\nmsixlab bisect: the run took longer than {self.run_timeout:g} s\n")
        runs = sorted((d for d in results.iterdir() if (d / "routing.json").is_file()),
                      key=lambda d: d.stat().st_mtime)
        failed, reason = failed_checks(runs[-1] if runs else results,
                                       output.read_text(errors="replace"))
        if code == 125 and (splat := console_splat(results)):
            # The run could not judge, yet the guest kernel oopsed or panicked: that is
            # the kernel misbehaving (bad), never a skip.
            return 1, [f"{splat.kind}: {splat.line}"], f"the guest kernel reported {splat.kind}"
        return code, failed, reason

    # --- the summary --------------------------------------------------------------------
    def summary(self) -> dict:
        """The bisect so far: id, tree, good, bad, options, every step, ``first_bad``,
        candidates, seconds."""
        return {
            "id": self.dir.name if self.dir else None, "tree": str(self.tree.path),
            "good": self.good, "bad": self.bad, "repeat": self.repeat,
            "run_options": list(self.run_options), "qemu": self.qemu,
            "steps": [s.as_json() for s in self.steps],
            "first_bad": self.first_bad,
            "candidates": self.candidates,
            "seconds": round(time.monotonic() - self.started, 1),
        }

    def write_summary(self) -> dict:
        """Write ``summary()`` to summary.json atomically (temp file, then rename) and return
        it."""
        summary = self.summary()
        path = self.dir / "summary.json"
        atomic.write_json(path, summary)
        return summary

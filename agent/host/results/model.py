"""A finished run as the result writers see it, read from its run directory.

Concepts owned here:
- ``RunResult``: everything the writers need, read from ``routing.json`` (schema
  ``msixlab.routing``, docs/routing.md) and the names of the logs beside it.  Readers of
  the run directory never import the scenario: a run written by an older or newer
  msixlab still renders, with what it recorded.
- ``Provenance``: what identifies the run for whoever reproduces it (kernel release,
  kernel config hash, QEMU version, msixlab commit, seed, a one-line command).  A field
  the run did not record reads ``"unknown"``; only the commit and the command are
  reconstructed (the commit from git, the command from the run's options).
- ``CheckRow`` and ``Step``: each check result with the scenario step it belongs to
  (``"main"`` when the run recorded no steps) and a test name unique within its step
  (``name[index]``, then ``~2``, ``~3`` for repeats).
- The verdict: routing.json's ``verdict`` object when present, else derived from its
  checks summary (0 pass, 1 check_failed, 125 could_not_judge).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.host.errors import HostError
from agent.host.results.provenance import reproduce_command, what_ran
from agent.host.results.routing_json import SCHEMA, metadata_of

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
DEFAULT_STEP = "main"
# Files a run directory may hold, in the order the report lists them.
LOG_FILES = ("console.log", "qemu.log", "device-server.log", "device-events.jsonl",
             "dmesg.txt", "lspci.txt", "interrupts.json", "groups.json", "qemu-trace.log",
             "routing.json")
PASSING = frozenset({"pass", "skip"})
_FALLBACK_OUTCOME = {0: "pass", 1: "check_failed", 125: "could_not_judge"}


class ResultsError(HostError):
    """A run directory could not be read: no routing.json, not JSON, wrong schema."""


@dataclass(frozen=True)
class Provenance:
    """What identifies a run for whoever reproduces it; a field the run did not record reads
    ``unknown``."""
    kernel_release: str = UNKNOWN
    config_hash: str = UNKNOWN
    qemu_version: str = UNKNOWN
    msixlab_commit: str = UNKNOWN
    seed: str = UNKNOWN
    reproduce: str = UNKNOWN

    def items(self) -> list[tuple[str, str]]:
        """(label, value) pairs in a fixed order, for every writer."""
        return [("kernel release", self.kernel_release), ("config hash", self.config_hash),
                ("QEMU version", self.qemu_version), ("msixlab commit", self.msixlab_commit),
                ("seed", self.seed), ("reproduce", self.reproduce)]

    def as_dict(self) -> dict[str, str]:
        """The six fields by name."""
        return {"kernel_release": self.kernel_release, "config_hash": self.config_hash,
                "qemu_version": self.qemu_version, "msixlab_commit": self.msixlab_commit,
                "seed": self.seed, "reproduce": self.reproduce}


@dataclass(frozen=True)
class CheckRow:
    """One check result of a run, with its step and a test name unique within the step."""
    step: str
    name: str
    index: int | None
    verdict: str                 # pass, fail, skip, or what the run wrote (not_judged, ...)
    summary: str
    evidence: Mapping[str, Any]
    test_name: str               # unique within the step

    @property
    def failed(self) -> bool:
        """Whether the verdict is anything but pass or skip (fail, not_judged, ...)."""
        return self.verdict not in PASSING


@dataclass(frozen=True)
class Step:
    """One scenario step of a run and its check rows, in the order they ran."""
    name: str
    checks: tuple[CheckRow, ...]

    @property
    def failed(self) -> bool:
        """Whether any of the step's checks failed."""
        return any(c.failed for c in self.checks)


@dataclass(frozen=True)
class RunVerdictView:
    """routing.json's ``verdict``, with defaults for what an older run lacks."""

    outcome: str
    exit_code: int
    meaning: str = ""
    summary: str = ""
    failed: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)
    faults_armed: tuple[Mapping[str, Any], ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether the run's exit code is 0."""
        return self.exit_code == 0


@dataclass(frozen=True)
class RunResult:
    """One run as the result writers see it: its directory and id, routing.json's
    metadata, the provenance, the verdict, the steps with their checks, the vector records,
    the log files present and the start time (UTC)."""
    run_dir: Path
    run_id: str
    metadata: Mapping[str, Any]
    provenance: Provenance
    verdict: RunVerdictView
    steps: tuple[Step, ...]
    records: tuple[Mapping[str, Any], ...]
    logs: tuple[str, ...]        # names of the files present in run_dir, LOG_FILES order
    started: datetime            # UTC

    def checks(self) -> list[CheckRow]:
        """Every check row, step by step."""
        return [check for step in self.steps for check in step.checks]

    @property
    def checks_hold_verdict(self) -> bool:
        """Whether the checks alone say how the run ended: it passed, or a check failed.
        When not (a splat, a driver error, could not judge), every writer adds a
        ``verdict`` test of its own."""
        return self.verdict.passed or (self.verdict.outcome == "check_failed"
                                       and any(c.failed for c in self.checks()))

    def counts(self) -> dict[str, int]:
        """How many checks in all, passed, failed (not_judged included) and skipped."""
        tally = Counter("fail" if c.failed else c.verdict for c in self.checks())
        return {"total": sum(tally.values()), "pass": tally["pass"], "fail": tally["fail"],
                "skip": tally["skip"]}


# --- reading -------------------------------------------------------------------------

def load(run_dir: Path) -> RunResult:
    """Read ``run_dir/routing.json`` (and list the logs beside it)."""
    run_dir = Path(run_dir)
    path = run_dir / "routing.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ResultsError(f"{run_dir} holds no routing.json: not a finished run "
                           "directory") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ResultsError(f"{path}: cannot read it as JSON: {err}") from err
    return from_document(document, run_dir)


def from_document(document: Any, run_dir: Path) -> RunResult:
    """The ``RunResult`` of a routing.json document already parsed."""
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        schema = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise ResultsError(f"{run_dir}/routing.json is not a {SCHEMA} document (schema {schema!r})")
    metadata = document.get("metadata", {})
    records = document.get("records", [])
    if not isinstance(metadata, dict) or not isinstance(records, list):
        raise ResultsError(f"{run_dir}/routing.json: metadata must be an object and records a list")
    metadata = metadata_of({**document, "metadata": metadata})   # an older layout upgraded
    return RunResult(
        run_dir=run_dir, run_id=str(metadata.get("run_id") or run_dir.name),
        metadata=metadata, provenance=provenance(metadata),
        verdict=verdict_of(document),
        steps=steps_of(records, metadata, document.get("results")),
        records=tuple(r for r in records if isinstance(r, dict)),
        logs=tuple(name for name in LOG_FILES if (run_dir / name).is_file()),
        started=_started(metadata, run_dir))


def provenance(metadata: Mapping[str, Any]) -> Provenance:
    """The ``Provenance`` of a run from routing.json's ``metadata``: missing fields read
    ``unknown``, except the commit (asked of git) and the command (rebuilt from the options
    the metadata records: results/provenance.py's ``reproduce_command``)."""
    def text(*keys: str) -> str:
        for key in keys:
            value = metadata.get(key)
            if value not in (None, ""):
                return str(value)
        return UNKNOWN

    return Provenance(
        kernel_release=text("kernel_release", "kernel"), config_hash=text("config_hash"),
        qemu_version=text("qemu_version", "qemu"),
        msixlab_commit=text("msixlab_commit") if "msixlab_commit" in metadata else what_ran(),
        seed=text("seed"),
        reproduce=text("reproduce") if metadata.get("reproduce") else reproduce_command(metadata))


def verdict_of(document: Mapping[str, Any]) -> RunVerdictView:
    """The verdict of routing.json ``document``: its ``verdict`` object when it has one,
    else derived from the ``checks`` summary (a document without either reads as 125)."""
    raw = document.get("verdict")
    if isinstance(raw, dict) and isinstance(raw.get("exit_code"), int):
        return RunVerdictView(
            outcome=str(raw.get("outcome") or _FALLBACK_OUTCOME.get(raw["exit_code"], UNKNOWN)),
            exit_code=raw["exit_code"], meaning=str(raw.get("meaning") or ""),
            summary=str(raw.get("summary") or ""),
            failed=tuple(str(f) for f in raw.get("failed") or ()),
            evidence=raw.get("evidence") if isinstance(raw.get("evidence"), dict) else {},
            faults_armed=tuple(f for f in raw.get("faults_armed") or () if isinstance(f, dict)),
            counts=raw.get("counts") if isinstance(raw.get("counts"), dict) else {})
    summary = document.get("checks") if isinstance(document.get("checks"), dict) else {}
    code = summary.get("exit_code", 125)
    failed = tuple(f"{f.get('name')}[{f.get('index')}]" for f in summary.get("failed") or ()
                   if isinstance(f, dict))
    text = (f"{len(failed)} check(s) failed" if failed else
            f"all {summary.get('pass', 0)} judged check(s) passed" if code == 0 else
            "no check could judge")
    return RunVerdictView(outcome=_FALLBACK_OUTCOME.get(code, UNKNOWN), exit_code=code,
                          summary=text, failed=failed,
                          counts={"passed": summary.get("pass", 0),
                                  "failed": summary.get("fail", 0)})


def steps_of(records: list, metadata: Mapping[str, Any],
             results: list | None = None) -> tuple[Step, ...]:
    """Check results grouped by step: steps in the order metadata.steps lists them, then
    in order of first appearance.  The document's ``results`` (every result, table-wide
    ones included, in the order they were judged) when it has them, else the records'
    checks in record order."""
    if isinstance(results, list):
        checks = [c for c in results if isinstance(c, dict)]
    else:
        checks = [c for record in records if isinstance(record, dict)
                  for c in record.get("checks") or () if isinstance(c, dict)]
    rows: dict[str, list[dict]] = {}
    for check in checks:
        step = str(check.get("step") or DEFAULT_STEP)
        rows.setdefault(step, []).append(check)
    declared = [str(s.get("step")) for s in metadata.get("steps") or () if isinstance(s, dict)]
    order = [s for s in dict.fromkeys(declared) if s in rows] + \
            [s for s in rows if s not in declared]
    return tuple(Step(name, _rows(name, rows[name])) for name in order)


def _rows(step: str, checks: list[dict]) -> tuple[CheckRow, ...]:
    seen: Counter = Counter()
    out = []
    for check in checks:
        name = str(check.get("name") or "unnamed_check")
        index = check.get("index") if isinstance(check.get("index"), int) else None
        base = name if index is None else f"{name}[{index}]"
        seen[base] += 1
        evidence = check.get("evidence")
        out.append(CheckRow(step=step, name=name, index=index,
                            verdict=str(check.get("verdict") or "fail"),
                            summary=str(check.get("summary") or ""),
                            evidence=evidence if isinstance(evidence, dict) else {},
                            test_name=base if seen[base] == 1 else f"{base}~{seen[base]}"))
    return tuple(out)


def _started(metadata: Mapping[str, Any], run_dir: Path) -> datetime:
    """When the run started: metadata ``started`` (ISO or epoch), else the first event
    in the device log, else routing.json's modification time."""
    value = metadata.get("started")
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    try:
        with open(run_dir / "device-events.jsonl", encoding="utf-8") as events:
            first = json.loads(events.readline())
        return datetime.fromtimestamp(float(first["ts"]), timezone.utc)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return datetime.fromtimestamp((run_dir / "routing.json").stat().st_mtime, timezone.utc)
    except OSError:
        return datetime.now(timezone.utc)

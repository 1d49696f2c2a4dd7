"""routing.json: the routing records, their checks and the run's metadata as one file.

A versioned document (schema "msixlab.routing", version SCHEMA_VERSION) holding the run's
metadata (in the layout soak.json shares: results/metadata.py), the APIC map, every
routing record with its checks, and a checks summary; written atomically, read back into
a Snapshot (docs/routing.md).  Version 1 differed only in its metadata's layout, so the
reader takes it too (``READS``), and ``metadata_of`` gives any version's metadata in
version 2's layout.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from msixlab_common import atomic

from agent.host.errors import HostError
from agent.host.results.metadata import upgrade
from agent.host.verdict.exit import judge_exit
from agent.host.verdict.outcome import RunVerdict
from agent.host.verdict.routing import (
    ApicMap,
    CheckResult,
    Snapshot,
    Verdict,
    record_from_dict,
)

log = logging.getLogger(__name__)

SCHEMA = "msixlab.routing"
SCHEMA_VERSION = 2
#: the versions this reader takes: 1 had the metadata's older layout
READS = (1, 2)


class ReportError(HostError, ValueError):
    """routing.json could not be read: wrong schema, version or shape."""


# --- routing.json ----------------------------------------------------------------------

def checks_summary(results: Iterable[CheckResult]) -> dict[str, Any]:
    """routing.json's ``checks`` summary: totals per verdict, per check, the failures and the
    exit code."""
    results = list(results)
    totals = Counter(str(r.verdict) for r in results)
    by_check: dict[str, Counter] = {}
    for result in results:
        by_check.setdefault(result.name, Counter())[str(result.verdict)] += 1
    return {
        "total": len(results),
        **{str(v): totals.get(str(v), 0) for v in Verdict},
        "by_check": {name: {str(v): c.get(str(v), 0) for v in Verdict}
                     for name, c in sorted(by_check.items())},
        "failed": [{"name": r.name, "index": r.index, "summary": r.summary}
                   for r in results if r.verdict is Verdict.FAIL],
        "exit_code": judge_exit(results).code,
    }


def routing_document(snapshot: Snapshot, metadata: Mapping[str, Any],
                     apic_map: ApicMap | None = None, *, verdict: RunVerdict | None = None,
                     results: Iterable[CheckResult] | None = None) -> dict[str, Any]:
    """The routing.json document: the records (each with its per-vector checks), every
    check result (``results``, table-wide ones included, each naming its step), their
    summary and the run's verdict."""
    results = list(snapshot.results() if results is None else results)
    document = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "metadata": dict(metadata),
        "apic_map": (apic_map or ApicMap.identity()).to_dict(),
        "records": [record.to_dict() for record in snapshot.records],
        "results": [result.to_dict() for result in results],
        "checks": checks_summary(results),
    }
    if verdict is not None:
        document["verdict"] = verdict.to_dict()
    return document


def write_routing_json(path: Path, snapshot: Snapshot, metadata: Mapping[str, Any],
                       apic_map: ApicMap | None = None, *, verdict: RunVerdict | None = None,
                       results: Iterable[CheckResult] | None = None) -> Path:
    """Write routing.json atomically (temporary file, then rename); return its path."""
    path = Path(path)
    atomic.write_text(path, json.dumps(routing_document(snapshot, metadata, apic_map,
                                                        verdict=verdict, results=results),
                                       indent=2) + "\n")
    log.info("wrote %s (%d records)", path, len(snapshot.records))
    return path


def snapshot_from_document(document: Mapping[str, Any]) -> tuple[ApicMap, Snapshot]:
    """Read a routing.json document back: its APIC map and its records."""
    if document.get("schema") != SCHEMA:
        raise ReportError(f"not a {SCHEMA} document: schema {document.get('schema')!r}")
    if document.get("version") not in READS:
        raise ReportError(f"unsupported {SCHEMA} version {document.get('version')!r}, "
                          f"this reader knows {', '.join(map(str, READS))}")
    raw_map = document.get("apic_map")
    try:
        apic_map = ApicMap.identity() if raw_map is None else ApicMap.from_apic_ids(
            {int(cpu): apic for cpu, apic in raw_map.items()})
        records = tuple(record_from_dict(r, apic_map) for r in document["records"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ReportError(f"malformed {SCHEMA} document: {err}") from err
    return apic_map, Snapshot(records)


def read_routing_json(path: Path) -> tuple[ApicMap, Snapshot]:
    """The APIC map and snapshot of the routing.json at ``path``; ``ReportError`` if it is not
    JSON or not that schema."""
    with open(path, encoding="utf-8") as src:
        try:
            document = json.load(src)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}: not JSON: {err}") from err
    return snapshot_from_document(document)




def metadata_of(document: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata of routing.json ``document`` in version 2's layout (results/metadata.py):
    a version-1 document's upgraded, a later one's as written."""
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping):
        raise ReportError(f"malformed {SCHEMA} document: metadata must be an object")
    version = document.get("version")
    return upgrade(metadata) if version in (None, 1) else dict(metadata)

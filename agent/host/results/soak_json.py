"""soak.json: a soak's record, written atomically, and read back in either version.

Concepts: version 2 (schema ``msixlab.soak``, docs/soak.md) is ``{"schema", "version",
"metadata", "verdict", "summary", "checks_passed", "failures", "op_log"}``; its
``metadata`` has the layout of routing.json's (results/metadata.py).  Version 1, written
before, had no schema or version and held the metadata at the top level, beside the
verdict, the summary and the op log.  ``read_soak_json`` takes both and returns version 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msixlab_common import atomic

from agent.host.errors import HostError
from agent.host.results.metadata import upgrade

SCHEMA = "msixlab.soak"
SCHEMA_VERSION = 2
#: the soak's own results, beside its metadata
RESULTS = ("verdict", "summary", "checks_passed", "failures", "op_log")


class SoakJsonError(HostError, ValueError):
    """soak.json could not be read: not JSON, another schema, an unknown version."""


def soak_document(metadata: Mapping[str, Any], **results: Any) -> dict[str, Any]:
    """The soak.json document of a soak with ``metadata`` and its ``results``
    (``RESULTS``, by name)."""
    unknown = set(results) - set(RESULTS)
    if unknown:
        raise TypeError(f"soak.json has no field {sorted(unknown)}")
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "metadata": dict(metadata),
            **{name: results.get(name) for name in RESULTS}}


def write_soak_json(path: Path, metadata: Mapping[str, Any], **results: Any) -> Path:
    """Write soak.json atomically; return its path."""
    atomic.write_json(Path(path), soak_document(metadata, **results), indent=1)
    return Path(path)


def from_document(document: Any) -> dict[str, Any]:
    """A soak.json document (either version) as version 2."""
    if not isinstance(document, dict):
        raise SoakJsonError(f"soak.json holds {type(document).__name__}, not an object")
    if "schema" not in document and "version" not in document:          # version 1
        metadata = {k: v for k, v in document.items() if k not in RESULTS}
        return soak_document(upgrade(metadata), **{k: document.get(k) for k in RESULTS})
    if document.get("schema") != SCHEMA:
        raise SoakJsonError(f"not a {SCHEMA} document: schema {document.get('schema')!r}")
    if document.get("version") != SCHEMA_VERSION:
        raise SoakJsonError(f"unsupported {SCHEMA} version {document.get('version')!r}, "
                            f"this reader knows 1 and {SCHEMA_VERSION}")
    if not isinstance(document.get("metadata"), dict):
        raise SoakJsonError(f"malformed {SCHEMA} document: metadata must be an object")
    return document


def read_soak_json(path: Path) -> dict[str, Any]:
    """The soak.json at ``path``, as version 2 (``SoakJsonError`` if it is not one)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:
        raise SoakJsonError(f"{path}: not JSON: {err}") from err
    return from_document(document)

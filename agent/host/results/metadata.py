"""A run's metadata: one layout for routing.json and soak.json, and the older one read too.

Concepts owned here:
- *The layout* (version 2 of both files, docs/routing.md): ``metadata`` is an object,
  ``routing.json``'s ``metadata`` and ``soak.json``'s alike.  What decided the run first:
  ``job`` (``run`` or ``soak``), ``options`` (every option that decides what it does, as
  ``LabOptions.record()`` writes them, paths absolute, plus the job's own: ``scenario``
  for run, ``seconds`` and ``ops`` for soak) and ``seed`` (``identity``); then its
  ``reproduce`` line (made from those three) and ``msixlab_commit``; then what ran (the
  kernel, QEMU, accelerator, vectors, CPUs, NICs, the guest's command line, timings, ...);
  then the job's own fields (a run's steps, groups, resets; a soak's NIC records).
- *Version 1* (before): routing.json's metadata held the options flat, without ``job``
  or ``options`` (the kernel under test only as ``kernel_under_test``); a soak's held
  ``kind`` and an ``options`` object of its own.  ``upgrade`` gives any metadata in the
  version-2 layout: version-2 metadata unchanged, version 1 with ``job`` and ``options``
  rebuilt from what it recorded (an option it did not record reads None, or its default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the scenario ``msixlab run`` runs without ``--scenario`` (scenarios.DEFAULT)
DEFAULT_SCENARIO = "default"


def identity(job: str, options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """What decides what a run does, as its metadata records it: ``job``, ``options``,
    ``seed``."""
    return {"job": job, "options": dict(options), "seed": seed}


def upgrade(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` in the version-2 layout (a copy): as it is when it has ``job`` and
    ``options``, else (version 1) with ``job`` and ``options`` rebuilt from its flat fields
    and, for a soak, from its own ``options``."""
    out = dict(metadata)
    if "job" in out and isinstance(out.get("options"), Mapping):
        return out
    old = out.get("options") if isinstance(out.get("options"), Mapping) else {}
    job = "soak" if out.pop("kind", None) == "soak" else "run"

    def pick(key: str, default: Any = None) -> Any:
        for source in (old, out):
            if source.get(key) is not None:
                return source[key]
        return default

    kernel = pick("kernel_under_test") or {}
    label = str(kernel.get("label") or "") if isinstance(kernel, Mapping) else ""
    tree = out.get("kernel_tree") or (kernel.get("kdir") if label.startswith("tree ") else None)
    image = out.get("kernel_image") or (kernel.get("bzimage") if label.startswith("bzImage ")
                                        else None)
    modes = out.get("msix_modes") if isinstance(out.get("msix_modes"), Mapping) else {}
    options = {
        "flavor": pick("flavor"), "kernel_tree": tree, "kernel": image,
        "kdir": (out.get("kdir") or kernel.get("kdir")) if image else None,
        "qemu": out.get("qemu_binary"),          # version 1's "qemu" is QEMU's version
        "accel": pick("accel"), "vectors": pick("vectors"), "cpus": pick("cpus"),
        "nics": pick("nics", 1), "iommu": bool(pick("iommu", False)),
        "msix_maskable": bool(pick("msix_maskable", modes.get("maskable", False))),
        "msix_noresize": bool(pick("msix_noresize", modes.get("noresize", False))),
        "append": list(pick("append") or ()),
        "device_faults": list(old.get("device_faults") or ()),
    }
    if job == "soak":
        options.update(seconds=old.get("seconds"), ops=old.get("ops"))
    else:
        options["scenario"] = out.get("scenario") or DEFAULT_SCENARIO
    out.update(job=job, options=options)
    return out

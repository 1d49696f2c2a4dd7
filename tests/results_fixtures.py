"""Run directories for the result writers' tests, made from the real run in
tests/data/run-pass (see tests/data/annotate_run.py) and variants of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

DATA = Path(__file__).parent / "data" / "run-pass"
RUN_ID = "run-20261124-212545-52f8"
RAISE_STEP = "raise every vector (device, doorbell)"


def make_run(tmp_path: Path, mutate: Callable[[dict], None] | None = None) -> Path:
    run_dir = tmp_path / RUN_ID
    shutil.copytree(DATA, run_dir)
    if mutate is not None:
        path = run_dir / "routing.json"
        doc = json.loads(path.read_text())
        mutate(doc)
        path.write_text(json.dumps(doc))
    return run_dir


def check(doc: dict, name: str, index: int, occurrence: int = 1) -> dict:
    record = next(r for r in doc["records"] if r["index"] == index)
    return [c for c in record["checks"] if c["name"] == name][occurrence - 1]


def failing(doc: dict) -> None:
    """A dropped raise on vector 1 and a freed entry left unmasked at 5."""
    raised = check(doc, "raise_counted_once_on_cpu", 1)
    raised.update(verdict="fail", summary="vector 1: no CPU counted the raise (expected 1 on CPU 0)",
                  evidence={"count_deltas": {}, "device_deltas": {"raised": 1, "delivered": 0}})
    freed = check(doc, "freed_entry_masked_and_cleared", 5)
    freed.update(verdict="fail", summary="QEMU's entry 5 is not masked <ctrl=0x0> & not cleared",
                 evidence={"qemu": {"ctrl": 0, "address_lo": "0xfee00000"}})
    doc["verdict"] = {"outcome": "check_failed", "exit_code": 1, "meaning": "a check failed",
                      "summary": "2 of 173 declared checks failed", "failed": [
                          f"{RAISE_STEP}/raise_counted_once_on_cpu[1]",
                          "free B and raise its indices/freed_entry_masked_and_cleared[5]"],
                      "evidence": {}, "faults_armed": [{"kind": "drop_raise", "vector": 1, "id": 1}],
                      "counts": {"declared": 173, "passed": 171, "failed": 2, "not_judged": 0}}


CONSOLE = ("[   14.210000] kernel BUG at drivers/pci/msi/msi.c:700!\n"
           "[   14.210100] Oops: invalid opcode: 0000 [#1] SMP NOPTI\n"
           "[   14.210200] RIP: 0010:msi_domain_free_irqs+0x10/0x20\n")


def splat(doc: dict) -> None:
    """The kernel oopsed after the checks so far passed."""
    doc["verdict"] = {"outcome": "kernel_splat", "exit_code": 1,
                      "meaning": "the guest kernel printed an oops, panic, BUG, WARN or similar report",
                      "summary": "the guest kernel reported BUG: kernel BUG at drivers/pci/msi/msi.c:700!",
                      "failed": [], "evidence": {"line": CONSOLE.splitlines()[0], "kind": "BUG",
                                                 "console": CONSOLE},
                      "faults_armed": [], "counts": {"declared": 180, "passed": 173, "failed": 0,
                                                     "not_judged": 7}}


def infra(doc: dict) -> None:
    """QEMU died before anything was judged."""
    doc["records"] = []
    doc["checks"] = {"total": 0, "pass": 0, "fail": 0, "skip": 0, "by_check": {}, "failed": [],
                     "exit_code": 125}
    doc["verdict"] = {"outcome": "process_failed", "exit_code": 125,
                      "meaning": "QEMU or the device server failed, not because of the guest",
                      "summary": "QEMU exited while waiting for its QMP socket (exit code 1)",
                      "failed": [], "evidence": {"process": "qemu", "returncode": 1},
                      "faults_armed": [], "counts": {}}


def legacy(doc: dict) -> None:
    """What routing.json held before the verdict work: no verdict, steps or provenance."""
    del doc["verdict"]
    for key in ("seed", "config_hash", "msixlab_commit", "reproduce"):
        del doc["metadata"][key]
    for record in doc["records"]:
        for result in record["checks"]:
            del result["step"]

"""Which accelerator runs the guest, and why.

Concepts: TCG is the default.  KVM is opt-in (``MSIXLAB_ACCEL=kvm`` or ``--accel kvm``)
and must prove itself: nested KVM on these machines dies in the kernel decompressor, so
before KVM is used a short probe boot must reach the guest's ready marker under it.
``auto`` tries that probe and falls back to TCG.  The probe's verdict is cached per QEMU
and kernel so it runs once.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from msixlab_common import atomic

from images.cache import cache_dir
from images.image import Image

from agent.host.errors import HostError
from agent.host.lab.boot import boot_ready
from agent.host.verdict.outcome import CouldNotJudge, Outcome

log = logging.getLogger(__name__)
CHOICES = ("tcg", "kvm", "auto")


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator to use and why it was chosen."""
    accel: str
    reason: str


def kvm_device_usable() -> tuple[bool, str]:
    """Whether /dev/kvm exists and this user may read and write it, and why not."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    return True, "/dev/kvm is present"


def _probe_file(image: Image, flavor: str) -> Path:
    return cache_dir() / "kvm-probe" / f"{image.qemu_version}-{image.kernel(flavor).version}.json"


def probe_kvm(image: Image, flavor: str, timeout: float = 30.0) -> tuple[bool, str]:
    """Boot the guest once under KVM; True if it reaches the ready marker."""
    cached = _probe_file(image, flavor)
    if cached.is_file():
        verdict = json.loads(cached.read_text())
        return verdict["ok"], verdict["reason"] + " (cached probe)"
    ok, why = kvm_device_usable()
    if ok:
        try:
            result = boot_ready(image, flavor, accel="kvm", timeout=timeout, keep=False)
            why = f"a probe boot under KVM reached ready in {result.ready_seconds:.1f} s"
        except Exception as err:   # any failure means KVM did not prove itself
            ok, why = False, f"a probe boot under KVM failed: {str(err).splitlines()[0]}"
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(cached, {"ok": ok, "reason": why})
    return ok, why


def requested_name(requested: str | None, environ=os.environ) -> str:
    """The accelerator asked for: ``requested`` (``--accel``), else ``$MSIXLAB_ACCEL``, else
    tcg.  A name that is none of ``CHOICES`` is a bad option (``CouldNotJudge``, exit 125)
    naming where it came from."""
    where = "--accel" if requested else "MSIXLAB_ACCEL"
    name = requested or environ.get("MSIXLAB_ACCEL") or "tcg"
    if name.lower() not in CHOICES:
        raise CouldNotJudge(Outcome.BAD_OPTION, f"{where} must be one of {', '.join(CHOICES)}, "
                            f"not {name!r}", accel=name)
    return name.lower()


def choose(requested: str | None, image: Image | None, flavor: str = "default") -> AccelChoice:
    """The accelerator for ``requested`` (else ``$MSIXLAB_ACCEL``, else tcg): ``tcg`` as is;
    ``kvm`` only if a probe boot under KVM reaches the ready marker (``HostError`` if not);
    ``auto`` falls back to TCG.  An unknown name is a bad option (``requested_name``)."""
    requested = requested_name(requested)
    if requested == "tcg":
        return AccelChoice("tcg", "TCG is the default; KVM is opt-in (MSIXLAB_ACCEL=kvm or auto)")
    if image is None:
        return AccelChoice("tcg", "no image built yet, so KVM cannot be probed")
    ok, why = probe_kvm(image, flavor)
    if ok:
        return AccelChoice("kvm", why)
    if requested == "kvm":
        raise HostError(f"KVM was requested but did not prove itself: {why}")
    return AccelChoice("tcg", f"auto: {why}; using TCG")

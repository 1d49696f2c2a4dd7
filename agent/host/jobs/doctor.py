"""``msixlab doctor``: what this machine has for msixlab, and how to fix what it lacks.

Concepts: a survey.  It builds nothing; it boots nothing either, except that with
``--accel kvm|auto`` it makes the same probe boot ``run`` would (KVM must prove itself).
For each missing piece it names the command that provides it; an image whose key files
no longer match their manifest (images/keyfiles.py) is such a piece.  ``report()`` returns one JSON-able dict (the ``--json``
output, a stable contract for scripts); ``render()`` prints it for people.
"""

from __future__ import annotations

import shlex
import shutil
import sys

from rich.console import Console
from rich.table import Table

from images import keyfiles, recipe
from images.build import find_image, image_key
from images.cache import cache_dir, tree_size
from images.manifest import CacheEntryError

from agent.host.lab import accel as accel_mod


def report(requested_accel: str | None = None) -> dict:
    """What is here and what is missing, as one JSON-able dict: image key, cache, rootfs, QEMU,
    kernels, flavors, Python, the accelerator choice and /dev/kvm, and ``missing`` (each
    with the command that fixes it).  It boots a KVM probe only when the accelerator asked
    for (``requested_accel``, else ``MSIXLAB_ACCEL``) is kvm or auto."""
    image = find_image()
    out: dict = {
        "image_key": image_key(),
        "cache_dir": str(cache_dir()),
        "cache_size_bytes": tree_size(cache_dir()) if cache_dir().is_dir() else 0,
        "rootfs": None,
        "qemu": None,
        "kernels": [],
        "flavors": {f.name: f.summary for f in recipe.FLAVORS.values()},
        "default_flavor": recipe.DEFAULT_FLAVOR,
        "python": sys.version.split()[0],
        "missing": [],
    }
    if shutil.which("mmdebstrap") is None:
        out["missing"].append({"what": "mmdebstrap (builds the image)", "fix": "make setup"})
    if image is None:
        out["missing"].append({"what": f"the image {image_key()}", "fix": "make image"})
    elif damage := _damage(image):
        out["rootfs"] = str(image.rootfs)
        out["missing"].append({"what": f"an intact image: {damage}",
                               "fix": "make clean-cache image"})
        image = None            # its QEMU may be what is damaged: nothing is run from it
    else:
        summary = image.summary()
        out.update(rootfs=summary["rootfs"], qemu=summary["qemu"], kernels=summary["kernels"])
        if not summary["qemu"]["vfio_user_pci"]:
            out["missing"].append({"what": "vfio-user-pci in the image's QEMU",
                                   "fix": "make clean-cache image"})
        have = {k["flavor"] for k in summary["kernels"]}
        for flavor in sorted(set(recipe.FLAVORS) - have):
            out["missing"].append({"what": f"kernel flavor {flavor}", "fix": "make clean-cache image"})
    try:
        choice = accel_mod.choose(requested_accel, image)
        out["accel"], out["accel_reason"] = choice.accel, choice.reason
    except Exception as err:
        out["accel"], out["accel_reason"] = None, str(err)
        out["missing"].append({"what": "the requested accelerator", "fix": "MSIXLAB_ACCEL=tcg"})
    kvm_ok, kvm_why = accel_mod.kvm_device_usable()
    out["kvm_device"] = {"usable": kvm_ok, "reason": kvm_why}
    return out


def _damage(image) -> str | None:
    """The first damaged key file of ``image`` and what is wrong (images/keyfiles.py)."""
    try:
        keyfiles.verified(image)
    except CacheEntryError as err:
        return str(err.problems[0])
    return None


def render(info: dict, console: Console) -> None:
    """Print ``report()``'s dict for people: a table, then each missing piece with its fix."""
    table = Table(title="msixlab doctor", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    qemu = info["qemu"]
    if qemu:
        mark = "[green]yes[/]" if qemu["vfio_user_pci"] else "[red]no[/]"
        table.add_row("QEMU", f"{qemu['version']} (vfio-user-pci: {mark})")
        table.add_row("QEMU command", shlex.join(qemu["command"]))
    else:
        table.add_row("QEMU", "[red]no image built[/]")
    table.add_row("image", f"{info['image_key']} at {info['rootfs'] or '-'}")
    for kernel in info["kernels"]:
        default = " (default)" if kernel["flavor"] == info["default_flavor"] else ""
        table.add_row(f"kernel {kernel['flavor']}{default}", f"{kernel['version']}  {kernel['image']}")
    table.add_row("accelerator", f"{info['accel']}: {info['accel_reason']}")
    table.add_row("KVM device", info["kvm_device"]["reason"])
    table.add_row("cache", f"{info['cache_dir']} ({info['cache_size_bytes'] / 2**20:.0f} MiB)")
    console.print(table)
    for item in info["missing"]:
        console.print(f"[red]missing:[/] {item['what']}  ->  run: [bold]{item['fix']}[/]")
    if not info["missing"]:
        console.print("[green]everything msixlab needs is here[/]")

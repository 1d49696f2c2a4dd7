"""The files msixlab ships beside its code, found through ``importlib.resources``.

Concepts: what the rig needs at run time and is not Python (the kernel fragment, the guest
driver's sources and ``build.sh``, the initramfs's ``/init``, stage 2, ``msixlab-guest``)
is package data of a msixlab package (pyproject.toml's ``package-data``), so a wheel
carries it and an install finds it where it finds the code: never through a path relative
to a checkout.  ``packaged(package, *names)`` is that file or directory as a path on disk,
because the tools that read them (make, sh, QEMU's 9p server) need one; an install from
which a package cannot be read as a directory (a zip) is ``PackagedFileError``, naming
the fix.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ImageError


class PackagedFileError(ImageError):
    """A file msixlab ships is missing from this install, or not on disk."""

    def __init__(self, message: str):
        super().__init__(message, step="install")


def package_dir(package: str) -> Path:
    """The directory of msixlab's ``package`` (``"agent"``, ``"images"``) on disk;
    ``PackagedFileError`` when the package is not a directory on disk (a zip)."""
    root = resources.files(package)
    if not isinstance(root, Path):
        raise PackagedFileError(f"msixlab's package {package} is not a directory on disk "
                                f"({root}): install msixlab unpacked (pip install or pipx "
                                "install of the checkout or its wheel)")
    return root


def packaged(package: str, *names: str) -> Path:
    """The file or directory ``names`` of msixlab's ``package`` (``"agent"``, ``"kmod"``,
    ``"build.sh"``), as a path on disk; ``PackagedFileError`` when it is missing (an install
    without its package data) or the package is not a directory on disk."""
    path = package_dir(package).joinpath(*names)
    if not path.exists():
        raise PackagedFileError(f"{path} is missing from this msixlab install: its package "
                                "data was not installed (install the checkout, or a wheel "
                                "built from it with pip wheel)")
    return path

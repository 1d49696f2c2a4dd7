"""Where Debian packages come from: the host's own apt configuration.

Concepts: msixlab never names a mirror itself.  The mirror is the first Debian archive
URI (not a security archive) configured on the host, in deb822 ``*.sources`` files or in
one-line ``sources.list`` files.  ``MSIXLAB_MIRROR`` overrides it.  The host's apt sources
are only ever read, never written.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ImageError

ENV_OVERRIDE = "MSIXLAB_MIRROR"
APT_DIR = Path("/etc/apt")


def _deb822_uris(text: str) -> list[str]:
    uris: list[str] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        uris.extend(fields.get("uris", "").split())
    return uris


def _one_line_uris(text: str) -> list[str]:
    uris = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            rest = [w for w in words[1:] if not w.startswith("[")]
            if words[1].startswith("[") and not words[1].endswith("]"):
                # options spanning several words: drop until the closing bracket
                while rest and not rest[0].endswith("]"):
                    rest.pop(0)
                rest = rest[1:]
            if rest:
                uris.append(rest[0])
    return uris


def configured_uris(apt_dir: Path = APT_DIR) -> list[str]:
    """Every ``deb`` URI in the host's apt configuration, in apt's reading order."""
    uris: list[str] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        uris += _one_line_uris(main_list.read_text(errors="replace"))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".sources":
                uris += _deb822_uris(path.read_text(errors="replace"))
            elif path.suffix == ".list":
                uris += _one_line_uris(path.read_text(errors="replace"))
    return uris


def debian_mirror(apt_dir: Path = APT_DIR, environ=os.environ) -> str:
    """The Debian archive to build images from."""
    override = environ.get(ENV_OVERRIDE, "").strip()
    if override:
        return override.rstrip("/")
    for uri in configured_uris(apt_dir):
        path = uri.rstrip("/")
        if path.endswith("/debian") and "security" not in path:
            return path
    raise ImageError(
        "no Debian archive found in the host's apt configuration "
        f"({apt_dir}/sources.list, {apt_dir}/sources.list.d); set {ENV_OVERRIDE}=<archive URL>",
        step="mirror",
    )

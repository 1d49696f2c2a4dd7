"""One atomic write (msixlab_common/atomic.py): the old file or the whole new one."""

import json
import os
import stat

import pytest

from msixlab_common import atomic


def test_a_write_leaves_the_old_file_or_the_whole_new_one(tmp_path, monkeypatch):
    path = tmp_path / "soak.json"
    atomic.write_text(path, "old\n")
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["soak.json"]

    def no_space(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.os, "replace", no_space)
    with pytest.raises(OSError):
        atomic.write_text(path, "partial\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["soak.json"]


def test_a_write_interrupted_before_the_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic.write_json(path, {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_json_and_bytes_and_the_mode(tmp_path):
    old = os.umask(0o077)
    try:
        path = atomic.write_json(tmp_path / "a.json", {"b": 2, "a": 1}, indent=1, sort_keys=True)
        data = atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01", mode=0o600)
    finally:
        os.umask(old)
    assert path.read_text() == '{\n "a": 1,\n "b": 2\n}\n' and json.loads(path.read_text()) == {"a": 1, "b": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644      # readable results, whatever the umask
    assert data.read_bytes() == b"\x00\x01" and stat.S_IMODE(data.stat().st_mode) == 0o600


def test_one_atomic_write_in_the_house():
    """No module writes its own temp-file-and-rename: every atomic write goes through here."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = []
    for package in ("agent/host", "images", "msixlab_common", "qemu_device"):
        for p in (root / package).rglob("*.py"):
            text = p.read_text()
            if p.name == "atomic.py":
                continue
            if "os.replace(" in text and (".tmp" in text or "mkstemp" in text):
                offenders.append(str(p.relative_to(root)))
    assert offenders == []

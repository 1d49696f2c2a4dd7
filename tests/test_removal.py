"""msixlab_common.removal: the one recursive delete, which never crosses a mount point or
follows a symlink.  The mount cases run in a private mount namespace (tests/mountns.py):
a tmpfs and a bind of a stand-in directory of the same filesystem under the tree."""

from __future__ import annotations

import ast
import logging
import os
import re
from pathlib import Path

import pytest

from msixlab_common import removal
from msixlab_common.removal import MountsInTheWay, remove_tree

from mountns import in_private_mount_ns, mount, mounted_under, needs_mount_ns

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "bench", "guest_tests", "images", "msixlab_common", "mutants",
            "qemu_device", "tests")


def _tree_with_outside_links(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "sub" / "deep.txt").write_text("deep")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "file").write_text("x")
    (tree / "a" / "dirlink").symlink_to(outside)
    (tree / "a" / "b" / "filelink").symlink_to(outside / "keep.txt")
    (tree / "dangling").symlink_to(tmp_path / "nowhere")
    return tree, outside


def test_symlinks_are_removed_as_links_and_their_targets_survive(tmp_path):
    tree, outside = _tree_with_outside_links(tmp_path)
    remove_tree(tree)
    assert not tree.exists() and not tree.is_symlink()
    assert (outside / "keep.txt").read_text() == "keep"
    assert (outside / "sub" / "deep.txt").read_text() == "deep"


def test_a_link_given_as_the_tree_is_unlinked_not_followed(tmp_path):
    _tree, outside = _tree_with_outside_links(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.is_symlink()
    assert (outside / "keep.txt").read_text() == "keep"


def test_a_missing_tree_is_not_an_error_and_a_file_is_removed(tmp_path):
    remove_tree(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_a_tree_deeper_than_the_recursion_limit_is_removed(tmp_path):
    deep = tmp_path / "deep"
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.mkdir("deep", dir_fd=fd)
        for _ in range(1200):                 # deeper than PATH_MAX would allow by name
            new = os.open("deep", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
            os.mkdir("deep", dir_fd=fd)
    finally:
        os.close(fd)
    remove_tree(deep)
    assert not deep.exists()


def test_mountinfo_paths_with_spaces_are_decoded():
    assert removal._unescape(r"/tmp/a\040b\011c") == "/tmp/a b\tc"


def _mounted_tree(base: Path) -> tuple[Path, Path]:
    """``base/tree`` with a tmpfs at ``a/tmp`` and a bind of the stand-in ``base/standin``
    (same filesystem, same st_dev) at ``b/shm``; the stand-in holds ``canary``."""
    standin = base / "standin"
    standin.mkdir()
    (standin / "canary").write_text("host data")
    tree = base / "tree"
    for sub in ("a/tmp", "b/shm", "c"):
        (tree / sub).mkdir(parents=True)
    (tree / "c" / "file").write_text("x")
    mount("-t", "tmpfs", "tmpfs", str(tree / "a" / "tmp"))
    (tree / "a" / "tmp" / "in-tmpfs").write_text("y")
    mount("--bind", str(standin), str(tree / "b" / "shm"))
    return tree, standin


def _refuses_naming_every_mount(base: Path) -> None:
    tree, standin = _mounted_tree(base)
    with pytest.raises(MountsInTheWay) as caught:
        remove_tree(tree)
    assert sorted(caught.value.mounts) == sorted([str(tree / "a" / "tmp"), str(tree / "b" / "shm")])
    assert str(tree / "b" / "shm") in str(caught.value)
    assert (tree / "c" / "file").exists(), "nothing is deleted before refusing"
    assert (standin / "canary").read_text() == "host data"
    remove_tree(tree, ignore_errors=True)         # a refusal is logged, not raised
    assert (standin / "canary").read_text() == "host data"


def _unmounts_what_the_caller_owns(base: Path) -> None:
    tree, standin = _mounted_tree(base)
    remove_tree(tree, unmount=True)
    assert not tree.exists()
    assert mounted_under(base) == []
    assert (standin / "canary").read_text() == "host data"


def _a_bind_missed_by_mountinfo_stops_the_walk(base: Path) -> None:
    tree, standin = _mounted_tree(base)
    removal.mounts_under = lambda path: []        # as if the bind appeared after the check
    with pytest.raises(MountsInTheWay) as caught:
        remove_tree(tree)
    assert "appeared during the removal" in str(caught.value)
    assert (standin / "canary").read_text() == "host data"


@needs_mount_ns
@pytest.mark.parametrize("case", [_refuses_naming_every_mount, _unmounts_what_the_caller_owns,
                                  _a_bind_missed_by_mountinfo_stops_the_walk])
def test_mounts_under_the_tree(tmp_path, case):
    in_private_mount_ns(case, tmp_path)
    assert (tmp_path / "standin" / "canary").read_text() == "host data"


def test_ignore_errors_logs_a_refusal_as_a_warning(tmp_path, caplog, monkeypatch):
    (tmp_path / "tree").mkdir()
    monkeypatch.setattr(removal, "mounts_under", lambda path: [str(tmp_path / "tree" / "m")])
    with caplog.at_level(logging.WARNING, logger="msixlab_common.removal"):
        remove_tree(tmp_path / "tree", ignore_errors=True)
    assert "refusing to remove" in caplog.text and (tmp_path / "tree").is_dir()


def _recursive_deletes(path: Path) -> list[str]:
    """Calls of shutil.rmtree or os.removedirs in ``path`` (any spelling of the import)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("shutil", "os"):
            found += [f"{path}:{node.lineno}: from {node.module} import {a.name}"
                      for a in node.names if a.name in ("rmtree", "removedirs")]
        elif isinstance(node, ast.Attribute) and node.attr in ("rmtree", "removedirs"):
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_deletes_a_tree_except_through_remove_tree():
    """One helper does every recursive delete: no other module calls shutil.rmtree or
    os.removedirs, which would delete through a mount point."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path != ROOT / "msixlab_common" / "removal.py" and ".venv" not in path.parts:
                found += _recursive_deletes(path)
    assert found == []


def test_no_make_target_or_script_deletes_a_tree_with_rm():
    """The Makefile and the shell scripts delete trees through remove_tree too (GNU rm's
    --one-file-system would still cross a bind mount of the same filesystem)."""
    scripts = [ROOT / "Makefile", *sorted(ROOT.glob("images/**/*.sh")),
               *sorted(p for p in (ROOT / "images" / "guest").rglob("*") if p.is_file())]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in scripts
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if re.search(r"\brm\s+(-\w*[rR]|--recursive)", line)]
    assert found == []

"""What msixlab names as itself: ``--version`` and the records' ``msixlab_commit``, from a
checkout (the commit), from an install (the package version), and never the commit of a
repository msixlab merely sits in."""

from __future__ import annotations

import subprocess
import sys

from agent.host.results import provenance as version


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
                        "PATH": "/usr/bin:/bin", "HOME": str(root)})


def _repo(root):
    root.mkdir(parents=True, exist_ok=True)
    _git(root, "init", "-q")
    (root / "f").write_text("one\n")
    _git(root, "add", "f")
    _git(root, "commit", "-q", "-m", "one")
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_a_checkout_names_its_commit_and_dirt(tmp_path):
    head = _repo(tmp_path / "msixlab")
    assert version.commit(tmp_path / "msixlab") == head
    (tmp_path / "msixlab" / "f").write_text("two\n")
    assert version.commit(tmp_path / "msixlab") == head + "-dirty"
    assert version.what_ran(tmp_path / "msixlab") == head + "-dirty"


def test_an_install_inside_another_repository_has_no_commit(tmp_path):
    """A venv inside a kernel tree: site-packages is in a work tree, but not its top."""
    _repo(tmp_path / "linux")
    site = tmp_path / "linux" / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    assert version.commit(site) is None
    assert version.what_ran(site) == f"msixlab {version.package_version()}"
    assert version.describe(site) == f"msixlab {version.package_version()}"


def test_no_git_at_all_is_no_commit(tmp_path):
    assert version.commit(tmp_path) is None


def test_msixlab_version_names_the_package_and_this_checkouts_commit():
    done = subprocess.run([sys.executable, "-m", "agent.host", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"msixlab {version.package_version()} (commit ")
    head = subprocess.run(["git", "-C", str(version.PACKAGES_DIR), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert head in done.stdout

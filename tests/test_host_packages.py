"""msixlab setup (images/host_packages.py): what it installs, how (root, sudo, or the exact
command printed), and what it says on a host that is not Debian."""

from __future__ import annotations

import io
import subprocess
import sys

from images import host_packages as hp


def _setup(**kw) -> tuple[int, str]:
    out = io.StringIO()
    return hp.setup(out, **kw), out.getvalue()


def test_missing_asks_dpkg_and_drops_venv_when_python_can_make_one():
    have = {"make", "gcc"}
    need = hp.missing(installed=lambda name: name in have, venv_works=lambda: True)
    names = [p.name for p in need]
    assert "make" not in names and "gcc" not in names and "python3-venv" not in names
    assert "mmdebstrap" in names and "chromium" in names
    need = hp.missing(installed=lambda name: False, venv_works=lambda: False)
    assert "python3-venv" in [p.name for p in need]


def test_this_host_has_everything_so_setup_installs_nothing():
    """The test machine was set up by `make`, which runs the same module."""
    assert hp.missing() == []
    code, text = _setup()
    assert code == 0 and "every host package is installed" in text


def test_without_root_or_sudo_the_exact_commands_are_printed(monkeypatch):
    monkeypatch.setattr(hp.shutil, "which", lambda name: None if name == "sudo" else "/x")
    need = [hp.PACKAGES[0], hp.PACKAGES[-1]]
    code, text = _setup(uid=1000, interactive=False, debian=True, need=need)
    assert code == 1
    assert "cannot install without root" in text
    assert "  sudo apt-get -o Acquire::Retries=3 update -q" in text
    assert "  sudo apt-get -o Acquire::Retries=3 install -y -q mmdebstrap chromium" in text


def test_dry_run_prints_what_root_would_run():
    code, text = _setup(uid=0, debian=True, dry_run=True, need=[hp.PACKAGES[1]])
    assert code == 0
    assert "  apt-get -o Acquire::Retries=3 install -y -q make" in text and "sudo" not in text


def test_a_host_without_apt_gets_the_names_to_look_for():
    code, text = _setup(debian=False)
    assert code == 1 and "no dpkg/apt" in text
    for p in hp.PACKAGES:
        assert p.elsewhere in text


def test_msixlab_setup_is_the_same_module_and_make_runs_it_before_the_venv():
    done = subprocess.run([sys.executable, "-m", "agent.host", "setup", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "every host package is installed" in done.stdout
    from pathlib import Path
    makefile = (Path(hp.__file__).parents[1] / "Makefile").read_text()
    assert "$(PYTHON) images/host_packages.py" in makefile

"""The guest driver (agent/kmod) passes the kernel's checkpatch and a W=1 build, but for a
short list of accepted findings, each with its reason (agent/kmod/checkpatch-accepted.txt,
agent/kmod/w1-accepted.txt; docs/kmod.md).

- checkpatch: ``scripts/checkpatch.pl --no-tree -f --strict`` of the cached Debian
  linux-source (agent/host/kernel/checkpatch.py) on every .c and .h of the driver and on
  its Kbuild and Makefile.  When the cache has no linux-source yet (a fresh `make test`
  runs these unit tests before the guest tests fetch it) it is downloaded and checkpatch
  unpacked from it, once: the check never skips.
- W=1: ``agent/kmod/build.sh`` with ``MSIXLAB_W=1`` (``kmod.build_with_warnings``),
  against the headers of the image's default kernel, inside the image rootfs.  It needs
  the built image, which `make test` builds before the unit tests, and root (build.sh's
  mount namespace and chroot); without either it skips, saying which.
- Each check is shown to fail: a copy of the driver with a planted violation (a barrier
  without a comment, trailing whitespace, an accepted finding gone) or a planted W=1
  warning (the device name's buffer back at 16 bytes) must be named.
- The accepted-list reader and the judge, on small inputs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.host.kernel import kmod
from agent.host.kernel import checkpatch, lint
from agent.host.kernel.errors import SourceError
from agent.host.kernel.lint import Accepted, Finding, LintError
from agent.host.kernel.source import PACKAGE, SourcePackage
from images.build import ensure_image, find_image
from mountns import needs_mount_ns

KMOD_DIR = kmod.KMOD_DIR
CHECKPATCH_ACCEPTED = KMOD_DIR / "checkpatch-accepted.txt"
W1_ACCEPTED = KMOD_DIR / "w1-accepted.txt"


def checked_files(root: Path) -> list[Path]:
    """The files checkpatch checks: every .c and .h of the driver, Kbuild and Makefile."""
    return sorted(p for p in root.iterdir() if p.suffix in (".c", ".h")
                  or p.name in ("Kbuild", "Makefile"))


def driver_copy(tmp_path: Path) -> Path:
    """A copy of agent/kmod to plant bugs in."""
    copy = tmp_path / "kmod"
    shutil.copytree(KMOD_DIR, copy)
    return copy


def plant(path: Path, old: str, new: str) -> int:
    """Replace the one ``old`` in ``path`` with ``new``; the 1-based line it starts on."""
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name}: the plant's anchor occurs {text.count(old)} times"
    path.write_text(text.replace(old, new))
    return text[:text.index(old)].count("\n") + 1


# --- checkpatch ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scripts() -> Path:
    """The directory with checkpatch.pl and its word lists (downloaded and unpacked first
    when the cache has no linux-source: a failure to is a failure, never a skip)."""
    try:
        return checkpatch.script_dir()
    except SourceError as err:
        pytest.fail(f"cannot get checkpatch.pl from {PACKAGE}: {err}")


def test_every_file_the_build_reads_is_checked():
    """Kbuild's objects' .c files and every header they include from the driver."""
    checked = {p.name for p in checked_files(KMOD_DIR)}
    objects = re.search(r"^msixlab-y\s*:=(.*)$", (KMOD_DIR / "Kbuild").read_text(), re.M)
    sources = {name[:-2] + ".c" for name in objects.group(1).split()}
    headers = {name for path in KMOD_DIR.glob("*.[ch]")
               for name in re.findall(r'^#include "([^"]+)"', path.read_text(), re.M)}
    assert len(sources) == 5 and len(headers) == 3     # msixlab_pm.c since the suspend scenario
    assert sources | headers | {"Kbuild", "Makefile"} <= checked


def test_checkpatch_finds_nothing_but_the_accepted(scripts):
    findings = checkpatch.run(checked_files(KMOD_DIR), scripts)
    problems = lint.judge(findings, lint.load_accepted(CHECKPATCH_ACCEPTED))
    assert not problems, "checkpatch on agent/kmod:\n" + "\n".join(problems)


PLANTS = {
    # a barrier with no comment on what it pairs with (checkpatch WARNING)
    "barrier-without-comment": ("msixlab_group.c", "\tthis_cpu_inc(*vec->counts);\n",
                                "\tsmp_mb();\n\tthis_cpu_inc(*vec->counts);\n",
                                "MEMORY_BARRIER"),
    # trailing whitespace (checkpatch ERROR)
    "trailing-whitespace": ("msixlab_main.c", "\tpci_set_master(pdev);\n",
                            "\tpci_set_master(pdev); \n", "TRAILING_WHITESPACE"),
}


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_checkpatch_names_a_planted_violation(scripts, tmp_path, name):
    file, old, new, kind = PLANTS[name]
    copy = driver_copy(tmp_path)
    line = plant(copy / file, old, new)
    findings = checkpatch.run(checked_files(copy), scripts)
    problems = lint.judge(findings, lint.load_accepted(CHECKPATCH_ACCEPTED))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{file}:{line}: {kind}: "), problems
    assert problems[0].endswith("(not accepted)")


def test_checkpatch_names_an_accepted_finding_that_is_gone(scripts, tmp_path):
    """An accepted finding fixed (one BIT_MACRO of six) leaves its entry's count wrong."""
    copy = driver_copy(tmp_path)
    plant(copy / "msixlab_uapi.h", "#define MSIXLAB_CPU_EFFECTIVE	(1U << 2)",
          "#define MSIXLAB_CPU_EFFECTIVE	4U")
    problems = lint.judge(checkpatch.run(checked_files(copy), scripts),
                          lint.load_accepted(CHECKPATCH_ACCEPTED))
    assert len(problems) == 1, problems
    assert "accepts 7 BIT_MACRO in msixlab_uapi.h, found 6" in problems[0]


def test_checkpatch_that_cannot_run_is_an_error_not_a_pass(tmp_path):
    (tmp_path / "checkpatch.pl").write_text('die "no word lists\\n";\n')
    (tmp_path / "x.c").write_text("int x;\n")
    with pytest.raises(LintError, match="checkpatch failed .*no word lists"):
        checkpatch.run([tmp_path / "x.c"], tmp_path)


def test_unexpected_checkpatch_output_is_an_error():
    assert checkpatch.parse("a.c:3: WARNING:SPACING: space required\n") == [
        Finding("a.c", 3, "SPACING", "WARNING: space required")]
    with pytest.raises(LintError, match="unexpected checkpatch output"):
        checkpatch.parse("total: 0 errors, 1 warnings, 0 checks, 3 lines checked\n")


def _fake_source_deb(root: Path, version: str) -> SourcePackage:
    """A linux-source .deb as Debian ships it (usr/src/linux-source-X.tar.xz holding
    linux-source-X/scripts/...), with tiny stand-ins for checkpatch's files."""
    top = root / "src" / "linux-source-9.9"
    (top / "scripts").mkdir(parents=True)
    for name in checkpatch.SCRIPTS:
        (top / "scripts" / name).write_text(f"{name} of {version}\n")
    (top / "Makefile").write_text("VERSION = 9\n")
    pkg = root / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/src").mkdir(parents=True)
    subprocess.run(["tar", "-cJf", str(pkg / "usr/src/linux-source-9.9.tar.xz"), "-C",
                    str(top.parent), top.name], check=True, timeout=60)
    (pkg / "DEBIAN/control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: msixlab <msixlab@localhost>\nDescription: test\n")
    debs = root / "cache/kernel/debs"
    debs.mkdir(parents=True)
    deb = debs / f"{PACKAGE}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zxz", str(pkg), str(deb)], check=True,
                   capture_output=True, timeout=60)
    return SourcePackage(PACKAGE, version, deb)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_checkpatch_is_unpacked_from_the_cached_deb_once_and_again_when_damaged(
        tmp_path, monkeypatch):
    monkeypatch.setenv("MSIXLAB_CACHE", str(tmp_path / "cache"))
    source = _fake_source_deb(tmp_path, "9.9.1-1")
    where = checkpatch.script_dir()
    assert where == tmp_path / f"cache/kernel/checkpatch/{PACKAGE}_9.9.1-1"
    assert (where / "checkpatch.pl").read_text() == "checkpatch.pl of 9.9.1-1\n"
    assert sorted(p.name for p in where.iterdir()) == sorted(checkpatch.SCRIPTS)
    (where / "spelling.txt").write_text("overwritten\n")
    assert checkpatch.script_dir() == where
    assert (where / "spelling.txt").read_text() == "spelling.txt of 9.9.1-1\n"
    # a complete test kernel tree of the same version is used as it is
    tree = tmp_path / f"cache/kernel/trees/{PACKAGE}_{source.key}-abc"
    shutil.copytree(where, tree / "scripts")
    (tree.with_name(tree.name + ".json")).write_text("{}\n")
    assert checkpatch.script_dir() == tree / "scripts"


# --- the W=1 build ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image():
    """The built image, held shared for the session; a skip naming why when there is none
    (`make test` builds it before the unit tests, so there it never skips)."""
    if find_image() is None:
        pytest.skip("the image is not built (make image builds it; make test builds it "
                    "before running the unit tests)")
    return ensure_image()


@needs_mount_ns
def test_w1_build_warns_of_nothing_but_the_accepted(image, tmp_path):
    log = kmod.build_with_warnings(image, "default", tmp_path / "w1", timeout=300)
    for name in ("msixlab_main", "msixlab_group", "msixlab_route", "msixlab_fault"):
        assert f"{name}.o" in log, f"the W=1 build did not compile {name}.c:\n{log}"
    assert (tmp_path / "w1/msixlab.ko").is_file()
    problems = lint.judge(lint.parse_build_log(log), lint.load_accepted(W1_ACCEPTED))
    assert not problems, "W=1 build of agent/kmod:\n" + "\n".join(problems)


@needs_mount_ns
def test_w1_build_names_a_planted_warning(image, tmp_path):
    """The device name's buffer back at its old 16 bytes: snprintf() of "msixlab%d" may
    truncate, which only W=1's -Wformat-truncation reports (the default build does not)."""
    copy = driver_copy(tmp_path)
    plant(copy / "msixlab.h", 'char name[sizeof("msixlab") + 10];', "char name[16];")
    log = kmod.build_with_warnings(image, "default", tmp_path / "w1", timeout=300,
                                   sources=copy)
    problems = lint.judge(lint.parse_build_log(log), lint.load_accepted(W1_ACCEPTED))
    assert len(problems) == 1, problems
    assert problems[0].startswith("msixlab_main.c:"), problems
    assert ": -Wformat-truncation=: " in problems[0] and "(not accepted)" in problems[0]


# --- reading build logs and accepted lists, judging ----------------------------------------
def test_build_log_warnings_are_read_and_notes_are_not():
    log = """\
  CC [M]  msixlab_main.o
/mnt/msixlab_main.c: In function 'msixlab_probe':
/mnt/msixlab_main.c:326:54: warning: '%d' directive output may be truncated [-Wformat-truncation=]
/mnt/msixlab_main.c:326:46: note: directive argument in the range [0, 2147483647]
msixlab_group.c:12:1: warning: no previous prototype for 'f' [-Wmissing-prototypes]
msixlab_route.o: warning: objtool: msixlab_raise+0x1f: call to foo() with UACCESS enabled
WARNING: modpost: missing MODULE_DESCRIPTION() in msixlab.o
  LD [M]  msixlab.ko
"""
    assert lint.parse_build_log(log) == [
        Finding("msixlab_main.c", 326, "-Wformat-truncation=",
                "'%d' directive output may be truncated"),
        Finding("msixlab_group.c", 12, "-Wmissing-prototypes", "no previous prototype for 'f'"),
        Finding("-", 0, lint.OTHER,
                "msixlab_route.o: warning: objtool: msixlab_raise+0x1f: call to foo() with "
                "UACCESS enabled"),
        Finding("-", 0, lint.OTHER, "WARNING: modpost: missing MODULE_DESCRIPTION() in msixlab.o"),
    ]


@pytest.mark.parametrize("line, error", [
    ("a.c KIND 1", "expected 'FILE KIND COUNT REASON'"),
    ("a.c KIND many because", "expected 'FILE KIND COUNT REASON'"),
    ("a.c KIND 0 because", "the count must be at least 1"),
])
def test_a_malformed_accepted_entry_is_named(tmp_path, line, error):
    path = tmp_path / "accepted.txt"
    path.write_text(f"# comment\n\n{line}\n")
    with pytest.raises(LintError, match=f"{path}:3: {error}"):
        lint.load_accepted(path)


def test_an_entry_given_twice_is_named(tmp_path):
    path = tmp_path / "accepted.txt"
    path.write_text("a.c KIND 1 one reason\na.c KIND 2 another\n")
    with pytest.raises(LintError, match=f"{path}:2: a.c KIND is already accepted at {path}:1"):
        lint.load_accepted(path)


def test_a_missing_accepted_list_is_named(tmp_path):
    with pytest.raises(LintError, match="cannot read the accepted list"):
        lint.load_accepted(tmp_path / "none.txt")


def test_judge_names_the_unaccepted_the_more_and_the_fewer():
    a1, a2 = Finding("a.c", 1, "K", "one"), Finding("a.c", 9, "K", "two")
    b = Finding("b.c", 3, "L", "three")
    accepted = [Accepted("a.c", "K", 2, "why", "list:1")]
    assert lint.judge([a1, a2], accepted) == []
    assert lint.judge([a1, a2, b], accepted) == ["b.c:3: L: three (not accepted)"]
    assert lint.judge([a1], accepted) == ["list:1: accepts 2 K in a.c, found 1: a.c:1: K: one"]
    assert lint.judge([], accepted) == ["list:1: accepts 2 K in a.c, found 0"]


def test_the_accepted_lists_read_and_every_entry_has_a_reason():
    for path in (CHECKPATCH_ACCEPTED, W1_ACCEPTED):
        for entry in lint.load_accepted(path):
            assert len(entry.reason.split()) >= 5, entry

"""msixlab's pytest plugin: a booted lab as fixtures, for any project's tests.

Installing msixlab registers this module as the ``pytest11`` entry point ``msixlab``, so
every pytest run in that environment has (docs/writing-tests.md):

- fixtures ``msixlab_lab`` (session scope: the ``SharedLab`` of agent/host/testkit/lab.py,
  one per pytest-xdist worker), ``msixlab_guest`` (the guest agent), ``msixlab_device``
  (the device's control channel), ``msixlab_qemu`` (QMP and QEMU's MSI-X table view),
  and ``msixlab_image`` (the image, built on first use);
- options ``--msixlab-flavor``, ``--msixlab-kernel-tree``, ``--msixlab-kernel``,
  ``--msixlab-qemu``, ``--msixlab-vectors``, ``--msixlab-cpus``, ``--msixlab-results``
  (where each lab's artifacts are kept) and ``--msixlab-fresh-lab`` (a new boot for
  every test), and the marker ``msixlab_fresh_lab`` (a new boot for one test);
- before every test that uses any of these fixtures, the lab is brought back to its
  known state, or rebooted when it cannot be;
- a kernel report (oops, panic, BUG, WARN, ...) on the guest's console while a test runs
  fails that test, with the console lines attached to its report.

Heavy imports wait until a test asks for a lab: loading the plugin costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = frozenset({"msixlab_lab", "msixlab_guest", "msixlab_device", "msixlab_qemu"})
_LAB = pytest.StashKey()
_SPLAT_BEFORE = pytest.StashKey()
_OPTIONS = pytest.StashKey()


def _kernel_words(name: str):
    """An option's type: kernel parameters, checked as ``msixlab run --append`` checks them."""
    from agent.host.argtypes import kernel_words
    return kernel_words(name)


def _path(name: str):
    """An option's type: a non-empty path (``--msixlab-kernel-tree=`` is not the current
    directory), as a ``Path``."""
    from agent.host.argtypes import path_text
    check = path_text(name)

    def parse(text: str) -> Path:
        return Path(check(text))
    parse.__name__ = name
    return parse


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``--msixlab-*`` options."""
    group = parser.getgroup("msixlab", "msixlab: a booted lab (device server, QEMU, guest agent)")
    group.addoption("--msixlab-flavor", default=None, metavar="NAME",
                    help="kernel flavor of the image "
                         "(default: $KERNEL_FLAVOR or the image's default)")
    group.addoption("--msixlab-kernel-tree", default=None, type=_path("--msixlab-kernel-tree"), metavar="DIR",
                    help="boot this kernel build tree's bzImage instead of a flavor")
    group.addoption("--msixlab-kernel", default=None, type=_path("--msixlab-kernel"), metavar="BZIMAGE",
                    help="boot this prebuilt kernel image instead of a flavor")
    group.addoption("--msixlab-kdir", default=None, type=_path("--msixlab-kdir"), metavar="DIR",
                    help="with --msixlab-kernel: the build tree it came from")
    group.addoption("--msixlab-qemu", default=None, type=_path("--msixlab-qemu"), metavar="PATH",
                    help="another QEMU binary (at least 10.1, with vfio-user-pci)")
    group.addoption("--msixlab-vectors", default=64, type=int, metavar="N",
                    help="MSI-X table size of the emulated NIC (default: %(default)s)")
    group.addoption("--msixlab-cpus", default=2, type=int, metavar="N",
                    help="guest CPUs (default: %(default)s)")
    group.addoption("--msixlab-results", default=None, type=_path("--msixlab-results"), metavar="DIR",
                    help="keep each lab's artifacts (console, logs) under DIR "
                         "(default: pytest's temporary directory)")
    group.addoption("--msixlab-append", default=[], action="extend", metavar="PARAMS",
                    type=_kernel_words("--msixlab-append"),
                    help="more guest kernel parameters, as msixlab run --append (repeatable)")
    group.addoption("--msixlab-fresh-lab", action="store_true", default=False,
                    help="boot a fresh lab for every test instead of restoring the shared one")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``msixlab_fresh_lab`` marker and check the options (a bad one stops pytest)."""
    config.addinivalue_line("markers", "msixlab_fresh_lab: run this test on a freshly booted "
                                       "msixlab lab")
    config.stash[_OPTIONS] = _options(config)      # a bad option stops pytest here


def _options(config: pytest.Config):
    """The ``LabOptions`` (agent/host/lab/options.py) of the ``--msixlab-*`` options,
    checked by its one validation; a problem is pytest's usage error."""
    from agent.host.lab.options import LabOptions, OptionsError, flavor_from

    try:
        flavor = flavor_from(config.getoption("msixlab_flavor"), flags="--msixlab-")
    except OptionsError as err:
        raise pytest.UsageError(str(err)) from None
    options = LabOptions(flavor=flavor, vectors=config.getoption("msixlab_vectors"),
                         cpus=config.getoption("msixlab_cpus"), accel=None,
                         kernel_tree=config.getoption("msixlab_kernel_tree"),
                         kernel=config.getoption("msixlab_kernel"),
                         kdir=config.getoption("msixlab_kdir"),
                         qemu=config.getoption("msixlab_qemu"),
                         append=tuple(config.getoption("msixlab_append")), flags="--msixlab-")
    problems = options.problems()
    if problems:
        raise pytest.UsageError("msixlab options: " + "; ".join(problems))
    return options


@pytest.fixture(scope="session")
def msixlab_image():
    """The image (rootfs, QEMU, kernels), built on first use and cached."""
    from images.build import ensure_image
    return ensure_image()


@pytest.fixture(scope="session")
def msixlab_lab(pytestconfig, msixlab_image, tmp_path_factory):
    """The session's lab (one per xdist worker): booted on first use, restored before
    every test.  Its ``guest``, ``device`` and ``qemu`` attributes are the clients and
    ``results`` the current boot's artifact directory."""
    from agent.host.testkit.lab import SharedLab

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    root = pytestconfig.getoption("msixlab_results") or tmp_path_factory.mktemp("msixlab")
    # the accelerator is chosen there: kvm and auto prove themselves (a probe boot) as
    # for `msixlab run`; QEMU takes only tcg or kvm
    shared = SharedLab(pytestconfig.stash[_OPTIONS], msixlab_image, Path(root),
                       name=f"lab-{worker}")
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture(autouse=True)
def _msixlab_known_state(request):
    """Before a test that uses the lab: the known state (or a fresh boot)."""
    if not FIXTURES & set(request.fixturenames):
        yield
        return
    shared = request.getfixturevalue("msixlab_lab")
    fresh = (request.config.getoption("msixlab_fresh_lab")
             or request.node.get_closest_marker("msixlab_fresh_lab") is not None)
    shared.prepare(fresh=fresh)
    request.node.stash[_LAB] = shared
    request.node.stash[_SPLAT_BEFORE] = shared.note_splat_before()
    yield


@pytest.fixture
def msixlab_guest(msixlab_lab):
    """The guest agent: ``request(cmd, **args)`` returns the result or raises
    ``agent.host.testkit.lab.CommandError``."""
    return msixlab_lab.guest


@pytest.fixture
def msixlab_device(msixlab_lab):
    """The emulated NIC's control channel, with the same ``request(cmd, **args)``."""
    return msixlab_lab.device


@pytest.fixture
def msixlab_qemu(msixlab_lab):
    """QEMU: ``qmp(command, **args)``, ``hmp(line)``, ``table()``, ``entry(index)``."""
    return msixlab_lab.qemu


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Fail a test during which the guest kernel reported a splat, attaching the console from
    there on; on any failure, name where the lab's artifacts are."""
    report = yield
    shared = item.stash.get(_LAB, None)
    if shared is None or call.when != "call":
        return report
    found = shared.splat_during(item.stash.get(_SPLAT_BEFORE, None))
    if found is not None:
        splat, excerpt = found
        report.sections.append(("msixlab guest console", excerpt))
        report.outcome = "failed"
        report.longrepr = (f"the guest kernel reported {splat.kind} during this test "
                           f"(console line {splat.lineno}):\n{splat.line}\n\n"
                           f"console from there on:\n{excerpt}\n\n"
                           f"lab artifacts: {shared.results}")
    elif report.failed and shared.results is not None:
        report.sections.append(("msixlab lab", f"artifacts (console, QEMU and device logs): "
                                               f"{shared.results}"))
    return report


def pytest_report_header(config: pytest.Config) -> str | None:
    """The header line: flavor, vectors, CPUs, and whether each test gets a fresh lab (the
    options as ``pytest_configure`` checked them)."""
    options = config.stash[_OPTIONS]
    return (f"msixlab: flavor {options.flavor}, {options.vectors} vectors, "
            f"{options.cpus} CPUs"
            + (", a fresh lab per test" if config.getoption("msixlab_fresh_lab") else ""))

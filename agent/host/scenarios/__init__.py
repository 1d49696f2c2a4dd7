"""The registry of scenarios: ``msixlab run --scenario NAME`` and ``msixlab scenarios``.

Concepts: a scenario is a class built on ``agent.host.scenarios.default.Scenario`` (the ledger,
the accounting checks, a ``PLAN`` of steps each declaring its checks, fail fast, "not
judged" for a declared check that did not run).  Each has a ``NAME``, a one-line
``SUMMARY`` and ``MIN_CPUS`` (the fewest guest CPUs it can run on).  ``REGISTRY`` names
them in the order ``msixlab scenarios`` lists them; ``DEFAULT`` is the one ``msixlab
run`` runs without ``--scenario``; with ``--nics N`` ``PerNic`` (nics.py) runs it on
every NIC in turn.  ``check_options`` refuses, before anything starts,
a combination of options a scenario cannot run with (exit 125, bad option).
"""

from __future__ import annotations

from agent.host.scenarios.cpu_hotplug import CpuHotplug
from agent.host.scenarios.default import Scenario
from agent.host.scenarios.hotplug import Hotplug
from agent.host.scenarios.nics import PerNic  # noqa: F401  (re-exported for main_job)
from agent.host.scenarios.remove_rescan import RemoveRescan
from agent.host.scenarios.suspend import Suspend
from agent.host.scenarios.vfio_pci import VfioPci
from agent.host.scenarios.vfio_selftests import VfioSelftests
from agent.host.verdict.outcome import CouldNotJudge, Outcome

REGISTRY: dict[str, type[Scenario]] = {cls.NAME: cls for cls in (Scenario, CpuHotplug, Hotplug,
                                                                 RemoveRescan, VfioPci,
                                                                 VfioSelftests, Suspend)}
DEFAULT = Scenario.NAME


def get(name: str) -> type[Scenario]:
    """The scenario class called ``name``; a ``CouldNotJudge`` (bad option) naming the
    known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise CouldNotJudge(Outcome.BAD_OPTION, f"no scenario {name!r}; known: "
                            + ", ".join(REGISTRY)) from None


def listing() -> list[tuple[str, str]]:
    """(name, one-line summary) for every scenario, in registry order."""
    return [(name, cls.SUMMARY) for name, cls in REGISTRY.items()]


def check_options(cls: type[Scenario], cpus: int, nics: int = 1) -> None:
    """Refuse options the scenario cannot run with, before anything starts."""
    if nics > 1 and cls.NAME in ("hotplug", "remove-rescan", "vfio-pci", "vfio-selftests",
                                 "suspend"):
        raise CouldNotJudge(Outcome.BAD_OPTION, f"scenario {cls.NAME!r} runs on nic0 only: it "
                            "takes no --nics", scenario=cls.NAME, nics=nics)
    if cpus < cls.MIN_CPUS:
        raise CouldNotJudge(Outcome.BAD_OPTION, f"scenario {cls.NAME!r} needs --cpus of at "
                            f"least {cls.MIN_CPUS}, not {cpus}", scenario=cls.NAME, cpus=cpus)

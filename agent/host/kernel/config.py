"""Kernel configurations: the rig's fragment, a tree's ``.config``, and the check.

Concepts (sans-I/O: text in, results out):
- ``Fragment``: the options of ``fragment.config``.  ``required`` options must have their
  value in the kernel under test (``module_ok`` ones may be ``m`` instead of ``y``);
  ``preferred`` ones are merged into a build but never checked; a ``#@ scenario: NAME``
  section holds what one scenario needs (``scenarios``): merged into a build, checked by
  ``kernel config`` and by ``check(..., scenarios=(NAME,))``, never for other runs.
- ``parse_config``: a ``.config`` as ``{"CONFIG_X": "y" | "m" | "n" | value}``;
  ``# CONFIG_X is not set`` reads as ``n``.
- ``check``: every required option the config lacks or sets otherwise, as ``Problem``s
  that name the option, what the rig needs and what the config has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from images.packaged import package_dir

#: the rig's fragment, shipped as package data of this package (pyproject.toml)
FRAGMENT = package_dir(__package__) / "fragment.config"

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Fragment:
    """The rig's options: ``required`` (checked), ``preferred`` (merged only), and those that
    may be modules."""
    required: dict[str, str]
    preferred: dict[str, str]
    module_ok: frozenset[str] = field(default_factory=frozenset)
    scenarios: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, str]:
        """Every option to merge into a build: required, every scenario's, preferred."""
        merged = dict(self.required)
        for options in self.scenarios.values():
            merged.update(options)
        return {**merged, **self.preferred}


def _option(line: str) -> tuple[str, str] | None:
    if match := _SET.match(line):
        return match.group(1), match.group(2).strip()
    if match := _UNSET.match(line):
        return match.group(1), "n"
    return None


def parse_fragment(text: str) -> Fragment:
    """Read a fragment: ``#@ required`` / ``#@ preferred`` / ``#@ scenario: NAME`` start
    sections (required is the default); ``#@ module-ok: CONFIG_A CONFIG_B`` names options
    that may be ``m``."""
    required: dict[str, str] = {}
    preferred: dict[str, str] = {}
    module_ok: set[str] = set()
    scenarios: dict[str, dict[str, str]] = {}
    section = required
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#@"):
            directive = line[2:].strip()
            if directive == "required":
                section = required
            elif directive == "preferred":
                section = preferred
            elif directive.startswith("scenario:") and directive.split(":", 1)[1].strip():
                section = scenarios.setdefault(directive.split(":", 1)[1].strip(), {})
            elif directive.startswith("module-ok:"):
                module_ok.update(directive.split(":", 1)[1].split())
            else:
                raise ValueError(f"fragment line {number}: unknown directive {line!r}")
            continue
        if option := _option(line):
            section[option[0]] = option[1]
        elif line and not line.startswith("#"):
            raise ValueError(f"fragment line {number}: not an option: {line!r}")
    return Fragment(required, preferred, frozenset(module_ok), scenarios)


def load_fragment(path: Path = FRAGMENT) -> Fragment:
    """The fragment file at ``path`` parsed (``OSError`` if unreadable)."""
    return parse_fragment(path.read_text())


def parse_config(text: str) -> dict[str, str]:
    """A ``.config`` as option -> value (``n`` for "is not set"; quotes kept)."""
    options = {}
    for line in text.splitlines():
        if option := _option(line.strip()):
            options[option[0]] = option[1]
    return options


@dataclass(frozen=True)
class Problem:
    """One required option a config lacks or sets otherwise: the option, what the rig wants,
    what it has."""
    option: str
    want: str          # e.g. "y", "y or m"
    have: str | None   # None: the option is not in the config at all
    scenario: str | None = None     # the scenario that needs it (None: every run)

    def __str__(self) -> str:
        if self.have is None:
            have = "is missing (this kernel may not have the option)"
        elif self.have == "n":
            have = "is not set"
        else:
            have = f"is {self.have}"
        who = f"--scenario {self.scenario} needs" if self.scenario else "the rig needs"
        return f"{self.option} {have}; {who} {self.want}"


def check(config: dict[str, str], fragment: Fragment,
          scenarios: tuple[str, ...] = ()) -> list[Problem]:
    """The required options (and those of the ``scenarios`` named) ``config`` lacks or sets
    otherwise, in fragment order."""
    sections = [(None, fragment.required)]
    sections += [(name, fragment.scenarios[name]) for name in scenarios
                 if name in fragment.scenarios]
    problems = []
    for scenario, options in sections:
        for option, want in options.items():
            have = config.get(option)
            allowed = {want, "m"} if option in fragment.module_ok and want == "y" else {want}
            if (have or "n") not in allowed:        # an option the config lacks is not set
                problems.append(Problem(option, " or ".join(sorted(allowed, reverse=True)),
                                        have, scenario))
    return problems


def dropped(config: dict[str, str], fragment: Fragment) -> list[Problem]:
    """Fragment options (required or preferred) a merged config does not carry, e.g.
    because kconfig dropped one whose dependencies are off."""
    return [Problem(option, want, config.get(option))
            for option, want in fragment.options.items() if (config.get(option) or "n") != want]


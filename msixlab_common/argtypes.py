"""Bounded argparse types, shared by ``msixlab`` and ``qemu-device``.

Concepts: every value is checked when the command line is parsed, so a bad one is the
parser's error, naming the option, before anything starts.  ``bounded_int`` and
``bounded_float`` take a closed range (a float must be finite); ``path_text`` takes a path
that is not empty: an empty string (``--kernel-tree "$TREE"`` with ``TREE`` unset) would
otherwise mean "not given" or the current directory.  Standard library only.
"""

from __future__ import annotations

import argparse


def bounded_int(name: str, low: int, high: int):
    """An argparse type: an integer in low..high, else an error naming the option."""
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes an integer, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be {low}..{high}, not {value}")
        return value
    parse.__name__ = name
    return parse


def bounded_float(name: str, low: float, high: float):
    """An argparse type: a finite number in low..high, else an error naming the option."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes a number, not {text!r}") from None
        if not low <= value <= high:     # NaN fails this too
            raise argparse.ArgumentTypeError(f"{name} must be {low:g}..{high:g}, not {text}")
        return value
    parse.__name__ = name
    return parse


def path_text(name: str):
    """An argparse type: a path that is not empty or blank (kept as given), else an error
    naming the option."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{name} needs a path, not {text!r}")
        if "\0" in text:
            raise argparse.ArgumentTypeError(f"{name}: a path cannot hold a NUL byte")
        return text
    parse.__name__ = name
    return parse

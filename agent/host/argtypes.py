"""Argument types shared by the ``msixlab`` subcommands (argparse ``type=`` callables).

Concepts: every value is checked when the command line is parsed, so a bad one is the
parser's error (exit 125, ``bad_option``, the option named) before anything starts.
``bounded_int`` and ``bounded_float`` take a closed range (a float must be finite);
``path_text`` takes a path that is not empty: an empty string (``--kernel-tree "$TREE"``
with ``TREE`` unset) would otherwise mean "not given" or the current directory, and the
run would judge another kernel, QEMU or directory than the one asked for.
``kernel_words`` takes extra guest kernel parameters (``--append``), refusing those the
rig owns (qemu_argv.cmdline_text writes them as the command line carries them).
"""

from __future__ import annotations

import argparse
import shlex

from .qemu_argv import cmdline_text


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


#: parameters the rig sets on the guest's kernel command line and a user may not change:
#: the console the sentinel watches and what it lets through (a quieter loglevel would
#: hide a WARN from it: a false pass), panic=-1 (a panic ends QEMU), the init that starts
#: the agent, and msixlab's own parameters
RIG_KERNEL_PARAMS = frozenset({"console", "earlycon", "earlyprintk", "loglevel", "quiet",
                               "panic", "rdinit", "init", "root"})
#: the most the words given to --append may add to the command line (x86 allows 2048 in all)
MAX_APPEND = 1024


def kernel_words(name: str):
    """An argparse type: extra kernel command-line parameters, split as a shell would
    (``dyndbg="file msi.c +p"`` is one word), else an error (argparse names the option) naming
    the word: a parameter the rig owns (``RIG_KERNEL_PARAMS``, ``msixlab.*``, even inside
    another's value: the guest's init reads the words split on spaces), ``--`` (what
    follows it goes to init, not the kernel), a word with a character that is not
    printable ASCII or a double quote, or more than ``MAX_APPEND`` characters in all."""
    def parse(text: str) -> tuple[str, ...]:
        try:
            words = tuple(shlex.split(text))
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err} in {text!r}") from None
        for word in words:
            key = word.split("=", 1)[0]
            if not word or any(not " " <= c <= "~" or c == '"' for c in word):
                raise argparse.ArgumentTypeError(
                    f"{word!r} holds a character a kernel command line cannot carry")
            if key == "--" or key in RIG_KERNEL_PARAMS or "msixlab." in word:
                raise argparse.ArgumentTypeError(
                    f"{word!r} sets what the rig owns (the console it watches and "
                    f"its loglevel, panic=-1, the init that starts the agent, msixlab.*)")
            if " " in key:
                raise argparse.ArgumentTypeError(f"{word!r}: a parameter name "
                                                 "cannot hold a space")
        if len(cmdline_text(words)) > MAX_APPEND:
            raise argparse.ArgumentTypeError(f"{len(cmdline_text(words))} characters, "
                                             f"more than {MAX_APPEND}")
        return words
    parse.__name__ = name
    return parse

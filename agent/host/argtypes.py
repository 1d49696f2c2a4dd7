"""Argument types of the ``msixlab`` subcommands (argparse ``type=`` callables).

Concepts: every value is checked when the command line is parsed, so a bad one is the
parser's error (exit 125, ``bad_option``, the option named) before anything starts.
``bounded_int``, ``bounded_float`` and ``path_text`` are ``msixlab_common.argtypes``'
(``qemu-device`` takes them too).  ``kernel_words`` takes extra guest kernel parameters
(``--append``), refusing those the rig owns (``cmdline_text`` writes them as the
command line carries them).
"""

from __future__ import annotations

import argparse
import shlex

from msixlab_common.argtypes import bounded_float, bounded_int, path_text


__all__ = ["bounded_float", "bounded_int", "path_text", "kernel_words", "cmdline_text",
           "MAX_APPEND", "RIG_KERNEL_PARAMS"]


#: parameters the rig sets on the guest's kernel command line and a user may not change:
#: the console the sentinel watches and what it lets through (a quieter loglevel would
#: hide a WARN from it: a false pass), panic=-1 (a panic ends QEMU), the init that starts
#: the agent, and msixlab's own parameters
RIG_KERNEL_PARAMS = frozenset({"console", "earlycon", "earlyprintk", "loglevel", "quiet",
                               "panic", "rdinit", "init", "root"})
#: the most the words given to --append may add to the command line (x86 allows 2048 in all)
MAX_APPEND = 1024


def cmdline_text(words) -> str:
    """``words`` as the kernel command line carries them: a value with a space is quoted
    (``dyndbg="file msi.c +p"``), which the kernel's parser and ``shlex.split`` both undo."""
    def one(word: str) -> str:
        key, eq, value = word.partition("=")
        return f'{key}="{value}"' if eq and " " in value else word
    return " ".join(one(word) for word in words)


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

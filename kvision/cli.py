"""The ``kvision`` command: ``list``, ``info``, ``train``, ``evaluate``, ``predict``,
``explain``, ``sort`` and ``export`` (thin over the library)."""

from __future__ import annotations

import argparse
import os
import sys

# Each command is a module of kvision/commands/ (add_parser + run); this module keeps
# what they share. The list command's table functions stay importable from here.
from kvision import _native
from kvision.commands import COMMANDS
from kvision.commands.list_ import (  # noqa: F401
    _profile_cache_path, format_markdown, format_table, zoo_table)


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose error is one line on stderr (exit status 2), as every
    other error of the command is: the usage it would print first is what
    ``--help`` shows, and the line says so."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the "
                     f"arguments)\n")


# Options that count or measure something: zero or less is never meant, and a 0
# would read as "the default" where the code says ``args.epochs or 30``.
POSITIVE = {"epochs", "batch_size", "lr", "image_size", "steps_per_epoch", "max_images",
            "top_k", "clipnorm", "clipvalue", "version"}


def _positive(convert):
    """An argparse type: ``convert(text)``, a finite number above 0 (argparse's
    message names the option)."""
    import math

    def positive(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            noun = "an integer >= 1" if convert is int else "a number above 0"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}")
        return value

    positive.__name__ = convert.__name__  # argparse names the type in its message
    return positive


# Probabilities a photo's score is compared with.
FRACTIONS = {("kvision predict", "score_threshold"), ("kvision sort", "threshold")}


def _fraction(text):
    """An argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got "
                                         f"{text!r}")
    return value


def build_parser():
    """The ``kvision`` parser: each command of :data:`kvision.commands.COMMANDS`, in
    that order, each taking ``--verbose``; the counts and sizes of :data:`POSITIVE`
    must be above 0."""
    parser = _Parser(prog="kvision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true",
                             help="show TensorFlow's start-up and absl logging")
        for action in command._actions:
            if action.dest in POSITIVE and action.type in (int, float):
                action.type = _positive(action.type)
            if (command.prog, action.dest) in FRACTIONS:
                action.type = _fraction
    return parser


# The one implementation, kept under its old name here (kvision._native).
_native_stderr_held = _native.stderr_held


def _quiet_start():
    """Load TensorFlow and find its devices without their start-up logging; absl's
    Python logging from errors up only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _native.QUIET = True  # LiteRT's delegate notice too, whenever an interpreter opens
    with _native_stderr_held():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs (cuInit) once, here
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_start()
    try:
        return args.func(args)
    except (ValueError, OSError, ModuleNotFoundError) as error:
        # OSError: a folder where a file goes, a full disk, no permission... One
        # line whatever the message's own layout (a list of what is expected).
        text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"kvision {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (" (run the same command again to resume)"
                if args.command in ("train", "list") else "")
        print(f"kvision {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

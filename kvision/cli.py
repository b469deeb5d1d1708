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


def build_parser():
    """The ``kvision`` parser: each command of :data:`kvision.commands.COMMANDS`, in
    that order, each taking ``--verbose``."""
    parser = argparse.ArgumentParser(prog="kvision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true",
                             help="show TensorFlow's start-up and absl logging")
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
    except (ValueError, FileNotFoundError, ConnectionError, ModuleNotFoundError) as error:
        print(f"kvision {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (" (run the same command again to resume)"
                if args.command in ("train", "list") else "")
        print(f"kvision {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

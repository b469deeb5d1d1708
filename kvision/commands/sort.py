"""``kvision sort``: copy a folder of photos into one folder per predicted class."""

from __future__ import annotations

import sys


def add_parser(subparsers):
    """Add the ``sort`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("sort", help="copy a folder of photos into one folder per class")
    p.add_argument("model", help="as for predict")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--threshold", type=float, default=0.5,
                   help="below this top probability a photo goes to _unsure/")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Sort through :func:`kvision.predict.sort_images`; 1 when an image did not decode
    (it is not sorted), else 0. The originals are never moved."""
    import os

    from kvision.predict import load_trained, sort_images

    # Before the model loads (and says what it is): a wrong folder is the one line.
    if not os.path.isdir(args.input):
        found = "a file" if os.path.exists(args.input) else "no such folder"
        raise FileNotFoundError(f"--input {args.input!r}: expected a folder of photos, "
                                f"found {found}.")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"--output {args.output!r} is a file; expected a folder (or a "
                         f"path that does not exist yet).")
    trained = load_trained(args.model)
    print(f"kvision sort: model {trained.describe()}", file=sys.stderr)
    summary = sort_images(trained, args.input, args.output, threshold=args.threshold)
    for folder, count in sorted(summary["copied"].items()):
        print(f"{folder}: {count}")
    for path in summary["skipped"]:
        why = summary["errors"].get(path, f"not an image: {path}")
        print(f"kvision sort: skipped ({why})", file=sys.stderr)
    print(f"copied {sum(summary['copied'].values())} images into {args.output}; "
          f"originals untouched")
    return 1 if summary["errors"] else 0

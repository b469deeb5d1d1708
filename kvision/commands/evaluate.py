"""``kvision evaluate``: a trained classifier on the held-out split of its data."""

from __future__ import annotations

import json
import os


def add_parser(subparsers):
    """Add the ``evaluate`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("evaluate", help="top-1 (top-5 with more than 5 classes), "
                                               "per-class precision/recall, confusion matrix")
    p.add_argument("model", help=".keras file, run directory or name under saved_models/, "
                                 "a .tflite file, or a SavedModel version directory (a "
                                 "directory of numbered versions: the newest)")
    p.add_argument("--data", default="digits")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (as in training)")
    p.add_argument("--confusion", default=None, help="PNG path (default beside the model)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Load the model and the data's test split, check their classes agree, and print
    :func:`kvision.evaluate.evaluate`'s report (text or JSON) and the confusion PNG."""
    from kvision.data import load
    from kvision.evaluate import evaluate
    from kvision.predict import load_trained
    from kvision.tasks import NOUNS

    trained = load_trained(args.model)
    if trained.task != "classification":
        raise ValueError(f"{trained.path} is a {NOUNS[trained.task]}; kvision evaluate "
                         f"measures classifiers.")
    data = load(args.data, image_size=trained.image_size[0], channels=trained.channels,
                seed=args.seed)
    if tuple(data.class_names) != tuple(trained.class_names):
        raise ValueError(f"The data's classes {list(data.class_names)} are not the model's "
                         f"{list(trained.class_names)}.")
    png = args.confusion or os.path.join(os.path.dirname(trained.path), "confusion_matrix.png")
    report = evaluate(trained, data.test, confusion_png=png)
    if args.json:
        print(json.dumps({**report.as_dict(), "confusion_matrix_png": png}, indent=1))
    else:
        print(f"{trained.path} on {data.num_test} held-out images of {args.data}")
        print(report.format())
        print(f"confusion matrix: {png}")
    return 0

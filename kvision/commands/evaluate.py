"""``kvision evaluate``: a trained model on labelled data it was not trained on, measured
by its task's figures (the model says its task): a classifier's top-1 and confusion
matrix, a detector's or localizer's COCO mAP, a semantic segmenter's mIoU, an instance
segmenter's mask AP."""

from __future__ import annotations

import json
import os


def add_parser(subparsers):
    """Add the ``evaluate`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "evaluate", help="a classifier's top-1 (top-5 with more than 5 classes), per-class "
                         "precision/recall and confusion matrix; a detector's or "
                         "localizer's mAP@[.5:.95], mAP@0.5 and per-class AP; a semantic "
                         "segmenter's mIoU, pixel accuracy and per-class IoU; an instance "
                         "segmenter's mask AP")
    p.add_argument("model", help=".keras file, run directory or name under saved_models/, "
                                 "a .tflite file, or a SavedModel version directory (a "
                                 "directory of numbered versions: the newest)")
    p.add_argument("--data", default=None,
                   help="a classifier's dataset (default digits); for a detector or "
                        "localizer a YOLO folder, a COCO JSON file or digit-scenes; for a "
                        "semantic segmenter digit-scenes, a folder of images/ and masks/, "
                        "a COCO JSON with masks or tfds:NAME; for an instance segmenter "
                        "digit-scenes (the default of all: held-out scenes of unseen "
                        "handwriting at the model's input size)")
    p.add_argument("--seed", type=int, default=0,
                   help="the split's seed (as in training); digit-scenes' seed")
    p.add_argument("--max-images", type=int, default=None,
                   help="detectors and segmenters: evaluate this many images at most "
                        "(digit-scenes: this many scenes, default 200)")
    p.add_argument("--confusion", default=None,
                   help="classifiers: the confusion matrix PNG (default beside the model)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Load the model and measure it by its task (:func:`kvision.tasks.base.get_task`);
    print the report as text or JSON."""
    from kvision.predict import load_trained

    trained = load_trained(args.model)
    if trained.task == "classification":
        return _classification(trained, args)
    return _by_task(trained, args)


def _classification(trained, args) -> int:
    """The data's test split, its classes checked against the model's:
    :func:`kvision.evaluate.evaluate`'s report and the confusion PNG."""
    from kvision.data import load
    from kvision.evaluate import evaluate

    source = args.data or "digits"
    data = load(source, image_size=trained.image_size[0], channels=trained.channels,
                seed=args.seed)
    if tuple(data.class_names) != tuple(trained.class_names):
        raise ValueError(f"The data's classes {list(data.class_names)} are not the model's "
                         f"{list(trained.class_names)}.")
    png = args.confusion or os.path.join(os.path.dirname(trained.path),
                                         "confusion_matrix.png")
    report = evaluate(trained, data.test, confusion_png=png)
    if args.json:
        print(json.dumps({**report.as_dict(), "confusion_matrix_png": png}, indent=1))
    else:
        print(f"{trained.path} on {data.num_test} held-out images of {source}")
        print(report.format())
        print(f"confusion matrix: {png}")
    return 0


def _by_task(trained, args) -> int:
    """The model's task measures it (:meth:`kvision.tasks.base.Task.evaluate`): a
    detector's or localizer's COCO mAP, a semantic segmenter's mIoU…"""
    from kvision.tasks.base import get_task

    task = get_task(trained.task)
    try:
        data = task.load_data(args.data or task.default_data, trained, seed=args.seed,
                              max_images=args.max_images)
        report = task.evaluate(trained, data)
    except NotImplementedError as error:
        raise ValueError(f"{trained.path} is a {task.noun}; {error}") from None
    code = _print(trained, data.description, report, args)
    if trained.task == "embedding":  # kvision search's default threshold
        from kvision.commands.search import store_threshold

        path = store_threshold(trained, report.figures, data.description)
        if not args.json:
            print(f"threshold stored in {path} (kvision search's default)")
    return code


def _print(trained, description, report, args) -> int:
    """A task report as JSON, or as a heading line and its text table."""
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(f"{trained.path} on {description}")
        print(report.format())
    return 0


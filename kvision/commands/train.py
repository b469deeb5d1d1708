"""``kvision train``: train a network with ``model.fit`` into a run folder, export it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def add_parser(subparsers):
    """Add the ``train`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("train", help="train a network with model.fit: a classifier "
                                            "(from scratch or by transfer learning), a "
                                            "detector or a segmenter")
    p.add_argument("model", help="registry name, keras.applications name or .keras file")
    p.add_argument("--data", default=None,
                   help="classifiers: digits (default), an image folder or tfds:NAME; "
                        "detectors: digit-scenes (default), a YOLO folder, a COCO .json "
                        "or tfds:NAME; segmenters: digit-scenes (default), a folder of "
                        "images/ and masks/, a COCO .json with masks or tfds:NAME")
    p.add_argument("--backbone-weights", default=None,
                   help="imagenet, none or a weights file: transfer learning")
    p.add_argument("--regime", default=None,
                   choices=["small-similar", "large-similar", "small-different",
                            "large-different"])
    p.add_argument("--epochs", type=int, default=None,
                   help="default 30 for classifiers, the task's otherwise (detectors "
                        "12, segmenters 40)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 32 for classifiers, 16 for detectors and segmenters")
    p.add_argument("--lr", type=float, default=None,
                   help="initial learning rate (default 3e-3 scratch, 1e-3 transfer, "
                        "2e-3 detectors and segmenters)")
    p.add_argument("--optimizer", default=None, choices=["adam", "rmsprop", "sgd"],
                   help="detectors, segmenters and pose: the optimizer (default the "
                        "task's: adam; --optimizer rmsprop --lr 2.5e-4 is the stacked "
                        "hourglass paper's)")
    p.add_argument("--clipnorm", type=float, default=None,
                   help="clip each weight's gradient to this L2 norm (a positive number)")
    p.add_argument("--clipvalue", type=float, default=None,
                   help="clip every gradient value to [-CLIPVALUE, CLIPVALUE] (positive; "
                        "not with --clipnorm)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--out", default=None,
                   help="the run folder (default saved_models/MODEL); one holding a "
                        "finished run is not written into: the run goes to OUT-2, -3 …")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out as a whole instead of using OUT-2 "
                        "(an unfinished run of the same settings resumes either way)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="detectors and segmenters: one more argument of the network's "
                        "builder, a Python literal or a string (--model-arg width=0.5); "
                        "repeat for more")
    p.add_argument("--max-images", type=int, default=None,
                   help="detectors and segmenters: train on this many images at most "
                        "(digit-scenes: generate this many; default 8000 scenes for "
                        "detectors, 2000 for segmenters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--strategy", default=None, choices=["mirrored", "multiworker"])
    p.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 compute, float32 outputs and export")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--no-augment", action="store_true",
                   help="classifiers and pose: train on the images as they are")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Train by the network's task: classifiers through
    :func:`kvision.train.train_classifier`, every other task through
    :func:`kvision.tasks.training.train_task`; print the held-out figure and where the
    run, its model and its export are."""
    from kvision.train import task_of_name, train_classifier

    task = task_of_name(args.model)
    if task != "classification":
        return _run_task(args, task)
    if args.model_arg or args.max_images is not None or args.optimizer:
        raise ValueError(f"--model-arg, --max-images and --optimizer are for detectors, "
                         f"segmenters and pose; {args.model} is a classifier.")
    with _train_log_on_stdout():  # the split and the run folder, before training
        result = train_classifier(args.model, data=args.data or "digits",
                                  epochs=args.epochs or 30,
                                  batch_size=args.batch_size or 32, learning_rate=args.lr,
                                  image_size=args.image_size, out_dir=args.out,
                                  overwrite=args.overwrite,
                                  export=not args.no_export, seed=args.seed,
                                  augment=not args.no_augment,
                                  backbone_weights=args.backbone_weights,
                                  regime=args.regime, strategy=args.strategy,
                                  mixed_precision=args.mixed_precision,
                                  jit_compile=args.jit,
                                  steps_per_epoch=args.steps_per_epoch,
                                  clipnorm=args.clipnorm, clipvalue=args.clipvalue)
    if result.initial_epoch:
        print(f"resumed from epoch {result.initial_epoch} (of {args.epochs})")
    print(f"test top-1 accuracy: {result.test_accuracy:.4f} "
          f"(error {1 - result.test_accuracy:.4f}) after {result.seconds:.1f} s of training; "
          f"{result.trainable_params:,} trainable parameters, "
          f"{result.seconds_per_epoch:.2f} s per epoch")
    if result.keras_path:
        print(f"saved: {result.keras_path} (log, curves and checkpoints in {result.out_dir})")
    if result.export_path:
        print(f"exported for TensorFlow Serving: {result.export_path}")
    return 0


def _run_task(args, task) -> int:
    """A detector or segmenter: :func:`kvision.tasks.training.train_task`; the task's
    report on the held-out data, then where the run is."""
    from kvision.tasks.training import train_task

    refused = [flag for flag, given in (("--strategy", args.strategy),
                                        ("--mixed-precision", args.mixed_precision))
               if given]
    if refused:
        raise ValueError(f"{' '.join(refused)}: for classifiers only so far; {args.model} "
                         f"is a {task} model.")
    with _train_log_on_stdout():
        result = train_task(args.model, args.data, epochs=args.epochs,
                            batch_size=args.batch_size, learning_rate=args.lr,
                            image_size=args.image_size, out_dir=args.out,
                            overwrite=args.overwrite, export=not args.no_export,
                            seed=args.seed, backbone_weights=args.backbone_weights,
                            regime=args.regime, model_args=parse_model_args(args.model_arg),
                            max_images=args.max_images, jit_compile=args.jit,
                            steps_per_epoch=args.steps_per_epoch,
                            optimizer=args.optimizer,
                            augment=False if args.no_augment else None,
                            clipnorm=args.clipnorm, clipvalue=args.clipvalue)
    if result.initial_epoch:
        print(f"resumed from epoch {result.initial_epoch}")
    print(f"held-out {result.metric_label}: {result.figure:.4f} after {result.seconds:.1f} s "
          f"of training; {result.trainable_params:,} trainable parameters, "
          f"{result.seconds_per_epoch:.2f} s per epoch")
    print(result.report.format())
    if result.keras_path:
        # a network trained by its own pipeline (R-CNN) writes no epoch log or curves
        kept = ("log, curves and checkpoints" if os.path.exists(
            os.path.join(result.out_dir, "training_log.csv")) else "its settings, run.json,")
        print(f"saved: {result.keras_path} ({kept} in {result.out_dir})")
    if result.export_path:
        print(f"exported for TensorFlow Serving: {result.export_path}")
    return 0


def parse_model_args(pairs) -> dict:
    """``["width=0.5", "padding=same"]`` -> ``{"width": 0.5, "padding": "same"}``: a
    value is a Python literal when it reads as one, else a string."""
    import ast

    arguments = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--model-arg takes KEY=VALUE (e.g. width=0.5), got {pair!r}.")
        try:
            arguments[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            arguments[key.strip()] = value
    return arguments


@contextlib.contextmanager
def _train_log_on_stdout():
    """What ``kvision.train`` logs (the split, the run folder chosen) on stdout."""
    logger = logging.getLogger("kvision.train")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate

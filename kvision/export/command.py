"""``kvision export``: a trained model to SavedModel and TFLite files, with a table.

::

    kvision export MODEL [--format savedmodel,tflite] [--quantize none,float16,dynamic,int8]
                         [--data DIR|digits] [--out DIR] [--version N] [--int8-io] [--allow-flex]
    kvision export --serving-config BASE_PATH

MODEL is a ``.keras`` file, a directory ``saved_models/NAME`` holding ``NAME.keras``
(and optionally ``class_names.txt``), or a name meaning ``saved_models/NAME/NAME.keras``.
``--data`` gives the representative images (int8 calibration) and the held-out
images with labels the exports are checked on. A detector (outputs ``boxes``,
``scores``, ``classes``, ``num_detections``) is checked on the image files of a
``--data`` folder (any layout, no labels), detection by detection; a segmenter (one
per-pixel output ``(N, H, W, classes)``) on them too, pixel by pixel (TFLite: the
argmax class of >= 99.5% of pixels float32, >= 97% int8, which calibrates on those
images). The table printed
has one row per file: format, size in MB, parity figures against the Keras model
(for a detector: the largest score difference and the share of detections matched),
batch-1 latency.
"""

from __future__ import annotations

import os

FORMATS = ("savedmodel", "tflite")
QUANTIZE = {"none": None, "float32": None, "float16": "float16", "dynamic": "dynamic",
            "int8": "int8"}
# SavedModel checks run whole batches through TF's session loader: a few suffice.
SAVEDMODEL_CHECK_IMAGES = 32
NUM_CALIBRATION = 200      # int8 calibration images
MAX_CHECK_IMAGES = 2_000   # held-out images each export is checked on


def add_parser(subparsers):
    """Add the ``export`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "export", help="export a trained model to SavedModel / TFLite, checked for parity",
        description="Export a trained model to a TensorFlow Serving SavedModel and TFLite "
                    "files, each checked against the Keras model; print a table of size, "
                    "parity and batch-1 latency. MODEL: a .keras file, a directory "
                    "saved_models/NAME holding NAME.keras (and optionally class_names.txt), "
                    "or NAME for saved_models/NAME/NAME.keras.")
    p.add_argument("model", nargs="?", help="a .keras file, saved_models/NAME, or NAME")
    p.add_argument("--format", default="savedmodel,tflite",
                   help="comma-separated: savedmodel, tflite (default both)")
    p.add_argument("--quantize", default="none",
                   help="TFLite variants, comma-separated: none (float32), float16, "
                        "dynamic, int8 (default none)")
    p.add_argument("--data", default=None,
                   help="images to calibrate and check on: a folder of class folders, "
                        "or 'digits' (detectors, segmenters: a folder of images)")
    p.add_argument("--out", default=None, help="output directory (default: the model's)")
    p.add_argument("--version", type=int, default=None,
                   help="SavedModel version (default: the next free one)")
    p.add_argument("--int8-io", action="store_true", help="int8 TFLite inputs and outputs")
    p.add_argument("--allow-flex", action="store_true",
                   help="allow TensorFlow (Flex) operators in TFLite files")
    p.add_argument("--serving-config", metavar="BASE_PATH", default=None,
                   help="write BASE_PATH/models.config for TensorFlow Serving")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Do what the parsed ``args`` of :func:`add_parser` ask; print the table."""
    if args.model is None and args.serving_config is None:
        raise ValueError("kvision export needs a MODEL to export, or --serving-config "
                         "BASE_PATH.")
    if args.model is not None:
        results = export(args.model, formats=_split(args.format, FORMATS, "--format"),
                         quantize=[QUANTIZE[q] for q in
                                   _split(args.quantize, tuple(QUANTIZE), "--quantize")],
                         data=args.data, out=args.out, version=args.version,
                         int8_io=args.int8_io, allow_flex=args.allow_flex)
        print(format_table(results))
    if args.serving_config is not None:
        from kvision.export import serving_config

        print(f"wrote {serving_config(args.serving_config)}")
    return 0


def _split(value, allowed, option):
    items = [item.strip().lower() for item in str(value).split(",") if item.strip()]
    wrong = [item for item in items if item not in allowed]
    if wrong or not items:
        raise ValueError(f"{option} takes a comma-separated list of {', '.join(allowed)}; "
                         f"got {value!r}.")
    return list(dict.fromkeys(items))


def export(model_spec, *, formats=FORMATS, quantize=(None,), data=None, out=None,
           version=None, int8_io=False, allow_flex=False):
    """Export the model ``model_spec`` names; a list of ``ExportResult``, one per file.

    TFLite files are ``<out>/<NAME>.tflite`` (float32) and
    ``<out>/<NAME>.<variant>.tflite``; the SavedModel is ``<out>/<version>/``.
    """
    import keras

    import kvision.layers  # noqa: F401  (registers kvision's layers for loading)
    import kvision.models  # noqa: F401
    from kvision.export import saved_model, tflite
    from kvision.export.parity import is_detector
    from kvision.export.tflite import input_shape
    from kvision.predict import find_model_file, read_class_names, segmentation_kind

    keras_path = find_model_file(model_spec)
    name = os.path.splitext(os.path.basename(keras_path))[0]
    out = os.path.dirname(os.path.abspath(keras_path)) if out is None else os.fspath(out)
    if int8_io and "int8" not in quantize:
        raise ValueError("--int8-io needs --quantize int8.")
    if "tflite" in formats and "int8" in quantize and data is None:
        raise ValueError("--quantize int8 needs --data (images to calibrate on).")
    model = keras.saving.load_model(keras_path)
    shape = input_shape(model)
    detector = is_detector(model)
    segmenter = not detector and segmentation_kind(model) == "semantic"
    class_names = read_class_names(keras_path, None if detector
                                   else int(model.outputs[0].shape[-1]))
    calibration = check_x = check_y = None
    if detector:
        if "tflite" in formats and "int8" in quantize:
            raise ValueError("--quantize int8 is for classifiers; export a detector as "
                             "none, float16 or dynamic.")
        if data is not None:
            check_x = detector_images(data, shape)
    elif segmenter:
        if data is not None:  # image files, no labels: checked (and calibrated) on them
            check_x = detector_images(data, shape, limit=NUM_CALIBRATION, kind="segmenter")
            calibration = check_x
    elif data is not None:
        calibration, (check_x, check_y), data_names = load_data(data, shape)
        if class_names is None and len(data_names) == model.outputs[0].shape[-1]:
            class_names = list(data_names)

    results = []
    if "savedmodel" in formats:
        check = None if check_x is None else check_x[:SAVEDMODEL_CHECK_IMAGES]
        results.append(saved_model(model, out, version, class_names=class_names,
                                   check_inputs=check))
    if "tflite" in formats:
        for variant in quantize:
            suffix = "" if variant is None else f".{variant}"
            results.append(tflite(model, os.path.join(out, f"{name}{suffix}.tflite"),
                                  variant, calibration, int8_io=int8_io and variant == "int8",
                                  allow_flex=allow_flex, class_names=class_names,
                                  check_data=check_x, check_labels=check_y,
                                  # a segmenter: per-pixel class agreement, not atol
                                  **({"atol": None} if segmenter else {})))
    return results


def detector_images(folder, shape, limit=SAVEDMODEL_CHECK_IMAGES, kind="detector"):
    """Up to ``limit`` image files under ``folder`` (sorted, any depth) as float32
    ``(n, H, W, C)`` pixels at the model's size: a detector's (or segmenter's) check
    images."""
    import numpy as np

    from kvision.data import load_image
    from kvision.predict import IMAGE_EXTENSIONS

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--data {folder!r}: a {kind} is checked on the images "
                                f"of a folder; no such folder.")
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder)
                   for f in names if f.lower().endswith(IMAGE_EXTENSIONS))[:limit]
    if not files:
        raise ValueError(f"--data {folder!r} holds no image files "
                         f"({', '.join(IMAGE_EXTENSIONS)}).")
    height, width, channels = shape
    return np.stack([load_image(f, (height, width), channels=channels) for f in files])


def load_data(data, shape):
    """``(calibration, (check_images, check_labels), class_names)`` at ``(H, W, C)``.

    Through ``kvision.data.load``: ``NUM_CALIBRATION`` training images (a random
    sample of a folder's files: folders list their files class by class) and up to
    ``MAX_CHECK_IMAGES`` held-out images with labels, as arrays, read once for every
    export.
    """
    import numpy as np

    import kvision.data
    from kvision.export.tflite import images_from

    height, width, channels = shape
    size = height if height == width else (height, width)
    dataset = kvision.data.load(data, image_size=size, channels=channels)
    if dataset.train_files:
        files = list(dataset.train_files)
        pick = np.random.default_rng(0).permutation(len(files))[:NUM_CALIBRATION]
        calibration = np.stack([kvision.data.load_image(files[i], size, channels=channels)
                                for i in pick])
    else:
        calibration, _, _ = images_from(dataset.train, shape, limit=NUM_CALIBRATION,
                                        what=f"--data {data}")
    images, labels, _ = images_from(dataset.test, shape, limit=MAX_CHECK_IMAGES,
                                    what=f"--data {data}")
    return calibration, (images, labels), list(dataset.class_names)


def format_table(results) -> str:
    """One row per export: format, size, parity figures, batch-1 latency, path."""
    header = (f"{'format':<16}{'size MB':>10}{'max |diff|':>12}{'top-1 agree':>13}"
              f"{'acc drop pt':>13}{'latency ms':>12}  path")
    lines = [header, "-" * len(header)]
    for r in results:
        p = r.parity or {}
        lines.append(
            f"{r.format:<16}{r.size_mb:>10.3f}"
            f"{_fmt(p.get('max_abs_diff'), '.2e'):>12}"
            f"{_fmt(p.get('top1_agreement'), '.2%'):>13}"
            f"{_fmt(p.get('accuracy_drop'), '+.2f'):>13}"
            f"{_fmt(r.latency_ms, '.3f'):>12}  {r.path}")
    lines.append("parity: the export against the Keras model on the check images "
                 "(acc drop: points of top-1 accuracy lost, with labels); latency: one "
                 "batch-1 call.")
    return "\n".join(lines)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)

"""``kvision export``: a trained model to SavedModel and TFLite files, with a table.

::

    kvision export MODEL [--format savedmodel,tflite] [--quantize none,float16,dynamic,int8]
                         [--data DIR|digits] [--out DIR] [--version N] [--int8-io] [--allow-flex]
                         [--min-top1-agreement F | --min-pixel-agreement F |
                          --min-detection-match F] [--max-accuracy-drop POINTS]
                         [--gradcam [--gradcam-layer PATH]]
    kvision export --serving-config BASE_PATH

MODEL is a ``.keras`` file, a directory ``saved_models/NAME`` holding ``NAME.keras``
(and optionally ``class_names.txt``), or a name meaning ``saved_models/NAME/NAME.keras``.
``--data`` gives the representative images (int8 calibration) and the images with
labels the exports are checked on: all of them, held-out and training images alike
(agreement with the Keras model is not accuracy: any image the model may meet
measures it), up to :func:`check_limit`. A detector (outputs ``boxes``, ``scores``,
``classes``, ``num_detections``) is checked on the image files of a ``--data`` folder
(any layout, no labels), detection by detection; a segmenter (one per-pixel output
``(N, H, W, classes)``) on them too, pixel by pixel (TFLite: the argmax class of >=
99.5% of pixels float32, >= 97% int8, which calibrates on those images); a pose
estimator on them too or, with ``--data figures``, on 200 held-out figures
(calibrating on 200 training ones), keypoint by keypoint: the mean distance to the
Keras model's keypoints in heatmap pixels, <= 0.5 float32, ``--max-keypoint-distance``
for the others (2.0 by default for int8). An embedding model is checked with
``--data glyphs`` (held-out glyph identities; calibrating on training ones) or a
folder of identities, embedding by embedding (:mod:`kvision.export.embedding`): cosine
similarity to Keras >= 0.9999 per image for float32, and at most
``--max-rank1-drop`` points of held-out rank-1 lost for the others (2.0 by default).

One invocation is all or nothing: every file is written into a staging folder inside
the output folder and checked there; only when every check has passed are they moved
into place (an existing file set aside first, and put back if a later move fails).
A failure leaves the output folder as it was.

The table printed has one row per file: format, size in MB, the number of images it
was checked on, parity figures against the Keras model (top-1 agreement with its 95%
Wilson interval; for a detector the share of detections matched) and batch-1 latency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite")
QUANTIZE = {"none": None, "float32": None, "float16": "float16", "dynamic": "dynamic",
            "int8": "int8"}
# SavedModel checks run whole batches through TF's session loader, and its float32
# graph is the Keras one to 1e-4: a few images suffice.
SAVEDMODEL_CHECK_IMAGES = 32
NUM_CALIBRATION = 200      # int8 calibration images
MAX_CHECK_IMAGES = 2_000   # images each export is checked on, at most ...
MAX_CHECK_BYTES = 2 ** 29  # ... and at most 512 MiB of float32 pixels (891 at 224x224x3)
# Below this many check images a failure also suggests more data: at 300 images the
# 95% interval of a 97% agreement is still about 94-98%.
MIN_CONVINCING_IMAGES = 300
# The agreement flag of each kind of model; all map onto tflite's min_top1_agreement.
AGREEMENT_FLAGS = {"classifier": "--min-top1-agreement",
                   "segmenter": "--min-pixel-agreement",
                   "detector": "--min-detection-match",
                   "keypoints": "--max-keypoint-distance",  # a bar from above
                   "embedding": "--max-rank1-drop"}         # so is this one
KIND_NOUNS = {"keypoints": "pose estimator", "outputs": "model of a task of its own",
              "embedding": "embedding model"}
# A pose estimator's --data figures: held-out figures to check on, training ones
# to calibrate on (as many as kvision evaluate measures).
FIGURES = "figures"
FIGURES_CHECK = 200


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
                        "or 'digits' (detectors, segmenters: a folder of images; pose "
                        "estimators: one, or 'figures')")
    p.add_argument("--out", default=None, help="output directory (default: the model's)")
    p.add_argument("--version", type=int, default=None,
                   help="SavedModel version (default: the next free one)")
    p.add_argument("--int8-io", action="store_true", help="int8 TFLite inputs and outputs")
    p.add_argument("--allow-flex", action="store_true",
                   help="allow TensorFlow (Flex) operators in TFLite files")
    p.add_argument("--min-top1-agreement", type=_fraction, default=None, metavar="F",
                   help="classifiers: share of images whose top-1 class every TFLite file "
                        "must give as the Keras model does (default 0.99 float16, 0.97 "
                        "dynamic and int8; float32 must match to 1e-4)")
    p.add_argument("--min-pixel-agreement", type=_fraction, default=None, metavar="F",
                   help="segmenters: share of pixels whose class every TFLite file must "
                        "give as the Keras model does (default 0.995 float32, 0.99 "
                        "float16, 0.97 dynamic and int8)")
    p.add_argument("--min-detection-match", type=_fraction, default=None, metavar="F",
                   help="detectors, float16 and dynamic: share of detections that must "
                        "keep their twin (same class, IoU >= 0.99) (default 0.99 float16, "
                        "0.97 dynamic; float32 must match every detection)")
    p.add_argument("--max-keypoint-distance", type=_distance, default=None, metavar="PX",
                   help="pose estimators, float16, dynamic and int8: mean distance, in "
                        "heatmap pixels, the TFLite keypoints may lie from the Keras "
                        "model's (default 0.5 float16 and dynamic, 2.0 int8; float32 "
                        "must lie within 0.5)")
    p.add_argument("--max-rank1-drop", type=_points, default=None, metavar="POINTS",
                   help="embedding models, float16, dynamic and int8, with --data glyphs "
                        "or a folder of identities: points of held-out rank-1 a TFLite "
                        "file may lose to the Keras model (default 2.0; float32 must "
                        "reach cosine 0.9999 on every image)")
    p.add_argument("--max-accuracy-drop", type=_points, default=1.0, metavar="POINTS",
                   help="classifiers with labelled --data: points of top-1 accuracy a "
                        "TFLite file may lose to the Keras model (default 1.0)")
    p.add_argument("--gradcam", action="store_true",
                   help="classifiers: add the serve_gradcam signature to the SavedModel "
                        "(the top class's Grad-CAM map with the prediction, checked "
                        "against kvision.visualization.gradcam)")
    p.add_argument("--gradcam-layer", metavar="PATH", default=None,
                   help="the layer serve_gradcam weights, a name or 'outer/inner' "
                        "(default: the last with a spatial map); implies --gradcam")
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
                         int8_io=args.int8_io, allow_flex=args.allow_flex,
                         min_top1_agreement=args.min_top1_agreement,
                         min_pixel_agreement=args.min_pixel_agreement,
                         min_detection_match=args.min_detection_match,
                         max_keypoint_distance=args.max_keypoint_distance,
                         max_rank1_drop=args.max_rank1_drop,
                         max_accuracy_drop=args.max_accuracy_drop,
                         gradcam=args.gradcam_layer or args.gradcam or None)
        print(format_table(results))
    if args.serving_config is not None:
        from kvision.export import serving_config

        print(f"wrote {serving_config(args.serving_config)}")
    return 0


def _fraction(text):
    """An argparse type: a float in [0, 1]."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (0.95 for "
                                         f"95%), got {text!r}")
    return value


def _points(text):
    """An argparse type: points of accuracy, a float >= 0."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value >= 0.0:
        raise argparse.ArgumentTypeError(f"expected points of accuracy >= 0 (1.0 for one "
                                         f"point), got {text!r}")
    return value


def _distance(text):
    """An argparse type: a distance in heatmap pixels, a float >= 0."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value >= 0.0:
        raise argparse.ArgumentTypeError(f"expected a distance in heatmap pixels >= 0 "
                                         f"(0.5 for half a pixel), got {text!r}")
    return value


def _split(value, allowed, option):
    items = [item.strip().lower() for item in str(value).split(",") if item.strip()]
    wrong = [item for item in items if item not in allowed]
    if wrong or not items:
        raise ValueError(f"{option} takes a comma-separated list of {', '.join(allowed)}; "
                         f"got {value!r}.")
    return list(dict.fromkeys(items))


def export(model_spec, *, formats=FORMATS, quantize=(None,), data=None, out=None,
           version=None, int8_io=False, allow_flex=False, min_top1_agreement=None,
           min_pixel_agreement=None, min_detection_match=None, max_keypoint_distance=None,
           max_rank1_drop=None,
           max_accuracy_drop=1.0, gradcam=None):
    """Export the model ``model_spec`` names; a list of ``ExportResult``, one per file.

    TFLite files are ``<out>/<NAME>.tflite`` (float32) and
    ``<out>/<NAME>.<variant>.tflite``; the SavedModel is ``<out>/<version>/``. All are
    staged and checked first, then moved into place together; on any failure ``out``
    is left as it was. ``min_top1_agreement`` (classifiers), ``min_pixel_agreement``
    (segmenters), ``min_detection_match`` (detectors) and ``max_keypoint_distance``
    (pose estimators: mean distance in heatmap pixels) and ``max_rank1_drop``
    (embedding models: points of held-out rank-1) replace the TFLite checks'
    default bar; only the one of the model's kind may be given. ``gradcam`` (True or
    a layer path) adds a classifier's ``serve_gradcam`` signature to the SavedModel.
    """
    from kvision.export import saved_model, tflite
    from kvision.export.parity import ParityError
    from kvision.export.proposals import proposal_model, tflite_refusal
    from kvision.export.savedmodel import _version
    from kvision.export.tflite import input_shape
    from kvision.predict import find_model_file, read_class_names
    from kvision.saving import load_keras

    keras_path = find_model_file(model_spec)
    name = os.path.splitext(os.path.basename(keras_path))[0]
    out = os.path.dirname(os.path.abspath(keras_path)) if out is None \
        else os.path.abspath(os.fspath(out))
    if int8_io and "int8" not in quantize:
        raise ValueError("--int8-io needs --quantize int8.")
    if "tflite" in formats and "int8" in quantize and data is None:
        raise ValueError("--quantize int8 needs --data (images to calibrate on).")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file; expected a folder (or a path that "
                         f"does not exist yet).")
    model = load_keras(keras_path, compile=True)  # safe_mode, nothing hostile
    shape = input_shape(model)
    # Selective search inside (Fast R-CNN, R-CNN): exported with the proposals an
    # input, which the caller computes (kvision.export.proposals).
    with_proposals = proposal_model(model)
    if with_proposals is not None:
        if "tflite" in formats:
            raise ValueError(tflite_refusal(model))
        model = with_proposals
    kind = model_kind(model)
    if gradcam and kind != "classifier":
        raise ValueError(f"--gradcam is for classifiers (one class map per image); "
                         f"this model is a {KIND_NOUNS.get(kind, kind)}.")
    if gradcam and "savedmodel" not in formats:
        raise ValueError(f"--gradcam adds the serve_gradcam signature to the "
                         f"SavedModel; --format must include savedmodel, got "
                         f"{','.join(formats)}.")
    if gradcam:
        from kvision.export.gradcam import gradcam_layer

        gradcam_layer(model, gradcam)  # an unknown layer fails before any work
    agreement = _agreement(kind, {"classifier": min_top1_agreement,
                                  "segmenter": min_pixel_agreement,
                                  "detector": min_detection_match,
                                  "keypoints": max_keypoint_distance,
                                  "embedding": max_rank1_drop})
    # A detector's class count is not in its outputs, nor is a task's of its own
    # ("outputs": a pose model's names are its joints).
    class_names = read_class_names(keras_path, None if kind in ("detector", "outputs",
                                                                "keypoints", "embedding")
                                   else int(model.outputs[0].shape[-1]))
    if kind == "outputs" and len(model.outputs) > 1 and "tflite" in formats:
        from kvision.tasks import noun, output_names, task_of

        raise ValueError(f"TFLite export of a {noun(task_of(model))} (outputs "
                         f"{', '.join(output_names(model))}) is not built yet; export it "
                         f"with --format savedmodel.")
    if kind == "detector" and "tflite" in formats and "int8" in quantize:
        raise ValueError("--quantize int8 is for classifiers; export a detector as "
                         "none, float16 or dynamic.")
    requested_version = version
    version = _version(out, version) if "savedmodel" in formats else None
    targets = _targets(out, name, formats, quantize, version)
    calibration, check_x, check_y, data_names = _check_data(kind, data, shape)
    if class_names is None and data_names is not None \
            and len(data_names) == model.outputs[0].shape[-1]:
        class_names = list(data_names)

    with _staging(out) as staging:
        results = []
        if "savedmodel" in formats:
            check = None if check_x is None else check_x[:SAVEDMODEL_CHECK_IMAGES]
            # Staged as <staging>/<basename of out>/<version>: the warm-up requests
            # name the model after its folder, which must be the real one's name.
            # Labels for answers that name classes (a segmenter's names stay in
            # the .keras file: its outputs are per-pixel scores).
            labelled = kind in ("classifier", "detector")
            results.append(saved_model(model, os.path.join(staging, os.path.basename(out)),
                                       version, class_names=class_names if labelled
                                       else None, check_inputs=check,
                                       gradcam=gradcam))
        for variant in quantize if "tflite" in formats else ():
            try:
                results.append(tflite(
                    model, os.path.join(staging, tflite_name(name, variant)), variant,
                    calibration, int8_io=int8_io and variant == "int8",
                    allow_flex=allow_flex, check_data=check_x,
                    class_names=None if kind in ("outputs", "keypoints", "embedding")
                    else class_names,
                    check_labels=check_y,
                    min_top1_agreement=None if kind in ("keypoints", "embedding")
                    else agreement,
                    max_keypoint_distance=agreement if kind == "keypoints" else None,
                    max_rank1_drop=agreement if kind == "embedding" else None,
                    max_accuracy_drop=max_accuracy_drop,
                    # a segmenter: per-pixel class agreement, not atol
                    **({"atol": None} if kind == "segmenter" else {})))
            except ParityError as error:
                raise ValueError(advice(error, kind, variant, out, calibration)) from None
        moved = _move_taking_a_free_version(results, staging, targets, out, version,
                                            auto=requested_version is None)
    return [dataclasses.replace(r, path=moved[r.path]) for r in results]


def _move_taking_a_free_version(results, staging, targets, out, version, auto):
    """:func:`move_into_place`; when another export took ``version`` while this one
    ran (two exports into one folder at once), the next free version is taken
    instead (an existing version is never replaced), or, for a ``--version`` given,
    a ``ValueError``."""
    from kvision.export.savedmodel import next_version

    while True:
        try:
            return move_into_place(_moves(results, staging, targets), out)
        except VersionTaken:
            if not auto:
                raise ValueError(f"Version {version} already exists at "
                                 f"{targets['savedmodel']!r} (another export wrote it "
                                 f"while this one ran); versions are never "
                                 f"overwritten. Nothing was written.") from None
            version = max(version + 1, next_version(out))
            targets["savedmodel"] = os.path.join(out, str(version))


def model_kind(model) -> str:
    """How the model's task (:func:`kvision.tasks.task_of`) is exported and checked:
    ``"detector"`` (the four detection outputs: detectors, localizers, instance
    models), ``"segmenter"`` (per-pixel scores) or ``"classifier"``."""
    from kvision.layers.proposals import host_layers
    from kvision.tasks import check_inference_model
    from kvision.tasks.base import export_kind

    task = check_inference_model(model)
    if host_layers(model):
        raise ValueError(f"{model.name!r} runs {host_layers(model)[0]!r} on the host "
                         f"(a Python call inside its graph): TensorFlow Serving and "
                         f"TFLite cannot run it; export "
                         f"kvision.export.proposals.proposal_model(model), whose "
                         f"proposals are an input.")
    if task == "embedding":
        return "embedding"  # checked embedding by embedding (kvision.export.embedding)
    if task == "instance_segmentation" and isinstance(model.output, dict):
        raise ValueError(f"{model.name!r} is a two-network instance model (semantic and "
                         f"separation maps decoded in Python); export its networks "
                         f"one by one, each a segmenter.")
    return export_kind(task)


def _agreement(kind, given):
    """The agreement threshold given for ``kind``; a flag of another kind is an error."""
    wrong = [AGREEMENT_FLAGS[k] for k, value in given.items() if k != kind and value is not None]
    if wrong:
        own = AGREEMENT_FLAGS.get(kind)  # "outputs": none
        raise ValueError(f"{', '.join(wrong)} is not for this model: it is a "
                         f"{KIND_NOUNS.get(kind, kind)}, "
                         + (f"whose agreement flag is {own}." if own else
                            "checked to float32 error without such a flag."))
    return given.get(kind)  # "outputs": checked to float32 error, no agreement flag


def tflite_name(name, variant) -> str:
    """``NAME.tflite`` for float32, ``NAME.<variant>.tflite`` for the others."""
    return f"{name}.tflite" if variant is None else f"{name}.{variant}.tflite"


def _targets(out, name, formats, quantize, version):
    """The paths the export will take in ``out``, checked before any work is done."""
    targets = {}
    if "savedmodel" in formats:
        targets["savedmodel"] = os.path.join(out, str(version))
        if os.path.exists(targets["savedmodel"]):
            raise ValueError(f"Version {version} already exists at "
                             f"{targets['savedmodel']!r}; versions are never overwritten "
                             f"(omit --version to take the next free one).")
    for variant in quantize if "tflite" in formats else ():
        target = os.path.join(out, tflite_name(name, variant))
        if os.path.isdir(target):
            raise ValueError(f"Cannot write {target!r}: it is a folder.")
        targets[variant] = target
    return targets


def _check_data(kind, data, shape):
    """``(calibration, check_images, check_labels, class_names)`` from ``--data``
    (Nones where it has none) for a model of ``kind``."""
    if data is None:
        return None, None, None, None
    if kind == "classifier":
        calibration, (images, labels), names = load_data(data, shape)
        return calibration, images, labels, names
    if kind == "keypoints" and data == FIGURES:
        return (*figure_images(shape), None, None)
    if kind == "embedding":
        from kvision.export.embedding import check_data

        return (*check_data(data, shape, limit=check_limit(shape)), None)
    # A detector, segmenter or pose estimator: image files, no labels; a segmenter
    # or pose estimator calibrates on them.
    images = detector_images(data, shape, limit=check_limit(shape), kind=kind)
    return (None if kind == "detector" else images), images, None, None


def figure_images(shape):
    """``(calibration, check_images)`` of ``--data figures`` at ``(H, W, C)``:
    ``NUM_CALIBRATION`` training figures and ``FIGURES_CHECK`` held-out ones (the
    images ``kvision evaluate`` measures a pose estimator on)."""
    from kvision.data.figures import figures

    height, width, channels = shape
    if height != width:
        raise ValueError(f"--data {FIGURES} are square; the model takes {height}x{width}.")
    made = [figures(count, image_size=height, channels=channels, subset=subset).images
            for count, subset in ((NUM_CALIBRATION, "train"), (FIGURES_CHECK, "test"))]
    return tuple(images.astype("float32") for images in made)


# What is closer to float32 than a variant that failed its check.
CLOSER = {"int8": ("float16", "dynamic"), "dynamic": ("float16",), "float16": ("none",)}


def advice(error, kind, variant, out, calibration) -> str:
    """The message of a TFLite file's failed check (``ParityError``), with how many
    images it rests on and what to try."""
    import math

    from kvision.export.tflite import FORMATS as TFLITE_FORMATS

    figures = error.figures
    tries = []
    if variant == "int8" and calibration is not None and len(calibration) < NUM_CALIBRATION:
        tries.append(f"more calibration images through --data (it calibrated on "
                     f"{len(calibration)}; it takes up to {NUM_CALIBRATION})")
    if variant is not None:
        tries.append(" or ".join(f"--quantize {q}" for q in CLOSER[variant])
                     + " (closer to float32)")
    if "keypoint_distance" in error.failed:
        tries.append(f"--max-keypoint-distance "
                     f"{math.ceil(figures['keypoint_distance'] * 100) / 100:g} to accept "
                     f"the distance measured")
    if "rank1_drop" in error.failed:
        tries.append(f"--max-rank1-drop {math.ceil(figures['rank1_drop'] * 100) / 100:g} "
                     f"to accept the rank-1 lost")
    if "accuracy_drop" in error.failed:
        tries.append(f"--max-accuracy-drop {math.ceil(figures['accuracy_drop'] * 100) / 100:g}"
                     f" to accept the accuracy lost")
    if "top1_agreement" in error.failed and (variant is not None or kind == "segmenter"):
        tries.append(f"{AGREEMENT_FLAGS[kind]} "
                     f"{math.floor(figures['top1_agreement'] * 100) / 100:g} to accept the "
                     f"agreement measured")
    n = figures.get("num_images")
    if n is not None and n < MIN_CONVINCING_IMAGES:
        tries.append(f"more images in --data: the figures rest on {n} only")
    lines = [str(error).removesuffix(" Nothing was written."),
             f"Nothing was written: {out} is as it was ({TFLITE_FORMATS[variant]} failed "
             f"its check, so no file of this export was kept)."]
    if tries:
        lines.append("To try: " + "; ".join(tries) + ".")
    return "\n".join(lines)


@contextlib.contextmanager
def _staging(out):
    """A hidden folder inside ``out`` (same file system: moves are renames), removed
    at the end; ``out`` itself is removed again if it was made here and is empty.
    Its name carries our pid, so that the next export can tell the leftovers of a
    killed export (:func:`clean_leftovers`) from those of one still running."""
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    for note in clean_leftovers(out):
        log.warning("kvision export: %s", note)
    staging = tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=out)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only if empty: it was ours


# The hidden folders of an export in progress, ".export-<pid>-…" (the files being
# made and checked) and ".replaced-<pid>-…" (files being replaced, set aside while
# the new ones are moved in): TF Serving loads integer-named folders only.
STAGING, ASIDE = ".export-", ".replaced-"
_LEFTOVER = re.compile(rf"({re.escape(STAGING)}|{re.escape(ASIDE)})(\d+)-\w+")


def clean_leftovers(out) -> list:
    """Remove what exports killed in ``out`` left (their pid is gone); a list of
    what was done, one sentence each. A killed export's staging folder goes; a
    file it had set aside goes back to its place if that is empty (the kill came
    before its replacement was moved in), else it goes too. Leftovers of live
    exports are left alone."""
    notes = []
    for name in sorted(os.listdir(out)):
        match = _LEFTOVER.fullmatch(name)
        if not match or _alive(int(match.group(2))):
            continue
        path = os.path.join(out, name)
        if match.group(1) == ASIDE:
            for entry in sorted(os.listdir(path)):
                if not os.path.lexists(os.path.join(out, entry)):
                    os.rename(os.path.join(path, entry), os.path.join(out, entry))
                    notes.append(f"put back {entry}, which an export killed while "
                                 f"moving its files (pid {match.group(2)}) had set aside")
        shutil.rmtree(path, ignore_errors=True)
        notes.append(f"removed {path}, left by an export that was killed (pid "
                     f"{match.group(2)})")
    return notes


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class VersionTaken(OSError):
    """The SavedModel version folder exists: never replaced, never set aside."""


def _moves(results, staging, targets):
    """``[(staged, target)]`` for every file of ``results``; ``staged`` None means
    the target goes (a labels file left over from a file being replaced)."""
    from kvision.export.litert import labels_path

    by_format = {"savedmodel": "savedmodel", "tflite": None, "tflite-float16": "float16",
                 "tflite-dynamic": "dynamic", "tflite-int8": "int8"}
    moves = []
    for result in results:
        target = targets[by_format[result.format]]
        moves.append((result.path, target))
        if result.format != "savedmodel":
            staged_labels = labels_path(result.path)
            moves.append((staged_labels if os.path.isfile(staged_labels) else None,
                          labels_path(target)))
    return [(staged, target) for staged, target in moves
            if staged is not None or os.path.lexists(target)]


def move_into_place(moves, out) -> dict:
    """Rename each staged path onto its target; ``{staged: target}``.

    An existing target is first set aside (renamed into a hidden folder of ``out``),
    so that if any rename fails every step is undone and ``out`` is as it was. If
    undoing fails too, the ``ValueError`` lists exactly what was written and where
    the set-aside originals are.
    """
    aside = tempfile.mkdtemp(prefix=f"{ASIDE}{os.getpid()}-", dir=out)
    done = []  # [staged, target, set-aside path or None, placed?]
    try:
        for staged, target in moves:
            step = [staged, target, None, False]
            done.append(step)
            if _is_version(target):
                _rename_version(staged, target)
                step[3] = True
                continue
            if os.path.lexists(target):
                # By its name, so that a killed export's next one can put it back.
                step[2] = os.path.join(aside, os.path.basename(target))
                os.rename(target, step[2])
            if staged is not None:
                os.rename(staged, target)
                step[3] = True
    except OSError as error:
        stuck = _undo(done)
        if not stuck:
            shutil.rmtree(aside, ignore_errors=True)
            if isinstance(error, VersionTaken):
                raise
            raise ValueError(f"Could not move the checked exports into {out} ({error}); "
                             f"every move was undone: {out} is as it was.") from None
        raise ValueError(f"Could not move the checked exports into {out} ({error}), nor "
                         f"undo every move. Written: {', '.join(stuck['written']) or 'none'}"
                         f"; replaced or removed, kept in {aside}: "
                         f"{', '.join(stuck['aside']) or 'none'}.") from None
    shutil.rmtree(aside, ignore_errors=True)
    return {staged: target for staged, target in moves if staged is not None}


def _is_version(path) -> bool:
    return os.path.basename(path).isdigit()


def _rename_version(staged, target):
    """Rename a staged SavedModel onto its version folder, which must not exist: a
    version folder that appeared meanwhile (a non-empty folder, which ``rename``
    refuses) is :class:`VersionTaken`, never replaced."""
    import errno

    if os.path.lexists(target):
        raise VersionTaken(errno.EEXIST, "version exists", target)
    try:
        os.rename(staged, target)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise VersionTaken(errno.EEXIST, "version exists", target) from None
        raise


def _undo(done):
    """Undo the steps of :func:`move_into_place`, last first; what could not be
    undone (``{"written": [...], "aside": [...]}``), empty if everything was."""
    stuck = {"written": [], "aside": []}
    for staged, target, set_aside, placed in reversed(done):
        try:
            if placed:
                os.rename(target, staged)
        except OSError:
            stuck["written"].append(target)
            if set_aside is not None:
                stuck["aside"].append(f"{target} as {set_aside}")
            continue
        try:
            if set_aside is not None:
                os.rename(set_aside, target)
        except OSError:
            stuck["aside"].append(f"{target} as {set_aside}")
    return stuck if stuck["written"] or stuck["aside"] else {}


def check_limit(shape) -> int:
    """How many images of ``(H, W, C)`` an export is checked on at most:
    ``MAX_CHECK_IMAGES``, fewer where their float32 pixels would pass
    ``MAX_CHECK_BYTES``."""
    height, width, channels = shape
    return int(min(MAX_CHECK_IMAGES, max(1, MAX_CHECK_BYTES // (4 * height * width
                                                                 * channels))))


def detector_images(folder, shape, limit=None, kind="detector"):
    """The image files under ``folder`` (sorted, any depth; at most ``limit``, default
    :func:`check_limit`, spread evenly over the sorted list) as float32 ``(n, H, W,
    C)`` pixels at the model's size: a detector's (or segmenter's) check images."""
    import numpy as np

    from kvision.data import load_image
    from kvision.predict import IMAGE_EXTENSIONS

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--data {folder!r}: a {kind} is checked on the images "
                                f"of a folder; no such folder.")
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder)
                   for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"--data {folder!r} holds no image files "
                         f"({', '.join(IMAGE_EXTENSIONS)}).")
    limit = check_limit(shape) if limit is None else limit
    if len(files) > limit:  # every sub-folder keeps its share
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).astype(int)]
    height, width, channels = shape
    return np.stack([load_image(f, (height, width), channels=channels) for f in files])


def load_data(data, shape, limit=None):
    """``(calibration, (check_images, check_labels), class_names)`` at ``(H, W, C)``.

    Through ``kvision.data.load``: ``NUM_CALIBRATION`` training images (a random
    sample of a folder's files: folders list their files class by class) and, to check
    on, every image ``data`` holds, held-out ones first, then training ones spread
    over the classes, up to ``limit`` (default :func:`check_limit`), with labels, as
    arrays read once for every export. Agreement with the Keras model is measured, not
    accuracy, so training images count too: a folder of 80 images is checked on 80,
    not on its 16 held out.
    """
    import numpy as np

    import kvision.data
    from kvision.export.tflite import images_from

    limit = check_limit(shape) if limit is None else limit
    height, width, channels = shape
    size = height if height == width else (height, width)
    dataset = kvision.data.load(data, image_size=size, channels=channels,
                                max_examples=limit)
    if dataset.train_files:
        files = list(dataset.train_files)
        pick = np.random.default_rng(0).permutation(len(files))[:NUM_CALIBRATION]
        calibration = np.stack([kvision.data.load_image(files[i], size, channels=channels)
                                for i in pick])
    else:
        calibration, _, _ = images_from(dataset.train, shape, limit=NUM_CALIBRATION,
                                        what=f"--data {data}")
    parts = []
    if dataset.num_test:
        parts.append(images_from(dataset.test, shape, limit=limit, what=f"--data {data}"))
    room = limit - sum(len(part[0]) for part in parts)
    if room > 0 and dataset.num_train:
        stride = -(-dataset.num_train // room)  # every stride-th: all classes, in order
        parts.append(images_from(dataset.train.shard(stride, 0), shape, limit=room,
                                 what=f"--data {data}"))
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    return calibration, (images, labels), list(dataset.class_names)


def format_table(results) -> str:
    """One row per export: format, size, images checked on, parity figures (top-1
    agreement with its 95% interval), batch-1 latency, path."""
    header = (f"{'format':<16}{'size MB':>9}{'images':>8}{'max |diff|':>11}"
              f"{'agreement':>11}{'95% interval':>15}{'acc drop pt':>13}"
              f"{'latency ms':>12}  path")
    lines = [header, "-" * len(header)]
    for r in results:
        p = r.parity or {}
        interval = p.get("top1_interval")
        lines.append(
            f"{r.format:<16}{r.size_mb:>9.3f}{_fmt(p.get('num_images'), 'd'):>8}"
            f"{_fmt(p.get('max_abs_diff'), '.2e'):>11}"
            f"{_fmt(p.get('top1_agreement'), '.2%'):>11}"
            f"{'-' if interval is None else f'{interval[0]:.1%}-{interval[1]:.1%}':>15}"
            f"{_fmt(p.get('accuracy_drop'), '+.2f'):>13}"
            f"{_fmt(r.latency_ms, '.3f'):>12}  {r.path}")
    for r in results:  # serve_gradcam's figures: a line of their own
        if (r.parity or {}).get("gradcam_max_abs_diff") is not None:
            lines.append(f"{r.format}: serve_gradcam's maps within "
                         f"{r.parity['gradcam_max_abs_diff']:.2e} of "
                         f"kvision.visualization.gradcam's, its class the top class on "
                         f"{r.parity['gradcam_class_agreement']:.0%} of the images")
    from kvision.export.embedding import describe

    for r in results:  # an embedding model's figures have no column: a line each
        line = describe(r.format, r.parity or {})
        if line is not None:
            lines.append(line)
    for r in results:  # a pose estimator's figure has no column: a line of its own
        if (r.parity or {}).get("keypoint_distance") is not None:
            lines.append(f"{r.format}: keypoints {r.parity['keypoint_distance']:.3f} "
                         f"heatmap pixels from the Keras model's on average (largest "
                         f"{r.parity['max_keypoint_distance']:.3f}); max |diff| is of "
                         f"their scores")
    for r in results:  # a detector whose proposals are an input: how to call it
        if (r.parity or {}).get("proposals_input") is not None:
            from kvision.export.proposals import CALLER_SUPPLIES

            tied = r.parity.get("proposals_tied")
            tied = "" if tied is None else (
                f", less {tied} pooling the same feature cells as an earlier one: "
                f"their scores tie exactly and NMS may keep either")
            lines.append(f"{r.format}: {CALLER_SUPPLIES} (at most "
                         f"{r.parity['proposals_input']} read); checked against the "
                         f"Keras model given the same proposals (selective search's of "
                         f"the check images{tied})")
    lines.append("images: how many the export and the Keras model were compared on; "
                 "agreement: share of top-1 classes alike\n(segmenters: of pixels, "
                 "detectors: of detections matched, embeddings: of nearest neighbours) with its 95% Wilson interval; acc "
                 "drop: points of top-1\naccuracy lost on those images (labelled data); "
                 "latency: one batch-1 call.")
    return "\n".join(lines)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)

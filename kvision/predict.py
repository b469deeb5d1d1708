"""Using a trained model: load it, label images, sort a folder of photos, draw
detections.

The library behind ``kvision predict`` and ``kvision sort``. A trained model is found
the way ``kvision train`` writes it: a ``.keras`` file, a run directory
``saved_models/NAME`` holding ``NAME.keras`` and ``class_names.txt``, or just ``NAME``
meaning that directory. A registry network with ImageNet weights is
``NAME:imagenet``, or just ``NAME`` when no run of that name exists; a ``NAME`` that
means both is an error that shows how to pick each, never a silent choice. An export
answers too (:func:`load_exported`): a ``.tflite`` file or a SavedModel version
directory (or a directory of numbered versions: the newest), wrapped by
:mod:`kvision.exported` in the interface of a Keras model.

Class names are the ones saved inside the ``.keras`` file
(:func:`kvision.saving.save_model`, as ``kvision train`` saves), else
``class_names.txt`` beside it, else the class numbers.

A detector is a model whose outputs are ``boxes`` (xyxy pixels of its input),
``scores``, ``classes`` and ``num_detections`` (the ``inference_model`` of a
detection family): :func:`detect_images` gives its detections in each file's own
pixels, :func:`draw_detections` draws them with ``keras.visualization``.

A segmenter (:func:`segmentation_kind`) is a model with one per-pixel output ``(N, H,
W, classes)``, an instance model (the ``inference_model`` of
:mod:`kvision.models.segmentation.instance`, its outputs ``instance_map`` and the
detector's four) or a two-network instance model (``semantic`` and ``separation``):
:func:`segment_images` gives its label map or instances in each file's own pixels,
:func:`draw_segmentation` draws them (:mod:`kvision.visualization.masks`, with
``keras.visualization.draw_segmentation_masks``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np

from kvision.tasks import (DETECTING, SEGMENTING, check_inference_model, class_word, noun,
                           task_of)

UNSURE = "_unsure"


@dataclasses.dataclass
class Trained:
    """A trained classifier with what it needs to be used."""

    model: object
    class_names: tuple
    path: str
    names_from: str = ""  # where the class names came from (for describe())
    source: str = ""  # which export answers, e.g. "(SavedModel version 2, the newest)"

    @property
    def image_size(self):
        return tuple(self.model.input_shape[1:3])

    @property
    def channels(self):
        return int(self.model.input_shape[-1])

    @property
    def task(self):
        """The model's task (:func:`kvision.tasks.task_of`): what the model says."""
        return task_of(self.model)

    @property
    def detector(self):
        return self.task in DETECTING

    @property
    def segmenter(self):
        """Semantic or instance segmentation (an instance model answers boxes too)."""
        return self.task in SEGMENTING

    def label(self, class_id):
        """The name of class ``class_id`` (its number where no name is known)."""
        return _name(self.class_names, class_id)

    def describe(self):
        """One line naming the model that answers and where its class names came from,
        e.g. ``saved_models/pets/pets.keras: classifier, 4 classes, names saved in the
        model``."""
        kind = noun(self.task)
        count = f", {len(self.class_names)} {class_word(self.task)}" if self.class_names \
            else ""
        names = f", {self.names_from}" if self.names_from else ""
        source = f" {self.source}" if self.source else ""
        return f"{self.path}{source}: {kind}{count}{names}"


PRETRAINED = ":imagenet"  # NAME:imagenet, the registry network with ImageNet weights


def find_model_file(ref) -> str:
    """The ``.keras`` file that ``ref`` (file, run directory or name) points to.

    A directory must hold ``NAME.keras`` (NAME its own name) or exactly one
    ``.keras`` file; a bare name means the directory ``saved_models/NAME`` (so
    ``lenet5-2``, a second run, is ``saved_models/lenet5-2/lenet5.keras``).
    ``NAME:imagenet`` is a ValueError: it names a network, not a trained file.
    """
    ref = os.fspath(ref)
    if ref.endswith(PRETRAINED) and not os.path.exists(ref):
        raise ValueError(f"{ref!r} names the registry network {ref[:-len(PRETRAINED)]} "
                         f"with ImageNet weights, not a trained model: expected a .keras "
                         f"file, a run directory or a run name under saved_models/.")
    if os.path.isfile(ref):
        if not ref.endswith(".keras"):
            raise ValueError(f"Expected a .keras or .tflite model file, got {ref!r}.")
        return ref
    if os.path.isdir(ref):
        name = os.path.basename(os.path.normpath(ref))
        candidate = os.path.join(ref, f"{name}.keras")
        if os.path.isfile(candidate):
            return candidate
        found = sorted(f for f in os.listdir(ref) if f.endswith(".keras"))
        if len(found) == 1:
            return os.path.join(ref, found[0])
        raise FileNotFoundError(f"No {name}.keras in {ref!r} (found "
                                f"{', '.join(found) or 'no .keras file'}), and no "
                                f"SavedModel: neither saved_model.pb nor numbered "
                                f"versions <n>/saved_model.pb.")
    run = os.path.join("saved_models", ref)
    if os.path.isdir(run):  # NAME.keras, or the one model of a run folder NAME-2
        return find_model_file(run)
    raise FileNotFoundError(
        f"No trained model {ref!r}: expected a .keras file, a directory holding "
        f"NAME.keras, or the name of a run folder under saved_models/ (there is no "
        f"{run}; train one with `kvision train {ref}`).")


def read_class_names(model_path, classes):
    """The model's class names: those saved inside the ``.keras`` file
    (:func:`kvision.saving.save_model`), else ``class_names.txt`` beside it; None if
    neither has them. ``classes``: the count the model needs (None: any, as for a
    detector)."""
    return _class_names(model_path, classes)[0]


def _class_names(model_path, classes):
    """``(names or None, where they came from)`` for :func:`read_class_names`."""
    from kvision.saving import saved_class_names

    names = saved_class_names(model_path)
    where, source = f"saved in {model_path}", "names saved in the model"
    if names is None:
        where = os.path.join(os.path.dirname(os.path.abspath(model_path)),
                             "class_names.txt")
        source = "names from the class_names.txt beside it"
        if not os.path.isfile(where):
            return None, "no class names saved in the model or beside it: numbers"
        with open(where, encoding="utf-8") as f:
            names = tuple(line.rstrip("\n") for line in f if line.strip())
    if classes is not None and len(names) != classes:
        raise ValueError(f"{len(names)} class names {where}, but the model has "
                         f"{classes} outputs.")
    return names, source


def _pretrained_name(ref):
    """The registry name ``ref`` means as a network with ImageNet weights (``NAME``
    or ``NAME:imagenet``), or None. ``NAME:imagenet`` for a network without such
    weights is a ValueError."""
    from kvision.models import get_info, list_models

    if not isinstance(ref, str):
        return None
    explicit = ref.endswith(PRETRAINED)
    name = ref[:-len(PRETRAINED)] if explicit else ref
    if name in list_models() and get_info(name).has_imagenet_weights:
        return name
    if explicit:
        have = [n for n in list_models() if get_info(n).has_imagenet_weights]
        raise ValueError(f"{ref!r}: {name!r} is not a registry network with ImageNet "
                         f"weights; those that have them: {', '.join(have)}.")
    return None


def pretrained(ref):
    """A registry network with ImageNet weights and the ImageNet class names, when
    ``ref`` names one (``efficientnet_lite0`` or ``efficientnet_lite0:imagenet``);
    else None."""
    from kvision.models import create

    name = _pretrained_name(ref)
    if name is None:
        return None
    from kvision.data import imagenet_class_names

    return Trained(create(name, weights="imagenet"), imagenet_class_names(),
                   f"{name} (ImageNet weights)", "ImageNet's names")


def _refuse_two_meanings(ref, path):
    """A plain ``ref`` that names both a trained run (found at ``path``) and a
    registry network with ImageNet weights is a ValueError showing both spellings."""
    if not isinstance(ref, str) or os.sep in ref or ref.endswith(".keras") \
            or _pretrained_name(ref) is None:
        return
    # find_model_file took a folder ./NAME before saved_models/NAME.
    run = os.path.join("." if os.path.exists(ref) else "saved_models", ref)
    raise ValueError(f"{ref!r} means two models: the trained run {path} and the "
                     f"registry network {ref} with ImageNet weights. Name the one you "
                     f"mean: {run} (the run) or {ref}{PRETRAINED} (the ImageNet "
                     f"network).")


def _class_count(model, task):
    """How many class names ``model`` needs; None where any count fits (detectors)."""
    if task in SEGMENTING and segmentation_kind(model) in ("semantic", "two_network"):
        output = model.output["semantic"] if isinstance(model.output, dict) else model.output
        # A binary (one sigmoid channel) segmenter has two classes: background, object.
        return max(int(output.shape[-1]), 2)
    if task in SEGMENTING or task in DETECTING or isinstance(model.output, dict):
        return None  # any count fits (a pose model's names are its joints')
    if task == "embedding":
        return None  # its names are its training identities, not its output's width
    return int(model.output_shape[-1])


def load_trained(ref) -> Trained:
    """Load a trained model (``safe_mode=True``) with its class names.

    ``ref`` is a ``.keras`` file, a run directory, a run name under ``saved_models/``,
    or a registry network with ImageNet weights: ``NAME:imagenet``, or a plain
    ``NAME`` when no run of that name exists (a plain ``NAME`` that means both is a
    ValueError naming each spelling); or an export (:func:`load_exported`).
    :meth:`Trained.describe` says which model it is.
    """
    from kvision.saving import load_keras

    if isinstance(ref, str) and ref.endswith(PRETRAINED) and not os.path.exists(ref):
        return pretrained(ref)
    exported = load_exported(ref)
    if exported is not None:
        return exported
    try:
        path = find_model_file(ref)
    except FileNotFoundError:
        model = pretrained(ref)
        if model is None:
            raise
        return model
    _refuse_two_meanings(ref, path)
    model = load_keras(path)
    classes = _class_count(model, check_inference_model(model))
    names, source = _class_names(path, classes)
    if names is None:
        names = () if classes is None else tuple(str(i) for i in range(classes))
    return Trained(model, names, path, source)


def _export_path(ref):
    """``(path, source)`` of the export ``ref`` names: a ``.tflite`` file, a SavedModel
    version directory, or a directory of numbered versions and no ``.keras`` file
    (the newest version answers); None for anything else."""
    from kvision.exported import is_saved_model, newest_version

    path = os.fspath(ref)
    if os.path.isfile(path) and path.endswith(".tflite"):
        return path, "(TFLite)"
    if not os.path.isdir(path):
        return None
    if is_saved_model(path):
        return path, "(SavedModel)"
    if any(f.endswith(".keras") for f in os.listdir(path)):
        return None  # a run directory: its .keras file answers, as always
    newest, versions = newest_version(path)
    if newest is None:
        return None
    others = f", the newest of {', '.join(map(str, versions))}" if len(versions) > 1 \
        else ""
    return newest, f"(SavedModel version {versions[-1]}{others})"


def load_exported(ref):
    """A :class:`Trained` answering with an export (:mod:`kvision.exported`): a
    ``.tflite`` file, a SavedModel version directory, or a model directory of
    numbered versions (the newest); None when ``ref`` is none of these. Class names
    come from the labels file the export wrote, else class numbers."""
    from kvision import exported

    found = _export_path(ref) if isinstance(ref, (str, os.PathLike)) else None
    if found is None:
        return None
    path, source = found
    load = exported.from_tflite if path.endswith(".tflite") else exported.from_saved_model
    model = load(path)
    classes = _class_count(model, check_inference_model(model))
    names, where = model.class_names, ("names from its labels file"
                                       if model.class_names else "no labels file: numbers")
    if names is not None and classes is not None and len(names) != classes:
        raise ValueError(f"{len(names)} class names in the labels file of {path}, but "
                         f"the model has {classes} outputs.")
    if names is None:
        names = () if classes is None else tuple(str(i) for i in range(classes))
    return Trained(model, tuple(names), path, where, source)


ON_ERROR = ("raise", "report")


def load_images(paths, trained, on_error="raise"):
    """Images at the model's size, ``(N, H, W, C)`` float32 0..255, the paths kept and
    ``{path: why}`` for those that were not.

    Decoding and resizing are :func:`kvision.data.load_image`'s, the same as the
    training pipeline's. ``on_error="skip"`` leaves out files that are missing or do
    not decode instead of raising.
    """
    from kvision.data import load_image

    images, kept, failed = [], [], {}
    for path in paths:
        try:
            images.append(load_image(path, trained.image_size, trained.channels))
            kept.append(path)
        except (ValueError, FileNotFoundError) as error:
            if on_error != "skip":
                raise
            failed[path] = str(error)
    shape = (0, *trained.image_size, trained.channels)
    array = np.stack(images) if images else np.zeros(shape, "float32")
    return array, kept, failed


def top_k(probabilities, class_names, k=5):
    """Per row: ``[(label, probability), ...]`` best first, ``k`` at most (all the
    classes when there are fewer: the default 5 must work for 3 classes)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (--top-k) must be an integer >= 1, got {k!r}.")
    k = min(k, probabilities.shape[-1])
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return [[(class_names[j], float(row[j])) for j in idx]
            for row, idx in zip(probabilities, order)]


def image_files(folder):
    """``(image files, other files)`` under ``folder``, any depth, each sorted; image
    files are those ending in :data:`IMAGE_EXTENSIONS` (any case)."""
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder)
                   for f in names)
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return images, [f for f in files if not f.lower().endswith(IMAGE_EXTENSIONS)]


def expand_images(paths):
    """``kvision predict``'s IMAGE arguments as files: a folder stands for its image
    files (:func:`image_files`). Returns ``(files, {argument: why})``: a folder with no
    image in it is reported, not answered."""
    files, problems = [], {}
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            files.append(path)
            continue
        found, _ = image_files(path)
        files.extend(found)
        if not found:
            problems[path] = (f"No image files in the folder {path!r} (expected names "
                              f"ending in {', '.join(IMAGE_EXTENSIONS)}).")
    return files, problems


def _check_on_error(on_error):
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")


def _answer_in_chunks(trained, paths, batch_size, on_error, answer):
    """``answer(images, kept_paths) -> [result per path]`` over ``paths`` loaded
    ``batch_size`` at a time (a folder of photos never sits in memory at once).
    With ``on_error="report"``, a file that is missing or does not decode gets
    ``{"path", "error"}`` in its place and the others are answered."""
    _check_on_error(on_error)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, kept, failed = load_images(
            chunk, trained, on_error="skip" if on_error == "report" else "raise")
        answered = iter(answer(images, kept) if kept else ())
        results.extend({"path": p, "error": failed[p]} if p in failed
                       else next(answered) for p in chunk)
    return results


def predict_images(trained, paths, k=5, batch_size=32, on_error="raise"):
    """``[{"path", "predictions": [{"label", "probability"}...]}]`` for image files,
    ``k`` best first. ``on_error="report"``: an unreadable file gets ``{"path",
    "error"}`` instead of stopping the others."""
    top_k(np.zeros((0, 1)), (), k)  # a bad k fails before any file is read

    def answer(images, kept):
        probabilities = trained.model.predict(images, batch_size=batch_size, verbose=0)
        return [{"path": path, "predictions": [{"label": label, "probability": p}
                                               for label, p in best]}
                for path, best in zip(kept, top_k(probabilities, trained.class_names, k))]

    return _answer_in_chunks(trained, list(paths), batch_size, on_error, answer)


def _original_size(path):
    """``(height, width)`` of an image file as it is seen (upright), read from its
    header; the file's problem as :func:`kvision.data.load_image` words it (one line)
    when it does not decode."""
    from kvision.data.folders import seen_size

    return seen_size(path)


def detect_images(trained, paths, score_threshold=0.0, batch_size=8, on_error="raise"):
    """A detector's detections in image files, boxes in each file's own pixels.

    The files are resized to the model's input as for classifiers
    (:func:`load_images`); its boxes are scaled back by the file's size over the
    input's. Returns ``[{"path", "image_size": [height, width], "detections":
    [{"label", "class", "score", "box": [x0, y0, x1, y1]}, ...]}]``, detections best
    first, those scoring under ``score_threshold`` left out. ``on_error="report"``:
    an unreadable file gets ``{"path", "error"}`` instead of stopping the others.
    """
    if not trained.detector:
        raise ValueError(f"{trained.path} is a {noun(trained.task)}, not a detector.")

    def answer(images, kept):
        outputs = trained.model.predict(images, batch_size=batch_size, verbose=0)
        return _detections(trained, outputs, kept, score_threshold)

    return _answer_in_chunks(trained, list(paths), batch_size, on_error, answer)


def _detections(trained, outputs, kept, score_threshold):
    """:func:`detect_images`' results for the files ``kept`` from the model's
    ``outputs`` on them."""
    height, width = trained.image_size
    results = []
    for i, path in enumerate(kept):
        size = _original_size(path)
        scale = np.array([size[1] / width, size[0] / height] * 2)
        count = int(outputs["num_detections"][i])
        detections = [
            {"label": trained.label(c), "class": int(c), "score": float(s),
             "box": [float(v) for v in np.asarray(b, "float64") * scale]}
            for b, s, c in zip(outputs["boxes"][i][:count], outputs["scores"][i][:count],
                               outputs["classes"][i][:count])
            if s >= score_threshold]
        results.append({"path": path, "image_size": list(size), "detections": detections})
    return results


def draw_detections(path, result, out_path, color=(255, 64, 64)):
    """Draw one :func:`detect_images` result (boxes, labels, scores) on the image
    file at ``path`` with ``keras.visualization.draw_bounding_boxes``; write a PNG.

    Grey images are drawn in RGB, so the boxes keep their colour. Returns
    ``out_path``.
    """
    import keras
    import tensorflow as tf

    try:
        import cv2  # noqa: F401  (keras.visualization draws with OpenCV)
    except ImportError:
        raise ModuleNotFoundError("Drawing detections needs OpenCV, which "
                                  "keras.visualization draws with: pip install "
                                  "opencv-python-headless.") from None
    from kvision.data.folders import read_image

    image = read_image(path)  # upright, as the model saw it
    detections = result["detections"]
    names = {d["class"]: d["label"] for d in detections}
    boxes = np.array([d["box"] for d in detections], "float32").reshape(1, -1, 4)
    drawn = keras.visualization.draw_bounding_boxes(
        image[None], {"boxes": boxes,
                      "labels": np.array([[d["class"] for d in detections]], "int32"),
                      "confidences": np.array([[d["score"] for d in detections]])},
        "xyxy", class_mapping=names, color=color, line_thickness=1,
        font_scale=max(0.3, min(image.shape[:2]) / 500))
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(tf.io.encode_png(np.asarray(drawn[0], "uint8")).numpy())
    return out_path


# --- segmenters --------------------------------------------------------------------



def segmentation_kind(model):
    """What kind of segmenter ``model`` is, or None for other models.

    ``"instances"``: outputs ``instance_map`` besides a detector's four (the
    ``inference_model`` of :mod:`kvision.models.segmentation.instance`);
    ``"two_network"``: a dict with ``"semantic"`` (and ``"separation"``) outputs (a
    ``TwoNetworkInstance``), decoded into instances; ``"semantic"``: one output of
    rank 4, per-pixel probabilities ``(N, H, W, classes)`` (softmax, or one sigmoid
    channel). The task is the model's own (:func:`kvision.tasks.task_of`).
    """
    try:
        task = task_of(model)
    except ValueError:
        return None
    if task == "segmentation":
        return "semantic"
    if task != "instance_segmentation":
        return None
    output = model.output
    return "two_network" if isinstance(output, dict) and "semantic" in output \
        else "instances"


def _nearest_indices(source, target):
    """Source rows/columns of a nearest-neighbour resize (half-pixel centres)."""
    return np.minimum(((np.arange(target) + 0.5) * source / target).astype(int),
                      source - 1)


def resize_nearest(array, size):
    """``(..., h, w)`` -> ``(..., H, W)`` nearest-neighbour (label maps and masks keep
    their values), pixel centres aligned as ``tf.image.resize``'s."""
    array = np.asarray(array)
    rows = _nearest_indices(array.shape[-2], size[0])
    cols = _nearest_indices(array.shape[-1], size[1])
    return array[..., rows[:, None], cols[None, :]]


def _in_input_frame(labels, input_size, fill):
    """An output map smaller than the input (a U-Net with ``padding="valid"`` sees a
    border it does not label) placed at its centre, ``fill`` around it."""
    h, w = labels.shape[-2:]
    height, width = input_size
    if (h, w) == (height, width):
        return labels
    if h > height or w > width or (height - h) % 2 or (width - w) % 2:
        return resize_nearest(labels, input_size)
    top, left = (height - h) // 2, (width - w) // 2
    framed = np.full(labels.shape[:-2] + (height, width), fill, labels.dtype)
    framed[..., top:top + h, left:left + w] = labels
    return framed


def _label_maps(probabilities):
    """Per-pixel probabilities ``(N, H, W, C)`` -> label maps ``(N, H, W)``: argmax, or
    ``p >= 0.5`` for one sigmoid channel."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] >= 0.5).astype(np.int64)
    return probabilities.argmax(-1).astype(np.int64)


def _instance_layer(model):
    """The :class:`~kvision.layers.labeling.InstanceLabeling` layer of an
    instance model, or None."""
    from kvision.layers.labeling import InstanceLabeling

    found = [layer for layer in model.layers if isinstance(layer, InstanceLabeling)]
    return found[0] if found else None


def object_names(trained):
    """Names of an instance model's object classes (numbered from 0, background left
    out). ``class_names.txt`` may list the semantic classes, background included (as
    for the semantic network), or the object classes alone."""
    import keras

    model, names = trained.model, tuple(trained.class_names)
    kind = segmentation_kind(model)
    if kind == "two_network":
        semantic, background = int(model.output["semantic"].shape[-1]), 0
    else:
        layer = _instance_layer(model)
        if layer is None or layer.background is None:
            return names
        # Its first input: the semantic probabilities (B, H, W, classes).
        semantic = int(keras.tree.flatten(layer.input)[0].shape[-1])
        background = layer.background
    if len(names) == semantic:
        return names[:background] + names[background + 1:]
    return names


def _name(names, class_id):
    """``names[class_id]``, or the number where ``names`` has no such entry."""
    class_id = int(class_id)
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


def _segmenter_input(trained, path):
    """One file as ``(H, W, C)`` pixels at the model's input size; a model whose input
    size is free takes the file at its own size."""
    from kvision.data import load_image

    size = trained.image_size
    return load_image(path, _original_size(path) if None in size else size,
                      trained.channels)


def _segment_each(trained, paths, on_error, answer):
    """``answer(path, image)`` for each file, one at a time (a segmenter's answers are
    whole maps). With ``on_error="report"``, a file that is missing or does not
    decode gets ``{"path", "error"}`` in its place and the others are answered."""
    _check_on_error(on_error)
    results = []
    for path in paths:
        try:
            image = _segmenter_input(trained, path)
        except (ValueError, FileNotFoundError) as error:
            if on_error == "raise":
                raise
            results.append({"path": path, "error": str(error)})
            continue
        results.append(answer(path, image))
    return results


def segment_images(trained, paths, score_threshold=0.0, batch_size=8, on_error="raise"):
    """A segmenter's answer for image files, in each file's own pixels.

    Files are resized to the model's input as for classifiers (:func:`load_images`);
    label maps and masks are resized back to each file's size (nearest neighbour).

    A semantic segmenter gives ``[{"path", "image_size": [height, width], "classes":
    [{"label", "class", "pixels", "fraction"}, ...], "label_map": (H, W) int64}]``:
    the classes present, most pixels first; pixels the model does not label (the
    border of a "valid" U-Net) are -1 in ``label_map`` and count for no class.
    An instance model gives ``[{"path", "image_size", "instances": [{"label",
    "class", "score", "box": [x0, y0, x1, y1], "pixels"}, ...], "masks": (n, H, W)
    bool}]``, instances best first, those scoring under ``score_threshold`` left out
    (``class`` numbers the object classes, background left out; ``box`` is the
    bounding box of the mask in the file's pixels, right/bottom exclusive).
    ``on_error="report"``: an unreadable file gets ``{"path", "error"}`` instead of
    stopping the others.
    """
    kind = segmentation_kind(trained.model)
    if kind is None:
        raise ValueError(f"{trained.path} is a {noun(trained.task)}, not a segmenter.")
    if kind == "semantic":
        answer = _semantic_answer(trained, batch_size)
    else:
        answer = _instance_answer(trained, kind, score_threshold, batch_size)
    return _segment_each(trained, list(paths), on_error, answer)


def _semantic_answer(trained, batch_size):
    """``answer(path, image)`` of a semantic segmenter (:func:`segment_images`)."""

    def answer(path, image):
        probabilities = trained.model.predict(image[None], batch_size=batch_size,
                                              verbose=0)
        labels = _in_input_frame(_label_maps(probabilities)[0], image.shape[:2], -1)
        size = _original_size(path)
        labels = resize_nearest(labels, size)
        present, counts = np.unique(labels[labels >= 0], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        classes = [{"label": trained.label(present[i]), "class": int(present[i]),
                    "pixels": int(counts[i]), "fraction": float(counts[i] / labels.size)}
                   for i in order]
        return {"path": path, "image_size": list(size), "classes": classes,
                "label_map": labels}

    return answer


def _mask_box(mask):
    """``[x0, y0, x1, y1]`` around a mask's pixels (right/bottom exclusive, COCO's
    convention); zeros for an empty mask."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return [0.0] * 4
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1),
            float(rows.max() + 1)]


def _instance_answer(trained, kind, score_threshold, batch_size):
    """``answer(path, image)`` of an instance model (:func:`segment_images`)."""
    from kvision.models.segmentation import instance

    runner = trained.model if kind == "instances" else instance.inference_model(
        trained.model, score_threshold=0.0)
    names = object_names(trained)

    def answer(path, image):
        (found,) = instance.to_instances(runner.predict(image[None],
                                                        batch_size=batch_size, verbose=0))
        keep = np.asarray(found["scores"]) >= score_threshold
        masks = _in_input_frame(np.asarray(found["masks"])[keep], image.shape[:2], False)
        size = _original_size(path)
        masks = resize_nearest(masks, size).astype(bool)
        instances = [
            {"label": _name(names, c), "class": int(c), "score": float(s),
             "box": _mask_box(m), "pixels": int(m.sum())}
            for s, c, m in zip(np.asarray(found["scores"])[keep],
                               np.asarray(found["classes"])[keep], masks)]
        return {"path": path, "image_size": list(size), "instances": instances,
                "masks": masks}

    return answer


def draw_segmentation(path, result, out_path, class_names=None):
    """Draw one :func:`segment_images` result on the image file at ``path`` and write
    a PNG (:func:`kvision.visualization.masks.save_overlay`): a label map blended in
    one colour per class (background and unlabelled pixels left as they are) with a
    legend, or each instance in its own colour, outlined and captioned "label score".
    Small images are enlarged by a whole factor so the captions stay readable.
    Returns ``out_path``."""
    from kvision.data.folders import read_image
    from kvision.visualization import masks as overlays

    image = read_image(path)  # upright, as the model saw it
    if "instances" in result:
        instances = result["instances"]
        names = {d["class"]: d["label"] for d in instances}
        count = max(names, default=-1) + 1
        return overlays.save_overlay(
            out_path, image, instances=result["masks"],
            classes=np.array([d["class"] for d in instances], "int64"),
            scores=np.array([d["score"] for d in instances], "float32"),
            class_names=[names.get(c, str(c)) for c in range(count)])
    return overlays.save_overlay(out_path, image, labels=result["label_map"],
                                 class_names=class_names, ignore_index=-1)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def _free_name(directory, name):
    """``name`` in ``directory``, or ``stem-1.ext``, ``stem-2.ext``… if it is taken."""
    stem, ext = os.path.splitext(name)
    candidate, i = name, 0
    while os.path.exists(os.path.join(directory, candidate)):
        i += 1
        candidate = f"{stem}-{i}{ext}"
    return os.path.join(directory, candidate)


def sort_images(trained, input_dir, output_dir, threshold=0.5, batch_size=32,
                progress=True):
    """Copy every photo of ``input_dir`` into ``output_dir/<predicted class>/``.

    Originals are copied (``shutil.copy2``), never moved, changed or deleted; a name
    already taken in the output gets a ``-1``, ``-2``… suffix, so nothing there is
    overwritten. Photos whose top probability is below ``threshold`` go to
    ``output_dir/_unsure/``; files that are not images, or do not decode, are
    reported and left alone.

    Returns ``{"copied": {folder: count}, "skipped": [paths], "errors": {path: why},
    "assignments": {path: (folder, probability)}}``: ``skipped`` are the files left
    alone, ``errors`` those of them named as images that did not decode.
    """
    from tqdm import tqdm

    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"No input folder {input_dir!r}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}.")
    input_abs, output_abs = os.path.abspath(input_dir), os.path.abspath(output_dir)
    if output_abs == input_abs or output_abs.startswith(input_abs + os.sep):
        raise ValueError(f"The output folder {output_dir!r} must not be inside the input "
                         f"folder {input_dir!r}.")
    files, skipped = image_files(input_dir)
    copied, assignments, errors = {}, {}, {}
    for start in tqdm(range(0, len(files), batch_size), desc="sorting",
                      disable=not progress):
        images, kept, failed = load_images(files[start:start + batch_size], trained,
                                           on_error="skip")
        skipped.extend(failed)
        errors.update(failed)
        if not kept:
            continue
        probabilities = trained.model.predict(images, verbose=0)
        for path, row in zip(kept, probabilities):
            best = int(np.argmax(row))
            folder = trained.class_names[best] if row[best] >= threshold else UNSURE
            target_dir = os.path.join(output_dir, folder)
            os.makedirs(target_dir, exist_ok=True)
            shutil.copy2(path, _free_name(target_dir, os.path.basename(path)))
            copied[folder] = copied.get(folder, 0) + 1
            assignments[path] = (folder, float(row[best]))
    return {"copied": copied, "skipped": sorted(skipped), "errors": errors,
            "assignments": assignments}

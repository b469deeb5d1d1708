"""Measuring a detector or localizer: COCO mAP on labelled scenes (``kvision evaluate``).

The data (:func:`load_data`) is a YOLO folder or a COCO JSON file
(:func:`kvision.data.detection.load_detection`), or ``digit-scenes``: held-out
:func:`kvision.data.synthetic.digit_scenes` (handwriting never seen in training, a
fixed seed) at the model's input size. Each image is resized to the model's input as
``kvision predict`` resizes a file (:func:`kvision.data.folders.resize`) and the boxes
found are scaled back to the image's own pixels, where its ground truth is; the
figures are :func:`kvision.metrics.detection.evaluate`'s (COCO's rules).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvision.tasks import base

DIGIT_SCENES = "digit-scenes"
DIGIT_SCENES_COUNT = 200  # held-out scenes evaluated by default
_SCENE_SIDE = 96          # digit_scenes' default canvas, whose digit sizes scale below


@dataclasses.dataclass
class Labelled:
    """Images (each ``(H, W, C)`` float32 in [0, 255], its own size) with their
    ``ground_truth`` (``[{"boxes", "classes"}]`` per image, xyxy pixels of the image),
    the ``class_names`` and a ``description`` of where they came from."""

    images: list
    ground_truth: list
    class_names: tuple
    description: str


@dataclasses.dataclass
class Report:
    """Detection figures (:func:`kvision.metrics.detection.evaluate`'s) with the
    objects each class has in the ground truth."""

    class_names: tuple
    figures: dict
    objects: np.ndarray
    num_images: int
    task: str = "detection"
    figure: str = "box AP"  # or "mask AP" (instance segmenters)

    def format(self) -> str:
        """The headline figures, then AP@[.5:.95] per class ("-" where the data has
        no object of the class: COCO leaves it out of the mean)."""
        f = self.figures
        width = max(12, *(len(n) for n in self.class_names))
        shown = "" if self.figure == "box AP" else f"{self.figure}: "
        lines = [f"{shown}mAP@[.5:.95] {f['map']:.4f}  mAP@0.5 {f['map_50']:.4f}  "
                 f"mAP@0.75 {f['map_75']:.4f}", "",
                 f"{'class':<{width}} {'AP@[.5:.95]':>11} {'objects':>8}"]
        for c, name in enumerate(self.class_names):
            ap = f["per_class"].get(c)
            shown = "-" if ap is None else f"{ap:.4f}"
            lines.append(f"{name:<{width}} {shown:>11} {int(self.objects[c]):>8}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The same figures for JSON; a class without objects has ``"ap": null``."""
        f = self.figures
        return {"task": self.task, "figure": self.figure, "images": self.num_images,
                "map": f["map"],
                "map_50": f["map_50"], "map_75": f["map_75"],
                "per_class": {name: {"ap": f["per_class"].get(c),
                                     "objects": int(self.objects[c])}
                              for c, name in enumerate(self.class_names)}}


def held_out_scenes(trained, count=DIGIT_SCENES_COUNT, seed=0):
    """``count`` digit scenes of the ``"test"`` handwriting at the model's input size
    (the longer side for a non-square input), digit sizes scaled from
    ``digit_scenes``' 96-pixel default; shared with :mod:`kvision.tasks.segmentation`."""
    from kvision.data.synthetic import digit_scenes

    side = max(int(s) for s in trained.image_size)
    digit_size = tuple(max(4, round(d * side / _SCENE_SIDE)) for d in (12, 32))
    return digit_scenes(count, image_size=side, digit_size=digit_size,
                        channels=trained.channels, subset="test", seed=seed)


def load_data(source, trained, *, seed=0, max_images=None) -> Labelled:
    """Labelled images for a detector: ``digit-scenes``, a YOLO folder or a COCO JSON
    (a ValueError or FileNotFoundError naming those forms otherwise)."""
    if source == DIGIT_SCENES:
        scenes = held_out_scenes(trained, max_images or DIGIT_SCENES_COUNT, seed)
        return Labelled(list(scenes.images.astype("float32")),
                        [{"boxes": b, "classes": c} for b, c in
                         zip(scenes.boxes, scenes.classes)],
                        tuple(scenes.class_names),
                        f"{len(scenes)} held-out scenes of {DIGIT_SCENES} (seed {seed})")
    from kvision.data.detection import load_detection

    _check_source(source)
    data = load_detection(source, channels=trained.channels, max_examples=max_images)
    images, truth = [], []
    for example in data.dataset.as_numpy_iterator():
        images.append(example["images"])
        truth.append({"boxes": example["bounding_boxes"]["boxes"],
                      "classes": example["bounding_boxes"]["labels"]})
    return Labelled(images, truth, tuple(data.class_names),
                    f"{data.num_examples} images of {source}")


def _check_source(source):
    """One line saying what a detector takes, for ``--data`` that is none of it (the
    classifiers' ``digits``, a missing path, a folder without ``images/``)."""
    base.check_source(source, "detection",
                      f"a detector or localizer is measured on a YOLO folder (with images/ "
                      f"and labels/), a COCO .json file or {DIGIT_SCENES}", ("images",))


def predict(trained, images, batch_size=8) -> list:
    """The model's detections on ``images`` (each its own size), boxes in each image's
    own pixels: ``[{"boxes", "scores", "classes"}]``, what ``evaluate`` takes."""
    from kvision.data.folders import resize

    height, width = trained.image_size
    found = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = np.stack([np.asarray(resize(image, (height, width))) for image in chunk])
        outputs = trained.model.predict(batch, batch_size=batch_size, verbose=0)
        for i, image in enumerate(chunk):
            n = int(np.asarray(outputs["num_detections"][i]))
            scale = np.array([image.shape[1] / width, image.shape[0] / height] * 2)
            found.append({"boxes": np.asarray(outputs["boxes"][i][:n], "float64") * scale,
                          "scores": np.asarray(outputs["scores"][i][:n]),
                          "classes": np.asarray(outputs["classes"][i][:n]).astype("int64")})
    return found


def check_classes(trained, class_names):
    """A model whose saved names differ from the data's is measured against the wrong
    classes: a ValueError naming both."""
    if trained.class_names and tuple(trained.class_names) != tuple(class_names):
        raise ValueError(f"The data's classes {list(class_names)} are not the model's "
                         f"{list(trained.class_names)}.")


def evaluate(trained, data: Labelled, batch_size=8) -> Report:
    """COCO mAP of a detector (:class:`kvision.predict.Trained`) on ``data``."""
    from kvision.metrics.detection import evaluate as coco_map

    if not data.images:
        raise ValueError(f"The evaluation data ({data.description}) holds no images.")
    check_classes(trained, data.class_names)
    detections = predict(trained, data.images, batch_size)
    n = len(data.class_names)
    figures = coco_map(data.ground_truth, detections, num_classes=n)
    classes = np.concatenate([np.asarray(t["classes"], "int64").reshape(-1)
                              for t in data.ground_truth])
    return Report(data.class_names, figures, np.bincount(classes, minlength=n),
                  len(data.images))


# --- the task: training from the command line ------------------------------------------

DIGIT_SCENES_TRAIN = 8000    # training scenes of `kvision train DETECTOR --data digit-scenes`
DIGIT_SCENES_DISTORTION = 0.5  # each training digit warped: 899 source digits, not learnt by heart
MAX_VALIDATION = 500         # held-out images measured after every epoch, at most
SCORE_THRESHOLD = 0.1        # kept in the saved detector: low, since mAP ranks by score


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What :func:`held_out_scenes` and :func:`load_data` read off a model."""

    image_size: tuple
    channels: int
    class_names: tuple = ()


class DetectionTask(base.Task):
    """Detectors (YOLO v1, v3, v3-tiny, Faster and Fast R-CNN): boxes, classes and
    scores; COCO mAP.

    A network trains from the command line when its model module provides
    ``training_dataset(data, model, batch_size=, seed=)``, ``losses(model)`` and
    ``inference_model(model, score_threshold=)``, and optionally
    ``data_arguments(name, box_sizes)`` (builder arguments fitted to the data: YOLO's
    anchors by k-means).
    """

    name, noun, metric, metric_label = "detection", "detector", "map_50", "mAP@0.5"
    export_kind = "detector"
    default_epochs = 12  # 8,000 digit scenes: ~1.3 min an epoch for a width-0.5 tiny

    def default_image_size(self, info, data):
        return 96 if data == DIGIT_SCENES else info.default_size

    def check_trainable(self, name):
        module = self.model_module(name)
        if hasattr(module, "fit_task"):
            return  # its own pipeline (own_fit)
        missing = [f for f in ("training_dataset", "losses", "inference_model")
                   if not hasattr(module, f)]
        if missing:
            raise ValueError(f"{name} cannot be trained from the command line yet (its "
                             f"module {module.__name__} has no {', '.join(missing)}); "
                             f"train it from Python as its docstring shows.")

    def training_data(self, source, *, image_size, channels, seed, max_images=None):
        shape = _Shape((image_size, image_size), channels)
        if source == DIGIT_SCENES:
            return self._digit_scenes(shape, seed, max_images)
        return self._files(source, shape, seed, max_images)

    def _digit_scenes(self, shape, seed, max_images):
        from kvision.data.synthetic import digit_scenes

        side = shape.image_size[0]
        digit_size = tuple(max(4, round(d * side / _SCENE_SIDE)) for d in (12, 32))
        scenes = digit_scenes(max_images or DIGIT_SCENES_TRAIN, image_size=side,
                              digit_size=digit_size, channels=shape.channels,
                              distortion=DIGIT_SCENES_DISTORTION, subset="train",
                              seed=seed + 1)
        validation = load_data(DIGIT_SCENES, shape, seed=seed)
        wh = np.concatenate([b[:, 2:] - b[:, :2] for b in scenes.boxes])
        return base.TrainingData(
            scenes, len(scenes), validation, tuple(scenes.class_names), DIGIT_SCENES,
            f"{DIGIT_SCENES}: {len(scenes)} training scenes (handwriting of the train "
            f"half, warped by {DIGIT_SCENES_DISTORTION}), {validation.description}",
            {"box_sizes": wh})

    def _files(self, source, shape, seed, max_images):
        from kvision.data.box_augment import ResizeWithBoxes
        from kvision.data.detection import load_detection

        _check_source(source)
        data, train, n_train, held, where = base.split_for_training(
            lambda **options: load_detection(source, channels=shape.channels, **options),
            source, seed=seed, max_images=max_images, most_held=MAX_VALIDATION)
        resize = ResizeWithBoxes(*shape.image_size, pad_to_aspect_ratio=False)
        train = train.map(lambda example: resize(example, training=False))
        validation = _labelled(held.take(MAX_VALIDATION), data.class_names, where)
        return base.TrainingData(train, n_train, validation, tuple(data.class_names),
                                 data.source, f"{source}: {images_count(n_train)} for "
                                 f"training, {validation.description}",
                                 {"box_sizes": _box_sizes(train)})

    def build(self, name, data, *, input_shape, model_args, backbone_weights=None,
              regime=None):
        module = self.model_module(name)
        fitted = getattr(module, "data_arguments", None)
        arguments = dict(fitted(name, data.extras["box_sizes"]) if fitted else {})
        arguments.update(model_args)  # what the user says wins
        return super().build(name, data, input_shape=input_shape, model_args=arguments,
                             backbone_weights=backbone_weights, regime=regime)

    def own_fit(self, name):
        """R-CNN's pipeline (selective search, fine-tuning, SVMs, box regression):
        its module's ``fit_task``; None (``model.fit``) for the others."""
        return getattr(self.model_module(name), "fit_task", None)

    def defaults(self, name):
        return dict(getattr(self.model_module(name), "TASK_DEFAULTS", {}))

    def losses(self, name, model):
        return self.model_module(name).losses(model)

    def fit_dataset(self, name, model, data, *, batch_size, seed, shuffle=True):
        return self.model_module(name).training_dataset(
            data.train, model, batch_size=batch_size, shuffle=shuffle, seed=seed)

    def inference_model(self, name, model):
        import inspect

        module = self.model_module(name)
        if hasattr(module, "task_detector"):  # R-CNN: its graph of images (scorer: crops)
            return module.task_detector(model, score_threshold=SCORE_THRESHOLD)
        build = module.inference_model
        thresholds = {"score_threshold": SCORE_THRESHOLD}
        parameters = inspect.signature(build).parameters
        if "objectness_threshold" in parameters:
            thresholds["objectness_threshold"] = SCORE_THRESHOLD  # YOLOv3's gate too
        if "search" in parameters:  # Fast R-CNN: selective search inside the detector
            thresholds["search"] = "fast"
        return build(model, **thresholds)

    def predict_files(self, trained, files, args):
        from kvision.commands.predict import _predict_detections

        return _predict_detections(trained, files, args)

    def answer_line(self, result):
        from kvision.commands.predict import _detections_line

        return _detections_line(result)


def _labelled(dataset, class_names, description):
    """Examples of a detection dataset -> :class:`Labelled` (each image its own size)."""
    images, truth = [], []
    for example in dataset.as_numpy_iterator():
        images.append(example["images"])
        truth.append({"boxes": example["bounding_boxes"]["boxes"],
                      "classes": example["bounding_boxes"]["labels"]})
    return Labelled(images, truth, tuple(class_names),
                    f"{images_count(len(images))} {description}")


def images_count(n) -> str:
    """``"1 image"``, ``"2 images"``."""
    return f"{n} image{'' if n == 1 else 's'}"


def _box_sizes(train, most=2000):
    """(w, h) of the boxes of the first ``most`` training examples, at the model's size."""
    sizes = [example["bounding_boxes"]["boxes"] for example in
             train.take(most).as_numpy_iterator()]
    boxes = np.concatenate([np.reshape(b, (-1, 4)) for b in sizes]) if sizes else \
        np.zeros((0, 4))
    if not len(boxes):
        raise ValueError("The training data holds no boxes: a detector needs some.")
    return boxes[:, 2:] - boxes[:, :2]


class LocalizationTask(DetectionTask):
    """Localizers (a fixed number of boxes per image): measured as detectors."""

    name, noun = "localization", "localizer"


TASK = base.register_task(DetectionTask())
LOCALIZATION = base.register_task(LocalizationTask())

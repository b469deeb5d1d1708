"""Measuring a semantic segmenter: mIoU on labelled scenes (``kvision evaluate``).

The data is ``digit-scenes``: held-out :func:`kvision.data.synthetic.digit_scenes`
label maps (background 0, digit ``d`` as ``1 + d``: 11 classes) at the model's input
size, the scenes :mod:`kvision.tasks.detection` measures detectors on. The model's
label map is the one ``kvision predict`` gives (argmax, or ``p >= 0.5`` for one
sigmoid channel); pixels it does not label (the border of a ``padding="valid"``
U-Net) are left out. The figures are :func:`kvision.metrics.segmentation.evaluate`'s.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvision.tasks import base, detection
from kvision.tasks.detection import (DIGIT_SCENES, DIGIT_SCENES_COUNT, held_out_scenes,
                                    images_count)

UNLABELLED = -1  # a pixel the model gives no class


@dataclasses.dataclass
class Labelled:
    """Images ``(N, H, W, C)`` float32 at the model's input size and their label maps
    ``(N, H, W)``, the ``class_names`` and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    description: str


@dataclasses.dataclass
class Report:
    """Segmentation figures (:func:`kvision.metrics.segmentation.evaluate`'s)."""

    class_names: tuple
    figures: dict
    num_images: int

    @property
    def pixels(self):
        """Ground-truth pixels of each class (the confusion matrix's rows)."""
        return self.figures["confusion_matrix"].sum(1)

    def format(self) -> str:
        """The headline figures, then IoU and Dice per class ("-" for a class neither
        in the data nor predicted, which the means leave out)."""
        f = self.figures
        width = max(12, *(len(n) for n in self.class_names))
        lines = [f"mIoU {f['mean_iou']:.4f}  pixel accuracy {f['pixel_accuracy']:.4f}  "
                 f"mean Dice {f['mean_dice']:.4f}", "",
                 f"{'class':<{width}} {'IoU':>8} {'Dice':>8} {'pixels':>9}"]
        for name, count in zip(self.class_names, self.pixels):
            iou, dsc = f["per_class_iou"].get(name), f["per_class_dice"].get(name)
            lines.append(f"{name:<{width}} {_shown(iou):>8} {_shown(dsc):>8} "
                         f"{int(count):>9}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The same figures for JSON; ``null`` where a class is absent."""
        f = self.figures
        return {"task": "segmentation", "images": self.num_images,
                "mean_iou": f["mean_iou"], "pixel_accuracy": f["pixel_accuracy"],
                "mean_dice": f["mean_dice"],
                "per_class": {name: {"iou": f["per_class_iou"].get(name),
                                     "dice": f["per_class_dice"].get(name),
                                     "pixels": int(count)}
                              for name, count in zip(self.class_names, self.pixels)}}


def _shown(value):
    return "-" if value is None else f"{value:.4f}"


def load_data(source, trained, *, seed=0, max_images=None) -> Labelled:
    """Label maps for a semantic segmenter at the model's input size: ``digit-scenes``,
    a VOC-style folder (``images/`` and ``masks/``), a COCO JSON with masks or
    ``tfds:NAME`` (:func:`kvision.data.segmentation.load_segmentation`); pixels
    labelled :data:`IGNORED` are left out of every figure."""
    if source != DIGIT_SCENES:
        from kvision.data.segmentation import load_segmentation

        _check_source(source)
        data = load_segmentation(source, channels=trained.channels, max_examples=max_images)
        return _labelled(data.dataset.map(_resizer(trained.image_size)), data.class_names,
                         f"of {source}")
    if trained.image_size[0] != trained.image_size[1]:
        raise ValueError(f"{DIGIT_SCENES} are square; the model's input is "
                         f"{trained.image_size}.")
    scenes = held_out_scenes(trained, max_images or DIGIT_SCENES_COUNT, seed)
    return Labelled(scenes.images.astype("float32"), scenes.semantic.astype("int64"),
                    ("background", *scenes.class_names),
                    f"{len(scenes)} held-out scenes of {DIGIT_SCENES} (seed {seed})")


def _check_source(source):
    """One line saying what a segmenter takes, for ``--data`` that is none of it (the
    classifiers' ``digits``, a missing path, a folder without ``images/`` and
    ``masks/``)."""
    base.check_source(source, "segmentation",
                      f"a semantic segmenter is measured on {DIGIT_SCENES}, a VOC-style "
                      f"folder (images/ and masks/), a COCO .json with masks or tfds:NAME",
                      ("images", "masks"))


def predict(trained, images, batch_size=8) -> np.ndarray:
    """The model's label maps ``(N, H, W)`` on ``images`` at its input size,
    :data:`UNLABELLED` where it gives no class (as
    :func:`kvision.predict.segment_images`)."""
    from kvision.predict import _in_input_frame, _label_maps

    probabilities = trained.model.predict(images, batch_size=batch_size, verbose=0)
    return _in_input_frame(_label_maps(probabilities), images.shape[1:3], UNLABELLED)


def evaluate(trained, data: Labelled, batch_size=8) -> Report:
    """mIoU, pixel accuracy and Dice of a semantic segmenter on ``data``; a model with
    another class count, or other saved class names, is a ValueError."""
    from kvision.metrics.segmentation import evaluate as segmentation_figures

    n = len(data.class_names)
    if len(trained.class_names) != n:
        raise ValueError(f"{data.description} has {n} classes "
                         f"({', '.join(data.class_names)}); the model has "
                         f"{len(trained.class_names)}.")
    numbered = tuple(str(i) for i in range(n))  # the names of a model saved without
    if tuple(trained.class_names) not in (numbered, data.class_names):
        raise ValueError(f"The data's classes {list(data.class_names)} are not the model's "
                         f"{list(trained.class_names)}.")
    predicted = predict(trained, data.images, batch_size)
    truth = np.where(predicted == UNLABELLED, UNLABELLED, data.labels)
    figures = segmentation_figures(truth, np.maximum(predicted, 0), n,
                                   ignore_index=UNLABELLED, class_names=data.class_names)
    return Report(data.class_names, figures, len(data.images))


# --- the task: training from the command line ------------------------------------------

DIGIT_SCENES_TRAIN = 2000  # training scenes of `kvision train SEGMENTER --data digit-scenes`
MAX_VALIDATION = 500       # held-out images measured after every epoch, at most
IGNORED = 255              # a label no loss or figure counts (VOC's void)


class SegmentationTask(base.Task):
    """Semantic segmenters (FCN, U-Net, SegNet, DeepLab): a class per pixel; mIoU.

    Trained with per-pixel cross-entropy that skips :data:`IGNORED` pixels; a network
    whose output is smaller than its input (a ``padding="valid"`` U-Net) is trained
    on the centre of each label map.
    """

    name, noun, metric, metric_label = "segmentation", "segmenter", "mean_iou", "mIoU"
    export_labels = False  # per-pixel scores: the names are in the .keras file
    export_kind = "segmenter"
    default_epochs = 40  # 2,000 scenes: ~15 s an epoch for a 16-filter U-Net here
    warmup_epochs = 1  # U-Net has no BatchNorm: at 2e-3 from the first step it can die

    def default_image_size(self, info, data):
        return 64 if data == DIGIT_SCENES else info.default_size

    def training_data(self, source, *, image_size, channels, seed, max_images=None):
        shape = detection._Shape((image_size, image_size), channels)
        if source == DIGIT_SCENES:
            return self._digit_scenes(shape, seed, max_images)
        return self._files(source, shape, seed, max_images)

    def _digit_scenes(self, shape, seed, max_images):
        from kvision.data.synthetic import digit_scenes

        scenes = digit_scenes(max_images or DIGIT_SCENES_TRAIN, image_size=shape.image_size[0],
                              objects=(2, 4), channels=shape.channels, subset="train",
                              seed=seed + 1)
        validation = load_data(DIGIT_SCENES, shape, seed=seed)
        return base.TrainingData(
            scenes.as_dataset(), len(scenes), validation, validation.class_names,
            DIGIT_SCENES, f"{DIGIT_SCENES}: {len(scenes)} training scenes (handwriting of "
            f"the train half), {validation.description}")

    def _files(self, source, shape, seed, max_images):
        from kvision.data.segmentation import load_segmentation

        _check_source(source)
        data, train, n_train, held, where = base.split_for_training(
            lambda **options: load_segmentation(source, channels=shape.channels, **options),
            source, seed=seed, max_images=max_images, most_held=MAX_VALIDATION)
        resize = _resizer(shape.image_size)
        train = train.map(resize)
        validation = _labelled(held.take(MAX_VALIDATION).map(resize), data.class_names,
                               where)
        return base.TrainingData(train, n_train, validation, tuple(data.class_names),
                                 data.source, f"{source}: {images_count(n_train)} for "
                                 f"training, {validation.description}")

    def losses(self, name, model):
        from kvision.losses.segmentation import PixelCrossEntropy

        return PixelCrossEntropy(ignore_index=IGNORED)

    def fit_dataset(self, name, model, data, *, batch_size, seed, shuffle=True):
        import tensorflow as tf

        out_h, out_w = (int(d) for d in model.output_shape[1:3])

        def pair(example):
            labels = example["segmentation_masks"]
            top = (tf.shape(labels)[0] - out_h) // 2
            left = (tf.shape(labels)[1] - out_w) // 2
            return example["images"], labels[top:top + out_h, left:left + out_w]

        dataset = data.train
        if shuffle:
            dataset = dataset.shuffle(min(data.num_train, 4096), seed=seed)
        return (dataset.map(pair, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
                .prefetch(tf.data.AUTOTUNE))

    def predict_files(self, trained, files, args):
        from kvision.commands.predict import _predict_segmentation

        return _predict_segmentation(trained, files, args)

    def answer_line(self, result):
        from kvision.commands.predict import _segmentation_line

        return _segmentation_line(result)


class InstanceSegmentationTask(SegmentationTask):
    """Instance segmenters: a mask, class and score per object; COCO mask AP.
    Mask R-CNN trains here on ``digit-scenes`` (each digit's mask); the two-network
    form (:mod:`kvision.models.segmentation.instance`) trains from Python. Evaluated,
    predicted and exported here."""

    name, noun, metric, metric_label = ("instance_segmentation", "instance segmenter",
                                        "map_50", "mask AP@0.5")
    export_kind = "detector"  # the single-network form answers the detection outputs
    default_epochs = 6
    default_learning_rate = 1e-3

    def default_image_size(self, info, data):
        return 96 if data == DIGIT_SCENES else info.default_size  # the detectors' scenes

    def check_trainable(self, name):
        module = self.model_module(name)
        if not all(hasattr(module, f) for f in ("training_dataset", "losses",
                                                 "inference_model", "mask_loss")):
            raise ValueError(f"{name} trains from Python (kvision.models.segmentation."
                             f"instance: training_targets, losses, fit); kvision train "
                             f"does not train this instance segmenter (it trains "
                             f"mask_rcnn).")

    def training_data(self, source, *, image_size, channels, seed, max_images=None):
        """``digit-scenes`` with each digit's box, class and mask (the detectors'
        scenes and digit sizes)."""
        if source != DIGIT_SCENES:
            raise ValueError(f"--data {source!r}: an instance segmenter trains on "
                             f"{DIGIT_SCENES} (each object's mask) so far.")
        from kvision.data.synthetic import digit_scenes

        shape = detection._Shape((image_size, image_size), channels)
        digit_size = tuple(max(4, round(d * image_size / detection._SCENE_SIDE))
                           for d in (12, 32))
        scenes = digit_scenes(max_images or DIGIT_SCENES_TRAIN, image_size=image_size,
                              digit_size=digit_size, channels=channels, subset="train",
                              distortion=detection.DIGIT_SCENES_DISTORTION, seed=seed + 1)
        validation = self.load_data(DIGIT_SCENES, shape, seed=seed)
        wh = np.concatenate([b[:, 2:] - b[:, :2] for b in scenes.boxes])
        return base.TrainingData(
            scenes, len(scenes), validation, tuple(scenes.class_names), DIGIT_SCENES,
            f"{DIGIT_SCENES}: {len(scenes)} training scenes with masks (handwriting of "
            f"the train half), {validation.description}", {"box_sizes": wh})

    def build(self, name, data, *, input_shape, model_args, backbone_weights=None,
              regime=None):
        fitted = getattr(self.model_module(name), "data_arguments", None)
        arguments = dict(fitted(name, data.extras["box_sizes"]) if fitted else {})
        arguments.update(model_args)  # what the user says wins
        return base.Task.build(self, name, data, input_shape=input_shape,
                               model_args=arguments, backbone_weights=backbone_weights,
                               regime=regime)

    def losses(self, name, model):
        return self.model_module(name).losses(model)

    def fit_dataset(self, name, model, data, *, batch_size, seed, shuffle=True):
        return self.model_module(name).training_dataset(
            data.train, model, batch_size=batch_size, shuffle=shuffle, seed=seed)

    def inference_model(self, name, model):
        # Every instance above 0.05 (mask AP ranks them by score), as torchvision.
        return self.model_module(name).inference_model(model, score_threshold=0.05)

    def load_data(self, source, trained, *, seed=0, max_images=None):
        """Held-out ``digit-scenes`` with each digit's mask (the images at the model's
        input size)."""
        if source != DIGIT_SCENES:
            raise ValueError(f"--data {source!r}: an instance segmenter is measured on "
                             f"{DIGIT_SCENES} (each object's mask).")
        scenes = held_out_scenes(trained, max_images or DIGIT_SCENES_COUNT, seed)
        return detection.Labelled(
            list(scenes.images.astype("float32")),
            [{"boxes": b, "classes": c, "masks": m} for b, c, m in
             zip(scenes.boxes, scenes.classes, scenes.masks)], tuple(scenes.class_names),
            f"{len(scenes)} held-out scenes of {DIGIT_SCENES} (seed {seed})")

    def evaluate(self, trained, data, batch_size=8):
        """COCO mask AP (:func:`kvision.metrics.detection.evaluate`, ``iou_type="segm"``)
        of the model's instances, every one kept (mAP ranks them by score)."""
        from kvision.metrics.detection import evaluate as coco_map
        from kvision.models.segmentation import instance
        from kvision.predict import object_names, segmentation_kind

        names = object_names(trained)
        if tuple(names) not in (data.class_names, tuple(str(i) for i in
                                                        range(len(data.class_names)))):
            raise ValueError(f"The data's classes {list(data.class_names)} are not the "
                             f"model's {list(names)}.")
        runner = trained.model if segmentation_kind(trained.model) == "instances" else \
            instance.inference_model(trained.model, score_threshold=0.0)
        found = instance.predict_instances(runner, np.stack(data.images),
                                           batch_size=batch_size)
        n = len(data.class_names)
        figures = coco_map(data.ground_truth, found, iou_type="segm", num_classes=n)
        classes = np.concatenate([np.asarray(t["classes"], "int64").reshape(-1)
                                  for t in data.ground_truth])
        return detection.Report(data.class_names, figures, np.bincount(classes, minlength=n),
                                len(data.images), task=self.name, figure="mask AP")


def _resizer(image_size):
    """An example -> the same at ``image_size``: bilinear pixels (as predict resizes a
    file), nearest labels."""
    import tensorflow as tf

    def resize(example):
        labels = tf.image.resize(example["segmentation_masks"], image_size,
                                 method="nearest")
        return {"images": tf.image.resize(example["images"], image_size),
                "segmentation_masks": tf.cast(labels, tf.int32)}

    return resize


def _labelled(dataset, class_names, description):
    """Examples at the model's size -> :class:`Labelled`, ignored pixels unlabelled."""
    images, labels = [], []
    for example in dataset.as_numpy_iterator():
        images.append(example["images"])
        labels.append(example["segmentation_masks"][..., 0])
    labels = np.asarray(labels, "int64")
    return Labelled(np.asarray(images, "float32"),
                    np.where(labels == IGNORED, UNLABELLED, labels), tuple(class_names),
                    f"{images_count(len(images))} {description}")


TASK = base.register_task(SegmentationTask())
INSTANCE = base.register_task(InstanceSegmentationTask())

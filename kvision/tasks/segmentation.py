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

from kvision.tasks.detection import DIGIT_SCENES, DIGIT_SCENES_COUNT, held_out_scenes

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
    """Label maps for a semantic segmenter: ``digit-scenes`` (a ValueError for any
    other ``source``)."""
    if source != DIGIT_SCENES:
        raise ValueError(f"--data {source!r} is not segmentation data: a semantic "
                         f"segmenter is measured on {DIGIT_SCENES} (label maps).")
    if trained.image_size[0] != trained.image_size[1]:
        raise ValueError(f"{DIGIT_SCENES} are square; the model's input is "
                         f"{trained.image_size}.")
    scenes = held_out_scenes(trained, max_images or DIGIT_SCENES_COUNT, seed)
    return Labelled(scenes.images.astype("float32"), scenes.semantic.astype("int64"),
                    ("background", *scenes.class_names),
                    f"{len(scenes)} held-out scenes of {DIGIT_SCENES} (seed {seed})")


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

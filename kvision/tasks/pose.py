"""Pose estimation, the task: keypoints of one person per image, measured by PCK.

The data is ``figures`` (the embedded default: :func:`kvision.data.figures.figures`,
articulated figures with exact keypoints in MPII's 16-joint layout; training images
from the "train" subset, held-out ones from "test", whose colours and poses differ)
or keypoint files (:func:`kvision.data.keypoints.load_keypoints`: a COCO keypoints
JSON, MPII-style annotations, iBUG ``.pts`` files, ``tfds:NAME``), each person cut
as MPII's person-centric crops are (:func:`kvision.data.keypoints.person_crops`).

The figure is PCK@0.2 (:func:`kvision.metrics.pose.pck`): a joint is right when it
lies within 0.2 times the person's box's longer side of the truth; joints not
labelled (``v == 0``) are left out. PCKh@0.5 (the head segment) is reported beside
it for MPII's layout.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvision.tasks import base

FIGURES = "figures"
FIGURES_TRAIN = 4000   # training images of `kvision train stacked_hourglass --data figures`
FIGURES_COUNT = 200    # held-out images measured by default
MAX_VALIDATION = 500
ALPHA = 0.2


@dataclasses.dataclass
class Labelled:
    """Person crops at the model's input size: ``images`` ``(N, H, W, C)`` float32,
    ``keypoints`` ``(N, K, 3)`` x, y, v and ``boxes`` ``(N, 4)`` in their pixels, the
    keypoint ``layout`` and where they came from."""

    images: np.ndarray
    keypoints: np.ndarray
    boxes: np.ndarray
    layout: object
    description: str

    @property
    def class_names(self):
        return tuple(self.layout.names)


@dataclasses.dataclass
class Report:
    """PCK figures: ``figures["pck"]`` (mean over labelled joints), ``"per_joint"``,
    and ``"pckh"`` where the layout has a head segment."""

    joint_names: tuple
    figures: dict
    num_images: int

    def format(self) -> str:
        f = self.figures
        head = f"PCK@{ALPHA} {f['pck']:.4f}"
        if f.get("pckh") is not None:
            head += f"  PCKh@0.5 {f['pckh']:.4f}"
        width = max(12, *(len(n) for n in self.joint_names))
        lines = [head, "", f"{'joint':<{width}} {'PCK':>8} {'labelled':>9}"]
        for name, value, count in zip(self.joint_names, f["per_joint"], f["labelled"]):
            shown = "-" if value is None else f"{value:.4f}"
            lines.append(f"{name:<{width}} {shown:>8} {int(count):>9}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        f = self.figures
        return {"task": "pose", "images": self.num_images, "pck": f["pck"],
                "pckh": f.get("pckh"), "alpha": ALPHA,
                "per_joint": {name: {"pck": value, "labelled": int(count)}
                              for name, value, count in zip(self.joint_names,
                                                            f["per_joint"], f["labelled"])}}


def _shape(image_size, channels):
    from kvision.tasks.detection import _Shape

    return _Shape((image_size, image_size), channels)


def _held_out_figures(trained, count, seed):
    from kvision.data.figures import figures

    return figures(count, image_size=int(trained.image_size[0]), subset="test",
                   channels=trained.channels, seed=seed)


def load_data(source, trained, *, seed=0, max_images=None) -> Labelled:
    """Labelled person crops at the model's input size: held-out ``figures`` or
    keypoint files (a ValueError naming the forms otherwise)."""
    if source == FIGURES:
        if trained.image_size[0] != trained.image_size[1]:
            raise ValueError(f"{FIGURES} are square; the model's input is "
                             f"{trained.image_size}.")
        held = _held_out_figures(trained, max_images or FIGURES_COUNT, seed)
        boxes = np.stack([b[0] for b in held.boxes]).reshape(-1, 4)
        return Labelled(held.images.astype("float32"), held.main_keypoints, boxes,
                        held.layout, f"{len(held)} held-out images of {FIGURES} "
                                     f"(seed {seed})")
    from kvision.data.keypoints import load_keypoints, person_crops

    _check_source(source)
    data = load_keypoints(source, channels=trained.channels, max_examples=max_images)
    crops = person_crops(data.dataset, trained.image_size[0])
    return _labelled(crops, data.layout, f"of {source}")


def _check_source(source):
    base.check_source(source, "keypoint",
                      f"a pose estimator is measured on {FIGURES}, a COCO keypoints "
                      f".json, MPII-style annotations or tfds:NAME", ("images",))


def _labelled(crops, layout, description, most=None):
    images, points, boxes = [], [], []
    for example in (crops.take(most) if most else crops).as_numpy_iterator():
        images.append(example["images"])
        points.append(example["keypoints"])
        boxes.append(example["boxes"])
    if not images:
        raise ValueError(f"No person with labelled keypoints {description}.")
    from kvision.tasks.detection import images_count

    return Labelled(np.asarray(images, "float32"), np.asarray(points, "float32"),
                    np.asarray(boxes, "float32"), layout,
                    f"{images_count(len(images))} {description}")


def predict(trained, images, batch_size=16):
    """``(keypoints (N, K, 2), scores (N, K))`` of the inference model on ``images``
    at its input size (other sizes are a ValueError: a fully convolutional network
    would answer them silently, at another scale or not at all)."""
    images = np.asarray(images, "float32")
    size = tuple(trained.image_size)
    if images.ndim != 4 or (None not in size and images.shape[1:3] != size):
        raise ValueError(f"The pose estimator takes images of {size[0]}x{size[1]} "
                         f"(N, H, W, C), got an array of shape {images.shape}: person "
                         f"crops at its size come from load_data.")
    found = trained.model.predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(found["keypoints"]), np.asarray(found["scores"])


def evaluate(trained, data: Labelled, batch_size=16) -> Report:
    """PCK@0.2 by the box's longer side (and PCKh@0.5 for MPII's layout) of a pose
    estimator on ``data``."""
    from kvision.metrics import pose as metrics

    names = tuple(data.layout.names)
    if len(trained.class_names) not in (0, len(names)):
        raise ValueError(f"The data has {len(names)} joints ({', '.join(names)}); the "
                         f"model has {len(trained.class_names)}.")
    predicted, _ = predict(trained, data.images, batch_size)
    visible = data.keypoints[..., 2] > 0
    result = metrics.pck(data.keypoints[..., :2], predicted, visible,
                         metrics.box_sizes(data.boxes), alpha=ALPHA)
    figures = {"pck": float(result["mean"]),
               "per_joint": [None if not np.isfinite(v) else float(v)
                             for v in np.asarray(result["per_joint"], "float64")],
               "labelled": visible.sum(0)}
    if data.layout.name == "mpii":
        head = metrics.head_lengths(data.keypoints, data.layout)
        usable = np.isfinite(head) & (head > 0)
        if usable.any():
            figures["pckh"] = float(metrics.pck(
                data.keypoints[usable, :, :2], predicted[usable], visible[usable],
                head[usable], alpha=0.5)["mean"])
    return Report(names, figures, len(data.images))


class PoseTask(base.Task):
    """Single-person pose (the stacked hourglass): keypoints; PCK@0.2."""

    name, noun, metric, metric_label = "pose", "pose estimator", "pck", f"PCK@{ALPHA}"
    default_data = FIGURES
    default_epochs = 20
    export_kind = "keypoints"  # keypoints and scores, held to parity on the keypoints
    export_labels = False
    class_word = "joints"
    augments = True

    def default_image_size(self, info, data):
        return 64 if data == FIGURES else info.default_size

    def training_data(self, source, *, image_size, channels, seed, max_images=None):
        shape = _shape(image_size, channels)
        if source == FIGURES:
            from kvision.data.figures import figures

            train = figures(max_images or FIGURES_TRAIN, image_size=image_size,
                            channels=channels, subset="train", seed=seed + 1)
            validation = load_data(FIGURES, shape, seed=seed)
            return base.TrainingData(
                train.as_dataset(), len(train), validation, validation.class_names,
                FIGURES, f"{FIGURES}: {len(train)} training images, "
                         f"{validation.description}",
                {"layout": train.layout, "augment": False})
        from kvision.data.keypoints import load_keypoints, person_crops

        _check_source(source)
        data = load_keypoints(source, channels=channels, max_examples=max_images)
        train, held, n_train, _ = base.hold_out(data.dataset, data.num_examples, seed=seed)
        validation = _labelled(person_crops(held, image_size), data.layout,
                               f"held out at random from {source} (seed {seed})",
                               most=MAX_VALIDATION)
        crops = person_crops(train, image_size).map(
            lambda e: {"images": e["images"], "keypoints": e["keypoints"]})
        return base.TrainingData(crops, n_train, validation, validation.class_names,
                                 data.source, f"{source}: {n_train} training images, "
                                 f"{validation.description}", {"layout": data.layout})

    def build(self, name, data, *, input_shape, model_args, backbone_weights=None,
              regime=None):
        from kvision import registry

        base.check_arguments(name, model_args)

        return registry.create(name, keypoints=len(data.class_names),
                               input_shape=input_shape, **model_args)

    def losses(self, name, model):
        return self.model_module(name).losses(model)

    def fit_dataset(self, name, model, data, *, batch_size, seed, shuffle=True,
                    augment=None):
        """Heatmap batches of ``data.train``; with ``augment`` each example is first
        rotated (±30°), scaled (0.75-1.25) and mirrored at random with its keypoints
        (:func:`kvision.data.pose_augment.augment_dataset`, the data's layout's
        left/right swap), drawn anew every epoch from ``seed``. By default keypoint
        files are augmented and ``figures`` are not: the generator already draws every
        figure's pose, size and place at random (the README's measured run)."""
        train = data.train
        if augment is None:
            augment = data.extras.get("augment", True)
        if augment:
            from kvision.data.pose_augment import augment_dataset

            train = augment_dataset(train, seed=seed, layout=data.extras.get("layout"))
        return self.model_module(name).training_dataset(
            train, model, batch_size=batch_size, shuffle=shuffle, seed=seed)

    def inference_model(self, name, model):
        # Flip averaging with the layout's left/right swap (MPII's for 16 joints,
        # COCO's for 17: the model module's defaults).
        return self.model_module(name).inference_model(model, flip=True)

    def predict_files(self, trained, files, args):
        from kvision.commands.predict import _draw_answered, _drawing_paths
        from kvision.predict import _original_size, load_images

        if args.out is not None:
            _drawing_paths(files, args.out)  # a bad --out fails before the model runs
        images, kept, failed = load_images(files, trained, on_error="skip")
        results = [{"path": path, "error": why} for path, why in failed.items()]
        if len(kept):
            points, scores = predict(trained, images)
            height, width = trained.image_size
            for path, xy, score in zip(kept, points, scores):
                h, w = _original_size(path)
                xy = xy * np.array([w / width, h / height])
                results.append({"path": path, "image_size": [h, w], "keypoints": [
                    {"joint": name, "x": float(x), "y": float(y), "score": float(s)}
                    for name, (x, y), s in zip(trained.class_names, xy, score)]})
        _draw_answered(results, files, args.out, _draw)
        return results

    def answer_line(self, result):
        found = result["keypoints"]
        shown = ", ".join(f"{k['joint']} ({k['x']:.0f}, {k['y']:.0f}) {k['score']:.2f}"
                          for k in found)
        return f"{len(found)} keypoints: {shown}"


def _draw(result, target):
    """The skeleton of one answer on its image file, written to ``target`` (PNG)."""
    from kvision.data.pose_layouts import LAYOUTS
    from kvision.visualization.pose import save_skeleton

    names = tuple(k["joint"] for k in result["keypoints"])
    layout = next((lay for lay in LAYOUTS.values() if lay.names == names), None)
    points = np.array([[k["x"], k["y"], k["score"]] for k in result["keypoints"]])
    return save_skeleton(result["path"], points, target, layout=layout)


TASK = base.register_task(PoseTask())

"""Writes ``moved_classes.keras``, ``moved_instance_labeling.keras`` and
``moved_classes.npz``: the fixture of ``tests/test_moved_classes.py``.

It was run once at commit 88ffc55, while ``YOLOv3Loss``, ``YOLOv1Loss``,
``BoxRegressionLoss``, ``SeparationLoss`` and ``InstanceLabeling`` still lived in the
model files (issue 16 moved them to ``kvision/losses/`` and ``kvision/layers/``), so
the files are what a user saved before the move. Running it again now would write
files made by the new code: keep the committed ones.

    python tests/data/make_moved_classes_fixture.py
"""

import pathlib

import keras
import numpy as np

from kvision.layers.yolo import YOLOv1Output, YOLOv3Output
from kvision.models.detection import localization, yolo, yolo_v1
from kvision.models.segmentation import instance

HERE = pathlib.Path(__file__).parent
SIZE = 16
ANCHORS = [[4.0, 6.0], [10.0, 8.0]]
CLASSES = 2


def detector_model():
    """A tiny model with one output per moved loss (a few hundred weights)."""
    inputs = keras.Input((SIZE, SIZE, 3), name="images")
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", activation="relu",
                            name="stem")(inputs)
    yolo3 = keras.layers.Conv2D(len(ANCHORS) * (5 + CLASSES), 1, name="yolov3_conv")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    yolo1 = keras.layers.Dense(2 * 2 * (5 * 2 + CLASSES), name="yolov1_fc")(pooled)
    return keras.Model(inputs, {
        "yolov3": YOLOv3Output(ANCHORS, CLASSES, name="yolov3")(yolo3),
        "yolov1": YOLOv1Output(2, 2, CLASSES, name="yolov1")(yolo1),
        "boxes": keras.layers.Dense(4, activation="sigmoid", name="boxes")(pooled),
        "separation": keras.layers.Conv2D(1, 1, activation="sigmoid",
                                          name="separation")(inputs),
    }, name="moved_classes")


def targets(rng):
    """Two images' targets, encoded by the model files' own encoders."""
    boxes = np.array([[[1, 2, 7, 9], [8, 8, 15, 14]], [[3, 3, 12, 10], [0, 0, 5, 4]]],
                     "float32")
    labels = np.array([[0, 1], [1, -1]], "int32")
    yolo3 = [yolo.encode_targets(b, l, anchors=[np.array(ANCHORS, "float32")],
                                 grid_sizes=[(4, 4)], image_size=(SIZE, SIZE),
                                 classes=CLASSES)[0] for b, l in zip(boxes, labels)]
    yolo1 = [yolo_v1.encode_targets(b, l, grid=2, image_size=(SIZE, SIZE),
                                    classes=CLASSES) for b, l in zip(boxes, labels)]
    return {"yolov3": np.stack(yolo3), "yolov1": np.stack(yolo1),
            "boxes": np.array([[0.5, 0.4, 0.3, 0.2], [0.0, 0.0, 0.0, 0.0]], "float32"),
            "separation": (rng.uniform(size=(2, SIZE, SIZE, 1)) < 0.1).astype("float32")}


def labeling_model():
    """Probabilities and a separation map in, :class:`InstanceLabeling`'s dict out."""
    probabilities = keras.Input((12, 12, 3), name="probabilities")
    separation = keras.Input((12, 12, 1), name="separation_map")
    labeling = instance.InstanceLabeling(min_area=2, grow=2, max_detections=4,
                                         name="labeling")
    return keras.Model([probabilities, separation], labeling(probabilities, separation),
                       name="moved_instance_labeling")


def labeling_inputs():
    """Two touching squares of class 1 cut by a separation line, one of class 2."""
    classes = np.zeros((1, 12, 12), "int32")
    classes[0, 1:6, 1:5] = 1
    classes[0, 1:6, 5:10] = 1
    classes[0, 8:11, 2:6] = 2
    probabilities = np.full((1, 12, 12, 3), 0.1, "float32")
    np.put_along_axis(probabilities, classes[..., None], 0.8, axis=-1)
    separation = np.zeros((1, 12, 12, 1), "float32")
    separation[0, 1:6, 4:6] = 0.9
    return probabilities, separation


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = detector_model()
    model.compile(optimizer="adam", loss={
        "yolov3": yolo.YOLOv3Loss(ANCHORS, (SIZE, SIZE), name="yolov3_loss"),
        "yolov1": yolo_v1.YOLOv1Loss(2, lambda_noobj=0.25),
        "boxes": localization.BoxRegressionLoss("smooth_l1", beta=0.1),
        "separation": instance.SeparationLoss(positive_weight=3.0)})
    images = rng.uniform(0, 1, (2, SIZE, SIZE, 3)).astype("float32")
    y_true = targets(rng)
    y_pred = {k: keras.ops.convert_to_numpy(v) for k, v in model(images).items()}
    losses = {k: float(model.loss[k](y_true[k], y_pred[k])) for k in y_true}
    model.save(HERE / "moved_classes.keras")

    labeling = labeling_model()
    probabilities, separation = labeling_inputs()
    found = labeling([probabilities, separation])
    labeling.save(HERE / "moved_instance_labeling.keras")

    np.savez_compressed(HERE / "moved_classes.npz", images=images,
             **{f"true/{k}": v for k, v in y_true.items()},
             **{f"pred/{k}": v for k, v in y_pred.items()},
             **{f"loss/{k}": np.float32(v) for k, v in losses.items()},
             probabilities=probabilities, separation=separation,
             **{f"instances/{k}": keras.ops.convert_to_numpy(v) for k, v in found.items()})
    print(losses, {k: keras.ops.convert_to_numpy(v).tolist() for k, v in found.items()
                   if k != "instance_map"})


if __name__ == "__main__":
    main()

"""Training a registered classifier with plain ``model.fit``: the library behind
``kvision train``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import keras
import numpy as np

from kvision import registry
from kvision.data import augment as augment_lib

DATASETS = ("digits",)


@dataclasses.dataclass
class TrainResult:
    """What a training run produced and measured."""

    model: keras.Model
    test_accuracy: float
    test_loss: float
    seconds: float
    keras_path: str | None
    export_path: str | None
    history: dict


def load_dataset(data, *, image_size, channels, seed=0):
    """``(x_train, y_train), (x_test, y_test), class_names`` for a dataset name."""
    if data == "digits":
        from kvision.data import digits

        train, test = digits.load_digits(image_size=image_size, channels=channels,
                                         seed=seed)
        return train, test, digits.CLASS_NAMES
    raise ValueError(f"Unknown dataset {data!r}; expected one of {DATASETS}.")


def _save_atomically(model, path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        staged = os.path.join(tmp, os.path.basename(path))
        model.save(staged)
        os.replace(staged, path)
    return path


def train_classifier(model_name="lenet5", data="digits", *, epochs=30, batch_size=32,
                     learning_rate=3e-3, augment=True, image_size=None, out_dir=None,
                     export=True, seed=0, verbose=1):
    """Train ``model_name`` from scratch on ``data``; report held-out top-1 accuracy.

    Adam with a cosine-decayed learning rate (``learning_rate`` down to 0 over the
    run) and, with ``augment``, random shifts/rotations/zooms of the training images
    (Keras preprocessing layers in the tf.data pipeline; the model itself has none).

    The model is saved as ``<out_dir>/<model_name>.keras`` and, with ``export``,
    as a TensorFlow Serving SavedModel in ``<out_dir>/<next version>/``.
    ``out_dir`` defaults to ``saved_models/<model_name>``; ``None`` and
    ``out_dir=False`` saves nothing.
    """
    info = registry.get_info(model_name)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    size = image_size or max(info.min_size, 32)
    (x_train, y_train), (x_test, y_test), class_names = load_dataset(
        data, image_size=size, channels=info.input_channels, seed=seed)
    keras.utils.set_random_seed(seed)
    model = registry.create(model_name, input_shape=x_train.shape[1:],
                            classes=len(class_names))
    steps = epochs * -(-len(x_train) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    augmentation = augment_lib.geometric_augmentation(seed=seed) if augment else None
    train_ds = augment_lib.training_dataset(x_train, y_train, batch_size, augmentation,
                                            seed=seed)
    start = time.perf_counter()
    history = model.fit(train_ds, epochs=epochs, validation_data=(x_test, y_test), shuffle=False,
                        verbose=verbose)
    seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    keras_path = export_path = None
    if out_dir is None:
        out_dir = os.path.join("saved_models", model_name)
    if out_dir:
        keras_path = _save_atomically(model, os.path.join(out_dir, f"{model_name}.keras"))
        if export:
            from kvision.export import saved_model

            export_path = saved_model(model, out_dir, check_inputs=x_test[:8])
    return TrainResult(model=model, test_accuracy=float(test_accuracy),
                       test_loss=float(test_loss), seconds=seconds, keras_path=keras_path,
                       export_path=export_path,
                       history={k: [float(v) for v in vals]
                                for k, vals in history.history.items()})


def top1_accuracy(model, x, y, batch_size=256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(y)))

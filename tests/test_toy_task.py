"""A task of one's own runs through ``kvision train``, ``evaluate``, ``predict`` and
``export`` by the same code as kvision's tasks (README, "Adding a task").

The toy task is counting: how many digits a scene holds. Its module (this file) is a
:class:`kvision.tasks.base.Task` with its data adapter, loss, metric and answer line,
and a network registered with ``task="counting"``: nothing else in kvision changes.
"""

import dataclasses
import json

import keras
import numpy as np
import pytest

from kvision import cli, registry
from kvision.data.synthetic import digit_scenes
from kvision.tasks import TaskModel, base

pytestmark = pytest.mark.xdist_group("toy_task")
SIZE = 32


# --- the model module: a registered network of the task ------------------------------

def ToyCounter(classes=1, input_shape=None, name="toy_counter"):
    """Pixels -> the number of digits: two convolutions, global pooling, one ReLU
    unit. ``classes`` is the task's one output."""
    inputs = keras.Input(input_shape or (SIZE, SIZE, 3), name="images")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    count = keras.layers.Dense(classes, activation="relu", name="count")(x)
    return TaskModel(inputs, count, task="counting", name=name)


# --- the task module ----------------------------------------------------------------

@dataclasses.dataclass
class Counted:
    """Labelled data of the task: images and their digit counts."""

    images: np.ndarray
    counts: np.ndarray
    description: str


@dataclasses.dataclass
class CountReport:
    """The task's report: ``figures["count_accuracy"]``, the share counted right."""

    figures: dict

    def format(self):
        return (f"count accuracy {self.figures['count_accuracy']:.4f}  mean absolute "
                f"error {self.figures['mae']:.4f}")

    def as_dict(self):
        return {"task": "counting", **self.figures}


def _counted(count, seed, subset):
    scenes = digit_scenes(count, image_size=SIZE, digit_size=(6, 12), objects=(1, 3),
                          subset=subset, seed=seed)
    counts = np.array([len(c) for c in scenes.classes], "float32")
    return Counted(scenes.images.astype("float32"), counts,
                   f"{count} {subset} scenes (seed {seed})")


class CountingTask(base.Task):
    name, noun, metric, metric_label = "counting", "counter", "count_accuracy", "count acc."
    default_epochs, default_batch_size = 2, 16

    def default_image_size(self, info, data):
        return SIZE

    def training_data(self, source, *, image_size, channels, seed, max_images=None):
        import tensorflow as tf

        train = _counted(max_images or 64, seed + 1, "train")
        return base.TrainingData(
            tf.data.Dataset.from_tensor_slices((train.images, train.counts[:, None])),
            len(train.counts), self.load_data(source, None, seed=seed), ("count",),
            source, f"{source}: {train.description}")

    def losses(self, name, model):
        return "mse"

    def fit_dataset(self, name, model, data, *, batch_size, seed, shuffle=True):
        return data.train.shuffle(64, seed=seed).batch(batch_size)

    def load_data(self, source, trained, *, seed=0, max_images=None):
        if source != "digit-scenes":
            raise ValueError(f"counting data is digit-scenes, got {source!r}")
        return _counted(max_images or 32, seed + 100, "test")

    def evaluate(self, trained, data, batch_size=8):
        counts = trained.model.predict(data.images, batch_size=batch_size, verbose=0)[:, 0]
        return CountReport({"count_accuracy": float(np.mean(np.round(counts) == data.counts)),
                            "mae": float(np.mean(np.abs(counts - data.counts)))})

    def predict_files(self, trained, files, args):
        from kvision.predict import load_images

        images, kept, _ = load_images(files, trained)
        counts = trained.model.predict(images, verbose=0)[:, 0]
        return [{"path": path, "count": float(c)} for path, c in zip(kept, counts)]

    def answer_line(self, result):
        return f"{result['count']:.2f} digits"


@pytest.fixture(scope="module")
def counting():
    """The task and its network, registered for this module's tests, then removed."""
    task = base.register_task(CountingTask())
    registry.register("toy_counter", task="counting", family="toy", year=2026,
                      paper="(a test)", default_size=SIZE, default_classes=1)(ToyCounter)
    yield task
    registry.unregister("toy_counter")
    base.unregister_task("counting")


def _main(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_a_task_of_ones_own_trains_evaluates_predicts_and_exports(counting, tmp_path,
                                                                  capsys):
    run = tmp_path / "run"
    out = _main(["train", "toy_counter", "--out", str(run), "--no-export"], capsys)
    assert "held-out count acc.:" in out
    logged = float(out.split("held-out count acc.:")[1].split()[0])
    rows = (run / "training_log.csv").read_text().splitlines()
    assert rows[0].split(",") == ["epoch", "loss", "val_count_accuracy"] and len(rows) == 3

    # evaluate: the task's own figure, equal to what training logged last
    measured = json.loads(_main(["evaluate", str(run), "--data", "digit-scenes", "--json"],
                                capsys))
    assert measured["task"] == "counting"
    assert measured["count_accuracy"] == pytest.approx(logged, abs=1e-4)
    model = keras.saving.load_model(run / "toy_counter.keras", safe_mode=True)
    data = counting.load_data("digit-scenes", None)
    expected = np.mean(np.round(model.predict(data.images, verbose=0)[:, 0]) == data.counts)
    assert measured["count_accuracy"] == pytest.approx(expected)

    # predict: the task's answer line for an image file
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(data.images[0].astype("uint8")).save(image)
    answer = _main(["predict", str(run), str(image)], capsys)
    count = float(model.predict(data.images[:1], verbose=0)[0, 0])
    assert answer.strip() == f"{image}: {count:.2f} digits"

    # export: every output as it is, checked against Keras to float32 error
    _main(["export", str(run), "--format", "savedmodel", "--out", str(tmp_path / "serve")],
          capsys)
    import tensorflow as tf

    from kvision.exported import from_saved_model

    signature = tf.saved_model.load(str(tmp_path / "serve" / "1")).signatures[
        "serving_default"]
    assert set(signature.structured_outputs) == {"count"}  # as it is: no top-k

    served = from_saved_model(str(tmp_path / "serve" / "1"))
    got = np.asarray(served.predict(data.images[:4]))
    np.testing.assert_allclose(got.reshape(-1),
                               model.predict(data.images[:4], verbose=0).reshape(-1),
                               rtol=1e-5, atol=1e-5)


def test_an_unknown_task_is_refused_by_name():
    with pytest.raises(ValueError, match="Unknown task 'sorting'"):
        base.get_task("sorting")

"""A model says its task: TaskModel carries it in its config; old files fall back to
their outputs."""

import numpy as np
import keras
import pytest

from kvision import registry
from kvision.predict import Trained
from kvision.tasks import TASKS, TaskModel, check_inference_model, task_of, with_task


def _per_pixel(classes=3):
    inputs = keras.Input((8, 8, 1), name="images")
    outputs = keras.layers.Conv2D(classes, 1, activation="softmax", name="scores")(inputs)
    return keras.Model(inputs, outputs, name="tiny_segmenter")


def _boxes():
    """A model answering the detector protocol (what a localizer's inference model
    answers too)."""
    inputs = keras.Input((8, 8, 1), name="images")
    flat = keras.layers.Flatten()(inputs)
    outputs = {"boxes": keras.layers.Reshape((1, 4))(keras.layers.Dense(4)(flat)),
               "scores": keras.layers.Dense(1, activation="sigmoid")(flat),
               "classes": keras.layers.Dense(1)(flat),
               "num_detections": keras.layers.Dense(1)(flat)}
    return keras.Model(inputs, outputs, name="tiny_localizer")


def test_the_task_travels_through_a_keras_file_and_a_clone(tmp_path):
    model = with_task(_per_pixel(), "segmentation")
    assert isinstance(model, TaskModel) and model.name == "tiny_segmenter"
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, TaskModel) and task_of(loaded) == "segmentation"
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    clone = keras.models.clone_model(model)  # Keras rebuilds it without the task
    assert isinstance(clone, TaskModel) and task_of(clone) == "segmentation"
    # A task its outputs would not tell: the file carries it.
    with_task(_boxes(), "localization").save(tmp_path / "l.keras")
    assert task_of(keras.saving.load_model(tmp_path / "l.keras")) == "localization"


def test_the_model_is_asked_not_its_outputs():
    """The same outputs mean a detector by inspection and a localizer by the model's
    own word: the model's word wins."""
    plain = _boxes()
    assert task_of(plain) == "detection"           # a file saved before tasks travelled
    localizer = with_task(plain, "localization")
    assert task_of(localizer) == "localization"
    trained = Trained(localizer, ("digit",), "tiny.keras")
    assert trained.detector and not trained.segmenter
    assert trained.describe().startswith("tiny.keras: localizer")


def test_old_files_fall_back_to_their_outputs():
    assert task_of(_per_pixel()) == "segmentation"
    inputs = keras.Input((4,))
    assert task_of(keras.Model(inputs, keras.layers.Dense(3)(inputs))) == "classification"
    sequence = keras.Input((5, 4))
    with pytest.raises(ValueError, match="Cannot tell the task"):
        task_of(keras.Model(sequence, keras.layers.Dense(2)(sequence)))  # rank 3


def test_a_training_model_is_not_taken_for_its_inference_model():
    raw = with_task(_per_pixel(classes=9), "detection")  # YOLO-like raw grid
    with pytest.raises(ValueError, match="training model.*inference model"):
        check_inference_model(raw)
    assert check_inference_model(with_task(_boxes(), "detection")) == "detection"


def test_tasks_are_checked():
    with pytest.raises(ValueError, match="Unknown task 'counting'"):
        with_task(_per_pixel(), "counting")
    with pytest.raises(ValueError, match="task must be one of"):
        registry.register("kv_test_bad_task", task="segmentaton", family="x", year=2000,
                          paper="x")(lambda: None)
    assert {registry.get_info(n).task for n in registry.list_models()} <= set(TASKS)

"""The main job: LeNet-5 on the embedded digits, >= 97% held-out top-1 in < 2 min."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision.data import load_digits
from kvision.train import top1_accuracy, train_classifier


@pytest.mark.slow
def test_lenet5_reaches_97_percent_on_digits_and_exports(tmp_path):
    out = tmp_path / "lenet5"
    result = train_classifier("lenet5", "digits", out_dir=str(out), verbose=0)
    assert result.test_accuracy >= 0.97, result.test_accuracy
    assert result.seconds < 120, f"training took {result.seconds:.0f} s"

    # The saved .keras file loads safely and scores the same on the held-out split.
    _, (x_test, y_test) = load_digits()
    loaded = keras.saving.load_model(result.keras_path, safe_mode=True)
    assert top1_accuracy(loaded, x_test, y_test) == pytest.approx(result.test_accuracy)

    # The TF Serving export is version 1 and answers like the Keras model.
    assert result.export_path == str(out / "1")
    serving = tf.saved_model.load(result.export_path).signatures["serving_default"]
    (probabilities,) = serving(tf.constant(x_test[:16])).values()
    np.testing.assert_allclose(probabilities.numpy(), loaded.predict(x_test[:16], verbose=0),
                               atol=1e-5)


def test_bad_training_arguments():
    with pytest.raises(ValueError, match="Unknown dataset"):
        train_classifier("lenet5", "imagenet-on-a-floppy", out_dir=False)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier("lenet5", epochs=0, out_dir=False)
    with pytest.raises(ValueError, match="Unknown model"):
        train_classifier("lenet6", out_dir=False)


def test_short_run_saves_without_export(tmp_path):
    result = train_classifier("lenet5", epochs=1, out_dir=str(tmp_path), export=False,
                              verbose=0)
    assert os.path.isfile(result.keras_path) and result.export_path is None
    assert sorted(os.listdir(tmp_path)) == ["lenet5.keras"]
    assert set(result.history) >= {"loss", "accuracy", "val_accuracy"}

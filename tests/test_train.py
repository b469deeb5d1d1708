"""The main job (LeNet-5 on the embedded digits, >= 97% held-out top-1) and what every
training run writes. How long it takes is not asserted here: a wall-clock bound in a
test measures the machine and its other load, not kvision."""

import csv
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

    # The saved .keras file loads safely and scores the same on the held-out split.
    _, (x_test, y_test) = load_digits()
    loaded = keras.saving.load_model(result.keras_path, safe_mode=True)
    assert top1_accuracy(loaded, x_test, y_test) == pytest.approx(result.test_accuracy)

    # The TF Serving export is version 1, answers like the Keras model, names classes.
    assert result.export_path == str(out / "1")
    serving = tf.saved_model.load(result.export_path).signatures["serving_default"]
    outputs = serving(images=tf.constant(x_test[:16]))
    np.testing.assert_allclose(outputs["probabilities"].numpy(),
                               loaded.predict(x_test[:16], verbose=0), atol=1e-5)
    assert (out / "class_names.txt").read_text().split() == [str(i) for i in range(10)]

    # One CSV row per epoch, its plot, the last checkpoint; the backup is gone once
    # the run finished (it only exists to resume an interrupted run).
    with open(out / "training_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(30))
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(result.test_accuracy, abs=1e-6)
    png = tf.io.decode_png(tf.io.read_file(str(out / "training_curves.png")))
    assert png.shape[0] > 100 and png.shape[1] > 300
    assert (out / "checkpoints" / "last.keras").is_file()
    assert not (out / "backup").exists()


def test_bad_training_arguments():
    with pytest.raises(ValueError, match="imagenet-on-a-floppy"):
        train_classifier("lenet5", "imagenet-on-a-floppy", out_dir=False)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier("lenet5", epochs=0, out_dir=False)
    with pytest.raises(ValueError, match="Unknown model"):
        train_classifier("lenet6", out_dir=False)
    with pytest.raises(ValueError, match="strategy"):
        train_classifier("lenet5", strategy="telepathy", out_dir=False)
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        train_classifier("nothing.keras", out_dir=False)


def test_short_run_writes_the_run_directory(tmp_path):
    result = train_classifier("lenet5", epochs=1, out_dir=str(tmp_path), export=False,
                              verbose=0)
    assert os.path.isfile(result.keras_path) and result.export_path is None
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "class_names.txt", "lenet5.keras",
                                            "run.json", "training_curves.png",
                                            "training_log.csv"]
    assert set(result.history) >= {"loss", "accuracy", "val_accuracy"}
    assert result.trainable_params == 61_706  # LeNet-5, all of it trains
    assert result.seconds_per_epoch > 0 and result.initial_epoch == 0


def test_mixed_precision_trains_and_exports_float32(tmp_path):
    """mixed_float16 compute with float32 outputs; the export is a float32 graph that
    answers as the mixed model does (to float16's precision)."""
    result = train_classifier("lenet5", epochs=1, steps_per_epoch=8, out_dir=str(tmp_path),
                              mixed_precision=True, verbose=0)
    model = result.model
    assert keras.config.dtype_policy().name == "float32"  # restored after the run
    assert any(layer.compute_dtype == "float16" for layer in model.layers)
    assert model.output.dtype == "float32"
    assert result.test_accuracy > 0.3  # 8 steps of 32 images already learn something
    _, (x_test, _) = load_digits()
    serving = tf.saved_model.load(result.export_path).signatures["serving_default"]
    assert serving.structured_input_signature[1]["images"].dtype == tf.float32
    exported = serving(images=tf.constant(x_test[:64]))["probabilities"].numpy()
    keras_out = model.predict(x_test[:64], verbose=0)
    np.testing.assert_allclose(exported, keras_out, atol=2e-2)
    assert np.mean(exported.argmax(-1) == keras_out.argmax(-1)) >= 0.95


def test_xla_compiled_training_matches_the_plain_step(tmp_path):
    """--jit gives the same training (XLA only fuses the same computation)."""
    runs = [train_classifier("lenet5", epochs=1, steps_per_epoch=6, out_dir=False,
                             jit_compile=jit, augment=False, verbose=0)
            for jit in (False, True)]
    assert runs[1].model.jit_compile is True and runs[0].model.jit_compile is False
    assert runs[1].history["loss"][0] == pytest.approx(runs[0].history["loss"][0], rel=1e-3)
    for a, b in zip(runs[0].model.get_weights(), runs[1].model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_backbone_weights_none_is_transfer_on_a_random_backbone():
    """--backbone-weights none: transfer learning's layout (frozen backbone, new head)
    on a randomly initialized backbone, never a download."""
    result = train_classifier("lenet5", epochs=1, steps_per_epoch=2, out_dir=False,
                              backbone_weights="none", verbose=0)
    model = result.model
    backbone = model.get_layer("backbone")
    assert not any(w.trainable for w in backbone.weights)
    # Only the new output trains: on the average-pooled 16 maps of the backbone
    # (include_top=False ends LeNet-5 at S4).
    assert result.trainable_params == 16 * 10 + 10

"""Training diagnostics (issue 20): the per-layer gradient norms the callback records
during ``fit``, and ``kvision train --clipnorm / --clipvalue``."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision import cli
from kvision.callbacks import GradientNorms, plot_gradient_norms


def _model(seed=0):
    """Conv -> BatchNorm -> ReLU -> nested Dense block -> softmax: a BatchNorm (whose
    training-mode statistics must not move) and a nested model (inlined by name)."""
    keras.utils.set_random_seed(seed)
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, keras.layers.Dense(8, activation="tanh", name="hidden")(
        inner_in), name="head")
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, name="fc")(x)
    x = inner(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss="sparse_categorical_crossentropy")
    return model


def _data(n=40, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 1)).astype("float32"), rng.integers(0, 3, n)


def _direct_norms(model, x, y):
    """The paper-free definition: one GradientTape on the cross-entropy, each
    layer's weights' gradients concatenated, L2 norm in float64."""
    layers = {"conv": model.get_layer("conv"), "bn": model.get_layer("bn"),
              "fc": model.get_layer("fc"), "hidden": model.get_layer("head").get_layer(
                  "hidden"), "out": model.get_layer("out")}
    moving = [v.numpy() for v in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        probabilities = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))
    for v, value in zip(model.non_trainable_variables, moving):
        v.assign(value)
    grads = tape.gradient(loss, [w for layer in layers.values()
                                 for w in layer.trainable_weights])
    flat, start = {}, 0
    for name, layer in layers.items():
        mine = grads[start:start + len(layer.trainable_weights)]
        start += len(layer.trainable_weights)
        flat[name] = np.sqrt(sum(np.sum(np.asarray(g, "float64") ** 2) for g in mine))
    return flat


def test_the_callback_records_the_norms_a_gradient_tape_gives_during_fit(tmp_path):
    x, y = _data()
    held = (x[:16], y[:16])
    model = _model()
    expected_first = _direct_norms(model, *held)
    norms = GradientNorms(held, every=2)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[norms])
    # 5 batches an epoch, 10 in all: step 0 (before training) and every 2nd batch
    assert norms.steps == [0, 2, 4, 6, 8, 10]
    assert list(norms.norms) == ["conv", "bn", "fc", "hidden", "out"]  # input to output
    expected_last = _direct_norms(model, *held)
    for name in expected_first:
        # the float32 gradients summed in float64: rounding relative to the norm
        assert norms.norms[name][0] == pytest.approx(expected_first[name], rel=1e-5)
        assert norms.norms[name][-1] == pytest.approx(expected_last[name], rel=1e-5)
    # training moved the weights: the last record is not the first one repeated
    assert any(abs(norms.norms[n][-1] - norms.norms[n][0]) > 1e-3 * norms.norms[n][0]
               for n in norms.norms)
    path = plot_gradient_norms(norms, tmp_path / "norms.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_recording_leaves_the_batchnorm_statistics_and_the_training_alone():
    x, y = _data()
    plain, watched = _model(), _model()
    plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    watched.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                callbacks=[GradientNorms((x[:16], y[:16]), every=1)])
    for a, b in zip(plain.weights, watched.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        GradientNorms(_data(), every=0)
    with pytest.raises(ValueError, match="batch must be"):
        GradientNorms(_data()[0], every=1)
    with pytest.raises(ValueError, match="No gradient norms recorded"):
        plot_gradient_norms({"steps": [], "norms": {}}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --- kvision train --clipnorm / --clipvalue ------------------------------------------

@pytest.mark.parametrize("args, option, value", [
    (["lenet5", "--steps-per-epoch", "2", "--clipnorm", "0.5"], "clipnorm", 0.5),
    (["unet", "--data", "digit-scenes", "--image-size", "32", "--max-images", "16",
      "--model-arg", "filters=4", "--clipvalue", "0.25"], "clipvalue", 0.25),
], ids=["classifier", "segmenter"])
def test_clipping_reaches_the_optimizer_of_the_saved_checkpoint(args, option, value,
                                                                tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", *args, "--epochs", "1", "--no-export", "--out", str(run)]) == 0
    last = keras.saving.load_model(run / "checkpoints" / "last.keras", safe_mode=True)
    other = {"clipnorm": "clipvalue", "clipvalue": "clipnorm"}[option]
    assert getattr(last.optimizer, option) == value
    assert getattr(last.optimizer, other) is None
    assert json.loads((run / "run.json").read_text())["state"] == "finished"


@pytest.mark.parametrize("args, message", [
    (["lenet5", "--clipnorm", "0"], "--clipnorm: expected a number above 0, got '0'"),
    (["lenet5", "--clipvalue", "-1"], "--clipvalue: expected a number above 0, got '-1'"),
    (["unet", "--clipnorm", "nan"], "--clipnorm: expected a number above 0, got 'nan'"),
    (["unet", "--clipnorm", "1", "--clipvalue", "1"], "give one of the two"),
])
def test_non_positive_clipping_is_refused_before_any_data_or_folder(args, message,
                                                                    tmp_path, capsys):
    try:
        code = cli.main(["train", *args, "--out", str(tmp_path / "run")])
    except SystemExit as exit:  # argparse's own refusal of a value its type rejects
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()

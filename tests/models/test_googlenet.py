"""GoogLeNet: the count from the paper's Table 1, the auxiliary classifiers."""

import keras
import numpy as np
import pytest

import kvision
from kvision.models.classification.googlenet import LOSS_WEIGHTS, inference_model
from kvision.testing import counted_params

# Table 1 of the paper: (input channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5,
# pool proj) of inception 3a ... 5b.
TABLE_1 = [(192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64),
           (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64),
           (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
           (528, 256, 160, 320, 32, 128, 128), (832, 256, 160, 320, 32, 128, 128),
           (832, 384, 192, 384, 48, 128, 128)]


def basic_conv(cin, cout, k):
    """Trainable parameters of conv (no bias) + BatchNorm (gamma, beta)."""
    return k * k * cin * cout + 2 * cout


def aux_head(cin, classes):
    return basic_conv(cin, 128, 1) + (2048 * 1024 + 1024) + (1024 * classes + classes)


def googlenet_count(classes=1000, five=3):
    stem = basic_conv(3, 64, 7) + basic_conv(64, 64, 1) + basic_conv(64, 192, 3)
    modules = sum(basic_conv(cin, c1, 1) + basic_conv(cin, c3r, 1)
                  + basic_conv(c3r, c3, 3) + basic_conv(cin, c5r, 1)
                  + basic_conv(c5r, c5, five) + basic_conv(cin, pool, 1)
                  for cin, c1, c3r, c3, c5r, c5, pool in TABLE_1)
    return stem + modules + 1024 * classes + classes


def test_count_follows_table_1_with_torchvision_3x3_in_the_5x5_branch():
    assert googlenet_count() == 6_624_904  # torchvision googlenet(aux_logits=False)
    model = kvision.models.GoogLeNet(input_shape=(32, 32, 3), classes=10)
    assert counted_params(model, "trainable") == googlenet_count(classes=10)
    # The paper's real 5x5 kernels would be 16 * c5r * c5 more per module.
    assert googlenet_count(five=5) - googlenet_count() == sum(
        16 * row[4] * row[5] for row in TABLE_1)


def test_aux_classifiers_count_and_outputs():
    model = kvision.models.GoogLeNet(aux_logits=True)
    assert model.output_names == ["predictions", "aux1", "aux2"]
    assert [tuple(s) for s in model.output_shape] == [(None, 1000)] * 3
    expected = googlenet_count() + aux_head(512, 1000) + aux_head(528, 1000)
    assert counted_params(model, "trainable") == expected == 13_004_888
    # Without the top there is no auxiliary head either: one feature output.
    features = kvision.models.GoogLeNet(include_top=False, aux_logits=True,
                                        input_shape=(96, 96, 3), pooling="avg")
    assert features.output_shape == (None, 1024)


def test_aux_heads_refuse_too_small_inputs():
    with pytest.raises(ValueError, match="at least 65x65"):
        kvision.models.GoogLeNet(aux_logits=True, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="fixed input size"):
        kvision.models.GoogLeNet(aux_logits=True, input_shape=(None, None, 3))
    model = kvision.models.GoogLeNet(aux_logits=True, input_shape=(65, 65, 3),
                                     classes=5)
    assert len(model.outputs) == 3


def _aux_model():
    keras.utils.set_random_seed(0)
    return kvision.models.GoogLeNet(aux_logits=True, input_shape=(96, 96, 3),
                                    classes=4)


def test_fit_step_with_loss_weights_trains_the_aux_heads():
    model = _aux_model()
    # One step, eagerly: the loss weighting is Keras' train_step either way, and
    # tracing it cost 6-7 s of this test's 8 here.
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={k: "sparse_categorical_crossentropy" for k in LOSS_WEIGHTS},
                  loss_weights=LOSS_WEIGHTS, run_eagerly=True)
    watched = ["aux1", "aux1_fc1", "aux2", "aux2_reduce_conv", "predictions"]
    before = {n: model.get_layer(n).get_weights()[0].copy() for n in watched}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 96, 96, 3)).astype("float32")
    y = np.array([0, 1, 2, 3])
    history = model.fit(x, {k: y for k in LOSS_WEIGHTS}, epochs=1, batch_size=4,
                        verbose=0)
    logs = {k: v[0] for k, v in history.history.items()}
    weighted = sum(w * logs[f"{k}_loss"] for k, w in LOSS_WEIGHTS.items())
    np.testing.assert_allclose(logs["loss"], weighted, rtol=1e-4)
    for n in watched:
        after = model.get_layer(n).get_weights()[0]
        assert np.max(np.abs(after - before[n])) > 0, f"{n} did not change"


def test_inference_model_shares_weights_and_gives_the_main_output():
    model = _aux_model()
    single = inference_model(model)
    assert len(single.outputs) == 1 and single.output_shape == (None, 4)
    assert {id(v) for v in single.weights} <= {id(v) for v in model.weights}
    x = np.random.default_rng(1).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    main, aux1, aux2 = (np.asarray(o) for o in model(x, training=False))
    np.testing.assert_array_equal(np.asarray(single(x, training=False)), main)
    assert not np.allclose(main, aux1)
    plain = kvision.models.GoogLeNet(input_shape=(96, 96, 3), classes=4)
    assert inference_model(plain) is plain

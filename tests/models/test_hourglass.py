"""Stacked hourglass: counts derived module by module, targets, in-graph decoding and
flip averaging against numpy, the .keras round trip, a training step, TFLite builtins."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision import testing
from kvision.data.pose_layouts import MPII
from kvision.layers import HeatmapDecode
from kvision.models import get_info
from kvision.models.pose import hourglass
from kvision.testing.contract import assert_same_outputs
from kvision.tasks import TaskModel

SMALL = dict(input_shape=(64, 64, 3), stacks=2, features=8)  # 16x16 heatmaps


# --- counts: bearpaw/pytorch-pose's hg, module by module (biased convs, BN gamma/beta) --

def _conv(cin, cout, k=1):
    return k * k * cin * cout + cout


def _bn(c):
    return 2 * c


def _residual(cin, cout):
    """Pre-activation bottleneck (inner width cout / 2), a 1x1 projection when the
    channels change."""
    inner = cout // 2
    projection = _conv(cin, cout) if cin != cout else 0
    return (_bn(cin) + _conv(cin, inner) + _bn(inner) + _conv(inner, inner, 3)
            + _bn(inner) + _conv(inner, cout) + projection)


def _expected(stacks, joints=16, c=256):
    stem = _conv(3, c // 4, 7) + _bn(c // 4) + _residual(c // 4, c // 2) \
        + _residual(c // 2, c // 2) + _residual(c // 2, c)
    hourglass_ = (3 * 4 + 1) * _residual(c, c)  # depth 4: skip, down, up a level + bottom
    head = _residual(c, c) + _conv(c, c) + _bn(c) + _conv(c, joints)
    remap = _conv(c, c) + _conv(joints, c)
    return stem + stacks * (hourglass_ + head) + (stacks - 1) * remap


def test_counts_derive_module_by_module():
    assert _expected(8) == 25_434_112 and _expected(2) == 6_570_400  # the figures
    testing.assert_param_count("stacked_hourglass")  # 8 stacks: the registry's count
    with testing.built_at_once(values=False):  # counts need shapes only
        model = kvision.create("stacked_hourglass", stacks=2, input_shape=(64, 64, 3))
    assert testing.counted_params(model, "trainable") == _expected(2)
    assert get_info("stacked_hourglass").num_params == _expected(8)
    assert model.output_names == ["heatmaps_1", "heatmaps_2"]
    assert [tuple(o.shape) for o in model.outputs] == [(None, 16, 16, 16)] * 2


# --- targets ---------------------------------------------------------------------------

def _gaussians(keypoints, image_size, heatmap_size, sigma=1.0):
    """numpy: each heatmap pixel centre's Gaussian of its distance to each joint."""
    (h, w), (rows, cols) = image_size, heatmap_size
    ii, jj = np.meshgrid(np.arange(rows) + 0.5, np.arange(cols) + 0.5, indexing="ij")
    out = np.zeros((rows, cols, len(keypoints)))
    for k, (x, y, v) in enumerate(keypoints):
        if v > 0 and 0 <= x < w and 0 <= y < h:
            d2 = (jj - x * cols / w) ** 2 + (ii - y * rows / h) ** 2
            out[..., k] = np.exp(-d2 / (2 * sigma ** 2))
    return out


def test_targets_peak_at_the_joint_and_are_zero_where_not_labelled():
    keypoints = np.array([[13.0, 22.0, 2],     # heatmap (3.25, 5.5): pixel (5, 3)
                          [6.0, 2.0, 1],       # hidden but labelled: a Gaussian too
                          [30.0, 10.0, 0],     # not labelled
                          [-1.0, 10.0, 2],     # outside (left)
                          [40.0, 32.0, 2],     # outside (x == width)
                          [np.nan, np.nan, 0]], "float32")
    got = hourglass.encode_targets(keypoints, image_size=(64, 40), heatmap_size=(16, 10),
                                   sigma=1.5).numpy()
    assert got.shape == (16, 10, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, _gaussians(keypoints, (64, 40), (16, 10), 1.5),
                               rtol=0, atol=1e-6)
    assert np.unravel_index(np.argmax(got[..., 0]), (16, 10)) == (5, 3)
    assert np.all(got[..., 2:] == 0) and got[..., 1].max() > 0.5


def test_training_dataset_gives_every_stack_the_targets():
    with testing.built_at_once(values=False):
        model = kvision.create("stacked_hourglass", **SMALL)
    keypoints = np.zeros((3, 16, 3), "float32")  # one labelled joint, the same in all
    keypoints[:, 4] = (33.0, 18.0, 2)
    images = np.zeros((3, 64, 64, 3), "float32")
    data = tf.data.Dataset.from_tensor_slices({"images": images, "keypoints": keypoints})
    x, y = next(iter(hourglass.training_dataset(data, model, batch_size=2)))
    assert x.shape == (2, 64, 64, 3) and len(y) == 2
    expected = _gaussians(keypoints[0], (64, 64), (16, 16))
    for target in y:
        assert target.shape == (2, 16, 16, 16)
        np.testing.assert_allclose(target[1], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("images, joints, message", [
    ((32, 32, 3), 16, r"images are \(32, 32\) but the model takes \(64, 64\)"),
    ((64, 64, 3), 17, "17 keypoints per image but the model predicts 16"),
])
def test_training_data_of_another_shape_is_refused(images, joints, message):
    with testing.built_at_once(values=False):
        model = kvision.create("stacked_hourglass", **SMALL)
    data = tf.data.Dataset.from_tensor_slices({"images": np.zeros((1, *images), "float32"),
                                               "keypoints": np.zeros((1, joints, 3))})
    with pytest.raises(ValueError, match=message):
        hourglass.training_dataset(data, model)


def test_an_example_of_another_size_is_named_where_shapes_are_not_static():
    with testing.built_at_once(values=False):
        model = kvision.create("stacked_hourglass", **SMALL)
    sizes = (64, 64, 48)

    def examples():
        for side in sizes:
            yield {"images": np.zeros((side, 64, 3), "float32"),
                   "keypoints": np.zeros((16, 3), "float32")}

    data = tf.data.Dataset.from_generator(examples, output_signature={
        "images": tf.TensorSpec((None, None, 3), tf.float32),
        "keypoints": tf.TensorSpec((None, 3), tf.float32)})
    batches = hourglass.training_dataset(data, model, batch_size=1, shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"example\]? \[?2"):
        list(batches)


def test_bad_builder_arguments_are_refused():
    for kwargs, message in [(dict(input_shape=(96, 96, 3)), "multiples of 64"),
                            (dict(features=10), "multiple of 4"),
                            (dict(stacks=0), "stacks"),
                            (dict(weights="imagenet"), "no ImageNet weights")]:
        with pytest.raises(ValueError, match=message):
            kvision.create("stacked_hourglass", **kwargs)


# --- decoding --------------------------------------------------------------------------

def _decode_reference(heatmaps, strides):
    """numpy, as bearpaw's final_preds: the arg-max pixel, a quarter pixel toward the
    higher neighbour on each axis (not on the border), its centre in input pixels."""
    batch, rows, cols, joints = heatmaps.shape
    keypoints = np.zeros((batch, joints, 2))
    for b in range(batch):
        for k in range(joints):
            m = heatmaps[b, :, :, k]
            i, j = np.unravel_index(np.argmax(m), m.shape)
            x, y = float(j), float(i)
            if 0 < j < cols - 1:
                x += 0.25 * np.sign(m[i, j + 1] - m[i, j - 1])
            if 0 < i < rows - 1:
                y += 0.25 * np.sign(m[i + 1, j] - m[i - 1, j])
            keypoints[b, k] = ((x + 0.5) * strides[1], (y + 0.5) * strides[0])
    return keypoints, heatmaps.max(axis=(1, 2))


def test_decoding_finds_a_subpixel_peak():
    # Gaussians at known sub-pixel centres (heatmap pixels), one at the border, and a
    # flat map (every pixel ties: the first, no shift).
    centres = np.array([[5.3, 7.9], [2.75, 1.2], [0.3, 4.6], [9.5, 11.5]])
    rows, cols = 12, 10
    ii, jj = np.meshgrid(np.arange(rows) + 0.5, np.arange(cols) + 0.5, indexing="ij")
    maps = [np.exp(-((jj - cx) ** 2 + (ii - cy) ** 2) / 2) for cx, cy in centres]
    heatmaps = np.stack(maps + [np.full((rows, cols), 0.25)], -1)[None].astype("float32")
    out = HeatmapDecode(strides=(4, 2))(heatmaps)
    keypoints, scores = _decode_reference(heatmaps, (4, 2))
    np.testing.assert_allclose(np.asarray(out["keypoints"]), keypoints, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["scores"]), scores, rtol=0, atol=0)
    # A quarter pixel from the truth at most, where the peak is inside the map.
    truth = centres * (2, 4)
    error = np.abs(keypoints[0, :2] - truth[:2]) / (2, 4)
    assert np.all(error <= 0.25), error
    np.testing.assert_allclose(keypoints[0, 4], (1.0, 2.0))  # the flat map: pixel (0, 0)


def _pooling_model(joints=16, side=32):
    """A stand-in pose network that sees heatmaps in its input: a 4x4 average pool,
    which commutes with the mirror, so flip averaging has an answer in closed form."""
    inputs = keras.Input((side, side, joints))
    heatmaps = keras.layers.AveragePooling2D(4)(inputs)
    return TaskModel(inputs, [heatmaps], task="pose", name="pooling")


def test_flip_averaging_swaps_left_and_right_joints():
    """Mirror, the network, mirror back with the joint swap, average: for a network
    that commutes with the mirror that is ``(H + H[..., swap]) / 2``: a joint and its
    partner decode to the same place at half the score, unpaired joints as they are."""
    model = _pooling_model()
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 16)).astype("float32")
    x[:, 9:11, 21:23, :] += 4.0 * np.arange(1, 17)  # a clear peak, unequal per joint
    own = x.reshape(2, 8, 4, 8, 4, 16).mean(axis=(2, 4))
    swap = MPII.flip_permutation()
    averaged = hourglass.inference_model(model)(x)
    keypoints, scores = _decode_reference((own + own[..., swap]) / 2, (4, 4))
    np.testing.assert_allclose(np.asarray(averaged["keypoints"]), keypoints, atol=1e-5)
    testing.assert_float32_close(averaged["scores"], scores)
    left, right = zip(*MPII.flip_pairs)
    np.testing.assert_array_equal(keypoints[:, left], keypoints[:, right])
    alone = hourglass.inference_model(model, flip=False)(x)
    np.testing.assert_allclose(np.asarray(alone["keypoints"]),
                               _decode_reference(own, (4, 4))[0], atol=1e-5)
    for unpaired in (6, 7, 8, 9):
        np.testing.assert_allclose(np.asarray(averaged["scores"])[:, unpaired],
                                   np.asarray(alone["scores"])[:, unpaired], rtol=1e-6)


def test_flip_pairs_must_fit_the_joints():
    model = _pooling_model(joints=5)
    with pytest.raises(ValueError, match="No kvision keypoint layout has 5 joints"):
        hourglass.inference_model(model)
    with pytest.raises(ValueError, match=r"in \[0, 5\)"):
        hourglass.inference_model(model, flip_pairs=[(0, 5)])
    assert hourglass.flip_permutation(5, [(1, 2)]) == [0, 2, 1, 3, 4]


# --- the network: round trip, training, TFLite -----------------------------------------

@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)  # the same network whatever ran before in the process
    model = kvision.create("stacked_hourglass", **SMALL)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    keypoints = np.concatenate([rng.uniform(4, 60, (4, 16, 2)), np.full((4, 16, 1), 2)], -1)
    data = tf.data.Dataset.from_tensor_slices({"images": images,
                                               "keypoints": keypoints.astype("float32")})
    x, y = next(iter(hourglass.training_dataset(data, model, batch_size=4, shuffle=False)))
    return model, np.asarray(x), [np.asarray(t) for t in y]


def test_inference_model_round_trips_with_safe_mode(small):
    model, x, _ = small
    estimator = hourglass.inference_model(model)
    testing.assert_no_lambda(estimator)
    before = estimator(x)
    assert before["keypoints"].shape == (4, 16, 2) and before["scores"].shape == (4, 16)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "estimator.keras")
        estimator.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.task == "pose"
    assert_same_outputs(estimator, loaded, x, outputs=before)


def test_a_weights_file_loads(small, tmp_path):
    model, x, _ = small
    path = str(tmp_path / "hourglass.weights.h5")
    model.save_weights(path)
    loaded = kvision.create("stacked_hourglass", **SMALL, weights=path)
    assert_same_outputs(model, loaded, x)


def test_one_training_step_lowers_the_loss(small):
    model, x, y = small

    def loss():
        outputs = model(x, training=True)  # batch statistics: the same before and after
        return float(sum(np.mean((np.asarray(o) - t) ** 2) for o, t in zip(outputs, y)))

    before = loss()
    model.compile(keras.optimizers.RMSprop(2.5e-4), loss=hourglass.losses(model),
                  run_eagerly=True)
    for _ in range(3):  # a few small steps: one alone may not go downhill
        model.train_on_batch(x, y)
    assert loss() < before


def test_inference_model_converts_to_tflite_builtins(small):
    """Every operator of the network, the flip and the decoding is a TFLite builtin,
    and the file answers as Keras does. One hourglass level: the deeper levels are
    the same operators, and converting them cost 20 s more here."""
    from ai_edge_litert.interpreter import Interpreter

    from kvision.export.litert import custom_ops

    _, x, _ = small
    model = kvision.create("stacked_hourglass", **SMALL, depth=1)
    estimator = hourglass.inference_model(model)
    archive = keras.export.ExportArchive()
    archive.track(estimator)
    archive.add_endpoint("serve", lambda images: estimator(images, training=False),
                         input_signature=[tf.TensorSpec((None, 64, 64, 3), tf.float32)])
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()
    assert custom_ops(content) == []
    runner = Interpreter(model_content=content).get_signature_runner()
    got = runner(**{runner.get_input_details().popitem()[0]: x})
    expected = estimator(x)
    distance = np.linalg.norm(got["keypoints"] - np.asarray(expected["keypoints"]), axis=-1)
    assert distance.mean() <= 0.5 * hourglass.STRIDE  # the gate: 0.5 heatmap pixel
    # Rounding through ~40 convolutions in a row, the stem's 7x7x3 the widest sum.
    testing.assert_float32_close(got["scores"], expected["scores"], terms=147, depth=40)

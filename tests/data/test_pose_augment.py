"""Keypoint augmentation: the pixels go where the keypoints say (one bright pixel per
joint, one channel each), a mirror is numpy's and swaps MPII's left and right joints,
joints pushed out of the image become v = 0, the draws hold their ranges (recovered
from the moved keypoints' geometry), the same seed gives the same stream, the pose
task's training batches are augmented unless told not to, and bad input is refused."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kvision.data import pose_augment
from kvision.data.pose_layouts import MPII

H, W = 24, 32


def _bright_joints(seed=0):
    """An image of 16 channels, channel k dark but one pixel at joint k; the joints
    at those pixels' centres, all visible."""
    rng = np.random.default_rng(seed)
    cols, rows = rng.integers(9, 23, 16), rng.integers(7, 17, 16)
    image = np.zeros((H, W, 16), "float32")
    image[rows, cols, np.arange(16)] = 255.0
    keypoints = np.stack([cols + 0.5, rows + 0.5, np.full(16, 2.0)], -1).astype("float32")
    return image, keypoints


def _brightest(channel):
    """The centre (x, y) of a channel's brightest pixel."""
    row, col = np.unravel_index(np.argmax(channel), channel.shape)
    return np.array([col + 0.5, row + 0.5])


@pytest.mark.parametrize("seed", range(6))
def test_the_bright_pixel_is_where_the_moved_keypoint_says(seed):
    image, keypoints = _bright_joints(seed)
    out = pose_augment.augment({"images": image, "keypoints": keypoints},
                               tf.constant([seed, 7]), layout=MPII)
    flipped = bool(pose_augment.random_parameters(tf.constant([seed, 7]), 1)[2][0])
    source = MPII.flip_permutation() if flipped else list(range(16))
    moved, pixels = out["keypoints"].numpy(), out["images"].numpy()
    assert pixels.shape == image.shape and moved.shape == keypoints.shape
    inside = moved[:, 2] > 0
    assert inside.sum() >= 12  # the joints are near the centre: most stay in
    for j in np.flatnonzero(inside):
        # joint j of the result was joint source[j]: its pixel is in that channel
        assert np.abs(_brightest(pixels[..., source[j]]) - moved[j, :2]).max() <= 1.0, j


def test_a_mirror_is_numpys_and_swaps_left_and_right_joints():
    image, keypoints = _bright_joints()
    keypoints[3, 2] = 1  # hidden l_hip stays hidden
    out = pose_augment.transform({"images": image, "keypoints": keypoints},
                                 tf.constant(0.0), tf.constant(1.0), tf.constant(True),
                                 MPII.flip_permutation())
    np.testing.assert_allclose(out["images"].numpy(), image[:, ::-1], atol=1e-3)
    moved = dict(zip(MPII.names, out["keypoints"].numpy()))
    before = dict(zip(MPII.names, keypoints))
    for left, right in (("l_ankle", "r_ankle"), ("l_wrist", "r_wrist"),
                        ("l_hip", "r_hip"), ("pelvis", "pelvis"), ("head_top", "head_top")):
        for a, b in ((left, right), (right, left)):
            np.testing.assert_allclose(moved[a], [W - before[b][0], before[b][1],
                                                  before[b][2]], atol=1e-5)


def test_joints_pushed_out_become_not_labelled_and_keep_their_coordinates():
    keypoints = np.array([[1.0, 1.0, 2], [16.0, 12.0, 2], [30.0, 20.0, 1],
                          [np.nan, np.nan, 0]], "float32")
    out = pose_augment.transform(
        {"images": np.zeros((H, W, 3), "uint8"), "keypoints": keypoints},
        tf.constant(0.0), tf.constant(1.25), tf.constant(False), [0, 1, 2, 3])
    moved = out["keypoints"].numpy()
    # scaled 1.25 about the centre (16, 12): (1, 1) -> (-2.75, -1.75), outside
    np.testing.assert_allclose(moved[:3, :2], [[-2.75, -1.75], [16, 12], [33.5, 22]])
    np.testing.assert_array_equal(moved[:, 2], [0, 2, 0, 0])
    assert out["images"].dtype == tf.uint8


def test_the_draws_hold_their_ranges():
    """A batch of 400: angle, scale and mirror recovered from three joints' moved
    positions (the determinant's sign is the mirror, its root the scale)."""
    n = 400
    points = np.array([[12.0, 10.0, 2], [20.0, 10.0, 2], [12.0, 16.0, 2]], "float32")
    batch = {"images": np.zeros((n, 8, 8, 1), "float32"),
             "keypoints": np.repeat(points[None], n, 0)}
    out = pose_augment.augment(batch, tf.constant([1, 2]), flip_permutation=[0, 1, 2])
    moved = out["keypoints"].numpy()[..., :2]
    u, w = moved[:, 1] - moved[:, 0], moved[:, 2] - moved[:, 0]
    det = (u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]) / (8.0 * 6.0)
    flipped, scale = det < 0, np.sqrt(np.abs(det))
    before = np.where(flipped, math.pi, 0.0)  # (8, 0) mirrored points left
    angle = np.degrees(np.angle(np.exp(1j * (np.arctan2(u[:, 1], u[:, 0]) - before))))
    assert 0.4 < flipped.mean() < 0.6
    assert -30 <= angle.min() < -27 and 27 < angle.max() <= 30
    assert 0.75 - 1e-5 <= scale.min() < 0.77 and 1.23 < scale.max() <= 1.25 + 1e-5
    np.testing.assert_allclose(np.hypot(*u.T), 8 * scale, rtol=1e-5)  # a similarity

    still = pose_augment.augment(batch, tf.constant([1, 2]), rotation=0, scale=(1, 1),
                                 flip=False)["keypoints"].numpy()
    np.testing.assert_allclose(still[..., :2], batch["keypoints"][..., :2], atol=1e-5)
    assert np.all(still[..., 2] == 0)  # the image is 8x8: these joints lie outside


def _stream(seed, epochs=2):
    image, keypoints = _bright_joints()
    data = tf.data.Dataset.from_tensors({"images": image, "keypoints": keypoints}).repeat(3)
    moved = pose_augment.augment_dataset(data, seed=seed, layout=MPII)
    return [[e["keypoints"] for e in moved.as_numpy_iterator()] for _ in range(epochs)]


def test_same_seed_same_stream_each_epoch_drawn_anew():
    first, again = _stream(5), _stream(5)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first[0][0], first[0][1])      # examples differ
    assert not np.allclose(first[0], first[1])            # and epochs do
    assert not np.allclose(first, _stream(6))


def test_the_pose_task_augments_its_training_batches_unless_told_not_to():
    import kvision
    from kvision import testing
    from kvision.tasks import base
    from kvision.tasks.pose import TASK

    image, keypoints = _bright_joints()
    image = np.zeros((64, 64, 3), "float32")
    keypoints = keypoints + [16, 20, 0]  # float64, numpy's default: cast on the way
    data = base.TrainingData(
        tf.data.Dataset.from_tensors({"images": image, "keypoints": keypoints,
                                      "boxes": np.zeros(4, "float32")}).repeat(4),
        4, None, MPII.names, "here", "", {"layout": MPII})
    with testing.built_at_once(values=False):
        model = kvision.create("stacked_hourglass", input_shape=(64, 64, 3), stacks=1,
                               features=8)
    batches = {augment: next(iter(TASK.fit_dataset(
        "stacked_hourglass", model, data, batch_size=4, seed=0, augment=augment)))[1][0]
        for augment in (True, False)}
    plain = batches[False].numpy()
    np.testing.assert_allclose(plain, np.repeat(plain[:1], 4, 0))
    assert not np.allclose(batches[True].numpy(), plain, atol=1e-3)


def test_bad_input_is_refused():
    image, keypoints = _bright_joints()
    data = tf.data.Dataset.from_tensors({"images": image, "keypoints": keypoints[:15]})
    with pytest.raises(ValueError, match=r"layout 'mpii' has 16 joints but the data "
                                         r"has 15 per example"):
        pose_augment.augment_dataset(data, layout=MPII)
    with pytest.raises(ValueError, match=r"does not reorder the data's 15 joints"):
        pose_augment.augment_dataset(data, flip_permutation=MPII.flip_permutation())
    with pytest.raises(ValueError, match="No kvision keypoint layout has 15 joints"):
        pose_augment.augment_dataset(data)
    pose_augment.augment_dataset(data, flip=False)  # no mirror: no swap needed
    with pytest.raises(ValueError, match=r"keypoints must be \(K, 3\)"):
        pose_augment.augment({"images": image, "keypoints": keypoints[:, :2]},
                             tf.constant([0, 0]))
    with pytest.raises(ValueError, match=r"scale must be \(low, high\)"):
        pose_augment.augment_dataset(data, flip=False, scale=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"\{'images': \(H, W, C\)"):
        pose_augment.augment_dataset(tf.data.Dataset.from_tensors(image))

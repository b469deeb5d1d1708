"""Bad input for the pose task (issue 18's last section), where the loaders' and the
hourglass helpers' own tests (tests/data/test_keypoint_data.py, tests/models/
test_hourglass.py) leave off: through PoseTask.fit_dataset (with its augmentation)
and kvision.tasks.pose.evaluate.

- Keypoints outside the image: zero targets (encode_targets); a labelled joint
  outside is scored as a miss by evaluate (no prediction lies there).
- All joints invisible: an example trains towards empty heatmaps; evaluate leaves
  such a person out, and data with none labelled at all is a ValueError.
- A joint count that disagrees with the model, images of another size: ValueErrors
  naming both, before anything runs."""

import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision.data.figures import figures
from kvision.data.pose_layouts import COCO, MPII
from kvision.metrics import pose as metrics
from kvision.models.pose import hourglass
from kvision.predict import Trained
from kvision.tasks import base, pose
from kvision.tasks.pose import TASK

SMALL = dict(stacks=1, features=8, depth=2, input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def model():
    return kvision.create("stacked_hourglass", **SMALL)


def _data(images, keypoints, layout=MPII):
    dataset = tf.data.Dataset.from_tensor_slices({"images": images,
                                                  "keypoints": keypoints})
    return base.TrainingData(dataset, len(images), None, layout.names, "here", "",
                             {"layout": layout})


def _targets(model, data, augment):
    batch = TASK.fit_dataset("stacked_hourglass", model, data, batch_size=8, seed=0,
                             shuffle=False, augment=augment)
    return next(iter(batch))[1][0].numpy()


@pytest.mark.parametrize("augment", [False, True])
def test_unlabelled_or_outside_joints_train_towards_empty_heatmaps(model, augment):
    keypoints = np.zeros((2, 16, 3), "float32")
    keypoints[0, :, :2] = 32.0                         # all joints invisible
    keypoints[1, :8] = (32.0, 30.0, 2)                 # labelled, inside
    keypoints[1, 8:] = (-200.0, 500.0, 2)              # "labelled" far outside
    targets = _targets(model, _data(np.zeros((2, 64, 64, 3), "float32"), keypoints),
                       augment)
    assert targets.shape == (2, 16, 16, 16)
    assert np.all(targets[0] == 0) and np.all(targets[1, ..., 8:] == 0)
    assert targets[1, ..., :8].max(axis=(0, 1)).min() > 0.3  # a peak each


def test_training_data_of_another_size_or_joint_count_is_refused(model):
    with pytest.raises(ValueError, match=r"images are \(32, 32\) but the model takes "
                                         r"\(64, 64\)"):
        TASK.fit_dataset("stacked_hourglass", model, _data(
            np.zeros((1, 32, 32, 3), "float32"), np.zeros((1, 16, 3), "float32")),
            batch_size=1, seed=0)
    coco = _data(np.zeros((1, 64, 64, 3), "float32"), np.zeros((1, 17, 3), "float32"),
                 COCO)
    with pytest.raises(ValueError, match="17 keypoints per image but the model predicts "
                                         "16"):
        TASK.fit_dataset("stacked_hourglass", model, coco, batch_size=1, seed=0)


@pytest.fixture(scope="module")
def held():
    data = figures(4, image_size=64, subset="test", seed=3)
    return data, np.stack([b[0] for b in data.boxes])


def _labelled(images, keypoints, boxes, layout=MPII):
    return pose.Labelled(images.astype("float32"), keypoints, boxes, layout, "here")


def test_evaluate_scores_only_labelled_joints(model, held):
    data, boxes = held
    trained = Trained(hourglass.inference_model(model, flip=False), MPII.names, "here")
    found, _ = pose.predict(trained, data.images)
    keypoints = data.main_keypoints.copy()
    keypoints[0, :, 2] = 0                             # person 0: nothing labelled
    keypoints[1, 0] = (500.0, 500.0, 2)                # labelled, outside: a miss
    report = pose.evaluate(trained, _labelled(data.images, keypoints, boxes))
    scored = keypoints[..., 2] > 0
    hits = np.hypot(*(found - keypoints[..., :2]).transpose(2, 0, 1)) \
        < 0.2 * metrics.box_sizes(boxes)[:, None]
    assert report.figures["pck"] == pytest.approx(hits[scored].mean(), abs=1e-9)
    assert report.figures["labelled"][0] == scored[:, 0].sum() == 3

    keypoints[..., 2] = 0
    with pytest.raises(ValueError, match="no joint to score"):
        pose.evaluate(trained, _labelled(data.images, keypoints, boxes))


def test_evaluate_refuses_other_joint_counts_and_image_sizes(model, held):
    data, boxes = held
    trained = Trained(hourglass.inference_model(model, flip=False), MPII.names, "here")
    with pytest.raises(ValueError, match=r"The data has 17 joints \(nose, .*\); the "
                                         r"model has 16"):
        pose.evaluate(trained, _labelled(data.images, np.zeros((4, 17, 3), "float32"),
                                         boxes, COCO))
    small = figures(4, image_size=32, subset="test")
    with pytest.raises(ValueError, match=r"takes images of 64x64 \(N, H, W, C\), got an "
                                         r"array of shape \(4, 32, 32, 3\)"):
        pose.evaluate(trained, _labelled(small.images, small.main_keypoints, boxes / 2))

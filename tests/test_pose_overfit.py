"""Issue 18's evidence that the pose pipeline can learn: a small stacked hourglass
trained with ``model.fit`` on 8 figures reaches PCK@0.2 = 1.0 on those same 8, the
keypoints decoded by the inference model in its graph and measured by
``kvision.metrics.pose.pck`` against the figures' own joints."""

import keras
import numpy as np
import pytest

import kvision
from kvision.data.figures import figures
from kvision.metrics import pose as metrics
from kvision.models.pose import hourglass

pytestmark = pytest.mark.slow
ROUNDS, EPOCHS = 40, 10  # at most 400 steps; seed 0 gets there in ~120 here (25 s)


def _pck(estimator, data, boxes):
    found = estimator.predict(data.images.astype("float32"), verbose=0)["keypoints"]
    truth = data.main_keypoints
    return float(metrics.pck(truth[..., :2], found, truth[..., 2] > 0,
                             metrics.box_sizes(boxes), alpha=0.2)["mean"])


def test_a_small_hourglass_overfits_8_figures_to_pck_1():
    keras.utils.set_random_seed(0)
    data = figures(8, image_size=64, seed=0)
    boxes = np.stack([b[0] for b in data.boxes])
    # One stack of depth 2 and 64 features: a few seconds to build, ~0.1 s a step.
    model = kvision.create("stacked_hourglass", stacks=1, features=64, depth=2,
                           input_shape=(64, 64, 3))
    model.compile(keras.optimizers.Adam(2.5e-3), loss=hourglass.losses(model))
    batches = hourglass.training_dataset(data.as_dataset(), model, batch_size=8,
                                         shuffle=False).cache()
    # No flip averaging: the mirrored views of 8 images are images it never saw.
    estimator = hourglass.inference_model(model, flip=False)
    history = [_pck(estimator, data, boxes)]
    assert history[0] < 0.5  # untrained: far from it
    while history[-1] < 1.0 and len(history) <= ROUNDS:
        model.fit(batches, epochs=EPOCHS, shuffle=False, verbose=0)
        history.append(_pck(estimator, data, boxes))
    assert history[-1] == 1.0, f"PCK@0.2 every {EPOCHS} epochs: {history}"

import numpy as np
import pytest

from kvision.data import figures as figures_lib
from kvision.data.figures import Body, PARTS, figures
from kvision.data.pose_layouts import MPII

J = {name: i for i, name in enumerate(MPII.names)}


def _pixel(image, x, y):
    return tuple(image[int(y), int(x)])


def _flat(body, first):
    """``body`` with one flat colour per part, distinct from any other body's (``first``
    numbers them), and no stripes."""
    colours = np.array([[(first + p) % 7, (first + p) // 7 % 7, (first + p) // 49 + 1]
                        for p in range(len(PARTS))]) / 8.0
    return Body(body.joints, body.widths, colours, np.zeros((len(PARTS), 4)), body.behind)


def _own_colours(body, joint):
    """The colours of the parts a joint belongs to: those that end at it, and the
    torso for the pelvis and the thorax (the middles of its edges)."""
    name = MPII.names[joint]
    own = [p for p, (part, ends, _) in enumerate(PARTS)
           if name in ends or (part == "torso" and name in ("pelvis", "thorax"))]
    return {tuple(np.round(body.colours[p] * 255)) for p in own}


def test_same_seed_same_bytes_and_the_subsets_differ():
    a = figures(12, people=(1, 3), seed=5)
    b = figures(12, people=(1, 3), seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    for ka, kb in zip(a.keypoints, b.keypoints):
        np.testing.assert_array_equal(ka, kb)
    assert not np.array_equal(figures(12, people=(1, 3), seed=6).images, a.images)
    assert {len(k) for k in a.keypoints} > {1}          # several figures in some images
    # train and test figures wear colours from alternate 30-degree hue bins
    from matplotlib.colors import rgb_to_hsv

    for subset, parity in (("train", 0), ("test", 1)):
        made = figures(20, clutter=0, noise=0, subset=subset, seed=5)
        hsv = rgb_to_hsv(made.images[made.masks > 0] / 255.0)
        bins = np.floor(hsv[:, 0] * figures_lib.HUE_BINS).astype(int)
        assert len(bins) > 1000 and set(bins % 2) == {parity}, subset


def test_a_joint_is_visible_exactly_where_its_own_limb_is_drawn():
    """Random bodies drawn in flat colours on black: every joint in the image lies on
    its figure's pixels, and v == 2 exactly where the pixel has one of its own parts'
    colours (self-occlusion gives v == 1), as seen in the picture itself."""
    sampler = figures_lib._Sampler(np.random.default_rng(3), 64, "train")
    hidden = 0
    for k in range(40):
        body = _flat(sampler.main_body(truncation=0.0), 0)
        pixels, keypoints, masks = figures_lib.draw([body], np.zeros((64, 64, 3)))
        image = np.round(pixels * 255)
        for j, (x, y, v) in enumerate(keypoints[0]):
            assert 0 <= x < 64 and 0 <= y < 64 and v > 0, (k, MPII.names[j])
            assert _pixel(image, x, y) != (0, 0, 0), (k, MPII.names[j])
            assert (v == 2) == (_pixel(image, x, y) in _own_colours(body, j)), (
                k, MPII.names[j])
            hidden += v == 1
    assert hidden > 0


def _standing(centre_x=32.0):
    """A hand-made upright figure: torso from y=36 (pelvis) to y=20 (thorax)."""
    j = np.zeros((16, 2))
    c = centre_x
    j[J["pelvis"]], j[J["thorax"]] = (c, 36), (c, 20)
    j[J["upper_neck"]], j[J["head_top"]] = (c, 17), (c, 10)
    j[J["r_hip"]], j[J["l_hip"]] = (c - 4, 36), (c + 4, 36)
    j[J["r_knee"]], j[J["l_knee"]] = (c - 5, 46), (c + 5, 46)
    j[J["r_ankle"]], j[J["l_ankle"]] = (c - 6, 56), (c + 6, 56)
    j[J["r_shoulder"]], j[J["l_shoulder"]] = (c - 6, 21), (c + 6, 21)
    j[J["r_elbow"]], j[J["l_elbow"]] = (c - 12, 28), (c + 12, 28)
    j[J["r_wrist"]], j[J["l_wrist"]] = (c - 14, 36), (c + 14, 36)
    widths = np.array([1, 3, 0, 3, 2, 3, 2, 4, 3, 4, 3], float)
    return Body(j, widths, np.zeros((11, 3)), np.zeros((11, 4)))


def test_hidden_and_truncated_joints_of_hand_made_figures():
    main = _standing()
    main.joints[J["l_wrist"]] = (33.5, 28.5)     # the left hand behind the torso
    main.joints[J["r_wrist"]] = (30.5, 30.5)     # the right hand in front of it
    main.joints[J["r_ankle"]] = (24.5, 70.0)     # the right foot below the image
    main.behind = ("l_arm",)
    main = _flat(main, 0)
    other = _standing(centre_x=32.0)             # drawn in front, its torso over the head
    other.joints += (0.0, -18.0)
    other = _flat(other, len(PARTS))
    pixels, keypoints, masks = figures_lib.draw([main, other], np.zeros((64, 64, 3)))
    image = np.round(pixels * 255)
    v = keypoints[0, :, 2]
    assert v[J["l_wrist"]] == 1 and v[J["r_wrist"]] == 2 and v[J["pelvis"]] == 2
    assert v[J["r_ankle"]] == 0
    np.testing.assert_array_equal(keypoints[0, J["r_ankle"], :2], [24.5, 70.0])  # kept
    assert v[J["head_top"]] == 1 and v[J["upper_neck"]] == 1    # under the other figure
    # what the picture shows: the torso's colour over the left hand, the second
    # figure's colours over the head
    torso = tuple(np.round(main.colours[0] * 255))
    assert _pixel(image, 33.5, 28.5) == torso
    assert _pixel(image, 32, 10) in {tuple(np.round(c * 255)) for c in other.colours}
    assert masks[10, 32] == 2 and masks[30, 30] == 1


def test_generated_visibility_flags_agree_with_the_figures_masks():
    made = figures(60, people=(1, 3), occlusion=0.5, truncation=0.5, seed=2)
    counts = np.zeros(3, int)
    for points, mask in zip(made.keypoints, made.masks):
        for f, figure in enumerate(points):
            for x, y, v in figure:
                inside = 0 <= x < 64 and 0 <= y < 64
                assert inside == (v > 0)
                if v == 2:
                    assert mask[int(y), int(x)] == f + 1
                counts[int(v)] += 1
    assert counts.min() > 20          # truncated, hidden and visible joints all occur
    # boxes: the tight box of each figure's visible pixels
    for boxes, mask in zip(made.boxes, made.masks):
        for f, (x1, y1, x2, y2) in enumerate(boxes):
            ys, xs = np.nonzero(mask == f + 1)
            np.testing.assert_array_equal([x1, y1, x2, y2],
                                          [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_main_figure_is_centred_and_scaled():
    made = figures(50, truncation=0.0, occlusion=0.0, seed=1)
    joints = made.main_keypoints
    assert (joints[..., 2] > 0).all()
    centre = (joints[..., :2].min(1) + joints[..., :2].max(1)) / 2
    height = np.ptp(joints[..., 1], axis=1)
    assert np.abs(centre - 32).max() <= 0.05 * 64 + 1e-4
    assert 0.55 * 64 - 1e-3 <= height.min() and height.max() <= 0.75 * 64 + 1e-3


def test_as_dataset_main_figure_and_all_figures():
    made = figures(4, people=(2, 3), seed=4, channels=1)
    main = list(made.as_dataset().as_numpy_iterator())
    everyone = list(made.as_dataset(main_only=False).as_numpy_iterator())
    for i, (one, all_) in enumerate(zip(main, everyone)):
        assert one["images"].dtype == np.float32 and one["images"].shape == (64, 64, 1)
        np.testing.assert_array_equal(one["images"], made.images[i])
        np.testing.assert_array_equal(one["keypoints"], made.keypoints[i][0])
        np.testing.assert_array_equal(one["boxes"], made.boxes[i][0])
        np.testing.assert_array_equal(all_["keypoints"], made.keypoints[i])
        np.testing.assert_array_equal(all_["boxes"], made.boxes[i])
    sliced = made[1:3]
    assert len(sliced) == 2 and sliced.keypoints[0] is made.keypoints[1]


@pytest.mark.parametrize("kwargs, message", [
    ({"people": (0, 2)}, "people must be"),
    ({"image_size": 8}, "at least 16"),
    ({"occlusion": 1.5}, "occlusion must be a probability"),
    ({"subset": "val"}, "subset must be one of"),
    ({"channels": 2}, "channels must be 1 or 3"),
    ({"people": 30}, "things per image"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        figures(1, **kwargs)

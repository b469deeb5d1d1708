import numpy as np
import pytest
from scipy import ndimage

from kvision.data import digits as digits_lib
from kvision.data.synthetic import INK_THRESHOLD, digit_scenes, subset_indices

EIGHT = np.ones((3, 3), bool)     # 8-connectivity for scipy.ndimage.label


def _components(mask):
    return ndimage.label(mask, structure=EIGHT)[1]


@pytest.fixture(scope="module", params=[0.0, 0.8], ids=["plain", "distorted"])
def hard(request):
    """Scenes with everything on: occlusion, clutter and touching digits (and, the
    second time, every digit warped)."""
    return digit_scenes(40, image_size=64, digit_size=(10, 26), objects=(1, 5),
                        occlusion=0.6, clutter=3, touching=0.4, seed=3,
                        distortion=request.param)


def test_boxes_bound_masks_exactly_and_masks_make_the_label_map(hard):
    raw, labels = digits_lib.load_raw()
    assert hard.images.shape == (40, 64, 64, 3) and hard.images.dtype == np.uint8
    assert sum(len(b) for b in hard.boxes) > 60
    for image, boxes, classes, masks, semantic, sources in zip(
            hard.images, hard.boxes, hard.classes, hard.masks, hard.semantic,
            hard.sources):
        assert boxes.dtype == np.float32 and classes.dtype == np.int32
        assert masks.shape == (len(boxes), 64, 64) and masks.dtype == bool
        np.testing.assert_array_equal(classes, labels[sources])
        assert (masks.sum(0) <= 1).all()                       # disjoint
        expected = np.zeros((64, 64), np.int32)
        for box, cls, mask in zip(boxes, classes, masks):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1,
                                                ys.max() + 1])
            expected[mask] = cls + 1
            # ink: at least a quarter of full brightness in its brightest channel
            assert image.max(-1)[mask].min() >= np.floor(INK_THRESHOLD * 255)
        np.testing.assert_array_equal(semantic, expected)
    # clutter: bright pixels that belong to no digit and touch none
    outside = [(img.max(-1) > 100) & ~ndimage.binary_dilation(m.any(0), EIGHT)
               for img, m in zip(hard.images, hard.masks)]
    assert sum(o.any() for o in outside) >= 30
    # occlusion: some digits partly cover others (their boxes overlap)
    overlaps = 0
    for boxes in hard.boxes:
        for i in range(len(boxes)):
            for j in range(i):
                lo, hi = np.maximum(boxes[i, :2], boxes[j, :2]), np.minimum(
                    boxes[i, 2:], boxes[j, 2:])
                overlaps += bool((hi > lo).all())
    assert overlaps >= 5


def _resized_side(image, box, source, raw, sides=range(9, 31)):
    """The side at which the 8x8 ``source`` digit resized by tf.image is the patch of
    ``image`` (one channel) at ``box``; None if it is at no side."""
    import tensorflow as tf

    x1, y1, x2, y2 = box.astype(int)
    size = image.shape[0]
    for side in sides:
        level = tf.image.resize(raw[source][..., None] / 16.0, (side, side),
                                method="bilinear").numpy()[..., 0]
        ys, xs = np.nonzero(level >= INK_THRESHOLD)
        if (np.ptp(ys) + 1, np.ptp(xs) + 1) != (y2 - y1, x2 - x1):
            continue
        top, left = y1 - ys.min(), x1 - xs.min()
        if top < 0 or left < 0 or top + side > size or left + side > size:
            continue
        patch = image[top:top + side, left:left + side].astype(float)
        if np.abs(patch - level * 255).max() <= 1.0:
            return side
    return None


def test_pixels_are_tf_image_resize_of_the_source_digit():
    """One white digit per scene: its patch is the 8x8 digit resized by tf.image."""
    raw, _ = digits_lib.load_raw()
    scenes = digit_scenes(6, image_size=40, objects=1, digit_size=(9, 30), channels=1,
                          seed=5)
    sides = set()
    for image, box, source in zip(scenes.images[..., 0], scenes.boxes, scenes.sources):
        side = _resized_side(image, box[0], source[0], raw)
        assert side is not None, f"digit {source[0]} in box {box[0]} is no resized digit"
        sides.add(side)
    assert len(sides) > 1


def test_warp_is_scipys_bilinear_affine_transform():
    """Each distorted digit is the 8x8 source sampled through an affine map: equal to
    scipy.ndimage.affine_transform (order 1, zero outside the grid)."""
    from kvision.data.synthetic import _warp

    raw, _ = digits_lib.load_raw()
    rng = np.random.default_rng(0)
    for side in (9, 16, 31):
        digit = raw[rng.integers(len(raw))] / 16.0
        inverse = np.eye(2) + rng.uniform(-0.4, 0.4, (2, 2))
        step = 8 / side   # output pixel i sits at source coordinate (i + 0.5) * step - 0.5
        offset = inverse @ np.full(2, step / 2 - 0.5 - 3.5) + 3.5
        expected = ndimage.affine_transform(digit, inverse * step, offset=offset,
                                            output_shape=(side, side), order=1,
                                            mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(_warp(digit, side, inverse), expected, atol=1e-9)


def test_distorted_digits_are_no_longer_plain_resizes():
    """With ``distortion`` the drawn digits are warped: (almost) none of them is its
    source digit resized by tf.image any more, at any side."""
    raw, _ = digits_lib.load_raw()
    scenes = digit_scenes(6, image_size=40, objects=1, digit_size=(9, 30), channels=1,
                          seed=5, distortion=1.0)
    found = [_resized_side(image, box[0], source[0], raw) for image, box, source in
             zip(scenes.images[..., 0], scenes.boxes, scenes.sources)]
    assert sum(side is not None for side in found) <= 1


def test_same_seed_same_bytes_other_seed_other_scenes():
    a = digit_scenes(12, image_size=48, digit_size=(8, 20), clutter=2, occlusion=0.5,
                     seed=7)
    b = digit_scenes(12, image_size=48, digit_size=(8, 20), clutter=2, occlusion=0.5,
                     seed=7)
    c = digit_scenes(12, image_size=48, digit_size=(8, 20), clutter=2, occlusion=0.5,
                     seed=8)
    assert a.images.tobytes() == b.images.tobytes()
    for x, y in zip(a.boxes + a.classes, b.boxes + b.classes):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, c.images)


def test_train_and_test_scenes_use_disjoint_handwriting():
    _, labels = digits_lib.load_raw()
    train_pool, test_pool = set(subset_indices("train")), set(subset_indices("test"))
    assert not train_pool & test_pool and len(train_pool | test_pool) == len(labels)
    train = digit_scenes(60, image_size=48, digit_size=(8, 16), seed=0)
    test = digit_scenes(60, image_size=48, digit_size=(8, 16), seed=0, subset="test")
    used_train = set(np.concatenate(train.sources).tolist())
    used_test = set(np.concatenate(test.sources).tolist())
    assert used_train <= train_pool and used_test <= test_pool
    assert set(labels[list(used_test)]) == set(range(10))
    assert not np.array_equal(train.images, test.images)


def test_touching_makes_same_class_instances_stick_together():
    stuck = digit_scenes(20, image_size=64, objects=(2, 3), digit_size=(12, 20),
                         touching=1.0, seed=2)
    apart = digit_scenes(20, image_size=64, objects=(2, 3), digit_size=(12, 20), seed=2)
    merged_scenes = 0
    for classes, masks in zip(stuck.classes, stuck.masks):
        merged = False
        for i in range(len(classes)):
            for j in range(i):
                if (classes[i] == classes[j] and _components(masks[i]) == 1
                        and _components(masks[j]) == 1):
                    merged |= _components(masks[i] | masks[j]) == 1
        merged_scenes += merged
    assert merged_scenes >= 16
    # without touching (and occlusion) no two instances are 8-connected
    for masks in apart.masks:
        for i in range(len(masks)):
            for j in range(i):
                assert _components(masks[i] | masks[j]) == (_components(masks[i])
                                                            + _components(masks[j]))


def test_dataset_dict_format_slicing_and_empty_scenes():
    import tensorflow as tf

    scenes = digit_scenes(5, image_size=32, objects=(0, 2), digit_size=(8, 14), seed=4)
    assert any(len(b) == 0 for b in scenes.boxes)           # an image with no objects
    ds = scenes.as_dataset(instance_masks=True)
    spec = ds.element_spec
    assert spec["images"] == tf.TensorSpec((32, 32, 3), tf.float32)
    assert spec["bounding_boxes"]["boxes"].shape.as_list() == [None, 4]
    assert spec["bounding_boxes"]["labels"].dtype == tf.int32
    for i, example in enumerate(ds.as_numpy_iterator()):
        np.testing.assert_array_equal(example["images"], scenes.images[i])
        np.testing.assert_array_equal(example["bounding_boxes"]["boxes"],
                                      scenes.boxes[i].reshape(-1, 4))
        np.testing.assert_array_equal(example["bounding_boxes"]["labels"], scenes.classes[i])
        np.testing.assert_array_equal(example["segmentation_masks"][..., 0],
                                      scenes.semantic[i])
        assert example["instance_masks"].shape == (len(scenes.boxes[i]), 32, 32)
    part = scenes[1:3]
    assert len(part) == 2 and part.images.tobytes() == scenes.images[1:3].tobytes()
    assert scenes[3]["bounding_boxes"]["labels"] is scenes.classes[3]
    truth = scenes.ground_truth()
    assert len(truth) == 5 and set(truth[0]) == {"boxes", "classes", "masks"}


@pytest.mark.parametrize("kwargs, message", [
    ({"digit_size": (10, 40)}, "digit_size"),
    ({"subset": "val"}, "subset"),
    ({"occlusion": 1.5}, "occlusion"),
    ({"objects": (3, 1)}, "objects"),
    ({"channels": 2}, "channels"),
    ({"distortion": -0.1}, "distortion"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        digit_scenes(2, image_size=32, **kwargs)

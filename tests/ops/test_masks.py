"""Mask ops against scipy.ndimage and scikit-image."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import find_boundaries

from kvision.ops import masks

STRUCTURE = {4: None, 8: np.ones((3, 3))}


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_equal_scipy_labels(connectivity):
    rng = np.random.default_rng(connectivity)
    blobs = rng.random((3, 40, 48)) < 0.45
    labels = np.asarray(masks.connected_components(blobs, connectivity=connectivity))
    expected = np.stack([ndimage.label(b, STRUCTURE[connectivity])[0] for b in blobs])
    np.testing.assert_array_equal(labels, expected)  # same ids, same numbering


def test_connected_components_follow_a_long_snake():
    """One component winding through the whole map (a path of ~700 pixels)."""
    snake = np.zeros((31, 40), bool)
    snake[::2] = True
    for row in range(1, 31, 2):
        snake[row, -1 if row % 4 == 1 else 0] = True
    labels = np.asarray(masks.connected_components(snake, connectivity=4))
    np.testing.assert_array_equal(labels, ndimage.label(snake)[0])
    assert labels.max() == 1


def test_class_components_cut_and_grown_back():
    rng = np.random.default_rng(3)
    class_map = rng.integers(0, 3, (2, 24, 24)) * (rng.random((2, 24, 24)) < 0.8)
    cut = rng.random((2, 24, 24)) < 0.15
    ids = np.asarray(masks.class_components(class_map, 3, cut=cut, grow=0))
    for c_map, c_cut, c_ids in zip(class_map, cut, ids):
        # Each id is one scipy component of one class once cut pixels are removed.
        assert not c_ids[c_cut | (c_map == 0)].any()
        count = 0
        for c in (1, 2):
            lab, n = ndimage.label((c_map == c) & ~c_cut, np.ones((3, 3)))
            count += n
            for k in range(1, n + 1):
                assert len(np.unique(c_ids[lab == k])) == 1
        assert c_ids.max() == count == len(np.unique(c_ids)) - 1
    grown = np.asarray(masks.class_components(class_map, 3, cut=cut, grow=30))
    # Grown back, a cut pixel takes the id of an instance of its own class.
    for c_map, c_ids in zip(class_map, grown):
        for k in np.unique(c_ids)[1:]:
            assert len(np.unique(c_map[c_ids == k])) == 1


def test_separation_map_and_boundaries():
    instances = np.zeros((3, 12, 12), bool)
    instances[0, 2:6, 2:6] = True
    instances[1, 2:6, 6:9] = True   # touches instance 0 along a column
    instances[2, 9:11, 9:11] = True  # alone
    sep = np.asarray(masks.separation_map(instances, width=1))
    union = instances.any(0)
    expected = np.zeros_like(union)
    for i, m in enumerate(instances):
        others = np.delete(instances, i, 0).any(0)
        expected |= m & ndimage.binary_dilation(others, np.ones((3, 3)))
    np.testing.assert_array_equal(sep, expected)
    assert sep[:, 5].sum() == 4 and sep[:, 6].sum() == 4 and sep.sum() == 8
    ids = (instances * np.arange(1, 4)[:, None, None]).sum(0)
    np.testing.assert_array_equal(
        np.asarray(masks.boundaries(instances)),
        find_boundaries(ids, connectivity=2, mode="inner", background=0) & union)
    np.testing.assert_array_equal(masks.instance_masks(ids), instances)


def test_bad_input():
    with pytest.raises(ValueError, match="connectivity must be 4 or 8, got 6"):
        masks.connected_components(np.ones((4, 4), bool), connectivity=6)
    with pytest.raises(ValueError, match=r"\(H, W\) or a batch \(B, H, W\).*\(2, 2, 4, 4\)"):
        masks.connected_components(np.ones((2, 2, 4, 4), bool))
    with pytest.raises(ValueError, match=r"\(n, H, W\), got shape \(4, 4\)"):
        masks.separation_map(np.ones((4, 4), bool))

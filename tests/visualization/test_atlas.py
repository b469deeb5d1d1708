"""The activation atlas (issue 20) on scikit-learn's digits: the layout is
scikit-learn's reduction of the network's features, and every cell shows the image
nearest its centre (checked by brute force in NumPy)."""

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from kvision.features import extractor
from kvision.visualization.atlas import activation_atlas

N, GRID = 240, 6


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.images[:N, ..., None].astype("float32") * (255 / 16), data.target[:N]


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs)


def _brute_force(layout, grid):
    """Cell (row from the top, column) of every point, and the nearest point to
    every cell centre, by looping over all points."""
    counts = np.zeros((grid, grid), int)
    for x, y in layout:
        counts[grid - 1 - min(int(y * grid), grid - 1), min(int(x * grid), grid - 1)] += 1
    nearest = np.zeros((grid, grid), int)
    for r in range(grid):
        for c in range(grid):
            centre = np.array([(c + 0.5) / grid, (grid - 1 - r + 0.5) / grid])
            nearest[r, c] = np.argmin(np.sum((layout - centre) ** 2, axis=1))
    return counts, nearest


@pytest.mark.parametrize("method", ["pca", pytest.param("tsne", marks=pytest.mark.slow)])
def test_each_cell_shows_the_digit_nearest_its_centre(digits, method, tmp_path):
    images = digits[0] if method == "pca" else digits[0][:100]  # t-SNE: ~8 s at 240
    n = len(images)
    model = _model()
    atlas = activation_atlas(model, images, tmp_path / "atlas.png", method=method,
                             grid=GRID)
    if method == "pca":  # the layout is scikit-learn's PCA of the fc features
        feats = extractor(model).predict(images, verbose=0).astype("float64")
        assert feats.shape == (n, 32)
        ref = PCA(n_components=2, random_state=0).fit_transform(feats)
        ref = (ref - ref.min(0)) / (ref.max(0) - ref.min(0))
        np.testing.assert_allclose(atlas.layout, ref, atol=1e-5)
    assert atlas.layout.shape == (n, 2)
    assert atlas.layout.min() == 0 and atlas.layout.max() == 1
    counts, nearest = _brute_force(atlas.layout, GRID)
    np.testing.assert_array_equal(atlas.counts, counts)
    np.testing.assert_array_equal(atlas.cells, np.where(counts > 0, nearest, -1))
    assert (atlas.cells >= 0).sum() >= GRID  # the digits spread over several cells
    # the picture: each shown cell holds its digit's thumbnail, empty cells are white
    written = np.asarray(Image.open(atlas.path))
    np.testing.assert_array_equal(written, atlas.image)
    side = atlas.image.shape[0] // (GRID * 9 + 1)  # 8-pixel tiles, 1-pixel gaps
    for r in range(GRID):
        for c in range(GRID):
            y, x = (1 + 9 * r) * side, (1 + 9 * c) * side
            tile = written[y:y + 8 * side:side, x:x + 8 * side:side, 0]
            i = atlas.cells[r, c]
            expected = 255 if i < 0 else np.round(images[i, ..., 0])
            np.testing.assert_array_equal(tile, expected)


def test_min_count_leaves_sparse_cells_empty_and_bad_input_is_named(digits, tmp_path):
    images, _ = digits
    atlas = activation_atlas(_model(), images, method="pca", grid=GRID, min_count=5)
    assert atlas.path is None
    np.testing.assert_array_equal(atlas.cells < 0, atlas.counts < 5)
    with pytest.raises(ValueError, match="method must be one of"):
        activation_atlas(_model(), images, method="umap")
    with pytest.raises(ValueError, match=r"images must be a batch \(N, H, W, C\)"):
        activation_atlas(_model(), images[0])
    with pytest.raises(ValueError, match="No layer named 'conv9'.*Close names: conv"):
        activation_atlas(_model(), images, layer="conv9", out=tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()

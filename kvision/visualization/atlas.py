"""An activation atlas: a dataset laid out by what a network sees in it.

``activation_atlas(model, images, out)`` runs the feature extractor
(:func:`kvision.features.extractor`: the layer before the classifier by default, any
layer by path, average-pooled) over ``images``, reduces the features to two
dimensions with scikit-learn (``method="pca"`` or ``"tsne"``), scales the layout to
the unit square and cuts it into ``grid`` x ``grid`` cells. Each cell that holds at
least ``min_count`` images shows the thumbnail of the image nearest to the cell's
centre in the layout, found with :class:`kvision.retrieval.Index` (exact euclidean
search); the other cells stay white. Images the network finds alike sit side by side,
so a trained network's atlas falls into regions of one class.

This is the layout half of Carter et al.'s *Activation Atlas* (Distill, 2019), with
dataset examples in the cells instead of feature visualizations of the cells' mean
activations.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvision import features
from kvision.retrieval import Index
from kvision.visualization.layers import _grid, save_png

METHODS = ("pca", "tsne")


@dataclasses.dataclass
class Atlas:
    """What :func:`activation_atlas` computed.

    ``layout``: ``(N, 2)`` positions in the unit square (x right, y up);
    ``cells``: ``(grid, grid)`` index of the image shown in each cell (row 0 at the
    top, as drawn; -1 where the cell stays empty); ``counts``: images per cell, same
    layout; ``centres``: ``(grid, grid, 2)`` the cells' centres in layout units;
    ``image``: the atlas, uint8 ``(H, W, 3)``; ``path``: where it was written.
    """

    layout: np.ndarray
    cells: np.ndarray
    counts: np.ndarray
    centres: np.ndarray
    image: np.ndarray
    path: str | None


def embed(model, images, layer=None, batch_size=64) -> np.ndarray:
    """Features ``(N, D)`` of ``images`` from ``model`` (a network or a name: its
    :func:`kvision.features.extractor` at ``layer``, average-pooled) or, with
    ``layer="output"``, from ``model``'s own output (an extractor or an embedding
    model), average-pooled if it is a map."""
    if layer == "output":
        net = model
    else:
        net = features.extractor(model, layers=layer, pooling="avg")
    out = net.predict(np.asarray(images, "float32"), batch_size=batch_size, verbose=0)
    out = np.asarray(out, "float64")
    if out.ndim == 4:
        out = out.mean(axis=(1, 2))
    if out.ndim != 2:
        raise ValueError(f"Expected features (N, D) or maps (N, H, W, C), got shape "
                         f"{out.shape} from {net.name!r}.")
    return out


def reduce(embeddings, method="pca", seed=0) -> np.ndarray:
    """``(N, D)`` -> ``(N, 2)`` with scikit-learn's PCA or t-SNE (PCA-initialised,
    perplexity 30 or less for small sets), scaled to the unit square."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    x = np.asarray(embeddings, "float64")
    if method == "pca":
        layout = PCA(n_components=2, random_state=seed).fit_transform(x)
    else:
        perplexity = min(30.0, (len(x) - 1) / 3)
        layout = TSNE(n_components=2, init="pca", perplexity=perplexity,
                      random_state=seed).fit_transform(x)
    return unit_square(layout)


def unit_square(layout) -> np.ndarray:
    """Each axis scaled to [0, 1] (a constant axis to 0.5)."""
    low, high = layout.min(axis=0), layout.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return np.where(high > low, (layout - low) / span, 0.5)


def grid_cells(layout, grid, min_count=1):
    """``(cells, counts, centres)`` of :class:`Atlas` for a unit-square ``layout``:
    the image nearest each cell's centre, by :class:`kvision.retrieval.Index`."""
    column = np.minimum((layout[:, 0] * grid).astype(int), grid - 1)
    row = grid - 1 - np.minimum((layout[:, 1] * grid).astype(int), grid - 1)  # y up
    counts = np.zeros((grid, grid), "int64")
    np.add.at(counts, (row, column), 1)
    centre = (np.arange(grid) + 0.5) / grid
    centres = np.stack(np.meshgrid(centre, centre[::-1]), axis=-1)  # [row, col] -> (x, y)
    index = Index(metric="euclidean").add(layout)
    nearest, _ = index.query(centres.reshape(-1, 2), k=1)
    cells = np.where(counts >= min_count, nearest.reshape(grid, grid), -1)
    return cells, counts, centres


def _thumbnails(images, value_range):
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got "
                         f"{value_range!r}.")
    tiles = np.clip((np.asarray(images, "float32") - low) / (high - low), 0, 1)
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    if tiles.shape[-1] != 3:
        raise ValueError(f"Thumbnails need 1 or 3 channels, got {tiles.shape[-1]}.")
    return tiles


def activation_atlas(model, images, out=None, method="pca", grid=10, layer=None,
                     min_count=1, value_range=(0, 255), thumbnails=None, seed=0,
                     batch_size=64) -> Atlas:
    """Lay ``images`` out by ``model``'s features and draw the atlas (module docstring).

    Args:
        model: a ``keras.Model`` or a model name (features from
            :func:`kvision.features.extractor` at ``layer``; ``layer="output"``:
            the model's own output is the embedding).
        images: ``(N, H, W, C)`` in the model's input units.
        out: write the atlas there as PNG.
        method: "pca" or "tsne".
        grid: cells per side.
        min_count: a cell shows a thumbnail only if at least this many images fall
            in it (1: every occupied cell).
        value_range: the pixel range of ``thumbnails`` (default ``images``).
        thumbnails: ``(N, h, w, C)`` pictures to show instead of ``images`` (the
            originals, when ``images`` were resized or normalized for the model).
    """
    images = np.asarray(images)
    if images.ndim != 4 or len(images) < 3:
        raise ValueError(f"images must be a batch (N, H, W, C) of 3 or more, got shape "
                         f"{images.shape}.")
    if method not in METHODS:  # before the features are computed
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an integer >= 1, got {grid!r}.")
    thumbnails = images if thumbnails is None else np.asarray(thumbnails)
    if len(thumbnails) != len(images):
        raise ValueError(f"thumbnails must be one per image: {len(images)} images, "
                         f"{len(thumbnails)} thumbnails.")
    tiles = _thumbnails(thumbnails, value_range)
    layout = reduce(embed(model, images, layer, batch_size), method, seed)
    cells, counts, centres = grid_cells(layout, grid, min_count)
    blank = np.ones_like(tiles[0])
    picture = _grid(np.stack([tiles[i] if i >= 0 else blank for i in cells.reshape(-1)]),
                    columns=grid)
    side = max(1, -(-48 // tiles.shape[1]))  # tiny thumbnails enlarged to ~48 pixels
    picture = picture.repeat(side, axis=0).repeat(side, axis=1)
    path = save_png(picture, out) if out is not None else None
    return Atlas(layout, cells, counts, centres, picture, path)

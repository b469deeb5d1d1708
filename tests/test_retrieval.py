import os

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from kvision.retrieval import Index


def _reference(data, queries, k, metric):
    """scikit-learn's exact search: (indices, distances), nearest first."""
    nn = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(data)
    distances, indices = nn.kneighbors(queries)
    return indices, distances


def _true_distance(queries, data, ids, metric):
    """Float64 distance from each query row to the data rows named by ``ids``."""
    picked = data[ids]                                     # (m, k, dim)
    if metric == "euclidean":
        return np.linalg.norm(picked - queries[:, None, :], axis=-1)
    dots = np.einsum("mkd,md->mk", picked, queries)
    return 1.0 - dots / (np.linalg.norm(picked, axis=-1)
                         * np.linalg.norm(queries, axis=-1)[:, None])


def _assert_same_neighbours(index, queries, data, k, metric):
    """``index.query`` gives scikit-learn's neighbours and distances, ties aside: where
    two reference distances (the (k+1)-th included) are within 1e-6, either order is
    right, so there the id returned must only lie at the reference's distance."""
    ids, distances = index.query(queries, k=k)
    assert ids.shape == distances.shape == (len(queries), k)
    more = min(k + 1, len(data))
    ref_ids, ref_distances = _reference(data, queries, more, metric)
    np.testing.assert_allclose(distances, ref_distances[:, :k], rtol=1e-5, atol=1e-6)
    close = np.abs(np.diff(ref_distances, axis=1)) < 1e-6
    tied = np.zeros(ref_ids.shape, bool)
    tied[:, 1:] |= close
    tied[:, :-1] |= close
    tied, ref_ids = tied[:, :k], ref_ids[:, :k]
    np.testing.assert_array_equal(ids[~tied], ref_ids[~tied])
    true = _true_distance(queries, data, ids, metric)
    np.testing.assert_allclose(true[tied], ref_distances[:, :k][tied], atol=2e-6)
    assert tied.mean() < 0.01      # the data has few ties: most ids were compared as is
    return ids, distances


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_query_matches_scikit_learn_brute_force(metric):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1500, 24))
    queries = rng.normal(size=(230, 24))
    # two adds (default ids continue) and small batches (the last one partial)
    index = Index(metric=metric, batch_size=64).add(data[:900]).add(data[900:])
    _, distances = _assert_same_neighbours(index, queries, data, 7, metric)
    assert np.all(np.diff(distances, axis=1) >= 0)
    # k equal to the index size: a full ranking
    _assert_same_neighbours(Index(metric=metric).add(data[:40]), queries[:5], data[:40],
                            40, metric)


def test_euclidean_stays_exact_with_a_large_common_offset():
    # Embeddings sharing a big common part (as ReLU features do): a plain float32
    # |q|^2 - 2 q.x + |x|^2 would lose the neighbour order entirely here.
    rng = np.random.default_rng(1)
    data = 100.0 + 0.01 * rng.normal(size=(800, 32))
    queries = 100.0 + 0.01 * rng.normal(size=(50, 32))
    ids, distances = Index(metric="euclidean").add(data).query(queries, k=5)
    direct = np.linalg.norm(queries[:, None, :] - data[None, :, :], axis=-1)
    np.testing.assert_array_equal(ids, np.argsort(direct, axis=1)[:, :5])
    np.testing.assert_allclose(distances, np.sort(direct, axis=1)[:, :5], rtol=1e-5)


def test_string_ids_and_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.normal(size=(60, 8)).astype("float32")
    names = np.array([f"img_{i:03d}.jpg" for i in range(60)])
    index = Index(metric="euclidean", batch_size=16).add(data, ids=names)
    queries = rng.normal(size=(9, 8))
    ids, distances = index.query(queries, k=4)
    ref_ids, ref_distances = _reference(data, queries, 4, "euclidean")
    np.testing.assert_array_equal(ids, names[ref_ids])

    path = tmp_path / "gallery.npz"
    path.write_bytes(b"an older file")             # replaced whole by save()
    assert index.save(path) == os.fspath(path)
    assert sorted(os.listdir(tmp_path)) == ["gallery.npz"]   # no temp file left
    with np.load(path, allow_pickle=False) as archive:       # plain arrays, no pickle
        assert archive["ids"].dtype.kind == "U"
    loaded = Index.load(path)
    assert (loaded.metric, loaded.batch_size, len(loaded), loaded.dim) == (
        "euclidean", 16, 60, 8)
    again_ids, again_distances = loaded.query(queries, k=4)
    np.testing.assert_array_equal(again_ids, ids)
    np.testing.assert_array_equal(again_distances, distances)
    np.testing.assert_allclose(again_distances, ref_distances, rtol=1e-5)
    # a loaded index keeps growing, and its id checks still hold
    loaded.add(data[:1] + 1.0, ids=["extra.jpg"])
    assert len(loaded) == 61
    with pytest.raises(ValueError, match="Duplicate ids"):
        loaded.add(data[:1], ids=["img_000.jpg"])


def test_default_ids_continue_and_cosine_scale_invariance():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(30, 5))
    index = Index().add(data[:10], ids=np.arange(100, 110)).add(data[10:])
    np.testing.assert_array_equal(index.ids, np.r_[np.arange(100, 110), np.arange(110, 130)])
    ids, distances = index.query(data[3:4] * 7.5, k=1)    # cosine ignores length
    assert ids[0, 0] == 103 and abs(distances[0, 0]) < 1e-6


def test_bad_input_is_a_clear_error(tmp_path):
    index = Index(metric="cosine").add(np.eye(4))
    with pytest.raises(ValueError, match=r"expected \(n, 4\), got \(2, 3\)"):
        index.query(np.ones((2, 3)))
    with pytest.raises(ValueError, match="dimension 5.*dimension 4"):
        index.add(np.ones((1, 5)))
    with pytest.raises(ValueError, match="k must be between 1 and the index size 4, got 5"):
        index.query(np.ones((1, 4)), k=5)
    with pytest.raises(ValueError, match=r"Duplicate ids: \[1\]"):
        Index().add(np.eye(3), ids=[1, 2, 1])
    with pytest.raises(ValueError, match=r"Duplicate ids: \[2\]"):
        index.add(np.ones((1, 4)), ids=[2])
    with pytest.raises(ValueError, match="2-D"):
        index.add(np.ones(4))
    with pytest.raises(ValueError, match="metric"):
        Index(metric="manhattan")
    with pytest.raises(ValueError, match="empty"):
        Index().query(np.ones((1, 4)))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        Index.load(tmp_path / "missing.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not an index")
    single = tmp_path / "array.npy"
    np.save(single, np.ones(3))
    other = tmp_path / "other.npz"
    np.savez(other, vectors=np.ones((2, 2)))
    for path in (text, single, other):
        with pytest.raises(ValueError, match="not a kvision retrieval index"):
            Index.load(path)

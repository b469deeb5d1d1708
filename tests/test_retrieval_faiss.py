"""retrieval.Index's FAISS backends behind the exact index's API."""

import sys

import numpy as np
import pytest

from kvision.retrieval import Index

faiss = pytest.importorskip("faiss")


def _clustered(seed, n, dim=32, clusters=50):
    """Embedding-like data: points around cluster centres (the same for every seed;
    not uniform noise, on which approximate search is at its worst)."""
    centres = np.random.default_rng(dim).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    return centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, dim))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_flat_equals_exact_in_ids_and_distances(metric):
    data = _clustered(0, 3000) + (50.0 if metric == "euclidean" else 0.0)  # an offset
    queries = _clustered(1, 300) + (50.0 if metric == "euclidean" else 0.0)
    exact = Index(metric, batch_size=128).add(data[:2000])
    flat = Index(metric, batch_size=128, backend="faiss-flat").add(data[:2000])
    flat.query(queries[:5], k=3)               # built, then grown by a later add
    exact.add(data[2000:])
    flat.add(data[2000:])
    ids, distances = exact.query(queries, k=10)
    f_ids, f_distances = flat.query(queries, k=10)
    assert flat._faiss.ntotal == 3000          # FAISS answered, grown by the add
    np.testing.assert_array_equal(f_ids, ids)
    if metric == "cosine":
        # the exact index takes 1 - a float32 dot product of unit vectors (values
        # of size 1, rounding bounded by dim x eps); FAISS's are recomputed in float64
        atol = data.shape[1] * np.finfo(np.float32).eps
        np.testing.assert_allclose(f_distances, distances, rtol=0, atol=atol)
    else:   # both: float64 differences of the same stored float32 rows
        np.testing.assert_allclose(f_distances, distances, rtol=1e-12)


@pytest.mark.parametrize("backend,options", [("faiss-ivfpq", {"nprobe": 8}),
                                             ("faiss-hnsw", {"ef_search": 64})])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_approximate_backends_find_most_true_neighbours(backend, options, metric):
    data, queries = _clustered(2, 5000), _clustered(3, 200)
    truth, _ = Index(metric).add(data).query(queries, k=10)
    approx = Index(metric, backend=backend, **options).add(data)
    ids, distances = approx.query(queries, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
    built = approx._faiss                      # the options reached FAISS
    assert (built.hnsw.efSearch if backend == "faiss-hnsw" else built.nprobe) == (
        options.get("ef_search", options.get("nprobe")))
    # measured 0.9995-1.0 (IVF-PQ re-ranks 4 x k candidates; 0.78-0.89 without)
    assert recall > 0.95, recall
    # the distances given are the true distances to the ids given, nearest first
    picked = data[ids]
    if metric == "euclidean":
        direct = np.linalg.norm(picked - queries[:, None], axis=-1)
    else:
        direct = 1 - np.einsum("mkd,md->mk", picked, queries) / (
            np.linalg.norm(picked, axis=-1) * np.linalg.norm(queries, axis=-1)[:, None])
    np.testing.assert_allclose(distances, direct, rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(distances, axis=1) >= 0)


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-ivfpq", "faiss-hnsw"])
def test_save_load_keeps_the_backend_and_its_answers(tmp_path, backend):
    data, queries = _clustered(4, 4000, dim=16), _clustered(5, 50, dim=16)
    names = np.array([f"img_{i}.jpg" for i in range(len(data))])
    index = Index("cosine", backend=backend).add(data, ids=names)
    ids, distances = index.query(queries, k=5)
    loaded = Index.load(index.save(tmp_path / "gallery.npz"))
    assert (loaded.backend, loaded.options) == (backend, index.options)
    again_ids, again_distances = loaded.query(queries, k=5)
    np.testing.assert_array_equal(again_ids, ids)
    np.testing.assert_array_equal(again_distances, distances)
    loaded.add(queries[:1], ids=["new.jpg"])          # and it keeps growing
    assert loaded.query(queries[:1], k=1)[0][0, 0] == "new.jpg"


def test_tiny_ivfpq_index_and_few_probed_lists_still_answer():
    data = _clustered(6, 200, dim=8)
    index = Index("euclidean", backend="faiss-ivfpq", nlist=8, nprobe=1).add(data)
    ids, distances = index.query(data[:10], k=60)   # more than one list holds
    assert ids.shape == (10, 60) and all(len(set(row)) == 60 for row in ids)
    truth_ids, truth = Index("euclidean").add(data).query(data[:10], k=60)
    np.testing.assert_array_equal(ids, truth_ids)   # those rows: searched exactly
    np.testing.assert_allclose(distances, truth, rtol=1e-12)


def test_faiss_missing_or_misused_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        Index(backend="annoy")
    with pytest.raises(ValueError, match=r"takes the options.*\['nprobe'\]"):
        Index(backend="faiss-hnsw", nprobe=4)
    monkeypatch.setitem(sys.modules, "faiss", None)    # as if not installed
    with pytest.raises(ImportError, match=r"kvision\[faiss\].*faiss-cpu"):
        Index(backend="faiss-flat")
    Index(backend="exact").add(np.eye(3)).query(np.eye(3), k=1)   # exact needs none

"""Nearest-neighbour search over embeddings: ``kvision.retrieval.Index``, exact or
through FAISS (``backend=``).

Brute force with numpy matrix products, queries taken in batches so that memory stays
bounded by ``batch_size x len(index)`` distances. Vectors are kept as float32 (half the
memory of float64, twice the matmul speed). Neighbours are chosen from float32 matrix
products; for the euclidean metric the ``k`` distances returned are then recomputed in
float64 by direct differences, which avoids the cancellation of ``|q|^2 - 2 q.x + |x|^2``
for near neighbours, and the vectors are searched relative to their mean, so that a
large common offset does not eat float32's precision. Cosine distances are good to
about 1e-7, so neighbours whose cosine similarities differ by less than that (nearly
parallel vectors) may come in either order.

    index = Index(metric="cosine")
    index.add(embeddings, ids=["cat.jpg", "dog.jpg", ...])   # (n, dim)
    ids, distances = index.query(queries, k=5)               # (m, 5) each, nearest first
    index.save("gallery.npz"); Index.load("gallery.npz")     # one .npz, no pickle

``index.metadata`` is a JSON-able dict saved with the index (``kvision embed`` keeps
there which model made the vectors, so that ``kvision search`` can refuse a gallery
of another model).

At scale, the same API over FAISS (``pip install "kvision[faiss]"``, imported only
when a FAISS backend is asked for): ``backend="faiss-flat"`` (exact, FAISS's
kernels), ``"faiss-ivfpq"`` (inverted lists of product-quantised codes, trained on
the vectors present at the first query; later adds are encoded without retraining)
or ``"faiss-hnsw"`` (a graph; no training). FAISS proposes the ``k`` candidates; their
distances are then computed from the stored vectors exactly as above, so
``"faiss-flat"`` gives the exact index's ids and distances, and the approximate ones
give true distances to the neighbours they found; IVF-PQ asks for ``rerank`` times
``k`` candidates (4 by default) and keeps the truly nearest ``k``. Options (``nlist``,
``nprobe``, ``m``, ``nbits``, ``rerank``, ``hnsw_m``, ``ef_search``,
``ef_construction``) trade recall for speed: ``benchmarks/retrieval_speed.py`` measures both.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

METRICS = ("cosine", "euclidean")
BACKENDS = ("exact", "faiss-flat", "faiss-ivfpq", "faiss-hnsw")
_OPTIONS = {"faiss-flat": {},
            "faiss-ivfpq": {"nlist": None, "nprobe": 16, "m": None, "nbits": 8,
                            "rerank": 4},
            "faiss-hnsw": {"hnsw_m": 32, "ef_search": 64, "ef_construction": 40},
            "exact": {}}
_FORMAT = "kvision.retrieval.Index/1"  # stored in every file, checked on load
_KEYS = ("format", "metric", "batch_size", "vectors", "center", "ids")
_FAISS_KEYS = ("backend", "options", "faiss_index", "faiss_count")  # absent: exact
_OPTIONAL_KEYS = _FAISS_KEYS + ("metadata",)  # metadata: absent in older files
_GATHER_LIMIT = 1 << 22  # float64 values gathered at once when refining distances


class Index:
    """An exact (brute-force) nearest-neighbour index.

    ``metric="cosine"``: distance ``1 - cos(q, x)`` (vectors are stored unit-normalised;
    a zero vector has distance 1 to everything, as in scikit-learn).
    ``metric="euclidean"``: the L2 distance ``||q - x||``.
    ``backend``: ``"exact"`` (numpy) or a FAISS index (see the module's docstring),
    with its ``options``. ``metadata``: a dict of JSON values kept in the saved file.
    """

    def __init__(self, metric="cosine", batch_size=1024, backend="exact", metadata=None,
                 **options):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        unknown = sorted(set(options) - set(_OPTIONS[backend]))
        if unknown:
            raise ValueError(f"backend {backend!r} takes the options "
                             f"{sorted(_OPTIONS[backend]) or 'none'}, got {unknown}.")
        if backend != "exact":
            _import_faiss(backend)          # fail now, not at the first query
        self.metric = metric
        self.batch_size = int(batch_size)
        self.backend = backend
        self.options = {**_OPTIONS[backend], **options}
        self.metadata = _check_metadata(metadata)
        self._faiss = None         # built at the first query from the stored vectors
        self._faiss_count = 0      # how many stored rows it holds
        self._parts = []           # float32 blocks added since the last search
        self._matrix = None        # (n, dim) float32: unit rows (cosine) or x - center
        self._center = None        # (dim,) float64 shift, zero for cosine
        self._sq_norms = None      # (n,) float32 squared norms, for euclidean
        self._ids = None           # (n,) int64 or unicode
        self._id_set = set()

    # -- size ---------------------------------------------------------------------
    def __len__(self):
        return 0 if self._ids is None else len(self._ids)

    @property
    def dim(self):
        """The embedding dimension, or ``None`` while the index is empty."""
        return None if self._center is None else len(self._center)

    @property
    def _vectors(self):
        """All stored rows ``(n, dim)``; blocks added one by one are joined once, on
        first use, so that many small adds do not copy the whole index each time."""
        if self._parts:
            blocks = ([self._matrix] if self._matrix is not None else []) + self._parts
            self._matrix = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
            norms = [np.einsum("ij,ij->i", part, part) for part in self._parts]
            self._sq_norms = np.concatenate(
                ([self._sq_norms] if self._sq_norms is not None else []) + norms)
            self._parts = []
        return self._matrix

    @property
    def ids(self):
        """All ids in insertion order, shape ``(len(self),)``."""
        return np.empty(0, "int64") if self._ids is None else self._ids.copy()

    def __repr__(self):
        return (f"Index(metric={self.metric!r}, backend={self.backend!r}, "
                f"size={len(self)}, dim={self.dim})")

    # -- adding -------------------------------------------------------------------
    def add(self, embeddings, ids=None):
        """Add ``embeddings`` ``(n, dim)`` under ``ids`` ``(n,)`` (ints or strings).

        Without ``ids`` the rows are numbered on from the largest integer id so far
        (``0..n-1`` for a fresh index). Returns ``self``.
        """
        vectors = self._check_embeddings(embeddings, "embeddings")
        new_ids = self._check_ids(ids, len(vectors))
        if not len(self):
            # Euclidean distances do not change under a shift; searching around the
            # first batch's mean keeps float32 products precise when every embedding
            # shares a large common part (ReLU features do).
            self._center = (vectors.mean(axis=0) if self.metric == "euclidean"
                            and len(vectors) else np.zeros(vectors.shape[1]))
        self._parts.append(self._prepare(vectors).astype("float32"))
        self._ids = new_ids if self._ids is None else np.concatenate([self._ids, new_ids])
        self._id_set.update(new_ids.tolist())
        return self

    def _check_embeddings(self, embeddings, what):
        array = np.asarray(embeddings)
        if array.ndim != 2:
            raise ValueError(f"{what} must be a 2-D array (n, dim), got shape {array.shape}.")
        if not (np.issubdtype(array.dtype, np.floating)
                or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{what} must be numeric, got dtype {array.dtype}.")
        if self.dim is not None and array.shape[1] != self.dim:
            raise ValueError(f"{what} have dimension {array.shape[1]}, but the index "
                             f"holds dimension {self.dim}: expected (n, {self.dim}), "
                             f"got {array.shape}.")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what} contain NaN or infinite values.")
        return array.astype("float64", copy=False)

    def _prepare(self, x):
        """Float64 rows as searched: unit rows (cosine) or shifted by the center."""
        return _unit_rows(x) if self.metric == "cosine" else x - self._center

    def _check_ids(self, ids, n):
        if ids is None:
            if self._ids is not None and self._ids.dtype.kind != "i":
                raise ValueError("This index has string ids; pass ids= explicitly.")
            start = 0 if self._ids is None or not len(self._ids) else int(self._ids.max()) + 1
            return np.arange(start, start + n, dtype="int64")
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},) to match the embeddings, "
                             f"got {ids.shape}.")
        if ids.dtype.kind in "iu":
            ids = ids.astype("int64")
        elif ids.dtype.kind == "U":
            pass
        elif n == 0:
            ids = ids.astype("int64")
        else:
            raise ValueError(f"ids must be integers or strings, got dtype {ids.dtype}.")
        if self._ids is not None and len(self._ids) and (self._ids.dtype.kind
                                                         != ids.dtype.kind):
            raise ValueError(f"ids must all be of one kind: the index holds "
                             f"{self._ids.dtype} ids, got {ids.dtype}.")
        unique, counts = np.unique(ids, return_counts=True)
        repeated = unique[counts > 1].tolist()
        repeated += [i for i in unique.tolist() if i in self._id_set]
        if repeated:
            raise ValueError(f"Duplicate ids: {sorted(set(repeated))[:10]}.")
        return ids

    # -- searching ----------------------------------------------------------------
    def query(self, embeddings, k=5):
        """The ``k`` nearest indexed vectors of each row of ``embeddings`` ``(m, dim)``.

        Returns ``(ids, distances)``, both of shape ``(m, k)``, nearest first.
        """
        if not len(self):
            raise ValueError("The index is empty: add() embeddings before query().")
        queries = self._prepare(self._check_embeddings(embeddings, "query embeddings"))
        k = int(k)
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be between 1 and the index size {len(self)}, "
                             f"got {k}.")
        out_pos = np.empty((len(queries), k), dtype="int64")
        out_dist = np.empty((len(queries), k), dtype="float64")
        for start in range(0, len(queries), self.batch_size):
            batch = queries[start:start + self.batch_size]
            pos, dist = (self._nearest(batch, k) if self.backend == "exact"
                         else self._faiss_nearest(batch, k))
            order = np.argsort(dist, axis=1, kind="stable")
            out_pos[start:start + len(batch)] = np.take_along_axis(pos, order, axis=1)
            out_dist[start:start + len(batch)] = np.take_along_axis(dist, order, axis=1)
        return self._ids[out_pos], out_dist

    def _nearest(self, batch, k):
        """Positions ``(b, k)`` of the ``k`` nearest rows, unordered, and their float64
        distances."""
        score = batch.astype("float32") @ self._vectors.T     # (b, n) dot products
        # in place, to hold one (b, n) float array: smaller score = nearer
        if self.metric == "cosine":
            np.negative(score, out=score)
        else:
            score *= -2.0
            score += self._sq_norms[None, :]                 # ||q||^2 is constant per row
        if k == score.shape[1]:
            pos = np.broadcast_to(np.arange(k), score.shape).copy()
        else:
            pos = np.argpartition(score, k - 1, axis=1)[:, :k]
        if self.metric == "cosine":
            # a float32 dot of unit vectors is good to ~1e-7: no cancellation to undo
            return pos, 1.0 + np.take_along_axis(score, pos, axis=1).astype("float64")
        return pos, self._euclidean(batch, pos)

    def _euclidean(self, batch, pos):
        """Float64 ``||q - x||`` from each query row to its candidate rows ``(b, k)``,
        by direct differences (``|q|^2 - 2 q.x + |x|^2`` cancels for near points)."""
        out = np.empty(pos.shape, dtype="float64")
        # a few query rows at a time keeps the (rows, k, dim) gather near 32 MB
        step = max(1, _GATHER_LIMIT // (pos.shape[1] * self._vectors.shape[1]))
        for start in range(0, len(batch), step):
            rows = slice(start, start + step)
            diff = self._vectors[pos[rows]].astype("float64") - batch[rows, None, :]
            out[rows] = np.sqrt(np.einsum("rkd,rkd->rk", diff, diff))
        return out

    # -- FAISS --------------------------------------------------------------------
    def _faiss_nearest(self, batch, k):
        """Like :meth:`_nearest`, with FAISS proposing the candidates; rows for which
        it finds fewer than ``k`` (an IVF probe of too few lists) are searched
        exactly."""
        index = self._faiss_index()
        # IVF-PQ's distances are coarse (8 bits per 8 dimensions): ask for rerank x k
        # candidates and keep the k truly nearest among them (IVFPQ+R, Jegou 2011)
        wanted = min(len(self), k * int(self.options.get("rerank", 1)))
        _, pos = index.search(np.ascontiguousarray(batch, dtype="float32"), wanted)
        short = (pos[:, :k] < 0).any(axis=1)
        pos_missing = pos < 0
        pos = np.where(pos_missing, 0, pos)
        if self.metric == "cosine":
            # float64 dot products of the stored unit rows: the true distances
            dist = 1.0 - np.einsum("bkd,bd->bk", self._vectors[pos].astype("float64"),
                                   batch)
        else:
            dist = self._euclidean(batch, pos)
        dist[pos_missing] = np.inf
        if wanted > k:
            keep = np.argpartition(dist, k - 1, axis=1)[:, :k]
            pos = np.take_along_axis(pos, keep, axis=1)
            dist = np.take_along_axis(dist, keep, axis=1)
        if short.any():
            pos[short], dist[short] = self._nearest(batch[short], k)
        return pos, dist

    def _faiss_index(self):
        """The FAISS index, built or brought up to date with the stored rows."""
        vectors = self._vectors
        if self._faiss is None:
            self._faiss = _build_faiss(self.backend, self.options, self.metric, vectors)
            self._faiss_count = 0
        if self._faiss_count < len(vectors):
            self._faiss.add(np.ascontiguousarray(vectors[self._faiss_count:]))
            self._faiss_count = len(vectors)
        return self._faiss

    # -- files --------------------------------------------------------------------
    def save(self, path):
        """Write the index to one ``.npz`` file at ``path`` (exactly that name) and
        return the path. Written beside the target and renamed, so an existing file
        is replaced whole or not at all."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        empty = self._center is None
        vectors = np.zeros((0, 0), "float32") if empty else self._vectors
        center = np.zeros(0) if empty else self._center
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".npz.tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, format=np.array(_FORMAT), metric=np.array(self.metric),
                         batch_size=np.array(self.batch_size), vectors=vectors,
                         center=center, ids=self.ids,
                         metadata=np.array(json.dumps(self.metadata)),
                         **self._faiss_arrays())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    def _faiss_arrays(self):
        """The backend, its options and the FAISS index as it is (a trained IVF-PQ
        keeps its codebooks: a loaded index answers as the saved one did)."""
        if self.backend == "exact":
            return {}
        serialized = (np.zeros(0, "uint8") if self._faiss is None else
                      _import_faiss(self.backend).serialize_index(self._faiss))
        return {"backend": np.array(self.backend),
                "options": np.array(json.dumps(self.options)),
                "faiss_index": serialized, "faiss_count": np.array(self._faiss_count)}

    @classmethod
    def load(cls, path):
        """Read an index written by :meth:`save` (no pickle is ever loaded)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No index file at {path!r}.")
        try:
            arrays = _read_arrays(path)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path!r} is not a kvision retrieval index file (an .npz "
                             f"written by Index.save): {err}") from None
        backend = str(arrays.get("backend", "exact"))
        options = json.loads(str(arrays["options"])) if "options" in arrays else {}
        metadata = json.loads(str(arrays["metadata"])) if "metadata" in arrays else {}
        index = cls(metric=str(arrays["metric"]), batch_size=int(arrays["batch_size"]),
                    backend=backend, metadata=metadata, **options)
        if len(arrays.get("faiss_index", ())):
            index._faiss = _import_faiss(backend).deserialize_index(arrays["faiss_index"])
            index._faiss_count = int(arrays["faiss_count"])
        if len(arrays["center"]):
            index._center = arrays["center"].astype("float64")
            index._parts = [arrays["vectors"].astype("float32")]
            index._ids = arrays["ids"]
            index._id_set = set(index._ids.tolist())
        return index


def _read_arrays(path):
    """The arrays of an index file; ValueError for anything else."""
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("it holds a single array, not an .npz archive.")
    with data:
        missing = [key for key in _KEYS if key not in data.files]
        if missing:
            raise ValueError(f"the archive lacks {missing}.")
        if str(data["format"]) != _FORMAT:
            raise ValueError(f"unknown format {str(data['format'])!r}.")
        return {key: data[key] for key in _KEYS + _OPTIONAL_KEYS if key in data.files}


def _check_metadata(metadata):
    """A copy of ``metadata`` (a dict, None for empty) that JSON can write; else a
    ValueError saying what it is."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}.")
    try:
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must hold JSON values (str, numbers, lists, "
                         f"dicts): {error}.") from None


def _unit_rows(x):
    """Rows scaled to unit L2 norm; zero rows stay zero (cosine distance 1)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def _import_faiss(backend):
    """The ``faiss`` module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError:
        raise ImportError(f"backend={backend!r} needs FAISS, which is not installed: "
                          f"pip install 'kvision[faiss]' (the faiss-cpu package), or use "
                          f"backend='exact'.") from None
    return faiss


def _build_faiss(backend, options, metric, vectors):
    """An empty (trained, for IVF-PQ) FAISS index for ``vectors`` ``(n, dim)``:
    inner product on the unit rows for cosine, L2 on the centred rows for euclidean."""
    faiss = _import_faiss(backend)
    n, dim = vectors.shape
    kind = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    if backend == "faiss-flat":
        return faiss.IndexFlat(dim, kind)
    if backend == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(dim, int(options["hnsw_m"]), kind)
        index.hnsw.efConstruction = int(options["ef_construction"])
        index.hnsw.efSearch = int(options["ef_search"])
        return index
    # IVF-PQ: k-means needs ~39 points per list and per PQ centroid; with fewer
    # vectors, fewer lists and bits (a tiny index still works, if not usefully)
    nlist = options["nlist"] or int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))
    nbits = int(min(options["nbits"], max(1, np.floor(np.log2(max(2, n // 39))))))
    m = options["m"] or next(c for c in (16, 8, 4, 2, 1) if dim % c == 0)
    if dim % m:
        raise ValueError(f"faiss-ivfpq's m ({m} sub-vectors) must divide the "
                         f"dimension {dim}.")
    index = faiss.IndexIVFPQ(faiss.IndexFlat(dim, kind), dim, int(nlist), int(m), nbits,
                             kind)
    # k-means on every vector of a large index costs minutes for no better lists:
    # train on a seeded sample of 64 per list (FAISS would sample 256)
    sample = max(64 * int(nlist), 64 << nbits)
    if n > sample:
        vectors = vectors[np.sort(np.random.default_rng(0).choice(n, sample, False))]
    index.train(np.ascontiguousarray(vectors))
    index.nprobe = int(min(options["nprobe"], nlist))
    return index

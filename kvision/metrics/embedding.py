"""Embedding metrics: verification (pairs), identification (ranking), open set.

- :func:`verification`: pair similarities and same/different booleans -> ROC, AUC,
  equal error rate and TAR at fixed FARs; the ROC and AUC are scikit-learn's
  ``roc_curve(drop_intermediate=False)`` and ``roc_auc_score``.
- :func:`identification`: queries ranked against a gallery -> rank-1/5, mAP, and
  ``precision_at_1``, ``r_precision``, ``map_at_r`` as pytorch-metric-learning's
  ``AccuracyCalculator`` defines them (Musgrave et al., "A Metric Learning Reality
  Check", 2020): R is the number of gallery items of the query's identity, a query
  is not its own neighbour when the queries are the gallery, and queries whose
  identity has no other gallery item are left out.
- :func:`open_set`: the detection-and-identification rate (DIR) at a false-alarm
  rate, with probes of identities missing from the gallery (NIST's FRVT/ Phillips et
  al. protocol); :class:`Gallery` enrols a new identity without retraining.

Similarities are "higher = more alike": cosine similarity, or minus the euclidean
distance.
"""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "euclidean")
_trapezoid = getattr(np, "trapezoid", None) or np.trapz     # renamed in numpy 2.0
_ROWS = 256     # queries ranked at once: a (256, gallery) float64 block


# -- verification ------------------------------------------------------------------
def verification(similarities, same, fars=(1e-3, 1e-4)):
    """Pair verification from ``similarities`` ``(n,)`` and ``same`` ``(n,)`` booleans.

    Returns ``{"auc", "eer", "threshold", "tar_at_far": {far: tar}, "roc": (far,
    tar)}``. ``roc`` holds one point per distinct similarity (accept when the score
    is at least it), starting at (0, 0). ``eer``: where the false-accept rate equals
    the false-reject rate, interpolated between ROC points; ``threshold``: the score
    at that point (accept ``>= threshold``). ``tar_at_far[f]``: the best true-accept
    rate at a false-accept rate of at most ``f``, read off the ROC's points, never
    interpolated: with fewer than ``1 / f`` different pairs it is the rate at FAR 0
    (same pairs scoring above every different pair), so measure 1e-4 on 10^4 or more.
    """
    scores, labels = _check_pairs(similarities, same)
    far, tar, thresholds = _roc(scores, labels)
    frr = 1.0 - tar
    i = int(np.argmax(far >= frr))            # the first point where FAR >= FRR
    gap_before, gap_after = frr[i - 1] - far[i - 1], far[i] - frr[i]
    t = gap_before / (gap_before + gap_after) if gap_before + gap_after > 0 else 0.0
    eer = far[i - 1] + t * (far[i] - far[i - 1])
    return {"auc": float(_trapezoid(tar, far)),
            "eer": float(eer),
            "threshold": float(thresholds[i]),
            "tar_at_far": {f: float(tar[far <= f].max()) for f in fars},
            "roc": (far, tar)}


def _check_pairs(similarities, same):
    scores = np.asarray(similarities, dtype="float64").ravel()
    labels = np.asarray(same)
    if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"same must be booleans (or 0/1), got values "
                         f"{np.unique(labels)[:5].tolist()}.")
    labels = labels.astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"similarities and same must have one value per pair: got "
                         f"{scores.shape[0]} similarities and {labels.shape[0]} labels.")
    if not np.isfinite(scores).all():
        raise ValueError("similarities contain NaN or infinite values.")
    if labels.all() or not labels.any():
        raise ValueError(f"verification needs both same and different pairs; got "
                         f"{int(labels.sum())} same of {labels.size}.")
    return scores, labels


def _roc(scores, labels):
    """FAR, TAR and thresholds at every distinct score, highest first, from (0, 0)."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]   # end of each tie
    tps = np.cumsum(labels)[last]
    fps = (last + 1) - tps
    far = np.r_[0.0, fps / fps[-1]]
    tar = np.r_[0.0, tps / tps[-1]]
    return far, tar, np.r_[np.inf, scores[last]]


# -- identification ----------------------------------------------------------------
def identification(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                   metric="cosine", exclude_self=None):
    """Rank the gallery for each query; returns ``{"rank1", "rank5", "map",
    "precision_at_1", "r_precision", "map_at_r", "queries"}``.

    ``rank1``/``rank5``: the share of queries with an item of their identity among the
    1/5 nearest (equal to ``precision_at_1`` for rank 1). ``map``: mean average
    precision over the whole ranking. ``r_precision`` and ``map_at_r``: pytorch-metric-
    learning's, over the first R neighbours. ``exclude_self``: whether query *i* is
    gallery item *i* and must not be its own neighbour; by default, when the two sets
    are equal. Queries whose identity has no (other) gallery item are left out of
    every figure; ``queries`` says how many were used.
    """
    queries, gallery = _check_sets(query_embeddings, query_labels, gallery_embeddings,
                                   gallery_labels, metric)
    (q, q_labels), (g, g_labels) = queries, gallery
    if exclude_self is None:
        exclude_self = (q.shape == g.shape and np.array_equal(q, g)
                        and np.array_equal(q_labels, g_labels))
    sums, used = np.zeros(6), 0
    for start in range(0, len(q), _ROWS):
        rows = slice(start, start + _ROWS)
        relevant = _ranked_relevance(q[rows], q_labels[rows], g, g_labels, metric,
                                     start if exclude_self else None)
        figures, n = _ranking_figures(relevant)
        sums += figures
        used += n
    if not used:
        raise ValueError("No query has an identity with another gallery item: "
                         "identification cannot be measured.")
    keys = ("rank1", "rank5", "map", "precision_at_1", "r_precision", "map_at_r")
    return {**dict(zip(keys, (float(v) for v in sums / used))), "queries": used}


def _ranked_relevance(q, q_labels, g, g_labels, metric, self_offset):
    """``(b, n)`` booleans: is the j-th nearest gallery item of the query's identity.
    With ``self_offset``, each query's own item is removed (n - 1 columns)."""
    distance = _distances(q, g, metric)
    if self_offset is not None:
        distance[np.arange(len(q)), self_offset + np.arange(len(q))] = np.inf
    order = np.argsort(distance, axis=1, kind="stable")
    if self_offset is not None:
        order = order[:, :-1]                       # its own item ranked last, dropped
    return g_labels[order] == q_labels[:, None]


def _ranking_figures(relevant):
    """Sums over the usable queries of rank1, rank5, AP, P@1, R-precision, MAP@R."""
    r = relevant.sum(axis=1)
    relevant = relevant[r > 0]
    r = r[r > 0]
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    within_r = np.arange(relevant.shape[1])[None, :] < r[:, None]
    ap = (precision * relevant).sum(axis=1) / r
    r_precision = (relevant & within_r).sum(axis=1) / r
    map_at_r = (precision * (relevant & within_r)).sum(axis=1) / r
    rank1 = relevant[:, 0]
    rank5 = relevant[:, :5].any(axis=1)
    return np.array([rank1.sum(), rank5.sum(), ap.sum(), rank1.sum(),
                     r_precision.sum(), map_at_r.sum()]), len(r)


def _distances(q, g, metric):
    """``(m, n)`` float64 distances, smaller = nearer."""
    if metric == "cosine":
        return 1.0 - _unit(q) @ _unit(g).T
    squared = (q * q).sum(1)[:, None] - 2.0 * q @ g.T + (g * g).sum(1)[None, :]
    return np.sqrt(np.maximum(squared, 0.0))


def _unit(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def _check_sets(q, q_labels, g, g_labels, metric):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    out = []
    for what, x, labels in (("query", q, q_labels), ("gallery", g, g_labels)):
        x = np.asarray(x, dtype="float64")
        labels = np.asarray(labels)
        if x.ndim != 2 or not len(x):
            raise ValueError(f"{what} embeddings must be a non-empty (n, dim) array, "
                             f"got shape {x.shape}.")
        if labels.shape != (len(x),):
            raise ValueError(f"{what} labels must have shape ({len(x)},) to match the "
                             f"embeddings, got {labels.shape}.")
        if not np.isfinite(x).all():
            raise ValueError(f"{what} embeddings contain NaN or infinite values.")
        out.append((x, labels))
    if out[0][0].shape[1] != out[1][0].shape[1]:
        raise ValueError(f"query and gallery embeddings differ in dimension: "
                         f"{out[0][0].shape[1]} and {out[1][0].shape[1]} (embeddings "
                         f"of two different models?).")
    return out


# -- open set ----------------------------------------------------------------------
def open_set(probe_embeddings, probe_labels, gallery_embeddings, gallery_labels,
             metric="cosine", fars=(1e-2, 1e-1)):
    """Open-set identification: probes whose identity is in the gallery (mated) must be
    named, the others (non-mated) rejected.

    Each probe's answer is its nearest gallery item's identity and its similarity.
    For a false-alarm rate ``f``, the threshold is the lowest that accepts at most
    ``f`` of the non-mated probes (accept ``> threshold``); the
    detection-and-identification rate is the share of mated probes both accepted and
    named right. Returns ``{"dir_at_far": {f: rate}, "threshold_at_far": {f: t},
    "rank1": closed-set rank-1 of the mated probes, "mated", "non_mated"}``.
    """
    (p, p_labels), (g, g_labels) = _check_sets(probe_embeddings, probe_labels,
                                               gallery_embeddings, gallery_labels,
                                               metric)
    mated = np.isin(p_labels, g_labels)
    if mated.all() or not mated.any():
        raise ValueError(f"open_set needs probes of gallery identities and probes of "
                         f"other identities; got {int(mated.sum())} mated of {len(p)}.")
    similarity, named = _best_matches(p, g, g_labels, metric)
    right = named == p_labels
    false_alarms = np.sort(similarity[~mated])[::-1]
    dirs, thresholds = {}, {}
    for f in fars:
        allowed = int(np.floor(f * len(false_alarms) + 1e-9))
        t = false_alarms[allowed] if allowed < len(false_alarms) else -np.inf
        thresholds[f] = float(t)
        dirs[f] = float(np.mean(right[mated] & (similarity[mated] > t)))
    return {"dir_at_far": dirs, "threshold_at_far": thresholds,
            "rank1": float(right[mated].mean()), "mated": int(mated.sum()),
            "non_mated": int((~mated).sum())}


def _best_matches(p, g, g_labels, metric):
    """Similarity of each probe's nearest gallery item and that item's label."""
    best, named = np.empty(len(p)), np.empty(len(p), dtype=g_labels.dtype)
    for start in range(0, len(p), _ROWS):
        distance = _distances(p[start:start + _ROWS], g, metric)
        nearest = np.argmin(distance, axis=1)
        near = distance[np.arange(len(nearest)), nearest]
        best[start:start + _ROWS] = 1.0 - near if metric == "cosine" else -near
        named[start:start + _ROWS] = g_labels[nearest]
    return best, named


class Gallery:
    """Embeddings of known identities; :meth:`enrol` adds one, no retraining needed.

        gallery = Gallery(metric="cosine").enrol(embeddings, "ann")
        names, scores = gallery.identify(queries, threshold=0.6)   # None: unknown
    """

    def __init__(self, metric="cosine"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
        self.metric = metric
        self.embeddings = None
        self.labels = np.empty(0, dtype=object)

    def __len__(self):
        return len(self.labels)

    @property
    def identities(self):
        """The enrolled identities, in enrolment order."""
        return tuple(dict.fromkeys(self.labels.tolist()))

    def enrol(self, embeddings, identity):
        """Add ``embeddings`` ``(n, dim)`` (or one ``(dim,)``) under ``identity``."""
        x = np.asarray(embeddings, dtype="float64")
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or not len(x) or not np.isfinite(x).all():
            raise ValueError(f"enrol takes finite embeddings (n, dim) or (dim,), got "
                             f"shape {np.shape(embeddings)}.")
        if self.embeddings is not None and x.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"the gallery holds {self.embeddings.shape[1]}-D embeddings, "
                             f"got {x.shape[1]}-D ones for {identity!r} (another model?).")
        self.embeddings = x if self.embeddings is None else np.vstack([self.embeddings, x])
        self.labels = np.concatenate([self.labels, np.full(len(x), identity, object)])
        return self

    def identify(self, query_embeddings, threshold=None):
        """Nearest identity and its similarity for each query; the name is ``None``
        where the similarity is not above ``threshold`` (an unknown person)."""
        if not len(self):
            raise ValueError("The gallery is empty: enrol() identities first.")
        (q, _), _ = _check_sets(query_embeddings, np.zeros(len(np.atleast_2d(
            query_embeddings))), self.embeddings, self.labels, self.metric)
        similarity, named = _best_matches(q, self.embeddings, self.labels, self.metric)
        if threshold is not None:
            named = np.where(similarity > threshold, named, None)
        return named, similarity

"""Embedding metrics against scikit-learn and against pytorch-metric-learning's
definitions (AccuracyCalculator, written out here per query, loop by loop)."""

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from kvision.metrics.embedding import Gallery, identification, open_set, verification


def _pairs(seed, n=4000, ties=False):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.5 * same
    if ties:
        scores = np.round(scores, 1)            # many equal scores
    return scores, same


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_verification_equals_scikit_learn(seed, ties):
    scores, same = _pairs(seed, ties=ties)
    out = verification(scores, same, fars=(1e-3, 1e-2, 0.1))
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    far, tar = out["roc"]
    np.testing.assert_allclose(far, fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tar, tpr, rtol=0, atol=1e-12)
    assert out["auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    for f, value in out["tar_at_far"].items():
        assert value == pytest.approx(tpr[fpr <= f].max(), abs=1e-12)
    # the usual EER recipe: FRR = FAR on the piecewise-linear ROC
    eer = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert out["eer"] == pytest.approx(eer, abs=1e-6)
    # accepting >= threshold gives rates on both sides of the EER
    accept = scores >= out["threshold"]
    assert accept[~same].mean() >= out["eer"] - 1e-9
    assert 1 - accept[same].mean() <= out["eer"] + 1e-9


def test_verification_refuses_one_sided_or_mismatched_pairs():
    with pytest.raises(ValueError, match="both same and different"):
        verification([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="one value per pair"):
        verification([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="NaN"):
        verification([np.nan, 0.2], [True, False])


def _reference(q, q_labels, g, g_labels, same_set):
    """AccuracyCalculator's precision_at_1, r_precision, mean_average_precision_at_r
    (and rank-5 and full mAP) from their definitions, one query at a time."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = {k: [] for k in ("rank1", "rank5", "map", "precision_at_1", "r_precision",
                           "map_at_r")}
    for i in range(len(q)):
        keep = np.arange(len(g)) != i if same_set else np.ones(len(g), bool)
        labels, sims = g_labels[keep], gn[keep] @ qn[i]
        order = np.argsort(-sims, kind="stable")
        rel = labels[order] == q_labels[i]
        r = int(rel.sum())                 # reference items of its label (not itself)
        if r == 0:
            continue                       # a "lone" query: left out
        out["rank1"].append(rel[0])
        out["rank5"].append(rel[:5].any())
        out["precision_at_1"].append(rel[0])
        out["r_precision"].append(rel[:r].sum() / r)
        # MAP@R = 1/R sum_{i<=R} P(i) rel(i)
        out["map_at_r"].append(sum(rel[:k + 1].sum() / (k + 1)
                                   for k in range(r) if rel[k]) / r)
        out["map"].append(average_precision_score(labels == q_labels[i], sims))
    return {k: float(np.mean(v)) for k, v in out.items()}, len(out["rank1"])


def _clusters(seed, n, ids, dim=8, spread=0.6, sample=0):
    """``n`` points around the first ``ids`` of 100 seeded centres (the same centres
    for every ``sample``)."""
    centres = np.random.default_rng(seed).normal(size=(100, dim))
    rng = np.random.default_rng([seed, sample])
    labels = rng.integers(0, ids, n)
    return centres[labels] + spread * rng.normal(size=(n, dim)), labels


def test_identification_equals_the_definitions_with_a_separate_gallery():
    g, g_labels = _clusters(0, 300, 20)
    q, q_labels = _clusters(0, 500, 25, sample=1)    # ids 20-24 are not in g
    out = identification(q, q_labels, g, g_labels)
    ref, used = _reference(q, q_labels, g, g_labels, same_set=False)
    assert out["queries"] == used < 500
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    assert 0.2 < out["map_at_r"] < out["map"] < 0.95   # a non-trivial case


def test_identification_a_query_is_not_its_own_neighbour():
    x, labels = _clusters(1, 400, 30)
    labels[:3] = 99                                   # ... one lone identity? no: three
    labels[3] = 98                                    # a lone one: left out
    out = identification(x, labels, x, labels)
    ref, used = _reference(x, labels, x, labels, same_set=True)
    assert out["queries"] == used == 399
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    assert out["rank1"] < 1.0                         # itself would make it 1


def test_identification_bad_input():
    with pytest.raises(ValueError, match="differ in dimension"):
        identification(np.ones((2, 4)), [0, 1], np.ones((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="labels must have shape"):
        identification(np.ones((2, 4)), [0], np.ones((2, 4)), [0, 1])


def test_open_set_dir_at_far_equals_a_threshold_sweep():
    g, g_labels = _clusters(2, 200, 40)
    p, p_labels = _clusters(2, 600, 60, sample=1)    # ids 40..59 are not enrolled
    out = open_set(p, p_labels, g, g_labels, fars=(0.01, 0.1, 0.3))
    sims = (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (
        g / np.linalg.norm(g, axis=1, keepdims=True)).T
    best, named = sims.max(1), g_labels[sims.argmax(1)]
    mated = np.isin(p_labels, g_labels)
    for f, rate in out["dir_at_far"].items():
        # the lowest threshold whose false-alarm rate is at most f
        candidates = sorted(set(best[~mated]) | {-np.inf})
        t = next(c for c in candidates if np.mean(best[~mated] > c) <= f)
        expected = np.mean((named[mated] == p_labels[mated]) & (best[mated] > t))
        assert rate == pytest.approx(expected, abs=1e-12)
        assert out["threshold_at_far"][f] == pytest.approx(t)
    assert out["dir_at_far"][0.01] < out["dir_at_far"][0.3] <= out["rank1"]


def test_enrol_adds_an_identity_without_retraining():
    rng = np.random.default_rng(4)
    people = {name: rng.normal(size=16) for name in ("ann", "bob", "cy", "dee")}
    gallery = Gallery()
    for name in ("ann", "bob", "cy"):
        gallery.enrol(people[name] + 0.1 * rng.normal(size=(3, 16)), name)
    photo = people["dee"] + 0.1 * rng.normal(size=(1, 16))
    names, _ = gallery.identify(photo, threshold=0.8)
    assert names[0] is None                          # unknown before enrolment
    gallery.enrol(people["dee"] + 0.1 * rng.normal(size=(2, 16)), "dee")
    names, scores = gallery.identify(photo, threshold=0.8)
    assert names[0] == "dee" and scores[0] > 0.8
    assert gallery.identities == ("ann", "bob", "cy", "dee") and len(gallery) == 11
    with pytest.raises(ValueError, match="16-D"):
        gallery.enrol(np.ones((1, 8)), "eve")

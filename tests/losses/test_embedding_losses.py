"""Metric-learning losses, miners and margin heads against direct NumPy formulas: every
pair, triplet and quadruplet of a small random batch enumerated in loops; the miners on
hand-made batches whose answers are read off a number line."""

import itertools
import math

import keras
import numpy as np
import pytest

from kvision.layers.margin import ArcFace, CosFace, NormFace, SphereFace
from kvision.losses.embedding import (CenterLoss, ContrastiveLoss, QuadrupletLoss,
                                      TripletLoss, batch_hard_triplets,
                                      distance_weights, pairwise_distances,
                                      sample_distance_weighted, semi_hard_negatives)

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])  # identity 3 alone: no positive


def _embeddings(seed=0, n=len(LABELS), dim=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def _distances(x, squared=False):
    d = np.linalg.norm(x[:, None, :].astype(np.float64) - x[None, :, :], axis=-1)
    return d ** 2 if squared else d


def _pairs(labels):
    n = len(labels)
    positives = [(a, p) for a, p in itertools.product(range(n), repeat=2)
                 if a != p and labels[a] == labels[p]]
    negatives = {a: [j for j in range(n) if labels[j] != labels[a]] for a in range(n)}
    return positives, negatives


# float32 error on distances of unit vectors (values up to 2): a few ulps of 2
ATOL = 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_is_hadsell_over_every_pair(seed):
    x = _embeddings(seed)
    d = _distances(x)
    terms = [0.5 * d[i, j] ** 2 if LABELS[i] == LABELS[j] else
             0.5 * max(0.0, 1.0 - d[i, j]) ** 2
             for i, j in itertools.combinations(range(len(x)), 2)]
    np.testing.assert_allclose(ContrastiveLoss()(LABELS, x), np.mean(terms), atol=ATOL)


@pytest.mark.parametrize("squared", [False, True])
def test_batch_all_is_the_mean_of_the_nonzero_triplets(squared):
    x = _embeddings(3)
    d = _distances(x, squared)
    positives, negatives = _pairs(LABELS)
    terms = [max(0.0, 0.2 + d[a, p] - d[a, n]) for a, p in positives for n in negatives[a]]
    nonzero = [t for t in terms if t > 0]
    got = TripletLoss(mining="batch_all", squared=squared)(LABELS, x)
    np.testing.assert_allclose(got, np.mean(nonzero), atol=ATOL)


@pytest.mark.parametrize("seed", [0, 4])
def test_batch_hard_is_the_hardest_triplet_per_anchor(seed):
    x = _embeddings(seed)
    d = _distances(x)
    positives, negatives = _pairs(LABELS)
    per_anchor = {}
    for a, p in positives:  # max over every (p, n) of the anchor's triplet losses
        worst = max(max(0.0, 0.2 + d[a, p] - d[a, n]) for n in negatives[a])
        per_anchor[a] = max(per_anchor.get(a, 0.0), worst)
    got = TripletLoss(mining="batch_hard")(LABELS, x)
    np.testing.assert_allclose(got, np.mean(list(per_anchor.values())), atol=ATOL)


@pytest.mark.parametrize("seed", [0, 5])
def test_semi_hard_is_facenet_with_the_tf_addons_fallback(seed):
    x = _embeddings(seed)
    d = _distances(x)
    positives, negatives = _pairs(LABELS)
    terms = []
    for a, p in positives:
        farther = [d[a, n] for n in negatives[a] if d[a, n] > d[a, p]]
        negative = min(farther) if farther else max(d[a, n] for n in negatives[a])
        terms.append(max(0.0, 1.0 + d[a, p] - negative))
    got = TripletLoss(margin=1.0, mining="semi_hard")(LABELS, x)
    np.testing.assert_allclose(got, np.mean(terms), atol=ATOL)


@pytest.mark.parametrize("seed", [0, 6])
def test_quadruplet_is_the_hardest_quadruplet_per_anchor(seed):
    x = _embeddings(seed)
    d = _distances(x, squared=True)
    positives, negatives = _pairs(LABELS)
    first, second = {}, {}
    for a, p in positives:
        for n in negatives[a]:
            first[a] = max(first.get(a, 0.0), max(0.0, d[a, p] - d[a, n] + 1.0))
        for i, j in itertools.permutations(negatives[a], 2):
            if LABELS[i] != LABELS[j]:
                second[a] = max(second.get(a, 0.0), max(0.0, d[a, p] - d[i, j] + 0.5))
    expected = np.mean(list(first.values())) + np.mean(list(second.values()))
    np.testing.assert_allclose(QuadrupletLoss()(LABELS, x), expected, atol=4 * ATOL)


def test_center_loss_value_and_wen_update():
    x, labels = _embeddings(7, n=6, dim=3), np.array([0, 0, 1, 2, 2, 2])
    loss = CenterLoss(classes=4, dim=3, alpha=0.5)
    centers = np.zeros((4, 3))
    for _ in range(3):
        expected = np.mean(0.5 * np.sum((x - centers[labels]) ** 2, axis=1))
        np.testing.assert_allclose(loss(labels, x), expected, atol=ATOL)
        for j in range(4):  # c_j -= alpha * sum(c_j - x_i) / (1 + n_j)
            members = x[labels == j]
            centers[j] -= 0.5 * np.sum(centers[j] - members, axis=0) / (1 + len(members))
        np.testing.assert_allclose(loss.centers.numpy(), centers, atol=ATOL)


def test_center_loss_moves_its_centers_inside_fit():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    loss = CenterLoss(classes=2, dim=2)
    model.compile("sgd", loss)
    model.fit(np.ones((4, 3)), np.array([0, 0, 1, 1]), epochs=1, verbose=0)
    assert np.all(np.abs(loss.centers.numpy()) > 0)


# --- miners on hand-made batches (1-D embeddings: distances read off a line) -------------

LINE = np.array([[0.0], [0.3], [1.0], [0.1], [0.5], [2.0]], "float32")
LINE_LABELS = np.array([0, 0, 0, 1, 1, 2])


def test_batch_hard_picks_the_farthest_positive_and_the_nearest_negative():
    positive, negative, valid = (np.asarray(v) for v in batch_hard_triplets(
        LINE_LABELS, pairwise_distances(LINE)))
    # anchor 0 (at 0): positives at 0.3, 1.0 -> 2; negatives 0.1, 0.5, 2.0 -> 3
    # anchor 4 (at 0.5): positive 0.1 -> 3; nearest negative 0.3 -> 1
    assert positive[0] == 2 and negative[0] == 3
    assert positive[4] == 3 and negative[4] == 1
    assert positive[2] == 0 and negative[2] == 4  # at 1.0: farthest 0, nearest 0.5
    assert valid.tolist() == [True] * 5 + [False]  # identity 2 has no positive


def test_semi_hard_picks_the_nearest_negative_beyond_the_positive():
    chosen = np.asarray(semi_hard_negatives(LINE_LABELS, pairwise_distances(LINE)))
    # a=0, p=1 (0.3): negatives at 0.1 (closer: skipped), 0.5 (0.5 > 0.3: chosen)
    assert chosen[0, 1] == 4
    # a=0, p=2 (1.0): none of 0.1, 0.5 is farther; 2.0 is -> 5
    assert chosen[0, 2] == 5
    # a=3 (0.1), p=4 (0.5 away 0.4): negatives 0 (0.1), 1 (0.2), 2 (0.9), 5 (1.9) -> 2
    assert chosen[3, 4] == 2
    # a=2 (at 1.0), p=0 (1.0 away): negatives at 0.5 (0.5 away), 0.1 (0.9), 2.0 (1.0,
    # not farther): none is farther -> TF Addons' fallback, the farthest negative, 5
    assert chosen[2, 0] == 5


def test_distance_weights_are_wu_et_al_inverse_density():
    x, dim = _embeddings(8, n=8, dim=4), 4
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    x[2] = x[0] + 0.1 * x[5]  # a negative nearer than the 0.5 cutoff, where it clips
    x[2] /= np.linalg.norm(x[2])
    d = _distances(x)
    assert np.any(d[labels[:, None] != labels[None]] < 0.5)
    got = np.asarray(distance_weights(labels, d.astype("float32"), dim))
    for a in range(len(x)):
        negatives = [n for n in range(len(x)) if labels[n] != labels[a] and d[a, n] < 1.4]
        clipped = np.maximum(d[a, negatives], 0.5)
        q = clipped ** (dim - 2) * (1 - clipped ** 2 / 4) ** ((dim - 3) / 2)
        expected = np.zeros(len(x))
        expected[negatives] = (1 / q) / np.sum(1 / q)
        np.testing.assert_allclose(got[a], expected, atol=1e-5)


def test_distance_weighted_draws_follow_the_weights_and_only_negatives():
    x, dim = _embeddings(9, n=6, dim=3), 3
    labels = np.array([0, 0, 1, 1, 2, 2])
    d = pairwise_distances(x)
    weights = np.asarray(distance_weights(labels, d, dim))
    seeds = keras.random.SeedGenerator(0)
    draws = np.concatenate([np.asarray(sample_distance_weighted(labels, d, dim, seed=seeds))
                            for _ in range(400)], axis=1)  # (6, 2,400)
    frequency = np.stack([np.bincount(row, minlength=6) / row.size for row in draws])
    np.testing.assert_allclose(frequency, weights, atol=0.03)  # 2,400 draws: σ ≤ 0.01


def test_distance_weighted_triplet_loss_is_the_triplet_loss_of_its_draws():
    """The loss draws from a SeedGenerator(seed): the same draws made here (their
    frequencies are tested above) give, in NumPy, the loss of every pair (a, p) with
    its drawn negative."""
    x, labels = _embeddings(11, n=8, dim=4), np.array([0, 0, 1, 1, 1, 2, 2, 3])
    d = _distances(x)
    for seed in (0, 1):
        drawn = np.asarray(sample_distance_weighted(labels, pairwise_distances(x), 4,
                                                    seed=keras.random.SeedGenerator(seed)))
        positives, _ = _pairs(labels)
        terms = [max(0.0, 0.2 + d[a, p] - d[a, drawn[a, p]]) for a, p in positives]
        assert all(labels[drawn[a, p]] != labels[a] for a, p in positives)
        got = TripletLoss(mining="distance_weighted", seed=seed)(labels, x)
        np.testing.assert_allclose(got, np.mean(terms), atol=ATOL)


# --- degenerate batches: no positive, no negative --------------------------------------

@pytest.mark.parametrize("loss", [
    ContrastiveLoss(), QuadrupletLoss(),
    *[TripletLoss(mining=m, seed=0) for m in ("batch_all", "batch_hard", "semi_hard",
                                              "distance_weighted")]],
    ids=lambda loss: getattr(loss, "mining", loss.name))
@pytest.mark.parametrize("labels", [[4, 4, 4, 4], [0, 1, 2, 3], [7, 7, 7, 7, 7, 7]],
                         ids=["one identity", "every identity once", "duplicates"])
def test_nothing_to_compare_gives_a_finite_loss_and_gradient(loss, labels):
    import tensorflow as tf

    x = tf.Variable(_embeddings(10, n=len(labels), dim=3))
    if labels[0] == 7:  # one image repeated: distances exactly 0 (sqrt's gradient)
        x = tf.Variable(np.repeat(_embeddings(10, n=1, dim=3), len(labels), axis=0))
    with tf.GradientTape() as tape:
        value = loss(np.array(labels), x)
    gradient = tape.gradient(value, x)
    assert np.isfinite(float(value))
    assert gradient is None or np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("loss", [ContrastiveLoss(margin=0.7), QuadrupletLoss(0.8, 0.3),
                                  TripletLoss(0.1, "semi_hard", squared=True),
                                  CenterLoss(3, 2, alpha=0.25)])
def test_losses_serialize(loss):
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == loss.get_config()


def test_unknown_mining_is_refused():
    with pytest.raises(ValueError, match="mining must be one of"):
        TripletLoss(mining="hardest")


# --- margin heads ------------------------------------------------------------------------

def _head_on_angles(head, thetas):
    """Logits of ``head`` for 2-D embeddings at angles ``thetas`` from class 0's
    weight (class 1's weight at 90°), all labelled class 0."""
    embeddings = np.stack([np.cos(thetas), np.sin(thetas)], axis=1).astype("float32")
    head.build((None, 2))
    head.kernel.assign(np.array([[1.0, 0.0], [0.0, 1.0]], "float32"))
    labels = np.zeros(len(thetas), "int32")
    return np.asarray(head([embeddings, labels])), np.asarray(head(embeddings))


THETAS = np.linspace(0.01, math.pi - 1e-4, 400)


def test_cosface_logits():
    logits, plain = _head_on_angles(CosFace(2), THETAS)
    np.testing.assert_allclose(logits[:, 0], 64 * (np.cos(THETAS) - 0.35), atol=64 * 1e-6)
    np.testing.assert_allclose(logits[:, 1], 64 * np.sin(THETAS), atol=64 * 1e-6)
    np.testing.assert_allclose(plain[:, 0], 64 * np.cos(THETAS), atol=64 * 1e-6)


def test_arcface_logits_follow_insightface_and_stay_monotonic_past_pi():
    m = 0.5
    logits, _ = _head_on_angles(ArcFace(2), THETAS)
    expected = np.where(THETAS < math.pi - m, np.cos(THETAS + m),
                        np.cos(THETAS) - m * math.sin(m))
    np.testing.assert_allclose(logits[:, 0], 64 * expected, atol=64 * 2e-6)
    # farther from the class -> never a larger logit (cos(θ + m) alone rises past π - m)
    assert np.all(np.diff(logits[:, 0]) <= 1e-4)
    assert np.any(np.diff(np.cos(THETAS + m)) > 0)
    np.testing.assert_allclose(logits[:, 1], 64 * np.sin(THETAS), atol=64 * 1e-6)


def test_sphereface_logits_are_psi_blended():
    thetas = THETAS[::10]
    logits, _ = _head_on_angles(SphereFace(2, margin=4, blend=5.0), thetas)
    k = np.floor(4 * thetas / math.pi)
    psi = (-1) ** k * np.cos(4 * thetas) - 2 * k
    np.testing.assert_allclose(logits[:, 0], (5 * np.cos(thetas) + psi) / 6, atol=1e-5)
    assert np.all(np.diff(logits[:, 0]) < 0)  # ψ is monotonic on [0, π]


def test_normface_is_scaled_cosine_and_ignores_labels():
    logits, plain = _head_on_angles(NormFace(2), THETAS)
    np.testing.assert_allclose(logits, plain)
    np.testing.assert_allclose(logits[:, 0], 16 * np.cos(THETAS), atol=16 * 1e-6)


@pytest.mark.parametrize("head", [NormFace(3, scale=8.0), CosFace(3, margin=0.2),
                                  ArcFace(3, margin=0.3), SphereFace(3, scale=10.0),
                                  SphereFace(3)])
def test_heads_serialize(head):
    again = type(head).from_config(head.get_config())
    assert again.get_config() == head.get_config()

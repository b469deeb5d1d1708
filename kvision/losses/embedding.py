"""Metric-learning losses and their miners: ``(labels, embeddings)`` in, one number out.

Every loss here takes a batch of integer identity labels ``(N,)`` (or ``(N, 1)``) and
the model's embeddings ``(N, D)`` and looks at the pairs or triplets *inside the batch*
(online mining), so a model trains on labelled batches from
:func:`kvision.embedding.pk_batches` (P identities x K images) with a plain
``model.fit``. Distances are Euclidean (``squared=True``: squared Euclidean, FaceNet's
and the quadruplet paper's choice); on L2-normalized embeddings they lie in [0, 2].

Miners (pure functions on a label vector and a distance matrix, tested on hand-made
batches) say which triplets count:

- :func:`batch_all_triplets`: every valid ``(a, p, n)`` (Hermans et al. 2017, "BA");
- :func:`batch_hard_triplets`: per anchor the farthest positive and the nearest
  negative (Hermans et al. 2017, "In Defense of the Triplet Loss");
- :func:`semi_hard_negatives`: per ``(a, p)`` the nearest negative farther than the
  positive (FaceNet, Schroff et al. 2015; when none is, the farthest negative, as
  TensorFlow Addons' ``TripletSemiHardLoss`` falls back);
- :func:`distance_weights` / :func:`sample_distance_weighted`: negatives drawn with
  probability inversely proportional to the density of distances on the unit sphere,
  ``q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2)`` (Wu et al. 2017, "Sampling Matters in Deep
  Embedding Learning"; their cutoffs 0.5 and 1.4).

A batch in which a loss finds nothing to compare (one identity: no negative; every
identity once: no positive) gives 0 with zero gradients, never NaN.
"""

from __future__ import annotations

import keras
from keras import ops

EPSILON = 1e-12  # under a square root: the gradient of sqrt at 0 is infinite
MININGS = ("batch_all", "batch_hard", "semi_hard", "distance_weighted")


# --- distances and label masks ---------------------------------------------------------

def pairwise_distances(embeddings, squared=False):
    """``(N, N)`` Euclidean (or squared) distances between the rows of ``embeddings``."""
    embeddings = ops.convert_to_tensor(embeddings, "float32")
    norms = ops.sum(ops.square(embeddings), axis=-1)
    dot = ops.matmul(embeddings, ops.transpose(embeddings))
    squares = ops.maximum(norms[:, None] - 2.0 * dot + norms[None, :], 0.0)
    squares = squares * (1.0 - ops.eye(ops.shape(embeddings)[0]))  # exact zeros there
    return squares if squared else ops.sqrt(ops.maximum(squares, EPSILON))


def label_masks(labels):
    """``(positive, negative)`` boolean ``(N, N)``: same label and not the same row;
    different label."""
    labels = ops.reshape(labels, (-1,))
    same = ops.equal(labels[:, None], labels[None, :])
    not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(labels)[0]), "bool"))
    return ops.logical_and(same, not_self), ops.logical_not(same)


def _masked_mean(values, mask):
    """Mean of ``values`` where ``mask``; 0 (not NaN) where nothing is."""
    mask = ops.cast(mask, values.dtype)
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


# --- miners ----------------------------------------------------------------------------

def batch_all_triplets(labels):
    """``(N, N, N)`` boolean: ``[a, p, n]`` is a valid triplet (``p`` shares ``a``'s
    label and is not ``a``; ``n`` has another label)."""
    positive, negative = label_masks(labels)
    return ops.logical_and(positive[:, :, None], negative[:, None, :])


def batch_hard_triplets(labels, distances):
    """Per anchor: ``(positive index, negative index, valid)`` with the farthest
    positive and the nearest negative; ``valid`` is False for an anchor with no
    positive or no negative (its indices are then meaningless)."""
    positive, negative = label_masks(labels)
    far = ops.where(positive, distances, -1.0)
    near = ops.where(negative, distances, ops.max(distances) + 1.0)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    return ops.argmax(far, axis=1), ops.argmin(near, axis=1), valid


def semi_hard_negatives(labels, distances):
    """Per pair ``(a, p)``: the index of FaceNet's semi-hard negative, ``(N, N)``: the
    nearest negative of ``a`` farther from ``a`` than ``p`` is; where no negative is,
    the farthest negative of ``a`` (TF Addons' fallback). Meaningless where ``a`` has
    no negative."""
    _, negative = label_masks(labels)
    farther = ops.logical_and(negative[:, None, :],
                              distances[:, None, :] > distances[:, :, None])  # [a, p, n]
    big = ops.max(distances) + 1.0
    outside = ops.argmin(ops.where(farther, distances[:, None, :], big), axis=-1)
    inside = ops.argmax(ops.where(negative, distances, -1.0), axis=-1)  # farthest
    return ops.where(ops.any(farther, axis=-1), outside, inside[:, None])


def distance_weights(labels, distances, dim, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Wu et al.'s sampling weights ``(N, N)``, each row summing to 1 over the anchor's
    negatives: ``1 / q(d)`` with ``d`` clipped below at ``cutoff``, zero for
    negatives at or beyond ``nonzero_loss_cutoff`` (they give no loss). A row with no
    such negative weighs the anchor's negatives equally; a row with no negative is 0.

    ``dim`` is the embedding dimension ``n`` of ``q(d)``; distances are of
    L2-normalized embeddings (they lie in [0, 2]).
    """
    _, negative = label_masks(labels)
    d = ops.maximum(distances, cutoff)
    inside = ops.maximum(1.0 - 0.25 * ops.square(d), EPSILON)
    log_weights = (2.0 - dim) * ops.log(d) - 0.5 * (dim - 3.0) * ops.log(inside)
    useful = ops.logical_and(negative, distances < nonzero_loss_cutoff)
    log_weights = ops.where(useful, log_weights, -1e30)
    weights = ops.exp(log_weights - ops.max(log_weights, axis=1, keepdims=True))
    weights = ops.where(useful, weights, 0.0)
    any_useful = ops.any(useful, axis=1, keepdims=True)
    weights = ops.where(any_useful, weights, ops.cast(negative, "float32"))
    return weights / ops.maximum(ops.sum(weights, axis=1, keepdims=True), EPSILON)


def sample_distance_weighted(labels, distances, dim, seed=None, **cutoffs):
    """One negative index per pair ``(a, p)``, ``(N, N)``, drawn from row ``a`` of
    :func:`distance_weights`."""
    weights = distance_weights(labels, distances, dim, **cutoffs)
    logits = ops.log(ops.maximum(weights, 1e-30))
    count = ops.shape(weights)[0]
    draws = keras.random.categorical(logits, count, seed=seed)  # (N anchors, N draws)
    return ops.cast(draws, "int32")


# --- losses ----------------------------------------------------------------------------

class _PairLoss(keras.losses.Loss):
    """The common part: labels flattened, embeddings to float32, config."""

    def __init__(self, margin, squared, name, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.margin = float(margin)
        self.squared = bool(squared)

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        embeddings = ops.cast(y_pred, "float32")
        return self.compute(labels, embeddings,
                            pairwise_distances(embeddings, squared=self.squared))

    def compute(self, labels, embeddings, distances):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "squared": self.squared}


@keras.saving.register_keras_serializable(package="kvision")
class ContrastiveLoss(_PairLoss):
    """Hadsell, Chopra & LeCun (2006): over every pair ``i < j`` of the batch,
    ``½ d²`` for a pair of one identity and ``½ max(0, margin - d)²`` for two,
    averaged over the pairs. ``margin`` 1 (the paper's ``m``)."""

    def __init__(self, margin=1.0, name="contrastive_loss", **kwargs):
        kwargs.pop("squared", None)
        super().__init__(margin, False, name, **kwargs)

    def compute(self, labels, embeddings, distances):
        positive, negative = label_masks(labels)
        pull = 0.5 * ops.square(distances)
        push = 0.5 * ops.square(ops.relu(self.margin - distances))
        terms = ops.where(positive, pull, push)
        count = ops.shape(labels)[0]
        upper = ops.triu(ops.ones((count, count), "bool"), k=1)  # each pair once
        return _masked_mean(terms, ops.logical_and(upper, ops.logical_or(positive,
                                                                         negative)))


@keras.saving.register_keras_serializable(package="kvision")
class TripletLoss(_PairLoss):
    """``max(0, margin + d(a, p) - d(a, n))`` over the triplets a miner picks.

    Args:
        margin: FaceNet's α, 0.2.
        mining: ``"batch_hard"`` (default; the mean over anchors with a positive and
            a negative), ``"batch_all"`` (the mean over the triplets whose loss is not
            zero, Hermans et al.'s "BA≠0"), ``"semi_hard"`` (the mean over every pair
            ``(a, p)`` with its semi-hard negative, as TF Addons'
            ``TripletSemiHardLoss``) or ``"distance_weighted"`` (the mean over every
            pair ``(a, p)`` with one negative drawn by Wu et al.'s weights; for
            L2-normalized embeddings).
        squared: squared Euclidean distances (FaceNet) instead of Euclidean
            (Hermans et al.'s advice; the default).
        seed: the draws of ``"distance_weighted"``.
    """

    def __init__(self, margin=0.2, mining="batch_hard", squared=False, seed=None,
                 name="triplet_loss", **kwargs):
        if mining not in MININGS:
            raise ValueError(f"mining must be one of {MININGS}, got {mining!r}.")
        super().__init__(margin, squared, name, **kwargs)
        self.mining = mining
        self.seed = seed
        self._seeds = (keras.random.SeedGenerator(seed)
                       if mining == "distance_weighted" else None)

    def compute(self, labels, embeddings, distances):
        if self.mining == "batch_all":
            terms = self.margin + distances[:, :, None] - distances[:, None, :]
            terms = ops.relu(terms)
            return _masked_mean(terms, ops.logical_and(batch_all_triplets(labels),
                                                       terms > 0))
        if self.mining == "batch_hard":
            positive, negative, valid = batch_hard_triplets(labels, distances)
            rows = ops.arange(ops.shape(labels)[0])
            terms = ops.relu(self.margin + _pick(distances, rows, positive)
                             - _pick(distances, rows, negative))
            return _masked_mean(terms, valid)
        if self.mining == "semi_hard":
            chosen = semi_hard_negatives(labels, distances)
        else:
            chosen = sample_distance_weighted(labels, distances, embeddings.shape[-1],
                                              seed=self._seeds)
        positive, negative = label_masks(labels)
        to_negative = ops.take_along_axis(distances, chosen, axis=1)  # d(a, n(a, p))
        terms = ops.relu(self.margin + distances - to_negative)
        has_negative = ops.any(negative, axis=1, keepdims=True)
        return _masked_mean(terms, ops.logical_and(positive, has_negative))

    def get_config(self):
        return {**super().get_config(), "mining": self.mining, "seed": self.seed}


@keras.saving.register_keras_serializable(package="kvision")
class QuadrupletLoss(_PairLoss):
    """Chen et al. (2017), "Beyond triplet loss", with batch-hard mining: per anchor,
    ``max(0, d(a, p) - d(a, n) + margin)`` (the triplet term, farthest positive and
    nearest negative) plus ``max(0, d(a, p) - d(n1, n2) + second_margin)`` where
    ``(n1, n2)`` is the nearest pair of two different identities, neither the
    anchor's; each term averaged over the anchors it exists for. The paper's
    squared distances and margins α1 = 1, α2 = 0.5 (the second weaker)."""

    def __init__(self, margin=1.0, second_margin=0.5, squared=True,
                 name="quadruplet_loss", **kwargs):
        super().__init__(margin, squared, name, **kwargs)
        self.second_margin = float(second_margin)

    def compute(self, labels, embeddings, distances):
        positive, negative, valid = batch_hard_triplets(labels, distances)
        rows = ops.arange(ops.shape(labels)[0])
        to_positive = _pick(distances, rows, positive)
        triplet = ops.relu(to_positive - _pick(distances, rows, negative) + self.margin)
        _, different = label_masks(labels)
        # [a, i, j]: i and j differ, and neither is a's identity
        pairs = different[None, :, :] & different[:, :, None] & different[:, None, :]
        big = ops.max(distances) + 1.0
        nearest = ops.min(ops.where(pairs, distances[None], big), axis=(1, 2))
        has_pair = ops.any(pairs, axis=(1, 2))
        has_positive = ops.any(label_masks(labels)[0], axis=1)
        second = ops.relu(to_positive - nearest + self.second_margin)
        return (_masked_mean(triplet, valid)
                + _masked_mean(second, ops.logical_and(has_pair, has_positive)))

    def get_config(self):
        return {**super().get_config(), "second_margin": self.second_margin}


@keras.saving.register_keras_serializable(package="kvision")
class CenterLoss(keras.losses.Loss):
    """Wen et al. (2016): ``½ ||x_i - c_{y_i}||²`` averaged over the batch, with one
    center per class moved after each batch by the paper's rule
    ``c_j -= alpha * Σ_{y_i=j} (c_j - x_i) / (1 + n_j)`` (α = 0.5).

    The paper trains it next to softmax, weighted by λ: give it as one of the losses
    with ``loss_weights``. The centers are the loss's own state (not the model's):
    they start at zero, move whenever the loss is computed (evaluation too) and are
    not saved with the model.
    """

    def __init__(self, classes, dim, alpha=0.5, name="center_loss",
                 reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.classes, self.dim, self.alpha = int(classes), int(dim), float(alpha)
        self.centers = keras.Variable(ops.zeros((self.classes, self.dim)),
                                      trainable=False, name="centers")

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        embeddings = ops.cast(y_pred, "float32")
        centers = ops.take(self.centers, labels, axis=0)
        losses = 0.5 * ops.sum(ops.square(embeddings - centers), axis=-1)
        one_hot = ops.one_hot(labels, self.classes)  # (N, classes)
        counts = ops.sum(one_hot, axis=0)[:, None]
        pulls = counts * self.centers - ops.matmul(ops.transpose(one_hot), embeddings)
        step = self.alpha * ops.stop_gradient(pulls) / (1.0 + counts)
        self.centers.assign(self.centers - step)
        return losses

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "dim": self.dim,
                "alpha": self.alpha}


def _pick(matrix, rows, columns):
    """``matrix[rows[i], columns[i]]`` for each i."""
    return ops.take_along_axis(matrix, ops.cast(columns, "int32")[:, None], axis=1)[:, 0]

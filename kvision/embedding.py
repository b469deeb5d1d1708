"""Embedding models: a backbone to an L2-normalized vector, P x K batches, a collapse
monitor.

An embedding model maps an image to a point where photos of one identity lie close
and different identities far (FaceNet, re-identification, image search)::

    model = embedding.build("resnet18", dim=128, input_shape=(64, 64, 3))
    model.compile("adam", TripletLoss(mining="batch_hard"))
    model.fit(pk_batches(images, labels, p=16, k=4, seed=0), steps_per_epoch=100)

Losses and miners are in :mod:`kvision.losses.embedding`; margin heads (ArcFace,
CosFace…) in :mod:`kvision.layers.margin`, put on a model by
:func:`with_margin_head` for training with softmax cross-entropy.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from kvision.models.backbone import build_backbone
from kvision.tasks.model import TaskModel

TASK = "embedding"
log = logging.getLogger("kvision.embedding")


def build(backbone, dim=128, normalize=True, input_shape=None, backbone_weights=None,
          trainable_backbone=True, name="embedding"):
    """An embedding model: raw pixels ``"images"`` -> ``"embeddings"`` ``(N, dim)``.

    The backbone comes from :func:`kvision.models.backbone.build_backbone` (a zoo
    name, a keras.applications name or a functional ``keras.Model``, its own
    preprocessing, ``backbone_weights`` and ``trainable_backbone`` as it takes them),
    its output is average-pooled, a Dense layer maps it to ``dim`` and, with
    ``normalize``, Keras' ``UnitNormalization`` puts it on the unit sphere (so
    Euclidean distance and cosine similarity rank alike). A :class:`TaskModel` of
    task ``"embedding"``.
    """
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}.")
    images, x = build_backbone(backbone, (None,), input_shape=input_shape,
                               weights=backbone_weights, trainable=trainable_backbone)
    return TaskModel(images, embedding_head(x, dim, normalize), task=TASK, name=name)


def embedding_head(x, dim=128, normalize=True):
    """Features -> embeddings: a feature map ``(N, H, W, C)`` average-pooled (a vector
    ``(N, C)`` taken as it is), a Dense to ``dim`` and, with ``normalize``, Keras'
    ``UnitNormalization``. The last layer is named ``"embeddings"``."""
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}.")
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif len(x.shape) != 2:
        raise ValueError(f"The backbone's output must be a feature map (N, H, W, C) or "
                         f"a vector (N, C), got shape {tuple(x.shape)}.")
    x = keras.layers.Dense(int(dim), name="projection" if normalize else "embeddings")(x)
    if normalize:
        x = keras.layers.UnitNormalization(name="embeddings")(x)
    return x


def with_margin_head(model, head, name=None):
    """A training model for a margin head (:mod:`kvision.layers.margin`): inputs
    ``{"images", "labels"}``, output the head's ``(N, classes)`` logits, to train with
    ``SparseCategoricalCrossentropy(from_logits=True)`` on the labels. ``model``
    (the embedding model) shares its layers with it: training it trains ``model``."""
    labels = keras.Input(shape=(), dtype="int32", name="labels")
    images = keras.Input(shape=model.input_shape[1:], name="images")
    logits = head([model(images), labels])
    return TaskModel({"images": images, "labels": labels}, logits, task=TASK,
                     name=name or f"{model.name}_{head.name}")


def with_classifier(model, classes, name=None):
    """A training model for softmax features: a Dense layer of ``classes`` logits
    (with bias, no margin) on ``model``'s features before their unit normalization
    when ``model`` ends in ``UnitNormalization`` (as softmax features are taken: on
    unit vectors, without NormFace's scale, the logits cannot grow confident), to
    train with ``SparseCategoricalCrossentropy(from_logits=True)``; input the images
    alone. The embedding stays ``model``'s (the same features, normalized), whose
    layers it shares."""
    if int(classes) < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {classes!r}.")
    features = model
    if isinstance(model.layers[-1], keras.layers.UnitNormalization):
        features = keras.Model(model.inputs, model.layers[-1].input,
                               name=f"{model.name}_features")
    images = keras.Input(shape=model.input_shape[1:], name="images")
    logits = keras.layers.Dense(int(classes), name="classifier")(features(images))
    return TaskModel(images, logits, task=TASK, name=name or f"{model.name}_softmax")


# --- P x K batches -----------------------------------------------------------------------

def pk_batches(images, labels, p, k, seed=0):
    """An endless ``tf.data`` pipeline of ``(images, labels)`` batches of ``p``
    identities x ``k`` images each (Hermans et al.'s P x K batches, what batch-hard
    and semi-hard mining need: every anchor has positives and negatives).

    Each batch draws ``p`` distinct identities, then ``k`` images of each: without
    replacement when the identity has ``k`` or more, with replacement when it has
    fewer (an identity with one image appears ``k`` times: its positive pairs are
    the image with itself, distance 0, no NaN). Batches are grouped by identity,
    ``[id0 x k, id1 x k, ...]``. Stateless draws keyed by ``(seed, batch number)``:
    the same ``seed`` gives the same batches. Use ``steps_per_epoch`` with ``fit``.
    """
    import tensorflow as tf

    labels = np.asarray(labels).reshape(-1)
    p, k = _check_pk(images, labels, p, k)
    order = np.argsort(labels, kind="stable")
    identities, offsets, counts = np.unique(labels[order], return_index=True,
                                            return_counts=True)
    if p > len(identities):
        raise ValueError(f"p={p} identities per batch, but the labels have only "
                         f"{len(identities)} identities.")
    table = (tf.constant(order, tf.int64), tf.constant(offsets, tf.int64),
             tf.constant(counts, tf.int64), int(counts.max()))

    def batch(number):
        rows = _pk_rows(table, len(identities), p, k, tf.stack([seed, number]))
        return tf.gather(images, rows), tf.gather(labels, rows)

    return tf.data.Dataset.counter().map(batch, num_parallel_calls=tf.data.AUTOTUNE)


def _check_pk(images, labels, p, k):
    for name, value in (("p", p), ("k", k)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} images, "
                         f"{len(labels)} labels.")
    return int(p), int(k)


def _pk_rows(table, identities, p, k, seed):
    """The ``p * k`` rows (into the original arrays) of one batch."""
    import tensorflow as tf

    order, offsets, counts, most = table
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    chosen = tf.argsort(tf.random.stateless_uniform([identities], seeds[0]))[:p]
    count = tf.gather(counts, chosen)[:, None]  # (p, 1)
    # without replacement: the k smallest of uniform keys over each identity's images
    keys = tf.random.stateless_uniform([p, most], seeds[1])
    keys = tf.where(tf.range(most, dtype=tf.int64)[None] < count, keys, 2.0)
    distinct = tf.cast(tf.argsort(keys, axis=1)[:, :k], tf.int64) if k <= most else \
        tf.zeros([p, k], tf.int64)
    # with replacement, for identities with fewer than k images
    repeated = tf.cast(tf.random.stateless_uniform([p, k], seeds[2]) *
                       tf.cast(count, tf.float32), tf.int64)
    position = tf.where(count >= k, distinct, tf.minimum(repeated, count - 1))
    return tf.reshape(tf.gather(order, tf.gather(offsets, chosen)[:, None] + position), [-1])


# --- collapse ------------------------------------------------------------------------------

class CollapseMonitor(keras.callbacks.Callback):
    """Warns (and with ``stop=True`` stops training) when the embedding has collapsed.

    Batch-hard triplet training can fall into a constant embedding: every image maps
    to one point, every distance is 0 and the loss sits exactly at the margin
    (Hermans et al. 2017's supplement; pytorch-metric-learning#20,
    omoindrot/tensorflow-triplet-loss#6, where a lower learning rate was the cure).
    After each epoch the monitor embeds ``images`` (a held batch) and measures the
    spread, the mean squared distance of the embeddings to their mean (the trace of
    their covariance: 0 when collapsed, at most 1 for L2-normalized embeddings; a
    small randomly initialized network on the digits gives 0.02-0.03). When the
    spread is below ``threshold`` and (if ``margin`` is known) the epoch's loss is
    within ``tolerance`` of ``margin``, for ``patience`` epochs in a row, it logs a
    warning on the ``kvision.embedding`` logger.

    Args:
        images: a held batch of model inputs.
        margin: the loss's margin; default: the compiled loss's ``margin``, else
            the loss is not looked at.
        embedding_model: what embeds ``images`` (default: the model being trained;
            give the embedding model when training through a margin head).
    """

    def __init__(self, images, margin=None, threshold=1e-4, tolerance=1e-3, patience=3,
                 stop=False, embedding_model=None):
        super().__init__()
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}.")
        self.images, self.margin = images, margin
        self.threshold, self.tolerance = float(threshold), float(tolerance)
        self.patience, self.stop = patience, bool(stop)
        self.embedding_model = embedding_model
        self.spreads, self.collapsed, self._run = [], False, 0

    def on_epoch_end(self, epoch, logs=None):
        model = self.embedding_model or self.model
        embeddings = np.asarray(model(self.images, training=False), np.float64)
        spread = float(np.mean(np.sum((embeddings - embeddings.mean(0)) ** 2, axis=-1)))
        self.spreads.append(spread)
        margin = self.margin if self.margin is not None else \
            getattr(getattr(self.model, "loss", None), "margin", None)
        loss = (logs or {}).get("loss")
        at_margin = margin is None or (loss is not None and
                                       abs(float(loss) - margin) <= self.tolerance)
        self._run = self._run + 1 if spread < self.threshold and at_margin else 0
        if self._run >= self.patience:
            self._report(epoch, spread, loss, margin)

    def _report(self, epoch, spread, loss, margin):
        self.collapsed = True
        on_loss = "" if margin is None else f", the loss {float(loss):.6f} at the margin " \
                                            f"{margin:g}"
        log.warning(f"Embedding collapse at epoch {epoch + 1}: the held batch's spread "
                    f"is {spread:.3g} (below {self.threshold:g}){on_loss} for "
                    f"{self._run} epochs: every image maps to nearly one point. Lower "
                    f"the learning rate, use semi-hard mining or warm up with "
                    f"batch-all.{' Training stops.' if self.stop else ''}")
        if self.stop:
            self.model.stop_training = True

"""Margin heads: class logits from embeddings, with a margin on the true class.

Each head holds one weight vector per class and, called on ``[embeddings, labels]``
(training), gives ``(N, classes)`` logits for ``SparseCategoricalCrossentropy(
from_logits=True)`` in which the true class's logit is made harder to win; called on
the embeddings alone it gives the plain scaled cosines (no label, no margin). With
``cos θ_j`` the cosine between an embedding and class ``j``'s (L2-normalized) weights:

==============  =====================================  =============================
head            true class ``y``                        other classes
==============  =====================================  =============================
NormFace        ``s cos θ_y``                          ``s cos θ_j``
SphereFace      ``‖x‖ (λ cos θ_y + ψ(θ_y)) / (1 + λ)``  ``‖x‖ cos θ_j``
CosFace         ``s (cos θ_y - m)``                    ``s cos θ_j``
ArcFace         ``s cos(θ_y + m)`` (see below)          ``s cos θ_j``
==============  =====================================  =============================

Margins are in radians where they are angles (ArcFace's ``m``), cosines for CosFace.
"""

from __future__ import annotations

import math

import keras
from keras import ops


class MarginHead(keras.layers.Layer):
    """The shared part of the heads: class weights, cosines, the true-class mask.

    Subclasses say what the true class's logit becomes (:meth:`target_logits`) and
    what the others are (:meth:`other_logits`, ``scale * cos θ`` by default).
    """

    def __init__(self, classes, scale=64.0, **kwargs):
        super().__init__(**kwargs)
        if int(classes) < 2:
            raise ValueError(f"A margin head needs at least 2 classes, got {classes!r}.")
        self.classes = int(classes)
        self.scale = float(scale)

    def build(self, input_shape):
        embedding_shape = input_shape[0] if _is_pair(input_shape) else input_shape
        self.kernel = self.add_weight(shape=(embedding_shape[-1], self.classes),
                                      initializer="glorot_uniform", name="kernel")

    def call(self, inputs):
        embeddings, labels = (inputs if _is_pair(inputs) else (inputs, None))
        embeddings = ops.cast(embeddings, self.compute_dtype)
        unit = embeddings / ops.sqrt(ops.maximum(
            ops.sum(ops.square(embeddings), axis=-1, keepdims=True), 1e-12))
        kernel = self.kernel / ops.sqrt(ops.maximum(
            ops.sum(ops.square(self.kernel), axis=0, keepdims=True), 1e-12))
        cosine = ops.clip(ops.matmul(unit, kernel), -1.0, 1.0)
        others = self.other_logits(cosine, embeddings)
        if labels is None:
            return others
        true = ops.one_hot(ops.reshape(ops.cast(labels, "int32"), (-1,)), self.classes)
        return ops.where(ops.cast(true, "bool"), self.target_logits(cosine, embeddings),
                         others)

    def other_logits(self, cosine, embeddings):
        return self.scale * cosine

    def target_logits(self, cosine, embeddings):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        embedding_shape = input_shape[0] if _is_pair(input_shape) else input_shape
        return (embedding_shape[0], self.classes)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "scale": self.scale}


def _is_pair(value):
    return isinstance(value, (list, tuple)) and len(value) == 2 and \
        not isinstance(value[0], (int, type(None)))


@keras.saving.register_keras_serializable(package="kvision")
class NormFace(MarginHead):
    """NormFace (Wang et al. 2017): normalized features and weights, logits
    ``s cos θ``, no margin. The paper learns ``s``; here it is fixed (16: the
    cosines' range is too small for softmax at ``s = 1``)."""

    def __init__(self, classes, scale=16.0, **kwargs):
        super().__init__(classes, scale, **kwargs)

    def target_logits(self, cosine, embeddings):
        return self.scale * cosine


@keras.saving.register_keras_serializable(package="kvision")
class CosFace(MarginHead):
    """CosFace / AM-Softmax (Wang et al. 2018): true class ``s (cos θ - m)``; the
    paper's ``s = 64``, ``m = 0.35``."""

    def __init__(self, classes, scale=64.0, margin=0.35, **kwargs):
        super().__init__(classes, scale, **kwargs)
        self.margin = float(margin)

    def target_logits(self, cosine, embeddings):
        return self.scale * (cosine - self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="kvision")
class ArcFace(MarginHead):
    """ArcFace (Deng et al. 2019): true class ``s cos(θ + m)``, ``s = 64``,
    ``m = 0.5`` radians.

    ``cos(θ + m)`` stops decreasing once ``θ + m`` passes π, so a sample farther
    from its class would get a *larger* logit. insightface's rule
    (``easy_margin=False``; insightface#247, pytorch-metric-learning #537/#539) keeps
    the logit monotonic: where ``cos θ > cos(π - m)`` (``θ < π - m``) the logit is
    ``s cos(θ + m)``, elsewhere ``s (cos θ - m sin m)`` (insightface's
    ``mm = sin(π - m) m``), a CosFace-like margin that goes on decreasing with θ.
    """

    def __init__(self, classes, scale=64.0, margin=0.5, **kwargs):
        super().__init__(classes, scale, **kwargs)
        self.margin = float(margin)

    def target_logits(self, cosine, embeddings):
        m = self.margin
        sine = ops.sqrt(ops.maximum(1.0 - ops.square(cosine), 0.0))
        shifted = cosine * math.cos(m) - sine * math.sin(m)  # cos(θ + m)
        fallback = cosine - m * math.sin(m)
        return self.scale * ops.where(cosine > math.cos(math.pi - m), shifted, fallback)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="kvision")
class SphereFace(MarginHead):
    """SphereFace / A-Softmax (Liu et al. 2017): weights normalized, features not;
    the true class ``‖x‖ ψ(θ)`` with ``ψ(θ) = (-1)^k cos(mθ) - 2k`` for
    ``θ ∈ [kπ/m, (k+1)π/m]`` (monotonic on [0, π]), blended as the paper trains it,
    ``(λ cos θ + ψ(θ)) / (1 + λ)``; others ``‖x‖ cos θ``. The paper's ``m = 4`` (an
    integer) and its final ``λ = 5``. ``scale`` None uses ``‖x‖``; a number replaces
    it (for L2-normalized embeddings, whose norm is 1)."""

    def __init__(self, classes, margin=4, blend=5.0, scale=None, **kwargs):
        super().__init__(classes, 0.0 if scale is None else scale, **kwargs)
        if int(margin) != margin or margin < 1:
            raise ValueError(f"SphereFace's margin is an integer >= 1, got {margin!r}.")
        self.margin, self.blend = int(margin), float(blend)
        self.fixed_scale = scale is not None

    def _norm(self, embeddings):
        if self.fixed_scale:
            return self.scale
        return ops.sqrt(ops.sum(ops.square(embeddings), axis=-1, keepdims=True))

    def other_logits(self, cosine, embeddings):
        return self._norm(embeddings) * cosine

    def target_logits(self, cosine, embeddings):
        theta = ops.arccos(ops.clip(cosine, -1.0 + 1e-7, 1.0 - 1e-7))
        k = ops.floor(self.margin * theta / math.pi)
        sign = 1.0 - 2.0 * ops.mod(k, 2.0)  # (-1)^k
        psi = sign * ops.cos(self.margin * theta) - 2.0 * k
        return self._norm(embeddings) * (self.blend * cosine + psi) / (1.0 + self.blend)

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale if self.fixed_scale else None
        return {**config, "margin": self.margin, "blend": self.blend}

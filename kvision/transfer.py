"""Transfer learning: a pretrained backbone, a new head, and what to freeze.

:func:`build_classifier` takes any keras.applications model name, any kvision
registry name or a ``keras.Model`` (a network you trained: a copy of it, cut before
its classifier) and returns::

    "images" (raw pixels 0..255) -> ImagePreprocessing(the backbone's own mode)
        -> backbone (nested layer "backbone") -> pooling -> head
        -> Dense(classes) "predictions"

The backbone is the one every task uses
(:func:`kvision.models.backbone.build_backbone`, whose docstring has the rules). A
pretrained one (``weights`` "imagenet" or a file, or a ``keras.Model``) is called
with ``training=False`` and is an :class:`~kvision.layers.InferenceBackbone` (which
keeps it so during ``fit``, where Keras 3 would otherwise pass ``training=True``
down), so its BatchNorm layers run in inference mode: frozen or not, their moving
statistics never drift on a small dataset, and unfrozen layers fine-tune against the
statistics they were trained with. A random one (``weights=None``) is a plain nested
model whose BatchNorm learns. Freezing sets ``layer.trainable`` per layer inside the
backbone. Loading a saved transfer model needs only ``import kvision``.

The data regimes (``regime=``), the transfer-learning rule of thumb ("small" is
under about 10k images; "similar" means like the pretraining data, e.g. ImageNet
photos):

=================  ===========================================  ======================
regime             what trains                                  why
=================  ===========================================  ======================
small-similar      the head only (backbone frozen)              few images overfit a
                                                                big network; its
                                                                features already fit
large-similar      the head + the stride-32 stage (the layers   enough data to adapt
                   after the stride-16 stage output)            the most task-specific
                                                                features
small-different    the head only, on a shallower cut: the       late features are too
                   backbone ends at its stride-16 stage output  specific to the old
                   (frozen); a small head (one Dense)           task; earlier, generic
                                                                ones transfer
large-different    everything but the stem (layers up to the    enough data to re-learn
                   stride-4 stage output stay frozen)           nearly all; edges and
                                                                colors stay
=================  ===========================================  ======================

A backbone without the stage a regime names (a small network trained here) falls
back: large-similar trains its last block, small-different cuts at its deepest
stage output below stride 16, large-different freezes its first block.

Trainable parameters come out ordered small-different < small-similar <
large-similar < large-different (a test checks it). Blocks for ``trainable_layers=N``
and :func:`fine_tune` are :func:`kvision.features.blocks`: the runs of layers between
cut points of the graph (a residual block, an Inception module, one conv of VGG).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
from typing import NamedTuple

import keras
import numpy as np

from kvision import features
from kvision.layers import InferenceBackbone  # noqa: F401  (part of this API)
from kvision.features import keras_backbones  # noqa: F401  (part of this API)
from kvision.layers.preprocessing import MODES

HEADS = ("dense", "mlp")
MLP_UNITS = 256


@dataclasses.dataclass(frozen=True)
class Regime:
    """A transfer-learning preset (see the module docstring's table).

    Attributes:
        data: "small" (under ~10k images) or "large".
        similarity: "similar" or "different" to the pretraining data.
        cut_stride: the backbone ends at its stage output at this stride (None: the
            whole backbone).
        train_after_stride: the backbone layers after its stage output at this
            stride train (None: none do).
        why: the reason, in one line.
    """

    data: str
    similarity: str
    cut_stride: int | None
    train_after_stride: int | None
    why: str


REGIMES = {
    "small-similar": Regime(
        "small", "similar", None, None,
        "few images would overfit a big network, and its features already fit: "
        "train only the new head"),
    "large-similar": Regime(
        "large", "similar", None, 16,
        "enough data to adapt the most task-specific features: the head and the "
        "stride-32 stage train"),
    "small-different": Regime(
        "small", "different", 16, None,
        "the last stage's features are specific to the old task, earlier generic "
        "ones transfer: cut at the stride-16 stage output, frozen, small head"),
    "large-different": Regime(
        "large", "different", None, 4,
        "enough data to re-learn almost everything: all but the stem (stride <= 4, "
        "edges and colors) trains"),
}


# --- the backbone ---------------------------------------------------------------

def keras_preprocessing(name) -> str:
    """The ImagePreprocessing mode of keras.applications model ``name``, read off
    its module's own ``preprocess_input`` (applied to a probe pixel and compared
    with each mode), so new keras.applications models need no table."""
    from keras.applications import imagenet_utils

    module = importlib.import_module(getattr(keras.applications, name).__module__)
    pixel = np.array([[[[10.0, 100.0, 200.0]]]], dtype="float32")
    got = np.asarray(module.preprocess_input(pixel.copy()))
    if np.allclose(got, pixel):
        return "none"
    for mode in ("caffe", "tf", "torch"):
        if np.allclose(got, imagenet_utils.preprocess_input(pixel.copy(), mode=mode)):
            return mode
    raise ValueError(
        f"keras.applications.{name}'s preprocess_input matches none of {MODES}; "
        f"pass preprocessing= explicitly."
    )


# --- freezing -------------------------------------------------------------------

def _backbone_of(model):
    names = [layer.name for layer in model.layers]
    return model.get_layer("backbone") if "backbone" in names else model


def _layers_after(names, name):
    return set(names[names.index(name) + 1:])


def _regime_layers(backbone, regime, names):
    """The backbone layer names ``regime`` trains."""
    after = REGIMES[regime].train_after_stride
    if after is None:
        return set()
    stages = features.stage_outputs(backbone)
    if after in stages:
        return _layers_after(names, stages[after])
    # No cut point at that stride (NASNet's two-input cells have none; small nets
    # stop early): go by each layer's own stride, else by blocks.
    strides = features.layer_strides(backbone)
    deeper = [i for i, n in enumerate(names) if strides.get(n, 0) > after]
    if deeper:
        return set(names[deeper[0]:])
    blocks = features.blocks(backbone)
    return set(blocks[-1]) if after == 16 else set(names) - set(blocks[0])


def _selected(backbone, trainable_layers, names):
    """The backbone layer names ``trainable_layers`` selects (see build_classifier)."""
    if trainable_layers is None:
        return set()
    if isinstance(trainable_layers, bool):
        raise ValueError("trainable_layers must be an int, 'all', a regex or names, "
                         f"got {trainable_layers!r}.")
    if isinstance(trainable_layers, int):
        if trainable_layers < 0:
            raise ValueError(
                f"trainable_layers must be >= 0 blocks, got {trainable_layers}.")
        blocks = features.blocks(backbone)
        return {n for block in blocks[len(blocks) - min(trainable_layers, len(blocks)):]
                for n in block}
    if trainable_layers == "all":
        return set(names)
    if isinstance(trainable_layers, str):
        try:
            pattern = re.compile(trainable_layers)
        except re.error as error:
            raise ValueError(f"trainable_layers {trainable_layers!r} is not a valid "
                             f"regex: {error}.") from None
        chosen = {n for n in names if pattern.search(n)}
        if not chosen:
            raise ValueError(f"trainable_layers regex {trainable_layers!r} matches no "
                             f"layer of {backbone.name!r}.")
        return chosen
    if isinstance(trainable_layers, (list, tuple, set)):
        unknown = [n for n in trainable_layers if n not in names]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), names, n=5, cutoff=0.5)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise ValueError(f"No layers {unknown} in backbone {backbone.name!r}.{hint}")
        return set(trainable_layers)
    raise ValueError("trainable_layers must be None, an int (blocks), 'all', a regex "
                     f"or a list of layer names; got {type(trainable_layers).__name__}.")


def set_trainable(model, trainable_layers=None, *, regime=None):
    """Freeze ``model``'s backbone except the layers selected; returns their names.

    ``model`` is a :func:`build_classifier` model (its ``"backbone"`` layer is
    used) or a backbone. ``trainable_layers``: None (none), an int N (the last N
    blocks, :func:`kvision.features.blocks`), ``"all"``, a regex (``re.search`` on
    layer names) or a list of layer names. ``regime``: a :data:`REGIMES` name
    instead. The backbone model itself stays ``trainable=True``, so that the
    per-layer flags count.
    """
    if regime is not None and (regime not in REGIMES or trainable_layers is not None):
        raise ValueError(f"regime must be one of {sorted(REGIMES)} (and without "
                         f"trainable_layers); got regime={regime!r}.")
    backbone = _backbone_of(model)
    steps = features.layer_steps(backbone)
    names = [name for name, _ in steps]
    chosen = (_regime_layers(backbone, regime, names) if regime is not None
              else _selected(backbone, trainable_layers, names))
    backbone.trainable = True  # (propagates True to all layers; the flags follow)
    for name, layer in steps:
        layer.trainable = name in chosen
    return [n for n in names if n in chosen]


# --- the classifier -------------------------------------------------------------

def _head(x, head, dropout):
    if callable(head) and not isinstance(head, str):
        return head(x)
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, a keras.Layer or a callable "
                         f"f(x) -> x; got {head!r}.")
    if head == "mlp":
        x = keras.layers.Dense(MLP_UNITS, activation="relu", name="head_dense")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return x


def _pool(x, pooling):
    if len(x.shape) != 4:
        return x
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    if None in x.shape[1:]:
        raise ValueError("pooling=None flattens the feature map, which needs a fixed "
                         "input size: pass input_shape=(H, W, C).")
    return keras.layers.Flatten(name="flatten")(x)


def _check_arguments(classes, regime, trainable_layers, dropout, pooling):
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` must be an integer >= 1, got {classes!r}.")
    if regime is not None and regime not in REGIMES:
        raise ValueError(f"Unknown regime {regime!r}; expected one of {sorted(REGIMES)}.")
    if regime is not None and trainable_layers is not None:
        raise ValueError("Pass either regime= or trainable_layers=, not both.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    if pooling not in features.POOLINGS:
        raise ValueError(f"pooling must be one of {features.POOLINGS}, got {pooling!r}.")


def build_classifier(backbone, classes, *, weights="imagenet", input_shape=None,
                     regime=None, trainable_layers=None, head="dense", dropout=0.2,
                     pooling="avg", preprocessing=None, classifier_activation="softmax",
                     name=None, **backbone_kwargs) -> keras.Model:
    """A classifier for ``classes`` classes on a pretrained backbone.

    Args:
        backbone: a keras.applications name (exact CapWords: ``"ResNet50"``, all of
            :func:`keras_backbones`), a kvision registry name (``"resnet50"``), or
            a functional ``keras.Model`` (copied and cut before its classifier;
            preprocessing "none"): :func:`kvision.models.backbone.build_backbone`.
        classes: number of classes of the new ``"predictions"`` Dense layer.
        weights: "imagenet" (keras.applications' download; offline a
            ``ConnectionError``), None, or a local weights file of the backbone
            without its top (``FileNotFoundError`` if missing); None is a random
            backbone (a plain nested model, BatchNorm learning). A ``keras.Model``
            keeps its own weights unless a file is given.
        input_shape: ``(H, W, C)`` of the raw images; default: the backbone's.
        regime: one of :data:`REGIMES` (see the module docstring).
        trainable_layers: what of the backbone trains (:func:`set_trainable`);
            None and no regime: the head only.
        head: "dense" (dropout + Dense), "mlp" (Dense(256, relu) + dropout +
            Dense), or a ``keras.Layer`` / callable ``f(x) -> x`` before the Dense.
        dropout: dropout rate before the classifier (0 for none).
        pooling: "avg", "max" or None (Flatten) on the backbone's feature map.
        preprocessing: an ImagePreprocessing mode; default the backbone's own.
        classifier_activation: activation of ``"predictions"``.
        name: the model's name.
        **backbone_kwargs: more builder arguments (``alpha`` for MobileNet).

    Returns:
        A functional ``keras.Model``: ``(N, H, W, C)`` raw pixels in ``[0, 255]``
        (input ``"images"``) -> ``(N, classes)``, its backbone nested as layer
        ``"backbone"``.
    """
    from kvision.models.backbone import build_backbone

    _check_arguments(classes, regime, trainable_layers, dropout, pooling)
    inputs, x = build_backbone(backbone, input_shape=input_shape, weights=weights,
                               trainable=_backbone_trainable(regime, trainable_layers),
                               preprocessing=preprocessing, **backbone_kwargs)
    x = _head(_pool(x, pooling), head, dropout)
    outputs = keras.layers.Dense(classes, activation=classifier_activation,
                                 name="predictions")(x)
    label = backbone if isinstance(backbone, str) else backbone.name
    model = keras.Model(inputs, outputs, name=name or f"{label}_transfer")
    if trainable_layers is not None and _backbone_trainable(None, trainable_layers) is False:
        set_trainable(model, trainable_layers)  # a regex or layer names
    return model


def _backbone_trainable(regime, trainable_layers):
    """What :func:`~kvision.models.backbone.build_backbone` takes for these
    arguments: the regime, True for "all", an int of blocks, else False (the head
    only; a regex or layer names are then :func:`set_trainable`'s)."""
    if regime is not None:
        return regime
    if trainable_layers == "all":
        return True
    if isinstance(trainable_layers, int) and not isinstance(trainable_layers, bool):
        if trainable_layers < 0:
            raise ValueError(
                f"trainable_layers must be >= 0 blocks, got {trainable_layers}.")
        return trainable_layers
    return False


# --- two-phase fine-tuning ------------------------------------------------------

class FineTuneHistory(NamedTuple):
    """The ``keras.callbacks.History`` of each phase (None for a skipped phase)."""

    head: keras.callbacks.History | None
    fine_tune: keras.callbacks.History | None


def _fit(model, data, *, validation_data, epochs, initial_epoch, callbacks,
         batch_size, verbose):
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
    else:
        x, y = data, None
    return model.fit(x, y, batch_size=batch_size, epochs=epochs,
                     initial_epoch=initial_epoch, validation_data=validation_data,
                     callbacks=callbacks, verbose=verbose)


def fine_tune(model, train_data, *, validation_data=None, head_epochs, epochs,
              unfreeze_blocks, learning_rate=1e-3, fine_tune_learning_rate=1e-5,
              loss="sparse_categorical_crossentropy", metrics=("accuracy",),
              callbacks=None, batch_size=None, verbose="auto",
              compile_kwargs=None) -> FineTuneHistory:
    """Two-phase fine-tuning of a :func:`build_classifier` model.

    Phase 1 trains the head for ``head_epochs`` with the whole backbone frozen
    (Adam at ``learning_rate``). Phase 2 unfreezes the backbone's last
    ``unfreeze_blocks`` blocks and recompiles with a fresh Adam at the lower
    ``fine_tune_learning_rate`` (a new optimizer: the head's Adam moments must not
    carry over into the unfrozen weights), then trains ``epochs`` more epochs
    (numbered on from phase 1). ``train_data`` is anything ``model.fit`` takes (a
    ``tf.data.Dataset`` of ``(images, labels)`` batches) or an ``(x, y)`` tuple of
    arrays (with ``batch_size``). ``callbacks`` run in both phases;
    ``compile_kwargs`` (``jit_compile``, ``run_eagerly``…) go to both ``compile``
    calls. Returns both histories.
    """
    for label, value in (("head_epochs", head_epochs), ("epochs", epochs),
                         ("unfreeze_blocks", unfreeze_blocks)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{label} must be an integer >= 0, got {value!r}.")
    if "backbone" not in [layer.name for layer in model.layers]:
        raise ValueError(f"fine_tune needs a build_classifier model (with a layer "
                         f"named 'backbone'); {model.name!r} has none.")
    common = dict(validation_data=validation_data, callbacks=callbacks,
                  batch_size=batch_size, verbose=verbose)
    histories = []
    for rate, unfreeze, start, stop in (
            (learning_rate, None, 0, head_epochs),
            (fine_tune_learning_rate, unfreeze_blocks, head_epochs, head_epochs + epochs)):
        if stop == start:
            histories.append(None)
            continue
        set_trainable(model, unfreeze)
        model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss,
                      metrics=list(metrics or []), **(compile_kwargs or {}))
        histories.append(_fit(model, train_data, epochs=stop, initial_epoch=start,
                              **common))
    return FineTuneHistory(*histories)


# --- scikit-learn heads ---------------------------------------------------------

def _as_arrays(outputs) -> np.ndarray:
    """Extractor outputs (an array or a dict of them) -> ``(N, D)`` float array."""
    parts = outputs.values() if isinstance(outputs, dict) else [outputs]
    arrays = [np.asarray(p).reshape(len(np.asarray(p)), -1) for p in parts]
    return np.concatenate(arrays, axis=1)


def extract(extractor, images, batch_size=64, verbose=0) -> np.ndarray:
    """``(N, D)`` features of ``images`` (an array ``(N, H, W, C)``)."""
    return _as_arrays(extractor.predict(np.asarray(images), batch_size=batch_size,
                                        verbose=verbose))


def _extract_dataset(extractor, data, verbose):
    """Features and labels of a dataset of ``(images, labels)`` batches, in one
    pass (a shuffling dataset gives a new order each pass)."""
    feats, labels = [], []
    progress = keras.utils.Progbar(None) if verbose else None
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise ValueError("A dataset for fit_sklearn_head must yield (images, "
                             f"labels) batches, got {type(batch).__name__}.")
        feats.append(_as_arrays(extractor.predict_on_batch(batch[0])))
        labels.append(np.asarray(batch[1]))
        if progress is not None:
            progress.add(1)
    if not feats:
        raise ValueError("The dataset given to fit_sklearn_head is empty.")
    return np.concatenate(feats), np.concatenate(labels)


class SklearnHead:
    """A scikit-learn estimator on a Keras feature extractor.

    ``predict(images)``, ``predict_proba(images)`` and ``score(images, labels)``
    take raw images ``(N, H, W, C)``, extract features ``(N, D)`` and hand them to
    the estimator (``.estimator``, fitted).
    """

    def __init__(self, extractor, estimator, batch_size=64):
        self.extractor = extractor
        self.estimator = estimator
        self.batch_size = batch_size

    def features(self, images) -> np.ndarray:
        return extract(self.extractor, images, self.batch_size)

    def predict(self, images) -> np.ndarray:
        return self.estimator.predict(self.features(images))

    def predict_proba(self, images) -> np.ndarray:
        return self.estimator.predict_proba(self.features(images))

    def score(self, images, labels) -> float:
        return float(self.estimator.score(self.features(images), np.asarray(labels)))


def fit_sklearn_head(extractor, data, estimator, batch_size=64, verbose=0) -> SklearnHead:
    """Fit ``estimator`` (any scikit-learn classifier) on ``extractor``'s features.

    ``data`` is ``(x, y)`` arrays (images ``(N, H, W, C)``, labels ``(N,)``) or a
    ``tf.data.Dataset`` of ``(images, labels)`` batches. Returns a fitted
    :class:`SklearnHead`.
    """
    if not callable(getattr(estimator, "fit", None)):
        raise ValueError(f"estimator must have a fit(X, y) method (scikit-learn), "
                         f"got {type(estimator).__name__}.")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels.")
        feats, labels = extract(extractor, x, batch_size, verbose), np.asarray(y)
    else:
        feats, labels = _extract_dataset(extractor, data, verbose)
    estimator.fit(feats, labels)
    return SklearnHead(extractor, estimator, batch_size)


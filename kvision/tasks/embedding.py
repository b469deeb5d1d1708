"""Embeddings, the task: an image to a unit vector; measured by open-set rank-1.

The data is ``glyphs`` (the embedded default, :func:`kvision.data.glyphs.glyphs`:
training images of the "train" identities, held-out images of the "test" identities,
which training never sees: open set), ``digits`` (the handwritten digits, 10
identities; held-out images of the same identities) or a folder
``root/<identity>/*.jpg`` (:func:`kvision.data.glyphs.identity_folders`; a fifth of
the identities, chosen by seed, held out).

Training draws P x K batches (:func:`kvision.embedding.pk_batches`: ``batch_size //
K`` identities x ``K`` images) for the network's ``loss`` (:data:`LOSSES`; by default
CosFace, a softmax over the training identities with a cosine margin, the head
dropped after training; the pair and triplet losses mine inside each batch). The
figure is rank-1
(:func:`kvision.metrics.embedding.identification` with the held-out set as both
queries and gallery, a query never its own neighbour); evaluation adds rank-5,
MAP@R and the verification of every held-out pair (AUC, EER, TAR at FAR 1e-3).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from kvision.tasks import base

GLYPHS, DIGITS = "glyphs", "digits"
GLYPH_IDENTITIES = 500   # training identities of `kvision train embedding_net`
GLYPHS_PER_IDENTITY = 8
HELD_IDENTITIES = 100    # held-out glyph identities measured by default
HELD_PER_IDENTITY = 4
K = 4                    # images of each identity in a P x K batch
FAR = 1e-3
# The margin heads' scale and margins for a few hundred identities of a few images
# each: the papers' s = 64 (CosFace m = 0.35, ArcFace m = 0.5), made for 10^4-10^5
# faces, learned far slower here (README, "Embeddings: glyph identities").
HEAD_SCALE = 16.0
HEAD_MARGINS = {"cosface": 0.2, "arcface": 0.3}
#: ``--model-arg loss=...`` of embedding_net: how each trains (the network is the same).
LOSSES = {
    "cosface": "CosFace head, softmax cross-entropy (Wang et al. 2018)",
    "arcface": "ArcFace head, softmax cross-entropy (Deng et al. 2019)",
    "normface": "normalized softmax, no margin (Wang et al. 2017)",
    "softmax": "a Dense classifier on the features before normalization, softmax",
    "contrastive": "contrastive loss over every pair of the batch (Hadsell et al. 2006)",
    "triplet_batch_hard": "triplet loss, batch-hard mining (Hermans et al. 2017)",
    "triplet_semi_hard": "triplet loss, semi-hard negatives (Schroff et al. 2015)",
    "triplet_batch_all": "triplet loss over every triplet with a loss (Hermans et al.)",
}
DEFAULT_LOSS = "cosface"
FORMS = (f"an embedding model is trained and measured on {GLYPHS}, {DIGITS} or a "
         f"folder of identities, root/<identity>/*.jpg")


@dataclasses.dataclass
class Labelled:
    """Images ``(N, H, W, C)`` float32 at the model's size, their identity ``labels``
    ``(N,)`` (indices into ``class_names``) and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    description: str


@dataclasses.dataclass
class Report:
    """Identification and verification figures of one held-out set."""

    figures: dict
    num_images: int
    num_identities: int

    def format(self) -> str:
        f = self.figures
        return (f"rank-1 {f['rank1']:.4f}  rank-5 {f['rank5']:.4f}  MAP@R "
                f"{f['map_at_r']:.4f}\nverification: AUC {f['auc']:.4f}  EER "
                f"{f['eer']:.4f}  TAR@FAR={FAR:g} {f['tar_at_far']:.4f} "
                f"({f['pairs']} pairs, threshold {f['threshold']:.4f} cosine)")

    def as_dict(self) -> dict:
        return {"task": "embedding", "images": self.num_images,
                "identities": self.num_identities, **self.figures}


def _glyphs(count, per_identity, size, channels, split, seed):
    from kvision.data.glyphs import glyphs

    images, labels, names = glyphs(count, per_identity, image_size=size, split=split,
                                   seed=seed)
    return _channels(images, channels), labels, names


def _channels(images, channels):
    """uint8 RGB -> float32 pixels with the model's channels (1: their mean)."""
    images = images.astype("float32")
    return images.mean(-1, keepdims=True) if channels == 1 else images


def _digits(size, channels, seed):
    from kvision.data.digits import load_digits

    return load_digits(image_size=size, channels=channels, seed=seed)


def _folder(source, size, channels):
    from kvision.data.glyphs import identity_folders

    if not os.path.isdir(source):
        raise FileNotFoundError(f"No identity data at {source!r}: {FORMS}.")
    images, labels, names = identity_folders(source, image_size=size)
    return _channels(images, channels), np.asarray(labels), tuple(names)


def _split_identities(labels, names, seed):
    """A fifth of the identities (at least two) held out at random by ``seed``:
    ``(train rows, held rows)``. Both sides need two identities: training pairs and
    held-out verification both compare one identity with another."""
    count = len(names)
    if count < 4:
        raise ValueError(f"{count} identit{'y' if count == 1 else 'ies'}: an embedding "
                         f"needs at least four, two to train on and two held out to "
                         f"measure it.")
    held = np.random.default_rng(seed).permutation(count)[:max(2, count // 5)]
    is_held = np.isin(labels, held)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def _labelled(images, labels, names, description):
    """Held-out images relabelled 0..n-1 over the identities present."""
    present, labels = np.unique(labels, return_inverse=True)
    return Labelled(np.asarray(images, "float32"), labels.astype("int64"),
                    tuple(names[i] for i in present), description)


def load_data(source, trained, *, seed=0, max_images=None) -> Labelled:
    """Held-out images at the model's input size: test-split glyphs, the digits'
    test split, or a folder's held-out identities (a clear error otherwise)."""
    size, channels = int(trained.image_size[0]), trained.channels
    if source == GLYPHS:
        count = max(2, (max_images or HELD_IDENTITIES * HELD_PER_IDENTITY)
                    // HELD_PER_IDENTITY)
        images, labels, names = _glyphs(count, HELD_PER_IDENTITY, size, channels,
                                        "test", seed)
        return _labelled(images, labels, names, f"{len(images)} images of {count} "
                         f"held-out {GLYPHS} identities (seed {seed})")
    if source == DIGITS:
        _, (x, y) = _digits(size, channels, seed)
        x, y = x[:max_images], y[:max_images]
        return _labelled(x, y, tuple(map(str, range(10))),
                         f"{len(x)} held-out {DIGITS} (seed {seed})")
    images, labels, names = _folder(source, size, channels)
    _, held = _split_identities(labels, names, seed)
    held = held[:max_images]
    return _labelled(images[held], labels[held], names, f"{len(held)} images of "
                     f"held-out identities of {source} (seed {seed})")


def embed(trained, images, batch_size=64):
    """The model's embeddings of ``images`` (float64 ``(N, D)``), checked against its
    input size."""
    images = np.asarray(images, "float32")
    size = tuple(trained.image_size)
    if images.ndim != 4 or (None not in size and images.shape[1:3] != size):
        raise ValueError(f"The embedding model takes images of {size[0]}x{size[1]} "
                         f"(N, H, W, C), got an array of shape {images.shape}.")
    return np.asarray(trained.model.predict(images, batch_size=batch_size, verbose=0),
                      "float64")


def figures(embeddings, labels) -> dict:
    """Rank-1, rank-5 and MAP@R of the set against itself, and the verification of
    every pair (cosine similarity)."""
    from kvision.metrics.embedding import identification, verification

    found = identification(embeddings, labels, embeddings, labels)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True),
                                   1e-12)
    first, second = np.triu_indices(len(unit), k=1)
    # from the Gram matrix: (N, N), not (pairs, D) twice (2,000 images: 4 GB)
    pairs = verification((unit @ unit.T)[first, second], labels[first] == labels[second],
                         fars=(FAR,))
    return {"rank1": found["rank1"], "rank5": found["rank5"],
            "map_at_r": found["map_at_r"], "auc": pairs["auc"], "eer": pairs["eer"],
            "tar_at_far": pairs["tar_at_far"][FAR], "threshold": pairs["threshold"],
            "pairs": int(len(first)), "queries": found["queries"]}


def evaluate(trained, data: Labelled, batch_size=64) -> Report:
    """Open-set identification and verification of ``trained`` on ``data``."""
    embeddings = embed(trained, data.images, batch_size)
    return Report(figures(embeddings, data.labels), len(data.images),
                  len(data.class_names))


class EmbeddingTask(base.Task):
    """Embedding models (``embedding_net``): unit vectors; open-set rank-1."""

    name, noun, metric, metric_label = "embedding", "embedding model", "rank1", "rank-1"
    default_data = GLYPHS
    default_epochs = 10
    default_batch_size = 32
    default_learning_rate = 3e-3
    warmup_epochs = 1
    export_kind = "outputs"  # the embeddings, to float32 error
    export_labels = False    # it answers vectors, not its training identities
    class_word = "identities"

    def default_image_size(self, info, data):
        return info.default_size

    def training_data(self, source, *, image_size, channels, seed, max_images=None):
        shape = _Shape((image_size, image_size), channels)
        if source == GLYPHS:
            count = max(2, (max_images or GLYPH_IDENTITIES * GLYPHS_PER_IDENTITY)
                        // GLYPHS_PER_IDENTITY)
            images, labels, names = _glyphs(count, GLYPHS_PER_IDENTITY, image_size,
                                            channels, "train", seed + 1)
            validation = load_data(GLYPHS, shape, seed=seed)
        elif source == DIGITS:
            (images, labels), _ = _digits(image_size, channels, seed)
            images, labels = images[:max_images], labels[:max_images]
            names = tuple(map(str, range(10)))
            validation = load_data(DIGITS, shape, seed=seed)
        else:
            images, labels, names = _folder(source, image_size, channels)
            train, held = _split_identities(labels, names, seed)
            validation = _labelled(images[held], labels[held], names,
                                   f"{len(held)} images of held-out identities")
            images, labels = images[train][:max_images], labels[train][:max_images]
        return self._bundle(images, labels, names, validation, source)

    def _bundle(self, images, labels, names, validation, source):
        import tensorflow as tf

        labels = np.asarray(labels, "int64")
        train = tf.data.Dataset.from_tensor_slices({"images": images, "labels": labels})
        return base.TrainingData(
            train, len(images), validation, tuple(names), source,
            f"{source}: {len(images)} training images of {len(np.unique(labels))} "
            f"identities, {validation.description}",
            {"images": images, "labels": labels})

    def build(self, name, data, *, input_shape, model_args, backbone_weights=None,
              regime=None):
        """The training model: the embedding network under the head its ``loss``
        trains it with (:func:`training_model`)."""
        from kvision import registry

        kwargs = dict(model_args)
        if backbone_weights is not None and str(backbone_weights).lower() != "none":
            kwargs["backbone_weights"] = backbone_weights
        if regime is not None:
            kwargs["trainable_backbone"] = regime
        base.check_arguments(name, kwargs)
        model = registry.create(name, input_shape=input_shape, **kwargs)
        return training_model(model, kwargs.get("loss", DEFAULT_LOSS),
                              len(data.class_names))

    def losses(self, name, model):
        return loss_function(_loss_of(model))

    def fit_dataset(self, name, model, data, *, batch_size, seed, shuffle=True):
        """An epoch of P x K batches (``batch_size // K`` identities x ``K``), drawn
        anew every epoch from ``seed``, as the training model takes them."""
        import tensorflow as tf

        from kvision.embedding import pk_batches

        images, labels = data.extras["images"], data.extras["labels"]
        p = min(max(2, batch_size // K), len(np.unique(labels)))
        steps = max(1, -(-len(images) // (p * K)))
        # Each pass over the dataset (an epoch) draws a new seed for its batches.
        epoch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        batches = epoch_seeds.take(1).flat_map(
            lambda s: pk_batches(images, labels, p, K, seed=s).take(steps))
        if _loss_of(model) in HEAD_MARGINS or _loss_of(model) == "normface":
            batches = batches.map(lambda x, y: ({"images": x, "labels": y}, y))
        return batches.apply(tf.data.experimental.assert_cardinality(steps))

    def inference_model(self, name, model):
        """The embedding network of the training model (the head dropped)."""
        from kvision.tasks.model import TaskModel

        if getattr(model, "embedding_model", None) is not None:
            return model.embedding_model
        inner = [layer for layer in model.layers  # a training model read from a file
                 if isinstance(layer, TaskModel) and layer.task == self.name]
        return inner[0] if inner else model

    def predict_files(self, trained, files, args):
        from kvision.predict import load_images

        images, kept, failed = load_images(files, trained, on_error="skip")
        results = [{"path": path, "error": why} for path, why in failed.items()]
        if len(kept):
            for path, vector in zip(kept, embed(trained, images)):
                results.append({"path": path, "embedding": vector.tolist()})
        return results

    def answer_line(self, result):
        vector = result["embedding"]
        return f"{len(vector)}-D embedding: " + " ".join(f"{v:.3f}" for v in vector[:4]) \
            + (" ..." if len(vector) > 4 else "")


def training_model(model, loss=DEFAULT_LOSS, classes=None):
    """What trains embedding ``model`` with ``loss`` (a key of :data:`LOSSES`): a
    margin head's model (inputs images and labels) or a softmax classifier on it,
    both over ``classes`` training identities, or ``model`` itself for the pair and
    triplet losses. The result's ``embedding_loss`` says which and its
    ``embedding_model`` is ``model``; train it with :func:`loss_function`."""
    from kvision import embedding
    from kvision.layers import margin

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}.")
    heads = {"cosface": margin.CosFace, "arcface": margin.ArcFace,
             "normface": margin.NormFace}
    if loss in heads:
        extra = {"margin": HEAD_MARGINS[loss]} if loss in HEAD_MARGINS else {}
        trainer = embedding.with_margin_head(
            model, heads[loss](classes, scale=HEAD_SCALE, name=loss, **extra))
    elif loss == "softmax":
        trainer = embedding.with_classifier(model, classes)
    else:
        trainer = model
    trainer.embedding_loss = loss
    if trainer is not model:  # a plain reference: Keras would track it as a layer
        object.__setattr__(trainer, "embedding_model", model)
    return trainer


def loss_function(loss=DEFAULT_LOSS):
    """The Keras loss of a :data:`LOSSES` key: cross-entropy on the logits of a head,
    else the pair or triplet loss itself with its paper's margin."""
    import keras

    from kvision.losses.embedding import ContrastiveLoss, TripletLoss

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}.")
    if loss == "contrastive":
        return ContrastiveLoss()
    if loss.startswith("triplet_"):
        return TripletLoss(mining=loss[len("triplet_"):])
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _loss_of(model):
    """The loss a training model was made for (:func:`training_model`)."""
    return getattr(model, "embedding_loss", "triplet_batch_hard")


@dataclasses.dataclass
class _Shape:
    """What load_data reads off a model: its input size and channels."""

    image_size: tuple
    channels: int


TASK = base.register_task(EmbeddingTask())

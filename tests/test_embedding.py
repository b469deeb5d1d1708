"""Embedding models (issue 19): the build on the backbone contract, P x K batches, a
model trained with batch-hard triplets on the handwritten digits, the collapse monitor
and a margin-head model through a ``.keras`` file."""

import logging

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from kvision import embedding, testing
from kvision.layers.margin import ArcFace
from kvision.losses.embedding import TripletLoss
from kvision.tasks import task_of


def _tiny(shape=(8, 8, 1)):
    """A two-conv backbone on raw pixels (it rescales them itself)."""
    inputs = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inputs, x, name="tiny")


def _digits():
    digits = load_digits()
    return (digits.images[..., None] * 255 / 16).astype("float32"), digits.target


def test_build_gives_unit_embeddings_of_the_embedding_task():
    model = embedding.build(_tiny(), dim=12)
    out = np.asarray(model(np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 1))))
    assert out.shape == (3, 12) and task_of(model) == "embedding"
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    testing.assert_no_lambda(model)
    raw = embedding.build(_tiny(), dim=12, normalize=False)
    assert not np.allclose(np.linalg.norm(np.asarray(raw(np.ones((2, 8, 8, 1)) * 50)),
                                          axis=1), 1.0)


def test_build_takes_a_zoo_name_through_the_backbone_contract():
    model = embedding.build("lenet5", dim=8, input_shape=(32, 32, 1),
                            trainable_backbone=False)
    assert model.output_shape == (None, 8) and model.get_layer("backbone").trainable is False
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        embedding.build(_tiny(), dim=0)


# --- P x K batches -------------------------------------------------------------------------

IMAGES = np.arange(11, dtype="float32")[:, None]  # image i is the number i
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 4])  # identity 3 and 4: one image each


def _batches(count, **kwargs):
    return [(np.asarray(x)[:, 0].astype(int), np.asarray(y)) for x, y in
            embedding.pk_batches(IMAGES, LABELS, **kwargs).take(count)]


def test_pk_batches_hold_p_identities_of_k_images_each():
    for rows, labels in _batches(20, p=3, k=3, seed=0):
        assert len(rows) == 9 and np.all(LABELS[rows] == labels)  # images match labels
        groups = labels.reshape(3, 3)
        assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0])) == 3
        for group in rows.reshape(3, 3):
            if np.sum(LABELS == LABELS[group[0]]) >= 3:  # enough images: all distinct
                assert len(set(group)) == 3


def test_pk_batches_repeat_a_one_image_identity_and_are_seeded():
    seen = set()
    for rows, labels in _batches(30, p=5, k=4, seed=1):
        for group in rows.reshape(5, 4):
            if LABELS[group[0]] in (3, 4):  # one image: that image k times
                assert len(set(group)) == 1
                seen.add(LABELS[group[0]])
            elif LABELS[group[0]] == 2:  # two images for k = 4: with replacement
                assert set(group) <= {7, 8}
    assert seen == {3, 4}
    again = _batches(30, p=5, k=4, seed=1)
    assert all(np.array_equal(a[0], b[0]) for a, b in
               zip(again, _batches(30, p=5, k=4, seed=1)))
    assert not all(np.array_equal(a[0], b[0]) for a, b in
                   zip(again, _batches(30, p=5, k=4, seed=2)))


def test_a_one_image_identity_in_a_batch_gives_a_finite_loss():
    for rows, labels in _batches(5, p=5, k=2, seed=3):
        x = np.random.default_rng(0).normal(size=(len(rows), 4))[rows % 4]  # duplicates
        for mining in ("batch_hard", "semi_hard", "batch_all"):
            assert np.isfinite(float(TripletLoss(mining=mining)(labels, x)))


def test_pk_batches_refuse_what_cannot_be_drawn():
    with pytest.raises(ValueError, match="p=6 identities per batch, but the labels have "
                                         "only 5"):
        embedding.pk_batches(IMAGES, LABELS, p=6, k=2)
    with pytest.raises(ValueError, match="11 images, 10 labels"):
        embedding.pk_batches(IMAGES, LABELS[:10], p=2, k=2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        embedding.pk_batches(IMAGES, LABELS, p=2, k=0)


# --- training ---------------------------------------------------------------------------

def _rank1(model, images, labels):
    """Leave-one-out nearest neighbour (cosine) among the held-out images."""
    e = np.asarray(model.predict(images, verbose=0), np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    similarity = e @ e.T
    np.fill_diagonal(similarity, -np.inf)
    return np.mean(labels[np.argmax(similarity, axis=1)] == labels)


def test_batch_hard_training_on_digits_improves_rank1():
    """30 steps of 10 x 8 batches: held-out rank-1 went from 0.63-0.67 (random init)
    to 0.80-0.84 over seeds 0-2 here; the test asks +0.1."""
    images, labels = _digits()
    held = np.arange(len(labels)) % 2 == 1
    keras.utils.set_random_seed(0)
    model = embedding.build(_tiny(), dim=16)
    before = _rank1(model, images[held], labels[held])
    model.compile(keras.optimizers.Adam(3e-3), TripletLoss(mining="batch_hard"))
    model.fit(embedding.pk_batches(images[~held], labels[~held], p=10, k=8, seed=0),
              steps_per_epoch=30, epochs=1, verbose=0)
    after = _rank1(model, images[held], labels[held])
    assert after >= before + 0.1, (before, after)


# --- collapse --------------------------------------------------------------------------

def _constant_model():
    """Every image to one unit vector: a zero kernel, a constant bias."""
    model = embedding.build(_tiny(), dim=4)
    projection = model.get_layer("projection")
    projection.set_weights([np.zeros_like(projection.kernel), np.ones(4, "float32")])
    return model


def _fit_with_monitor(model, monitor, epochs=4, learning_rate=0.0):
    images, labels = _digits()
    model.compile(keras.optimizers.SGD(learning_rate), TripletLoss(mining="batch_hard"))
    return model.fit(embedding.pk_batches(images, labels, p=4, k=4, seed=0),
                     steps_per_epoch=2, epochs=epochs, verbose=0, callbacks=[monitor])


def test_collapse_monitor_fires_on_a_constant_embedding(caplog):
    images, _ = _digits()
    monitor = embedding.CollapseMonitor(images[:32], patience=2, stop=True)
    with caplog.at_level(logging.WARNING, logger="kvision.embedding"):
        history = _fit_with_monitor(_constant_model(), monitor)
    assert monitor.collapsed and len(history.history["loss"]) == 2  # stopped at 2
    assert "Embedding collapse at epoch 2" in caplog.text
    assert "the loss 0.200000 at the margin 0.2" in caplog.text


def test_collapse_monitor_is_quiet_on_a_healthy_model(caplog):
    images, _ = _digits()
    keras.utils.set_random_seed(1)
    monitor = embedding.CollapseMonitor(images[:32], patience=1)
    with caplog.at_level(logging.WARNING, logger="kvision.embedding"):
        _fit_with_monitor(embedding.build(_tiny(), dim=4), monitor, epochs=2,
                          learning_rate=1e-3)
    assert not monitor.collapsed and "collapse" not in caplog.text
    assert min(monitor.spreads) > 100 * monitor.threshold  # 0.024-0.034 here


def test_spread_alone_is_not_a_collapse_when_the_loss_is_off_the_margin(caplog):
    images, _ = _digits()
    monitor = embedding.CollapseMonitor(images[:32], margin=0.5, patience=1)
    with caplog.at_level(logging.WARNING, logger="kvision.embedding"):
        _fit_with_monitor(_constant_model(), monitor, epochs=2)
    assert max(monitor.spreads) < 1e-6 and not monitor.collapsed


# --- a margin head through a .keras file ------------------------------------------------

def test_margin_head_model_round_trips_with_safe_mode(tmp_path):
    model = embedding.build(_tiny(), dim=8)
    trainer = embedding.with_margin_head(model, ArcFace(10, margin=0.3, name="arcface"))
    images, labels = _digits()
    inputs = {"images": images[:6], "labels": labels[:6].astype("int32")}
    trainer.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(inputs, labels[:6], epochs=1, verbose=0)
    path = str(tmp_path / "arcface.keras")
    trainer.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert task_of(loaded) == "embedding"
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0),
                               trainer.predict(inputs, verbose=0), atol=64 * 1e-5)
    head = loaded.get_layer("arcface")
    assert isinstance(head, ArcFace) and head.margin == 0.3 and head.scale == 64.0

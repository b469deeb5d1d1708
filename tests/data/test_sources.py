import os

import numpy as np
import pytest
from skimage import data as photos

from kvision.data import Dataset, load
from kvision.data import digits as digits_lib
from kvision.data.augment import photo_augmentation

PHOTOS = {"astronaut": photos.astronaut, "cat": photos.chelsea, "coffee": photos.coffee,
          "rocket": photos.rocket}


def _views(image, n):
    """``n`` different real crops (some mirrored) of a photo at a fifth of its size."""
    small = image[::5, ::5]
    h, w = small.shape[:2]
    views = []
    for i in range(n):
        crop = small[i * h // 10:h - (n - i) * h // 12, (n - i) * w // 12:w - i * w // 10]
        views.append(np.ascontiguousarray(crop[:, ::-1] if i % 2 else crop))
    return views


def _write_class(folder, name, n):
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    for i, view in enumerate(_views(PHOTOS[name](), n)):
        encoded = tf.io.encode_png(view) if i % 2 else tf.io.encode_jpeg(view)
        ext = ".png" if i % 2 else ".jpg"
        with open(os.path.join(folder, f"{name}{i}{ext}"), "wb") as f:
            f.write(encoded.numpy())


@pytest.fixture(scope="module")
def class_root(tmp_path_factory):
    """root/<class>/: four classes of four real photo crops each."""
    root = str(tmp_path_factory.mktemp("classes"))
    for name in PHOTOS:
        _write_class(os.path.join(root, name), name, 4)
    return root


def _elements(dataset):
    return list(dataset.as_numpy_iterator())


def test_folder_split_is_stratified_seeded_and_matches_keras(class_root):
    import keras
    import tensorflow as tf

    size = (36, 48)
    ds = load(class_root, image_size=size, validation_split=0.25, seed=3)
    assert isinstance(ds, Dataset) and ds.image_size == size and ds.channels == 3
    assert ds.source == os.path.abspath(class_root)
    assert ds.train.element_spec == (tf.TensorSpec(size + (3,), tf.float32),
                                     tf.TensorSpec((), tf.int64))
    reference = keras.utils.image_dataset_from_directory(
        class_root, image_size=size, shuffle=False, batch_size=None)
    assert ds.class_names == tuple(reference.class_names)
    expected = {os.path.normpath(p): example for p, example in
                zip(reference.file_paths, reference.as_numpy_iterator())}
    # every file once, split per class: one of each class's four held out
    assert not set(ds.train_files) & set(ds.test_files)
    assert {os.path.normpath(p) for p in ds.train_files + ds.test_files} == set(expected)
    assert (ds.num_train, ds.num_test) == (12, 4)
    for files, split in ((ds.train_files, ds.train), (ds.test_files, ds.test)):
        examples = _elements(split)
        assert len(examples) == len(files)
        for path, (image, label) in zip(files, examples):
            ref_image, ref_label = expected[os.path.normpath(path)]
            assert label == ref_label
            np.testing.assert_array_equal(image, ref_image, err_msg=path)
    assert sorted(label for _, label in _elements(ds.test)) == [0, 1, 2, 3]
    # the split depends on the seed only
    again = load(class_root, image_size=size, validation_split=0.25, seed=3)
    assert again.test_files == ds.test_files
    other = load(class_root, image_size=size, validation_split=0.25, seed=4)
    assert other.test_files != ds.test_files
    small = load(class_root, image_size=size, seed=3, max_examples=5)
    assert small.num_train == 5 == len(_elements(small.train))
    assert set(small.train_files) <= set(load(class_root, image_size=size,
                                              seed=3).train_files)


def test_split_layout_agrees_with_tfds_image_folder(tmp_path):
    import tensorflow_datasets as tfds

    root = str(tmp_path)
    for name in ("cat", "coffee", "rocket"):
        _write_class(os.path.join(root, "train", name), name, 3)
    for name in ("coffee", "rocket"):          # no cat in the test split
        _write_class(os.path.join(root, "test", name), name, 2)
    _write_class(os.path.join(root, "test", "astronaut"), "astronaut", 1)  # test only
    ds = load(root, image_size=20, channels=1)
    builder = tfds.folder_dataset.ImageFolder(root)
    assert ds.class_names == tuple(builder.info.features["label"].names)
    assert ds.class_names == ("astronaut", "cat", "coffee", "rocket")
    for split, files, dataset in (("train", ds.train_files, ds.train),
                                  ("test", ds.test_files, ds.test)):
        reference = {ex["image/filename"].decode(): ex["label"] for ex in
                     builder.as_dataset(split=split).as_numpy_iterator()}
        ours = dict(zip(files, (label for _, label in _elements(dataset))))
        assert ours == reference
        assert builder.info.splits[split].num_examples == len(files)
    image, _ = next(iter(ds.test))
    assert image.shape == (20, 20, 1)


def test_tfds_source_with_mocked_data(monkeypatch):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from kvision.data import sources

    monkeypatch.setattr(sources, "_reachable", lambda host: True)  # mocked "downloads"
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        beans = load("tfds:beans", image_size=40)
        names = tfds.builder("beans").info.features["label"].names
        raw = tfds.load("beans", split="train", as_supervised=True)
        raw_images = [image for image, _ in raw.as_numpy_iterator()]
        mnist = load("tfds:mnist", channels=3)
        pets = load("tfds:oxford_iiit_pet:test", image_size=(30, 20), max_examples=2)
        pet_names = tfds.builder("oxford_iiit_pet").info.features["label"].names
        beans_examples = _elements(beans.train)
        mnist_examples = _elements(mnist.test)
        pet_examples = _elements(pets.test)
    assert beans.class_names == tuple(names) == ("angular_leaf_spot", "bean_rust", "healthy")
    assert (beans.source, beans.image_size, beans.num_train, beans.num_test) == (
        "tfds:beans", (40, 40), 4, 4)
    assert beans.train.element_spec == (tf.TensorSpec((40, 40, 3), tf.float32),
                                        tf.TensorSpec((), tf.int64))
    for (image, label), original in zip(beans_examples, raw_images):
        assert 0 <= label < 3
        expected = tf.image.resize(original, (40, 40), method="bilinear").numpy()
        np.testing.assert_allclose(image, expected, atol=1e-4)
    # MNIST: its own 28x28 size by default, gray turned into three equal channels
    assert mnist.image_size == (28, 28) and mnist.class_names == tuple(map(str, range(10)))
    image = mnist_examples[0][0]
    assert image.shape == (28, 28, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert len(pets.class_names) == 37 and tuple(pet_names) == pets.class_names
    assert pets.test_split == "test" and pets.num_test == len(pet_examples) == 2
    assert pet_examples[0][0].shape == (30, 20, 3)


def test_tfds_offline_is_a_connection_error(monkeypatch, tmp_path):
    import requests
    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):   # what requests raises with no network here
        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries "
            "exceeded (Failed to resolve 'storage.googleapis.com')")

    from kvision.data import sources

    # The hosts answer, the download still fails (a proxy, a dropped connection).
    monkeypatch.setattr(sources, "_reachable", lambda host: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(ConnectionError, match="'beans'.*local folder"):
        load("tfds:beans", image_size=32, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset_kv'"):
        load("tfds:no_such_dataset_kv", image_size=32)


def test_digits_source_is_the_embedded_split():
    (x_train, y_train), (x_test, y_test) = digits_lib.load_digits()
    ds = load("digits", channels=1)
    assert (ds.num_train, ds.num_test, ds.image_size, ds.channels) == (1347, 450, (32, 32), 1)
    assert ds.class_names == tuple(str(i) for i in range(10))
    images, labels = next(iter(ds.test.batch(1000)))
    np.testing.assert_array_equal(images.numpy(), x_test)
    np.testing.assert_array_equal(labels.numpy(), y_test)
    colour = load("digits", image_size=40, channels=3, max_examples=10)
    image, label = next(iter(colour.train))
    assert image.shape == (40, 40, 3) and colour.num_train == 10
    with pytest.raises(ValueError, match="square"):
        load("digits", image_size=(32, 40))


def test_unknown_sources_and_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="(?s)digits.*image folder.*tfds:NAME") as error:
        load("imagenet")
    assert "'imagenet'" in str(error.value)
    with pytest.raises(ValueError, match="Unknown data"):
        load(str(tmp_path / "no_such_folder"), image_size=32)
    with pytest.raises(ValueError, match="validation_split"):
        load("digits", validation_split=0.0)
    with pytest.raises(ValueError, match="channels"):
        load("digits", channels=2)
    with pytest.raises(ValueError, match="image_size"):
        load("digits", image_size="large")


def test_photo_augmentation_only_mirrors_left_right():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(16, 12, 10, 3)).astype("float32")
    flip_only = photo_augmentation(rotation=0, zoom=0, contrast=0, seed=1)
    out = np.asarray(flip_only(images, training=True))
    mirrored = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images)]
    kept = [np.array_equal(o, x) for o, x in zip(out, images)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert any(mirrored) and any(kept)          # 16 coin tosses: both sides seen
    full = photo_augmentation(seed=2)
    np.testing.assert_array_equal(np.asarray(full(images, training=False)), images)
    changed = np.asarray(full(images, training=True))
    assert changed.shape == images.shape and not np.allclose(changed, images)
    assert changed.min() >= 0.0 and changed.max() <= 255.0


def test_tfds_offline_fails_fast_without_trying_to_download(monkeypatch, tmp_path):
    """Unreachable download hosts: one ConnectionError with the offline advice, before
    tfds' downloader retries every file for minutes."""
    import socket
    import time

    import tensorflow_datasets as tfds

    probed = []

    def refuse(address, *args, **kwargs):
        probed.append(address)
        raise OSError("unreachable (test)")

    def download(*args, **kwargs):
        raise AssertionError("download_and_prepare ran although the hosts are unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="cannot be reached.*local folder"):
        load("tfds:mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 30
    assert probed and probed[0] == ("storage.googleapis.com", 443)  # mnist's checksums


def test_a_folder_too_small_to_hold_out_an_image_is_refused_before_training(tmp_path,
                                                                           capsys):
    """One image per class: 0.2 of each rounds to none held out. The loader said
    nothing and indexed with an empty float array (an IndexError traceback from
    ``kvision train``); now one line, and no run folder."""
    from PIL import Image

    from kvision import cli

    root = tmp_path / "two classes"
    for name, level in (("a", 0), ("b", 255)):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((12, 12, 3), level, "uint8")).save(root / name / "1.png")
    with pytest.raises(ValueError, match=r"is held out: 0.2 of each class rounds to none "
                                         r"\(a 1, b 1 images\)"):
        load(str(root), image_size=16)
    assert cli.main(["train", "lenet5", "--data", str(root), "--epochs", "1", "--out",
                     str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "rounds to none" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()

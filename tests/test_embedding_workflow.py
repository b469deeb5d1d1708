"""The embedding workflow's decisions and bad input (issue 19, "The workflow" and
"Bad input"): ``kvision evaluate`` stores the verification threshold it chose (the
equal-error point, recomputed here from the pairs) and ``kvision search`` answers
"unknown" beyond it unless ``--threshold`` says otherwise; ``--out`` draws the
probe beside its nearest gallery images in NumPy's order; a gallery made by another
model, or of another width, is one clear error and is left as it was; an identity
with one image and a batch of one identity give finite losses and gradients; queries
of the wrong size are clear errors.

The model is a tiny untrained embedding model (pooled pixels, a seeded random
projection to 32 dimensions): what is tested is the plumbing, against NumPy.
"""

import json

import keras
import numpy as np
import pytest

from kvision import cli, embedding
from kvision.data.glyphs import glyphs

SIZE = 32


def pixels_model(seed=0, dim=32):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(inputs))
    return embedding.build(keras.Model(inputs, x), dim=dim, input_shape=(SIZE, SIZE, 3),
                           name="pixels")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved model, a gallery folder (3 test identities x 3 glyphs) embedded into
    ``gallery.npz``, and a photo that is none of them (half white, half black)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("workflow")
    model = pixels_model()
    model.save(root / "pixels.keras")
    images, labels, _ = glyphs(3, 3, image_size=SIZE, split="test", seed=5)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / "gallery" / f"id{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "gallery" / f"id{label}" / f"{i}.png")
    stranger = np.zeros((SIZE, SIZE, 3), "uint8")
    stranger[:, :SIZE // 2] = 255
    Image.fromarray(stranger).save(root / "stranger.png")
    assert cli.main(["embed", str(root / "pixels.keras"), str(root / "gallery"),
                     "--index", str(root / "gallery.npz")]) == 0
    return root


def _embeddings(root, files):
    """The saved model's unit embeddings of image files, as search loads them."""
    from kvision.predict import load_images, load_trained

    trained = load_trained(str(root / "pixels.keras"))
    images, _, _ = load_images([str(f) for f in files], trained)
    e = np.asarray(trained.model.predict(images, verbose=0), "float64")
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _eer_threshold(similarities, same):
    """The first score, from the highest down, where accepting every pair at or
    above it falsely accepts at least the share of same pairs it rejects."""
    for t in np.unique(similarities)[::-1]:
        far = np.mean(similarities[~same] >= t)
        frr = np.mean(similarities[same] < t)
        if far >= frr:
            return t
    raise AssertionError("no crossing")


def test_evaluate_stores_the_threshold_that_search_uses(setup, capsys):
    root = setup
    capsys.readouterr()
    assert cli.main(["evaluate", str(root / "pixels.keras"), "--max-images", "40",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stored = json.loads((root / "pixels.threshold.json").read_text())
    images, labels, _ = glyphs(10, 4, image_size=SIZE, split="test", seed=0)
    e = keras.saving.load_model(root / "pixels.keras").predict(
        images.astype("float32"), verbose=0).astype("float64")
    i, j = np.triu_indices(len(e), k=1)
    expected = _eer_threshold(np.sum(e[i] * e[j], 1), labels[i] == labels[j])
    assert stored["similarity"] == pytest.approx(expected, abs=1e-6)
    assert stored["similarity"] == pytest.approx(report["threshold"], abs=1e-12)
    assert stored["distance"] == pytest.approx(1 - stored["similarity"])

    files = sorted((root / "gallery").glob("*/*.png"))
    probes = [files[4], root / "stranger.png"]
    distance = 1 - _embeddings(root, probes) @ _embeddings(root, files).T
    nearest = distance.min(1)
    # One probe is in the gallery (distance 0), the stranger beyond the threshold.
    assert nearest[0] <= stored["distance"] < nearest[1]
    assert cli.main(["search", str(root / "pixels.keras"), *map(str, probes), "--index",
                     str(root / "gallery.npz"), "-k", "3", "--out",
                     str(root / "grid.png")]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{probes[0]}: {files[4].parent.name} (")
    assert lines[1].startswith(f"{probes[1]}: unknown (")
    assert "pixels.threshold.json" in err
    # --threshold overrides it: just beyond the stranger's nearest image, it is known.
    assert cli.main(["search", str(root / "pixels.keras"), str(probes[1]), "--index",
                     str(root / "gallery.npz"), "--threshold", str(nearest[1] + 1e-4)]) == 0
    closest = files[int(np.argmin(distance[1]))].parent.name
    assert capsys.readouterr().out.startswith(f"{probes[1]}: {closest} (")
    _check_grid(root / "grid.png", probes, files, distance)


def _check_grid(png, probes, files, distance):
    """--out's PNG: a row per probe, the probe then its 3 nearest in NumPy's order."""
    from PIL import Image

    from kvision.commands.search import CAPTION, TILE
    from kvision.data import load_image

    grid = np.asarray(Image.open(png).convert("RGB")).astype("float64")
    assert grid.shape == (2 * (TILE + CAPTION), 4 * TILE, 3)
    for row, (probe, order) in enumerate(zip(probes, np.argsort(distance, axis=1))):
        top = row * (TILE + CAPTION)
        for column, path in enumerate([probe] + [files[i] for i in order[:3]]):
            expected = np.clip(load_image(str(path), (TILE, TILE), channels=3), 0, 255)
            tile = grid[top:top + TILE, column * TILE:(column + 1) * TILE]
            assert np.abs(tile - expected).mean() < 1.0, (row, column, path)


def test_a_gallery_of_another_model_or_width_is_refused(setup, tmp_path, capsys):
    root = setup
    index = root / "gallery.npz"
    before = index.read_bytes()
    pixels_model(seed=1).save(tmp_path / "other.keras")        # same width, other weights
    pixels_model(dim=16).save(tmp_path / "narrow.keras")
    probe = str(root / "stranger.png")
    capsys.readouterr()
    assert cli.main(["search", str(tmp_path / "other.keras"), probe, "--index",
                     str(index)]) == 2
    err = capsys.readouterr().err.strip()
    assert "was made by another model" in err and str(root / "pixels.keras") in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    # enrolling with another width: one line, the gallery as it was
    assert cli.main(["embed", str(tmp_path / "narrow.keras"), str(root / "gallery"),
                     "--index", str(index), "--add"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds 32-D embeddings; the model answers 16-D" in err
    assert len(err.splitlines()) == 1
    assert index.read_bytes() == before


def test_enrol_adds_an_identity_that_search_then_names(setup, tmp_path, capsys):
    import shutil

    from PIL import Image

    from kvision.retrieval import Index

    root = setup
    shutil.copyfile(root / "gallery.npz", tmp_path / "g.npz")
    images, _, _ = glyphs(1, 2, image_size=SIZE, split="test", seed=11)
    (tmp_path / "new" / "newcomer").mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "new" / "newcomer" / f"{i}.png")
    assert cli.main(["embed", str(root / "pixels.keras"), str(tmp_path / "new"),
                     "--index", str(tmp_path / "g.npz"), "--add"]) == 0
    index = Index.load(tmp_path / "g.npz")
    assert len(index) == 11 and "newcomer/0.png" in index.ids.tolist()
    capsys.readouterr()
    probe = tmp_path / "new" / "newcomer" / "1.png"
    assert cli.main(["search", str(root / "pixels.keras"), str(probe), "--index",
                     str(tmp_path / "g.npz"), "--threshold", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"{probe}: newcomer (newcomer/1.png ")


def test_queries_of_the_wrong_size_are_clear_errors(setup):
    from kvision.metrics.embedding import Gallery
    from kvision.predict import load_trained
    from kvision.retrieval import Index
    from kvision.tasks.embedding import embed

    index = Index.load(setup / "gallery.npz")
    with pytest.raises(ValueError, match=r"dimension 16, but the index holds dimension 32"):
        index.query(np.ones((2, 16)))
    with pytest.raises(ValueError, match=r"takes images of 32x32 .* \(2, 16, 16, 3\)"):
        embed(load_trained(str(setup / "pixels.keras")), np.zeros((2, 16, 16, 3)))
    gallery = Gallery().enrol(np.eye(4), "ann")
    with pytest.raises(ValueError):
        gallery.identify(np.ones((1, 3)))


def test_one_image_identities_and_one_identity_batches_stay_finite():
    import tensorflow as tf

    from kvision.embedding import pk_batches
    from kvision.losses.embedding import ContrastiveLoss, TripletLoss

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (7, 4, 4, 1)).astype("float32")
    labels = np.array([0, 1, 1, 1, 2, 2, 2])           # identity 0 has one image
    x, y = next(iter(pk_batches(images, labels, p=3, k=4, seed=0)))
    y = y.numpy()
    lone = np.flatnonzero(y == 0)
    assert len(lone) == 4 and (x.numpy()[lone] == images[0]).all()  # it, four times
    e = x.numpy().reshape(12, -1)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    losses = [TripletLoss(mining=m) for m in ("batch_hard", "batch_all", "semi_hard")]
    for loss_fn in losses + [ContrastiveLoss()]:
        for batch_labels, batch in ((y, e), (np.zeros(4), e[4:8])):  # then one identity
            variable = tf.Variable(batch)
            with tf.GradientTape() as tape:
                value = loss_fn(batch_labels, variable)
            gradient = tape.gradient(value, variable).numpy()
            assert np.isfinite(float(value)) and np.isfinite(gradient).all(), loss_fn
    # batch-hard as Hermans et al. define it, by hand: the lone identity's positives
    # are its copies (distance 0), so its anchors count with their nearest negative
    d = np.sqrt(np.maximum(((e[:, None] - e[None]) ** 2).sum(-1), 1e-12))
    same = y[:, None] == y[None]
    hardest_positive = np.where(same & ~np.eye(12, dtype=bool), d, 0).max(1)
    hardest_negative = np.where(~same, d, np.inf).min(1)
    expected = np.maximum(0.2 + hardest_positive - hardest_negative, 0).mean()
    assert float(losses[0](y, e)) == pytest.approx(expected, abs=1e-5)

"""``kvision train`` / ``evaluate`` for embedding models (issue 19, "The workflow"):
``embedding_net`` trained on glyph identities logs the held-out rank-1 every epoch,
equal to ``kvision evaluate``'s and to a NumPy nearest-neighbour count on the saved
model's embeddings of identities it never saw; bad data is one clear error line."""

import csv
import json

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kvision import cli
from kvision.data.glyphs import glyphs
from kvision.tasks import task_of

pytestmark = pytest.mark.xdist_group("train_tasks")



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of ``kvision train embedding_net`` on 64 glyph images."""
    folder = tmp_path_factory.mktemp("embedding") / "run"
    assert cli.main(["train", "embedding_net", "--data", "glyphs", "--epochs", "1",
                     "--max-images", "64", "--batch-size", "16",
                     "--out", str(folder)]) == 0
    return folder


def _numpy_figures(model, seed=0):
    """Leave-one-out rank-1 and pair AUC of the test identities' held-out glyphs
    (what load_data draws by default: 100 identities x 4), computed here."""
    images, labels, _ = glyphs(100, 4, image_size=32, split="test", seed=seed)
    e = np.asarray(model.predict(images.astype("float32"), verbose=0), "float64")
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    similarity = e @ e.T
    np.fill_diagonal(similarity, -np.inf)           # a query is not its own neighbour
    rank1 = np.mean(labels[np.argmax(similarity, axis=1)] == labels)
    i, j = np.triu_indices(len(e), k=1)
    auc = roc_auc_score(labels[i] == labels[j], (e[i] * e[j]).sum(1))
    return rank1, auc


def test_train_logs_the_rank1_that_evaluate_and_numpy_measure(run, capsys):
    with open(run / "training_log.csv") as f:
        logged = float(list(csv.DictReader(f))[-1]["val_rank1"])
    for name in ("embedding_net.keras", "1/saved_model.pb", "run.json"):
        assert (run / name).is_file(), name
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = keras.saving.load_model(run / "embedding_net.keras", safe_mode=True)
    assert task_of(saved) == "embedding"
    rank1, auc = _numpy_figures(saved)
    # 400 queries: one query is 0.0025; float32 ties may move a neighbour, not two.
    assert logged == pytest.approx(report["rank1"], abs=1e-9)
    assert report["rank1"] == pytest.approx(rank1, abs=0.0051)
    assert report["auc"] == pytest.approx(auc, abs=1e-4)
    assert set(report) >= {"rank5", "map_at_r", "eer", "tar_at_far"}
    assert report["rank1"] <= report["rank5"] <= 1


def test_the_saved_model_answers_unit_embeddings(run):
    saved = keras.saving.load_model(run / "embedding_net.keras", safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    e = np.asarray(saved.predict(x, verbose=0))
    assert e.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("data, message", [
    ("/no/such/folder", "No identity data at '/no/such/folder'"),
])
def test_bad_data_is_one_clear_error(data, message, tmp_path, capsys):
    assert cli.main(["train", "embedding_net", "--data", data, "--epochs", "1",
                     "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_each_epoch_draws_new_pk_batches_the_same_for_the_same_seed():
    from kvision.tasks.base import get_task

    task = get_task("embedding")
    data = task.training_data("digits", image_size=8, channels=1, seed=0, max_images=200)

    def epoch_labels(dataset):
        return np.concatenate([y.numpy() for _, y in dataset])

    first = task.fit_dataset("embedding_net", None, data, batch_size=16, seed=0)
    again = task.fit_dataset("embedding_net", None, data, batch_size=16, seed=0)
    one, two = epoch_labels(first), epoch_labels(first)
    assert len(one) == 13 * 16 and (one.reshape(-1, 4) == one.reshape(-1, 4)[:, :1]).all()
    assert not np.array_equal(one, two)                     # a new draw every epoch
    np.testing.assert_array_equal(one, epoch_labels(again))  # reproducible by seed


@pytest.fixture(scope="module")
def gallery_folder(tmp_path_factory):
    """3 test identities x 3 glyph images as ``root/<identity>/*.png``, and a probe."""
    from PIL import Image

    root = tmp_path_factory.mktemp("gallery")
    images, labels, _ = glyphs(3, 3, image_size=32, split="test", seed=5)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"id{label}").mkdir(exist_ok=True)
        Image.fromarray(image).save(root / f"id{label}" / f"{i}.png")
    return root


def test_embed_then_search_answers_the_nearest_identities(run, gallery_folder, tmp_path,
                                                          capsys):
    index = tmp_path / "gallery.npz"
    assert cli.main(["embed", str(run), str(gallery_folder), "--index", str(index)]) == 0
    assert "9 images of 3 identities embedded (128-D)" in capsys.readouterr().out
    probe = gallery_folder / "id1" / "4.png"
    assert cli.main(["search", str(run), str(probe), "--index", str(index), "-k",
                     "9"]) == 0
    answer = capsys.readouterr().out.strip()
    # The reference: cosine distances of the saved model's embeddings, in NumPy.
    from kvision.predict import load_images, load_trained

    trained = load_trained(str(run))
    files = sorted(gallery_folder.glob("*/*.png"))
    images, _, _ = load_images([str(f) for f in files], trained)
    e = np.asarray(trained.model.predict(images, verbose=0), "float64")
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    distance = 1 - e @ e[files.index(probe)]
    order = np.argsort(distance, kind="stable")
    listed = answer.split("(", 1)[1].rstrip(")").split(", ")
    assert answer.startswith(f"{probe}: id1 (id1/4.png ")      # itself, at distance ~0
    found = {item.rsplit(" ", 1)[0]: float(item.rsplit(" ", 1)[1]) for item in listed}
    expected = {f"{files[i].parent.name}/{files[i].name}": distance[i] for i in order}
    assert set(found) == set(expected)
    for name, value in found.items():
        assert value == pytest.approx(expected[name], abs=1e-4)  # printed to 4 places
    assert cli.main(["search", str(run), str(probe), "--index", str(index),
                     "--threshold", "-1"]) == 0
    assert capsys.readouterr().out.startswith(f"{probe}: unknown (")


def test_search_refuses_a_gallery_of_another_dimension(run, gallery_folder, tmp_path,
                                                      capsys):
    from kvision.retrieval import Index

    other = Index("cosine").add(np.eye(3), ids=np.array(["a/1", "b/1", "c/1"]))
    other.save(tmp_path / "other.npz")
    probe = str(next(gallery_folder.glob("*/*.png")))
    assert cli.main(["search", str(run), probe, "--index",
                     str(tmp_path / "other.npz")]) != 0
    err = capsys.readouterr().err
    assert "holds 3-D embeddings; the model answers 128-D" in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["embed", str(run), str(tmp_path / "none"), "--index",
                     str(tmp_path / "g.npz")]) != 0
    assert "No folder of identities" in capsys.readouterr().err
    assert not (tmp_path / "g.npz").exists()


# --- the recipes of --model-arg loss=... -------------------------------------------------

def _tiny_embedding(dim=6):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(
        keras.layers.Rescaling(1 / 255)(inputs))
    from kvision import embedding

    return embedding.build(keras.Model(inputs, x), dim=dim, name="tiny_embedding")


def _cross_entropy(logits, labels):
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(log_p[np.arange(len(labels)), labels])


def _head_logits(trainer, loss, e, labels):
    """The logits of ``loss``'s head written out in NumPy from the embeddings ``e``."""
    from kvision.tasks import embedding as task_lib

    if loss == "softmax":  # on the features before their unit normalization
        kernel, bias = trainer.get_layer("classifier").get_weights()
        return e @ kernel + bias
    w = trainer.get_layer(loss).kernel.numpy().astype("float64")
    cosine = e @ (w / np.linalg.norm(w, axis=0))
    m = task_lib.HEAD_MARGINS.get(loss, 0.0)
    target = np.cos(np.arccos(np.clip(cosine, -1, 1)) + m) if loss == "arcface" \
        else cosine - m  # (theta + m < pi for every class here: cosines > -0.95)
    return task_lib.HEAD_SCALE * np.where(np.eye(10, dtype=bool)[labels], target, cosine)


def test_each_loss_trains_the_embedding_through_its_head():
    """The training model, batches and loss of each recipe against the head's formula
    written out in NumPy on the embedding model's own outputs; the inference model is
    the embedding model itself, whose weights the training model trains."""
    from types import SimpleNamespace

    from kvision.tasks import embedding as task_lib
    from kvision.tasks.base import get_task

    task = get_task("embedding")
    rng = np.random.default_rng(0)
    data = SimpleNamespace(extras={"images": rng.uniform(0, 255, (40, 8, 8, 1)).astype(
        "float32"), "labels": np.arange(40) % 10})
    keras.utils.set_random_seed(0)
    model = _tiny_embedding()
    batches = {}  # one batch of each form (the heads take images and labels)
    for loss in ("cosface", "arcface", "normface", "softmax", "triplet_semi_hard"):
        trainer = task_lib.training_model(model, loss, classes=10)
        assert task.inference_model("embedding_net", trainer) is model
        assert {id(v) for v in model.trainable_weights} <= \
            {id(v) for v in trainer.trainable_weights}
        function = task.losses("embedding_net", trainer)
        if loss.startswith("triplet"):
            assert trainer is model and function.mining == "semi_hard"
            continue
        form = "images" if loss == "softmax" else "images and labels"
        if form not in batches:
            batches[form] = next(iter(task.fit_dataset("embedding_net", trainer, data,
                                                       batch_size=16, seed=0)))
        inputs, labels = batches[form]
        assert isinstance(inputs, dict) == (form == "images and labels")
        e = np.asarray(model(inputs["images"] if isinstance(inputs, dict) else inputs),
                       "float64")
        if loss == "softmax":
            projection = model.get_layer("projection")
            e = np.asarray(keras.Model(model.inputs, projection.output)(inputs), "float64")
            assert not np.allclose(np.linalg.norm(e, axis=1), 1.0)
        labels = np.asarray(labels)
        expected = _cross_entropy(_head_logits(trainer, loss, e, labels), labels)
        assert float(function(labels, trainer(inputs))) == pytest.approx(expected, rel=1e-4)


def test_an_unknown_loss_is_one_clear_error(tmp_path, capsys):
    assert cli.main(["train", "embedding_net", "--model-arg", "loss=hinge", "--data",
                     "digits", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "loss must be one of cosface, arcface" in err and "got 'hinge'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_folder_of_three_identities_is_refused_before_training(gallery_folder, tmp_path,
                                                                  capsys):
    """Held out one identity, the rest would train on two and verify none (no pair of
    different held-out identities): four are needed, said in one line."""
    assert cli.main(["train", "embedding_net", "--data", str(gallery_folder), "--epochs",
                     "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "3 identities: an embedding needs at least four" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()

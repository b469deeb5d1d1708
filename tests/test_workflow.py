"""``kvision evaluate | predict | sort`` on a LeNet-5 trained on the digits."""

import hashlib
import json
import os
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics

from kvision import cli
from kvision import evaluate as evaluation
from kvision.data import load_digits
from kvision.train import train_classifier

pytestmark = pytest.mark.xdist_group("workflow")


class Done:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """``kvision ARGS`` in this process (the commands are thin over the library)."""

    def run(*args):
        capsys.readouterr()
        returncode = cli.main(list(args))
        captured = capsys.readouterr()
        return Done(returncode, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lenet5"
    result = train_classifier("lenet5", epochs=4, out_dir=str(out), export=False, verbose=0)
    return out, result


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Digits of the held-out split as PNG files, plus a file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    _, (x_test, y_test) = load_digits()
    paths = []
    for i in range(40):
        path = folder / f"digit_{i:02d}.png"
        png = tf.io.encode_png(np.round(x_test[i]).astype("uint8"))
        path.write_bytes(png.numpy())
        paths.append(path)
    (folder / "notes.txt").write_text("not a photo")
    return folder, paths, y_test[:40]


def _decoded(paths):
    """Reference pixels: TensorFlow's own PNG decoder, no resize needed at 32x32."""
    return np.stack([tf.io.decode_png(tf.io.read_file(str(p)), channels=1).numpy()
                     for p in paths]).astype("float32")


def test_report_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 500)
    scores = rng.random((500, 7)) + 0.8 * np.eye(7)[labels]
    scores[:, 6] *= 0.1  # class 6 is (almost) never predicted: precision 0 case
    report = evaluation.classification_report(scores, labels, [f"c{i}" for i in range(7)])
    predicted = scores.argmax(-1)
    precision, recall, _, support = metrics.precision_recall_fscore_support(
        labels, predicted, labels=range(7), zero_division=0)
    np.testing.assert_allclose(report.precision, precision)
    np.testing.assert_allclose(report.recall, recall)
    np.testing.assert_array_equal(report.support, support)
    np.testing.assert_array_equal(report.confusion,
                                  metrics.confusion_matrix(labels, predicted, labels=range(7)))
    assert report.top1_accuracy == pytest.approx(metrics.accuracy_score(labels, predicted))
    assert report.top5_accuracy == pytest.approx(
        metrics.top_k_accuracy_score(labels, scores, k=5, labels=range(7)))
    assert report.top5_error == pytest.approx(1 - report.top5_accuracy)


def test_evaluate_command(run, trained):
    out, result = trained
    done = run("evaluate", str(out), "--data", "digits", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["top1_accuracy"] == pytest.approx(result.test_accuracy, abs=1e-6)
    assert report["top5_accuracy"] >= report["top1_accuracy"]
    assert sum(c["support"] for c in report["per_class"].values()) == 450
    png = tf.io.decode_png(tf.io.read_file(report["confusion_matrix_png"]))
    assert png.shape[0] > 200 and png.shape[-1] in (3, 4)


def test_predict_command(run, trained, photos):
    out, result = trained
    _, paths, _ = photos
    done = run("predict", str(out), *map(str, paths[:5]), "--json", "--top-k", "3")
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    expected = result.model.predict(_decoded(paths[:5]), verbose=0)
    for answer, probabilities in zip(answers, expected):
        labels = [p["label"] for p in answer["predictions"]]
        assert labels == [str(i) for i in np.argsort(-probabilities)[:3]]
        assert answer["predictions"][0]["probability"] == pytest.approx(
            probabilities.max(), abs=1e-5)
    text = run("predict", str(out), str(paths[0]))
    assert text.returncode == 0 and str(paths[0]) in text.stdout
    # A file that is not there is reported and the others answered; exit status 1.
    missing = run("predict", str(out), str(paths[0].parent / "nope.png"), str(paths[1]))
    assert missing.returncode == 1 and "nope.png" in missing.stderr
    assert missing.stdout.startswith(f"{paths[1]}: ")
    assert "Traceback" not in missing.stderr


def _snapshot(folder):
    return {p: (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
            for p in map(str, sorted(folder.iterdir()))}


def test_sort_copies_into_class_folders(run, trained, photos, tmp_path):
    out, result = trained
    folder, paths, _ = photos
    before = _snapshot(folder)
    probabilities = result.model.predict(_decoded(paths), verbose=0)
    threshold = float(np.median(probabilities.max(-1)))
    target = tmp_path / "sorted"
    done = run("sort", str(out), "--input", str(folder), "--output", str(target),
               "--threshold", str(threshold))
    assert done.returncode == 0, done.stderr
    assert _snapshot(folder) == before  # originals untouched
    assert "notes.txt" in done.stderr
    for path, row in zip(paths, probabilities):
        expected = str(row.argmax()) if row.max() >= threshold else "_unsure"
        copy = target / expected / path.name
        assert copy.read_bytes() == path.read_bytes(), path.name
    assert sum(len(os.listdir(d)) for d in target.iterdir()) == len(paths)
    assert len(os.listdir(target / "_unsure")) == int(np.sum(probabilities.max(-1) < threshold))

    # Sorting again into the same output never overwrites: copies get a suffix.
    again = run("sort", str(out), "--input", str(folder), "--output", str(target))
    assert again.returncode == 0, again.stderr
    assert sum(len(os.listdir(d)) for d in target.iterdir()) == 2 * len(paths)
    inside = run("sort", str(out), "--input", str(folder), "--output", str(folder / "out"))
    assert inside.returncode == 2 and "inside" in inside.stderr
    assert _snapshot(folder) == before

"""kvision.evaluate: the report's figures, and top-5 only where it means something."""

import json

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics

import kvision
from kvision import cli
from kvision import evaluate as evaluation
from kvision.saving import save_model


def _scores(classes, n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return rng.random((n, classes)) + 0.3 * np.eye(classes)[labels], labels


@pytest.mark.parametrize("classes", [2, 4, 5])
def test_no_top5_with_five_classes_or_fewer(classes):
    """With 5 classes or fewer every label is in the top 5: 1.0 always, left out."""
    scores, labels = _scores(classes)
    report = evaluation.classification_report(scores, labels, [f"c{i}" for i in range(classes)])
    assert report.top5_accuracy is None and report.top5_error is None
    assert "top-5" not in report.format() and "top-1 accuracy" in report.format()
    figures = report.as_dict()
    assert "top5_accuracy" not in figures and "top5_error" not in figures
    assert figures["top1_accuracy"] == pytest.approx(
        metrics.accuracy_score(labels, scores.argmax(-1)))


def test_top5_with_six_classes():
    scores, labels = _scores(6)
    report = evaluation.classification_report(scores, labels, [f"c{i}" for i in range(6)])
    expected = metrics.top_k_accuracy_score(labels, scores, k=5, labels=range(6))
    assert expected < 1.0  # a figure that can say something
    assert report.top5_accuracy == pytest.approx(expected)
    assert f"top-5 accuracy {expected:.4f}" in report.format()
    assert report.as_dict()["top5_error"] == pytest.approx(1 - expected)


@pytest.fixture
def four_classes(tmp_path):
    """A 4-class folder of small greyscale PNGs and an (untrained) LeNet-5 for it."""
    names = ["brick", "grass", "gravel", "wood"]
    rng = np.random.default_rng(0)
    for name in names:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)
            (tmp_path / "data" / name / f"{i}.png").write_bytes(
                tf.io.encode_png(pixels).numpy())
    model = kvision.create("lenet5", classes=4)
    path = save_model(model, str(tmp_path / "run" / "lenet5.keras"), class_names=names)
    return path, str(tmp_path / "data")


def test_evaluate_command_leaves_out_top5_with_four_classes(four_classes, capsys):
    path, data = four_classes
    assert cli.main(["evaluate", path, "--data", data]) == 0
    text = capsys.readouterr().out
    assert "top-1 accuracy" in text and "top-5" not in text
    assert cli.main(["evaluate", path, "--data", data, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert "top1_accuracy" in figures and "top5_accuracy" not in figures
    assert sorted(figures["per_class"]) == ["brick", "grass", "gravel", "wood"]

"""The registry's published ImageNet accuracies and ILSVRC entries, and the zoo chart
of ``kvision list --plot``.

The figures are published ones (papers, keras.applications' table, torchvision's
weights metadata): what can be checked here is that they agree with what else is
installed (keras' own MobileNetV3 docstring table, the checkpoints' metadata), with
facts independent of any one figure (an ensemble's test error below its single
network's, larger members of a scaled family more accurate, each year's ILSVRC entry
better than the last), and that the chart draws exactly them.
"""

import json
import os
import re

import keras
import pytest

from kvision import cli
from kvision.commands import list_
from kvision.models import get_info, list_models
from kvision.registry import ilsvrc_entry, published

CLASSIFIERS = list_models(task="classification")
# Trained on other data than ImageNet (LeNet-5: MNIST digits).
NOT_IMAGENET = {"lenet5"}


def test_every_imagenet_classifier_cites_its_published_accuracy():
    for name in list_models():
        info = get_info(name)
        if info.task != "classification" or name in NOT_IMAGENET:
            assert info.accuracy is None, name  # task models, LeNet-5: none
            continue
        accuracy = info.accuracy
        assert accuracy is not None, name
        assert 50 < accuracy["top1"] < 90, (name, accuracy)
        assert accuracy["top5"] is None or accuracy["top1"] < accuracy["top5"] < 100, name
        assert len(accuracy["source"]) > 10, name
        assert 2012 <= info.year <= 2021, (name, info.year)  # ImageNet-era networks
    assert 1989 <= get_info("lenet5").year < 2012


def test_checkpoint_networks_list_what_their_checkpoint_reports():
    """The torchvision/timm-layout networks list the accuracy of the checkpoint
    weights="imagenet" loads (its publisher's figure), not their paper's."""
    checked = {"torchvision": 0, "timm": 0}
    for name in CLASSIFIERS:
        info = get_info(name)
        if info.checkpoint:
            assert info.accuracy == published(info.checkpoint["top1"],
                                              info.checkpoint["top5"],
                                              info.checkpoint["source"]), name
            checked[info.checkpoint["publisher"]] += 1
    assert checked["torchvision"] >= 10 and checked["timm"] == 3


def test_paper_figures_are_kept_apart_where_the_checkpoint_reports_another():
    """SE-Net's and Inception-v4's papers (their Table 2) against timm's checkpoints:
    timm's later SE-Net training recipes, and its evaluation of the TF-slim
    Inception-v4 file, come out above the papers' single-crop figures. That file is
    the one of timm's old cfg (label offset 1), whose csv row (80.168) is not the
    hub copy's (80.144)."""
    paper = {n: get_info(n).paper_accuracy for n in CLASSIFIERS if get_info(n).paper_accuracy}
    assert {n: (a["top1"], a["top5"]) for n, a in paper.items()} == {
        "se_resnet50": (76.71, 93.38), "se_resnext50_32x4d": (78.90, 94.51),
        "inception_v4": (80.0, 95.0)}
    for name, figure in paper.items():
        info = get_info(name)
        assert figure["source"].split()[0] in ("Hu", "Szegedy"), figure
        assert info.accuracy["source"].startswith("timm "), name
        assert info.accuracy["top1"] > figure["top1"], name
    assert (get_info("se_resnet50").accuracy["top1"],
            get_info("inception_v4").accuracy["top1"]) == (80.26, 80.168)
    assert "inceptionv4-8e4777a0" in get_info("inception_v4").checkpoint["url"]
    with pytest.raises(ValueError, match="paper_accuracy of 'bad_paper'"):
        from kvision.registry import register

        register("bad_paper", task="classification", family="x", year=2020, paper="p",
                 paper_accuracy={"top1": 70})


def test_mobilenet_v3_top1_is_the_table_in_keras_own_docstring():
    """keras.applications.MobileNetV3's docstring table, read from the installed keras."""
    from keras.src.applications import mobilenet_v3

    source = open(mobilenet_v3.__file__).read()
    for size in ("large", "small"):
        row = re.search(rf"mobilenet_v3_{size}_1\.0_224\s*\|\s*\d+\s*\|\s*[\d.]+\s*\|\s*"
                        r"([\d.]+)", source)
        assert row is not None, f"no {size} row in keras {keras.__version__}'s docstring"
        assert get_info(f"mobilenet_v3_{size}").accuracy["top1"] == float(row.group(1))


@pytest.mark.parametrize("family", [
    [f"efficientnet_b{b}" for b in range(8)],
    [f"efficientnet_lite{n}" for n in range(3)],
    ["densenet121", "densenet169", "densenet201"],
    ["resnet18", "resnet34", "resnet50", "resnet101"],
    ["resnet50_v2", "resnet101_v2", "resnet152_v2"],
    ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"],
    ["resnext50_32x4d", "resnext101_32x8d"],
])
def test_larger_members_of_a_scaled_family_are_more_accurate(family):
    top1 = [get_info(name).accuracy["top1"] for name in family]
    assert top1 == sorted(top1) and len(set(top1)) == len(top1), dict(zip(family, top1))


def test_ilsvrc_entries_improve_every_year_and_beat_their_single_networks():
    entries = sorted((get_info(n).ilsvrc["year"], get_info(n).ilsvrc["top5_error"], n)
                     for n in CLASSIFIERS if get_info(n).ilsvrc)
    assert entries[0][2] == "alexnet" and len(entries) >= 5
    winners = {}
    for year, error, name in entries:  # the best entry of each year
        winners[year] = min(error, winners.get(year, 100))
        info = get_info(name)
        assert abs(year - info.year) <= 1, name
        # An ensemble on the test set beats one network of its family on validation.
        assert error < 100 - info.accuracy["top5"], (name, error, info.accuracy)
    errors = [winners[year] for year in sorted(winners)]
    assert all(a > b for a, b in zip(errors, errors[1:])), winners


def test_bad_figures_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match=r"top-1 80.*top-5 70"):
        published(80, 70, "a paper")
    with pytest.raises(ValueError, match="source"):
        published(70, 90, " ")
    with pytest.raises(ValueError, match="2010-2017"):
        ilsvrc_entry(2019, 2.0, "entry", "paper")
    from kvision.registry import register

    with pytest.raises(ValueError, match="expected published"):
        register("bad_accuracy", task="classification", family="x", year=2020,
                 paper="p", accuracy={"top1": 70})


def _fake_profiles(tmp_path, monkeypatch, names):
    """A profile cache holding every listed network, so listing builds nothing: the
    GFLOPs are the test's own numbers, 0.1 x (index + 1)."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cache = {name: {"params": 1000 + i, "trainable": 1000 + i, "gflops": 0.1 * (i + 1),
                    "size_mb": 1.0, "input_shape": [224, 224, 3]}
             for i, name in enumerate(names)}
    path = list_._profile_cache_path()
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(cache, f)
    return cache


def test_the_chart_draws_the_registry_figures(tmp_path, monkeypatch):
    cache = _fake_profiles(tmp_path, monkeypatch, CLASSIFIERS)
    rows = list_.zoo_table(CLASSIFIERS, progress=False)
    data = list_.plot_zoo(rows, str(tmp_path / "zoo.png"))
    with open(tmp_path / "zoo.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path / "kvision") and sorted(os.listdir(tmp_path)) == [
        "kvision", "zoo.png"]  # no temporary file left
    expected = [(n, get_info(n).family, cache[n]["gflops"], get_info(n).accuracy["top1"])
                for n in CLASSIFIERS if n not in NOT_IMAGENET]
    assert data["tradeoff"] == expected
    assert [(n, y, e) for n, _, y, e, _ in data["lineage"]] == [
        ("alexnet", 2012, 15.3), ("zfnet", 2013, 11.7), ("vgg16", 2014, 7.3),
        ("googlenet", 2014, 6.67), ("resnet152", 2015, 3.57), ("se_resnet50", 2017, 2.251)]
    top5 = {n: e for n, _, e in data["published"]}
    assert top5["alexnet"] == pytest.approx(100 - 79.066)
    assert "mobilenet_v3_small" not in top5 and "lenet5" not in top5  # no top-5 given


def test_list_prints_accuracy_columns_and_plot_writes_the_png(tmp_path, monkeypatch, capsys):
    _fake_profiles(tmp_path, monkeypatch, CLASSIFIERS)
    png = tmp_path / "out" / "zoo.png"
    assert cli.main(["list", "--task", "classification", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.exists() and f"wrote {png}: 6 ILSVRC entries, 49 networks" in out
    header, _, *lines = out.splitlines()
    assert header.split()[-2:] == ["top-1", "top-5"]
    row = {line.split()[0]: line.split()[-2:] for line in lines if line.split()}
    assert row["alexnet"] == ["56.5", "79.1"] and row["lenet5"] == ["-", "-"]
    assert row["mobilenet_v3_small"] == ["68.1", "-"]
    markdown = list_.format_markdown(list_.zoo_table(["lenet5", "vgg16"], progress=False))
    assert markdown.splitlines()[0].endswith("| ImageNet top-1 / top-5 % (source) |")
    assert markdown.endswith("| 71.3 / 90.1 (keras.applications' table, VGG16) |")
    assert "| none: not trained on ImageNet |" in markdown


def test_plot_to_a_non_png_path_is_one_error_line(tmp_path, monkeypatch, capsys):
    _fake_profiles(tmp_path, monkeypatch, CLASSIFIERS)
    assert cli.main(["list", "--plot", str(tmp_path / "zoo.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kvision list: error: --plot writes a PNG file: expected a path ending "
                   f"in .png, got {str(tmp_path / 'zoo.jpg')!r}."]
    assert os.listdir(tmp_path) == ["kvision"]


def test_info_shows_the_accuracy_list_shows_and_the_papers(capsys):
    """kvision info prints the figures of kvision list (and their source); for a timm
    network also the paper's, and which checkpoint weights="imagenet" loads."""
    from kvision.commands import info as info_command

    assert cli.main(["info", "squeezenet1_1", "--no-summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("accuracy:     top-1 58.2 / top-5 80.6 % (torchvision IMAGENET1K_V1 metadata "
            "(acc@1, acc@5))") in out  # torchvision's SqueezeNet1_1_Weights: 58.178, 80.624
    assert any(line.startswith("weights:") and line.endswith(
        "ImageNet: torchvision checkpoint https://download.pytorch.org/models/"
        "squeezenet1_1-b8a52dc0.pth") for line in out), out
    lines = info_command.accuracy_lines(get_info("se_resnet50"))
    assert lines[0].startswith("accuracy:     top-1 80.3 / top-5 95.1 % (timm "
                               "seresnet50.ra2_in1k, results-imagenet.csv")
    assert lines[1] == ("  the paper: top-1 76.7 / top-5 93.4 % (Hu et al. 2017, Table 2: "
                        "SE-ResNet-50, val error 23.29 / 6.62)")
    assert info_command.accuracy_lines(get_info("mobilenet_v3_small"))[0].startswith(
        "accuracy:     top-1 68.1 / top-5 - %")
    assert info_command.accuracy_lines(get_info("lenet5")) == [
        "accuracy:     none published (not trained on ImageNet)"]
    assert info_command.imagenet_weights(get_info("vgg16")) == "keras.applications.VGG16"

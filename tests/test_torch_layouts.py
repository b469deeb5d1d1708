"""torchvision checkpoints load into the kvision networks of torchvision's layout,
and the loaded networks compute what torchvision's modules compute.

Each checkpoint is written in torch's zip format (the writer of
test_torch_checkpoint.py, no torch needed) with random weights and random
BatchNorm statistics, loaded through ``weights=``, and the outputs on two random
images are compared with ``reference/``: torchvision's forward in NumPy, written
from torchvision's module code, not from kvision's.
"""

import keras
import numpy as np
import pytest

import kvision
from kvision.testing import float32_atol
from reference import torchvision_nets as tv
from test_torch_checkpoint import Tensor, _write_zip, fake_torch  # noqa: F401 (fixture)


def write_checkpoint(path, state, torch):
    """``state`` (name -> array) as torch.save writes a state dict (zip format)."""
    import collections

    bases, tensors = {}, collections.OrderedDict()
    for i, (key, array) in enumerate(state.items()):
        array = np.ascontiguousarray(array)
        bases[str(i)] = array.reshape(-1)
        strides = tuple(s // array.itemsize for s in array.strides)
        tensors[key] = Tensor(str(i), bases[str(i)], 0, array.shape, strides, torch)
    _write_zip(path, tensors, bases)
    return path


def images(size, seed=1):
    return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype("float32")


def check_against_reference(model, reference, x, *, terms, depth):
    """The model's outputs on ``x`` (NHWC) equal ``reference(x as NCHW)`` within
    float32 rounding over ``depth`` reductions of up to ``terms`` products."""
    got = np.asarray(model(x, training=False))
    expected = reference(x.transpose(0, 3, 1, 2))
    if expected.ndim == 4:
        expected = expected.transpose(0, 2, 3, 1)
    assert got.shape == expected.shape
    assert np.ptp(expected) > 0.1 * np.abs(expected).max() > 0  # not a degenerate case
    np.testing.assert_allclose(got, expected, rtol=0,
                               atol=float32_atol(expected, terms=terms, depth=depth))
    return got, expected


RESNETS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


@pytest.mark.parametrize("name", sorted(RESNETS))
def test_resnet_checkpoint_gives_torchvisions_outputs(name, fake_torch, tmp_path):
    layers = RESNETS[name]
    state = tv.random_state(tv.resnet_shapes(layers, classes=10))
    path = write_checkpoint(tmp_path / f"{name}.pth", state, fake_torch)
    model = kvision.create(name, weights=path, input_shape=(64, 64, 3), classes=10,
                           classifier_activation=None)
    check_against_reference(model, lambda x: tv.resnet(state, x, layers), images(64),
                            terms=9 * 512, depth=2 * sum(layers) + 2)


def test_resnet_features_without_top_ignore_the_classifier(fake_torch, tmp_path):
    state = tv.random_state(tv.resnet_shapes(RESNETS["resnet18"]), seed=2)
    path = write_checkpoint(tmp_path / "resnet18.pth", state, fake_torch)
    model = kvision.create("resnet18", weights=path, include_top=False,
                           input_shape=(48, 48, 3))
    check_against_reference(
        model, lambda x: tv.resnet(state, x, RESNETS["resnet18"], features=True),
        images(48), terms=9 * 512, depth=18)


@pytest.mark.slow
def test_alexnet_checkpoint_gives_torchvisions_outputs(fake_torch, tmp_path):
    """At 127x127 the last map is 3x3 and the 6x6 adaptive pool repeats cells, so
    the flatten-order permutation of fc1 (torch C,H,W; Keras H,W,C) is exercised."""
    state = tv.random_state(tv.alexnet_shapes(classes=10), seed=3)
    path = write_checkpoint(tmp_path / "alexnet.pth", state, fake_torch)
    model = kvision.create("alexnet", weights=path, input_shape=(127, 127, 3), classes=10,
                           classifier_activation=None)
    check_against_reference(model, lambda x: tv.alexnet(state, x), images(127),
                            terms=9216, depth=8)


def test_a_checkpoint_that_does_not_fit_names_the_keys_and_changes_nothing(
        fake_torch, tmp_path):
    state = tv.random_state(tv.resnet_shapes(RESNETS["resnet18"], classes=10))
    state["layer9.0.conv1.weight"] = state.pop("layer1.0.conv1.weight")
    state["layer2.0.bn1.running_var"] = np.ones(7, "float32")
    path = write_checkpoint(tmp_path / "bad.pth", state, fake_torch)
    model = kvision.create("resnet18", input_shape=(32, 32, 3), classes=10)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError) as error:
        kvision.weights.load_into(model, path, kvision.get_info("resnet18"))
    message = str(error.value)
    assert "missing in the checkpoint" in message and "layer1.0.conv1.weight" in message
    assert "not in the model: layer9.0.conv1.weight" in message
    assert "layer2.0.bn1.running_var: the model expects (128,)" in message
    assert "(7,)" in message
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    with pytest.raises(ValueError, match=r"expects \(1000, 512\).*\(10, 512\)"):
        kvision.create("resnet18", weights=write_checkpoint(
            tmp_path / "ten.pth", tv.random_state(tv.resnet_shapes((2, 2, 2, 2), classes=10)),
            fake_torch))


def write_empty(path):
    """A zip-format checkpoint holding an empty dict (what torch.save({}) writes)."""
    import pickle
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    return path


def test_pth_files_only_for_torchvision_layouts(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="follows neither a torchvision nor a timm layout"):
        kvision.create("resnet50", weights=path)
    with pytest.raises(FileNotFoundError, match="or a torchvision .pth checkpoint"):
        kvision.create("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="holds no state dict"):
        kvision.create("resnet18", weights=write_empty(tmp_path / "empty.pth"))


def test_imagenet_offline_is_a_clear_connection_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ConnectionError, match=r"torchvision's ImageNet weights of "
                                              r"resnet18 .*resnet18-f37072fd\.pth.*Offline, "
                                              r"pass a local \.pth or \.weights\.h5 file"):
        kvision.create("resnet18", weights="imagenet")
    assert not list(tmp_path.rglob("*.weights.h5"))


def test_imagenet_downloads_checks_converts_once_and_caches(fake_torch, monkeypatch,
                                                           tmp_path):
    """get_file is faked with a local checkpoint; the hash prefix is the file's."""
    import hashlib

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    state = tv.random_state(tv.resnet_shapes(RESNETS["resnet18"]), seed=4)
    path = write_checkpoint(tmp_path / "resnet18-download.pth", state, fake_torch)
    requested = []

    def fake_get_file(fname, origin, **kwargs):
        requested.append(origin)
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    info = kvision.get_info("resnet18")
    monkeypatch.setitem(info.checkpoint, "sha256", "0123abcd")
    with pytest.raises(ValueError, match="does not start with torchvision's 0123abcd"):
        kvision.create("resnet18", weights="imagenet")
    assert not path.exists()  # a corrupt download is not kept
    write_checkpoint(path, state, fake_torch)
    monkeypatch.setitem(info.checkpoint, "sha256",
                        hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    model = kvision.create("resnet18", weights="imagenet", include_top=False,
                           input_shape=(40, 40, 3))
    assert requested[-1] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert (tmp_path / "home" / "kvision" / "resnet18_imagenet.weights.h5").is_file()
    check_against_reference(
        model, lambda x: tv.resnet(state, x, RESNETS["resnet18"], features=True),
        images(40), terms=9 * 512, depth=18)
    calls = len(requested)
    full = kvision.create("resnet18", weights="imagenet", classifier_activation=None,
                          input_shape=(64, 64, 3))
    assert len(requested) == calls  # the cached conversion, no second download
    check_against_reference(full, lambda x: tv.resnet(state, x, RESNETS["resnet18"]),
                            images(64), terms=9 * 512, depth=18)


def test_imagenet_weights_refuse_a_changed_width_by_name(fake_torch, monkeypatch,
                                                         tmp_path):
    """torchvision's shufflenet_v2_x1_0 file into a width_multiplier=0.5 network."""
    import hashlib

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    path = write_checkpoint(tmp_path / "x1.pth",
                            tv.random_state(tv.shufflenet_v2_shapes(1.0)), fake_torch)
    monkeypatch.setattr(keras.utils, "get_file", lambda *args, **kwargs: str(path))
    monkeypatch.setitem(kvision.get_info("shufflenet_v2_x1_0").checkpoint, "sha256",
                        hashlib.sha256(path.read_bytes()).hexdigest()[:10])
    with pytest.raises(ValueError, match="fit its default configuration only"):
        kvision.create("shufflenet_v2_x1_0", weights="imagenet", width_multiplier=0.5)


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_bn_checkpoint_gives_torchvisions_features(depth, fake_torch, tmp_path):
    """Features only: kvision's VGG top flattens the map without torchvision's 7x7
    adaptive pool, so its fc1 fits the checkpoint at 224x224 alone (the flatten
    permutation it shares with AlexNet is checked there)."""
    shapes = {k: v for k, v in tv.vgg_shapes(depth).items() if k.startswith("features.")}
    state = tv.random_state(shapes, seed=5)  # the 123M classifier would only cost time
    path = write_checkpoint(tmp_path / f"vgg{depth}_bn.pth", state, fake_torch)
    model = kvision.create(f"vgg{depth}_bn", weights=path, include_top=False,
                           input_shape=(32, 32, 3))
    check_against_reference(model, lambda x: tv.vgg(state, x, depth, features=True),
                            images(32), terms=9 * 512, depth=depth)


@pytest.mark.parametrize("depth", [11, 13])
def test_plain_vgg_takes_torchvisions_checkpoint_features(depth, fake_torch, tmp_path):
    """vgg11/vgg13 (no BatchNorm: a Conv2D with its ReLU fused is torchvision's
    Conv2d and ReLU, two ``features`` indices) follow torchvision's layout too."""
    from kvision.weights_torch import load_torch_file

    shapes = {k: v for k, v in tv.vgg_shapes(depth, batch_norm=False).items()
              if k.startswith("features.")}
    state = tv.random_state(shapes, seed=6)
    path = write_checkpoint(tmp_path / f"vgg{depth}.pth", state, fake_torch)
    model = load_torch_file(kvision.create(f"vgg{depth}", include_top=False,
                                           input_shape=(32, 32, 3)), path, "vgg")
    check_against_reference(
        model, lambda x: tv.vgg(state, x, depth, batch_norm=False, features=True),
        images(32), terms=9 * 512, depth=depth)


def _check_resnext(name, layers, width_per_group, seed, fake_torch, tmp_path, count=None):
    """``name`` loaded from a torch-format checkpoint of random weights answers as the
    NumPy torchvision ResNeXt (32 groups) on ``count`` images at 32x32."""
    state = tv.random_state(tv.resnet_shapes(layers, bottleneck=True, groups=32,
                                             width_per_group=width_per_group, classes=10),
                            seed=seed)
    path = write_checkpoint(tmp_path / f"{name}.pth", state, fake_torch)
    model = kvision.create(name, weights=path, input_shape=(32, 32, 3), classes=10,
                           classifier_activation=None)
    check_against_reference(
        model, lambda x: tv.resnet(state, x, layers, bottleneck=True, groups=32),
        images(32)[:count], terms=2048, depth=3 * sum(layers) + 2)


def test_resnext_checkpoint_gives_torchvisions_outputs(fake_torch, tmp_path):
    """Grouped 3x3 kernels: torch's (O, I/groups, 3, 3) is Conv2D(groups)'s layout."""
    _check_resnext("resnext50_32x4d", (3, 4, 6, 3), 4, 7, fake_torch, tmp_path)


def test_resnext101_32x8d_checkpoint_gives_torchvisions_outputs(fake_torch, tmp_path,
                                                                monkeypatch):
    """The registry's resnext101_32x8d as it is (23 blocks in layer3, 8 channels a
    group), its 87M weights from a checkpoint; one image at 32x32. The random
    kernels keras would draw are overwritten by the checkpoint, so the build draws
    zeros instead (a variable the loader missed keeps them and the outputs differ)."""
    monkeypatch.setattr(keras.initializers.VarianceScaling, "__call__",
                        lambda self, shape, dtype=None: keras.ops.zeros(shape, dtype))
    _check_resnext("resnext101_32x8d", (3, 4, 23, 3), 8, 17, fake_torch, tmp_path,
                   count=1)


@pytest.mark.parametrize("version", ["1_0", "1_1"])
def test_squeezenet_checkpoint_gives_torchvisions_outputs(version, fake_torch, tmp_path):
    """At 45x45 (1.0) / 39x39 (1.1) the ceil_mode pools take partial windows."""
    size = {"1_0": 45, "1_1": 39}[version]
    state = tv.random_state(tv.squeezenet_shapes(version, classes=10), seed=8)
    path = write_checkpoint(tmp_path / f"squeezenet{version}.pth", state, fake_torch)
    model = kvision.create(f"squeezenet{version}", weights=path, classes=10,
                           input_shape=(size, size, 3), classifier_activation=None)
    check_against_reference(model, lambda x: tv.squeezenet(state, x, version),
                            images(size), terms=9 * 64, depth=26)


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_shufflenet_v2_checkpoint_gives_torchvisions_outputs(width, fake_torch, tmp_path):
    """Depthwise kernels (C, 1, 3, 3), torch's chunk and channel_shuffle."""
    state = tv.random_state(tv.shufflenet_v2_shapes(width, classes=10), seed=9)
    path = write_checkpoint(tmp_path / "shufflenet.pth", state, fake_torch)
    model = kvision.create("shufflenet_v2_x1_0", weights=path, width_multiplier=width,
                           input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    check_against_reference(model, lambda x: tv.shufflenet_v2(state, x), images(64),
                            terms=1024, depth=3 * 16 + 3)


def test_googlenet_checkpoint_gives_torchvisions_outputs(fake_torch, tmp_path):
    """The checkpoint carries the auxiliary classifiers (torchvision's published one
    does); a model without them leaves those keys unused."""
    state = tv.random_state(tv.googlenet_shapes(classes=10), seed=10)
    path = write_checkpoint(tmp_path / "googlenet.pth", state, fake_torch)
    model = kvision.create("googlenet", weights=path, input_shape=(64, 64, 3), classes=10,
                           classifier_activation=None)
    check_against_reference(model, lambda x: tv.googlenet(state, x), images(64),
                            terms=832, depth=3 + 2 * 9 + 1)
    with_aux = kvision.create("googlenet", weights=path, input_shape=(224, 224, 3),
                              classes=10, aux_logits=True)
    np.testing.assert_array_equal(with_aux.get_layer("aux2_fc1").get_weights()[1],
                                  state["aux2.fc1.bias"])


def test_googlenet_imagenet_preprocessing_is_torchvisions_transform_input():
    """torchvision's pretrained GoogLeNet normalizes with ImageNet's mean and std,
    then _transform_input maps channel c to x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5."""
    from kvision.layers import ImagePreprocessing

    pixels = np.random.default_rng(11).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalized = (pixels / 255.0 - mean) / std
    expected = normalized * (std / 0.5) + (mean - 0.5) / 0.5
    mode = kvision.get_info("googlenet").preprocessing
    np.testing.assert_allclose(np.asarray(ImagePreprocessing(mode)(pixels)), expected,
                               rtol=0, atol=float32_atol(expected, terms=3))


def test_reference_ops_follow_torchs_definitions():
    """The reference's im2col conv against the definition written as loops (groups,
    stride, padding, dilation), and pooling sizes/divisors worked out by hand from
    torch's formulas."""
    from reference import ops

    rng = np.random.default_rng(12)
    x, w, b = rng.normal(size=(2, 4, 7, 6)), rng.normal(size=(6, 2, 3, 2)), rng.normal(size=6)
    got = ops.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))
    expected = np.zeros((2, 6, 3, 9))  # (7 + 2 - 2*2 - 1) // 2 + 1, (6 + 4 - 1 - 1) + 1
    for o in range(6):
        g = o // 3
        for i in range(3):
            for j in range(9):
                patch = padded[:, 2 * g:2 * g + 2, 2 * i:2 * i + 5:2, j:j + 2]
                expected[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)

    ones = np.ones((1, 1, 5, 5))
    assert ops.max_pool2d(ones, 2, 2).shape == (1, 1, 2, 2)
    assert ops.max_pool2d(ones, 2, 2, ceil_mode=True).shape == (1, 1, 3, 3)
    # ceil_mode: the last window holds one real cell, and averages over it alone.
    np.testing.assert_array_equal(ops.avg_pool2d(ones, 2, 2, ceil_mode=True), 1.0)
    # padding 1 on 4x4, 3x3/2 ceil: ceil((4 + 2 - 3) / 2) + 1 = 3 windows, starting at
    # -1, 1, 3; the last is kept since it starts inside the input (3 < 4 + 1).
    pooled = ops.avg_pool2d(np.ones((1, 1, 4, 4)), 3, 2, padding=1, ceil_mode=True)
    assert pooled.shape == (1, 1, 3, 3)
    assert pooled[0, 0, 0, 0] == pytest.approx(4 / 9)  # zero padding counted
    assert pooled[0, 0, 2, 2] == pytest.approx(1 / 4)  # window cut at input + padding
    np.testing.assert_array_equal(ops.adaptive_avg_pool2d(np.arange(5.0).reshape(1, 1, 1, 5),
                                                          (1, 2)), [[[[1.0, 3.0]]]])
    shuffled = ops.channel_shuffle(np.arange(6.0).reshape(1, 6, 1, 1), 2)
    assert shuffled.reshape(-1).tolist() == [0, 3, 1, 4, 2, 5]


# Every network that takes torchvision checkpoints, each held to the reference by a
# test above.
COVERED = {"resnet18", "resnet34", "alexnet", "vgg11_bn", "vgg13_bn", "vgg16_bn",
           "vgg19_bn", "resnext50_32x4d", "resnext101_32x8d", "squeezenet1_0",
           "squeezenet1_1", "shufflenet_v2_x1_0", "googlenet"}


def test_torchvision_metadata_is_complete_and_every_layout_is_tested():
    from kvision.weights_torch import LAYOUTS

    with_layout = {n for n in kvision.list_models() if kvision.get_info(n).torch_layout
                   and kvision.get_info(n).checkpoint["publisher"] == "torchvision"}
    assert with_layout == COVERED
    for name in with_layout:
        info = kvision.get_info(name)
        assert info.torch_layout in LAYOUTS, name
        checkpoint = info.checkpoint
        assert checkpoint["url"].startswith("https://download.pytorch.org/models/"), name
        assert checkpoint["url"].endswith(f"-{checkpoint['sha256']}.pth"), name
        int(checkpoint["sha256"], 16)
        assert len(checkpoint["sha256"]) >= 8, name
        assert 50 < checkpoint["top1"] < checkpoint["top5"] < 100, name
        assert info.has_imagenet_weights and info.preprocessing in ("torch", "tf"), name

"""timm checkpoints load into SE-ResNet-50, SE-ResNeXt-50 32x4d and Inception-v4,
and the loaded networks compute what timm's modules compute.

As in test_torch_layouts.py: a checkpoint in torch's zip format with random weights
and BatchNorm statistics, loaded through ``weights=``, outputs on two random images
compared with ``reference/timm_nets.py`` (timm's forward in NumPy, written from
timm's module code, not from kvision's).
"""

import keras
import numpy as np
import pytest

import kvision
from kvision.weights_torch import load_torch_file
from reference import timm_nets as timm
from reference.torchvision_nets import random_state
from test_torch_checkpoint import fake_torch  # noqa: F401 (fixture)
from test_torch_layouts import check_against_reference, images, write_checkpoint

SE_NETS = {"se_resnet50": dict(groups=1, base_width=64),
           "se_resnext50_32x4d": dict(groups=32, base_width=4)}


@pytest.mark.parametrize("name", sorted(SE_NETS))
def test_se_checkpoint_gives_timms_outputs(name, fake_torch, tmp_path):
    """At 32x32 the last stage is 1x1; the SE gates (fc1/fc2 with biases) and the
    grouped 3x3 kernels all enter the logits."""
    shape = SE_NETS[name]
    state = random_state(timm.seresnet_shapes(classes=10, **shape), seed=21)
    path = write_checkpoint(tmp_path / f"{name}.pth", state, fake_torch)
    model = kvision.create(name, weights=path, input_shape=(32, 32, 3), classes=10,
                           classifier_activation=None)
    check_against_reference(model, lambda x: timm.seresnet(state, x, groups=shape["groups"]),
                            images(32), terms=2048, depth=3 * 16 + 2)


def test_inception_v4_checkpoint_gives_timms_outputs(fake_torch, tmp_path):
    """At 75x75 (its minimum) every module runs, Reduction-B on a 3x3 map; the
    average-pool branches leave the padding out of the mean (count_include_pad=False).
    The checkpoint has one class more than the model, first, as timm's published
    file (TF-slim's background class): ``label_offset=1`` drops it."""
    state = random_state(timm.inception_v4_shapes(classes=11), seed=22)
    path = write_checkpoint(tmp_path / "inception_v4.pth", state, fake_torch)
    model = kvision.create("inception_v4", input_shape=(75, 75, 3), classes=10,
                           classifier_activation=None)
    with pytest.raises(ValueError, match=r"last_linear.weight: the model expects "
                                         r"\(10, 1536\), the checkpoint .* has \(11, 1536\)"):
        load_torch_file(model, path, "inception_v4")
    load_torch_file(model, path, "inception_v4", label_offset=1)
    kept = dict(state, **{k: state[k][1:] for k in ("last_linear.weight", "last_linear.bias")})
    check_against_reference(model, lambda x: timm.inception_v4(kept, x), images(75),
                            terms=9 * 448, depth=1 + 3 + 2 * 17)


def test_timm_metadata_names_the_release_files_and_their_hashes():
    """timm's pretrained cfgs: the GitHub release files of seresnet50.ra2_in1k,
    seresnext50_32x4d.racm_in1k and inception_v4.tf_in1k; the hash prefix is the
    one in the file name (torch.hub's check_hash convention)."""
    from kvision.weights_torch import LAYOUTS

    timm_nets = {n for n in kvision.list_models()
                 if (kvision.get_info(n).checkpoint or {}).get("publisher") == "timm"}
    assert timm_nets == {"se_resnet50", "se_resnext50_32x4d", "inception_v4"}
    for name in timm_nets:
        info = kvision.get_info(name)
        checkpoint = info.checkpoint
        assert LAYOUTS[info.torch_layout].publisher == "timm"
        assert checkpoint["url"].startswith(
            "https://github.com/rwightman/pytorch-image-models/releases/download/"), name
        assert checkpoint["url"].endswith(f"-{checkpoint['sha256']}.pth"), name
        int(checkpoint["sha256"], 16)
        assert 75 < checkpoint["top1"] < checkpoint["top5"] < 100, name
    # Inception's TF weights take [-1, 1] (timm's mean = std = 0.5), the others
    # ImageNet's mean/std; only the TF-slim file carries the background class.
    assert kvision.get_info("inception_v4").preprocessing == "tf"
    assert kvision.get_info("inception_v4").checkpoint["label_offset"] == 1
    assert kvision.get_info("se_resnet50").preprocessing == "torch"
    assert kvision.get_info("se_resnet50").checkpoint["label_offset"] == 0


def test_reference_counts_equal_timms_published_counts():
    """The reference's state-dict shapes give timm's parameter counts (the registry's
    figures, from timm), so the reference builds timm's networks and not others."""
    def trainable(shapes):
        return sum(int(np.prod(s)) for k, s in shapes.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))

    assert trainable(timm.seresnet_shapes()) == 28_088_024
    assert trainable(timm.seresnet_shapes(groups=32, base_width=4)) == 27_559_896
    assert trainable(timm.inception_v4_shapes()) == 42_679_816


def test_errors_name_timm_for_timms_networks(tmp_path, monkeypatch):
    """A timm network's .pth files and download are timm's, not torchvision's."""
    from kvision.weights_torch import download_checkpoint

    with pytest.raises(FileNotFoundError, match=r"or a timm \.pth checkpoint\)"):
        kvision.create("se_resnet50", weights=tmp_path / "missing.pth")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"or a timm '\.pth' checkpoint\.$"):
        kvision.create("inception_v4", weights=other)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ConnectionError, match=r"^Could not download timm's ImageNet "
                                              r"weights of se_resnext50_32x4d from https"):
        download_checkpoint(kvision.get_info("se_resnext50_32x4d"))

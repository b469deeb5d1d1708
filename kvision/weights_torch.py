"""torchvision and timm checkpoints (``.pth``) in kvision networks of their layouts.

A network registered with ``torch_layout`` (its state-dict naming, one of
:data:`LAYOUTS`) takes ``weights="path/to/file.pth"``: the file is read without torch
(:func:`kvision.torch_checkpoint.load_torch_checkpoint`), every state-dict name is
mapped to a Keras layer, and the tensors move to Keras' layouts:

- convolution kernels OIHW -> HWIO (a grouped kernel ``(O, I/g, kh, kw)`` becomes
  ``(kh, kw, I/g, O)``, the layout of ``Conv2D(groups=g)``; a depthwise one
  ``(C, 1, kh, kw)`` becomes ``(kh, kw, C, 1)``);
- Linear weights ``(out, in)`` are transposed; the first Linear after a conv stack
  (AlexNet, VGG) also has its inputs permuted, since torch flattens a feature map
  as (C, H, W) and Keras as (H, W, C);
- BatchNorm's weight, bias, running mean and running variance become gamma, beta
  and the moving statistics.

Everything is checked before any weight is set: a file that does not fit is a
``ValueError`` naming the first keys that are missing, unexpected, or of another
shape, and the model is left as it was. ``weights="imagenet"`` downloads the
published checkpoint (``ModelInfo.checkpoint``: torchvision's, or timm's GitHub
release file for SE-ResNet(X)t and Inception-v4) through ``keras.utils.get_file``,
checks its sha256 prefix (the one in the file name), converts it once and caches a
``.weights.h5`` (:func:`imagenet_loader`).
"""

from __future__ import annotations

import hashlib
import os
import re

import keras
import numpy as np

from kvision.torch_checkpoint import load_torch_checkpoint

TORCH_EXTENSIONS = (".pth", ".pt")
# Bookkeeping tensors of torch modules that carry no weights.
_IGNORED = ("num_batches_tracked",)


# ---- state-dict names of each layout: Keras layer name -> torch module prefix ----

def _resnet_name(layer):
    """torchvision's ResNet/ResNeXt names (``layer1.0.conv1``, ``layer2.0.downsample.1``)."""
    fixed = {"conv1_conv": "conv1", "conv1_bn": "bn1", "predictions": "fc"}
    if layer in fixed:
        return fixed[layer]
    match = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer)
    if not match:
        return None
    stage, block, unit, kind = match.groups()
    prefix = f"layer{int(stage) - 1}.{int(block) - 1}"
    if unit == "0":  # the projection shortcut: Sequential(conv1x1, BatchNorm)
        return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
    return f"{prefix}.{'conv' if kind == 'conv' else 'bn'}{unit}"


# AlexNet.features: conv at 0, 3, 6, 8, 10 (ReLU and MaxPool modules in between);
# classifier: Dropout, Linear(1), ReLU, Dropout, Linear(4), ReLU, Linear(6).
_ALEXNET = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
            "conv4": "features.8", "conv5": "features.10", "fc1": "classifier.1",
            "fc2": "classifier.4", "predictions": "classifier.6"}


def _vgg_name(layer, model):
    """torchvision's VGG names: ``features.<i>`` counts every module of the conv
    stack (Conv2d, BatchNorm2d, ReLU, MaxPool2d); the classifier's Linear layers
    are 0, 3 and 6 (ReLU and Dropout between)."""
    fixed = {"fc1": "classifier.0", "fc2": "classifier.3", "predictions": "classifier.6"}
    if layer in fixed:
        return fixed[layer]
    index = 0
    for other in model.layers:  # Keras creates them in torch's module order
        if not re.fullmatch(r"block\d+_(conv\d+(_bn|_relu)?|pool)", other.name):
            continue
        if other.name == layer:
            return f"features.{index}"
        # A conv with its ReLU fused (the VGGs without BatchNorm) is two modules.
        fused = getattr(getattr(other, "activation", None), "__name__", "") == "relu"
        index += 2 if fused else 1
    return None


def _squeezenet_name(layer, model):
    """torchvision's SqueezeNet names: ``features.0`` (conv1, then ReLU and a pool),
    ``features.<i>`` the Fire modules counted with the pools between them (its
    ``squeeze``, ``expand1x1``, ``expand3x3``), ``classifier.1`` the final conv."""
    if layer in ("conv1", "conv10"):
        return {"conv1": "features.0", "conv10": "classifier.1"}[layer]
    match = re.fullmatch(r"fire(\d)_(squeeze|expand1x1|expand3x3)", layer)
    if not match:
        return None
    pools = {int(l.name[4:]) for l in model.layers if re.fullmatch(r"pool\d", l.name)}
    fire = int(match.group(1))
    index = 3 + (fire - 2) + sum(1 for p in pools if 2 <= p < fire)
    return f"features.{index}.{match.group(2)}"


# ShuffleNet V2's InvertedResidual: branch1 = (dw conv, BN, 1x1 conv, BN, ReLU),
# branch2 = (1x1 conv, BN, ReLU, dw conv, BN, 1x1 conv, BN, ReLU).
_SHUFFLE_UNIT = {"branch1_dwconv": "branch1.0", "branch1_dwbn": "branch1.1",
                 "branch1_1_conv": "branch1.2", "branch1_1_bn": "branch1.3",
                 "branch2_1_conv": "branch2.0", "branch2_1_bn": "branch2.1",
                 "branch2_dwconv": "branch2.3", "branch2_dwbn": "branch2.4",
                 "branch2_2_conv": "branch2.5", "branch2_2_bn": "branch2.6"}


def _shufflenet_name(layer):
    """torchvision's ShuffleNetV2 names (``conv1.0``, ``stage2.0.branch1.2``, ``fc``)."""
    fixed = {"conv1_conv": "conv1.0", "conv1_bn": "conv1.1", "conv5_conv": "conv5.0",
             "conv5_bn": "conv5.1", "predictions": "fc"}
    if layer in fixed:
        return fixed[layer]
    match = re.fullmatch(r"stage(\d)_block(\d+)_(\w+)", layer)
    if not match or match.group(3) not in _SHUFFLE_UNIT:
        return None
    stage, block, part = match.groups()
    return f"stage{stage}.{int(block) - 1}.{_SHUFFLE_UNIT[part]}"


def _googlenet_name(layer):
    """torchvision's GoogLeNet names: BasicConv2d ``.conv``/``.bn`` inside
    ``conv1..3``, ``inception3a.branch1``, ``.branch2.<k>``, ``.branch3.<k>``,
    ``.branch4.1`` (after its pool), ``aux1.conv``, ``aux1.fc1``, ``aux1.fc2``; ``fc``."""
    fixed = {"predictions": "fc", "aux1": "aux1.fc2", "aux2": "aux2.fc2",
             "aux1_fc1": "aux1.fc1", "aux2_fc1": "aux2.fc1"}
    if layer in fixed:
        return fixed[layer]
    match = re.fullmatch(r"(conv\d|aux\d_reduce|inception\d\w_branch(\d)(_\d)?)_(conv|bn)",
                         layer)
    if not match:
        return None
    module, branch, step, kind = match.groups()
    if module.startswith("aux"):
        return f"{module[:4]}.conv.{kind}"
    if branch is None:
        return f"{module}.{kind}"
    block = module.split("_")[0]
    position = {"1": "", "4": ".1"}.get(branch, f".{int((step or '_1')[1:]) - 1}")
    return f"{block}.branch{branch}{position}.{kind}"


def _seresnet_name(layer):
    """timm's SE-ResNet/SE-ResNeXt names: torchvision's ResNet names (timm keeps
    them) plus each Bottleneck's ``se.fc1``/``se.fc2`` (SEModule's 1x1 convs)."""
    match = re.fullmatch(r"conv(\d)_block(\d+)_se_(reduce|expand)", layer)
    if not match:
        return _resnet_name(layer)
    stage, block, part = match.groups()
    return f"layer{int(stage) - 1}.{int(block) - 1}.se.fc{1 if part == 'reduce' else 2}"


# timm's InceptionV4.features, in order: three ConvNormAct, then the mixed modules.
_INCEPTION_V4 = (["conv2d_1a", "conv2d_2a", "conv2d_2b", "mixed_3a", "mixed_4a", "mixed_5a"]
                 + [f"mixed_5{c}" for c in "bcde"] + ["mixed_6a"]
                 + [f"mixed_6{c}" for c in "bcdefgh"] + ["mixed_7a"]
                 + [f"mixed_7{c}" for c in "bcd"])


def _inception_v4_part(module, branch, step, half):
    """The timm attribute path of kvision's ``{module}_branch{b}[_{step}{half}]``."""
    if step is None:  # one conv: an attribute, or the 1x1 after a pool (index 1)
        if module in ("mixed_3a", "mixed_5a"):
            return "conv"
        return "branch3.1" if branch == "3" else f"branch{branch}"
    if module[-2] == "7" and module != "mixed_7a":  # InceptionC: named attributes
        if half or branch == "1":
            return f"branch{branch}_{step}{half}"
        return f"branch2_{int(step) - 1}"
    return f"branch{branch}.{int(step) - 1}"


def _inception_v4_name(layer):
    """timm's Inception-v4 names (``features.<i>.branch1.0.conv``,
    ``features.19.branch2_3a.bn``, ``last_linear``); ConvNormAct's ``.conv``/``.bn``."""
    if layer == "predictions":
        return "last_linear"
    match = re.fullmatch(r"(conv2d_\d\w|mixed_\d\w)(?:_branch(\d)(?:_(\d)([ab]?))?)?"
                         r"_(conv|bn)", layer)
    if not match or match.group(1) not in _INCEPTION_V4:
        return None
    module, branch, step, half, kind = match.groups()
    index = _INCEPTION_V4.index(module)
    if branch is None:
        return f"features.{index}.{kind}"
    return f"features.{index}.{_inception_v4_part(module, branch, step, half)}.{kind}"


class Layout:
    """How one family's state dict names its modules.

    ``name(layer_name, model)`` gives a Keras layer's torch prefix (None: the layer
    has no counterpart); ``head`` are the prefixes of the classifier, which a model
    without top leaves unused; ``optional`` prefixes of modules a model may leave
    out (GoogLeNet's auxiliary classifiers); ``flattened`` maps the Dense layers fed
    by a Flatten of a feature map to that Flatten (their inputs are permuted from
    torch's C, H, W order); ``publisher`` whose module code the names are from.
    """

    def __init__(self, name, head, flattened=None, optional=(), publisher="torchvision"):
        self.name, self.head, self.optional = name, tuple(head), tuple(optional)
        self.flattened = dict(flattened or {})
        self.publisher = publisher


LAYOUTS = {
    "resnet": Layout(lambda layer, model: _resnet_name(layer), head=("fc.",)),
    "alexnet": Layout(lambda layer, model: _ALEXNET.get(layer), head=("classifier.",),
                      flattened={"fc1": "flatten"}),
    "vgg": Layout(_vgg_name, head=("classifier.",), flattened={"fc1": "flatten"}),
    "squeezenet": Layout(_squeezenet_name, head=("classifier.",)),
    "shufflenet": Layout(lambda layer, model: _shufflenet_name(layer), head=("fc.",)),
    "googlenet": Layout(lambda layer, model: _googlenet_name(layer), head=("fc.",),
                        optional=("aux1.", "aux2."),
                        flattened={"aux1_fc1": "aux1_flatten", "aux2_fc1": "aux2_flatten"}),
    "seresnet": Layout(lambda layer, model: _seresnet_name(layer), head=("fc.",),
                       publisher="timm"),
    "inception_v4": Layout(lambda layer, model: _inception_v4_name(layer),
                           head=("last_linear.",), publisher="timm"),
}


# ---- tensors: torch layouts <-> Keras layouts ----

def _keys(layer, prefix):
    """The state-dict keys of ``layer``'s variables, in Keras' variable order."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    return [f"{prefix}.weight", f"{prefix}.bias"][:len(layer.weights)]


def _torch_shape(layer, index, shape):
    """The torch shape of the Keras variable ``index`` of ``layer`` (of ``shape``)."""
    if index or len(shape) == 1:
        return tuple(shape)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, channels, multiplier = shape
        return (channels * multiplier, 1, kh, kw)
    if len(shape) == 4:
        kh, kw, inputs, outputs = shape
        return (outputs, inputs, kh, kw)
    return (shape[1], shape[0])


def _to_keras(layer, index, tensor, flattened_map=None):
    """A torch tensor in the Keras layout of variable ``index`` of ``layer``."""
    tensor = np.asarray(tensor, dtype="float32")
    if index or tensor.ndim == 1:
        return tensor
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return tensor.transpose(2, 3, 0, 1)
    if tensor.ndim == 4:
        return tensor.transpose(2, 3, 1, 0)
    if flattened_map is not None:  # inputs in torch's (C, H, W) order -> (H, W, C)
        height, width, channels = flattened_map
        tensor = (tensor.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
                  .reshape(tensor.shape[0], -1))
    return tensor.T


def _state_dict(checkpoint, path):
    """The tensor dict of a checkpoint (a bare state dict, or under ``state_dict`` /
    ``model``, with DataParallel's ``module.`` prefix dropped)."""
    state = checkpoint
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path!r} holds no state dict (found {type(state).__name__}).")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def torch_values(model, state, layout, *, source="the checkpoint"):
    """``[(layer, [arrays in Keras layout])]`` for every weighted layer of ``model``
    from the torch ``state`` dict; ``ValueError`` naming the first keys that differ
    (missing, unexpected, shape) before anything is set."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    has_top = any(layer.name == "predictions" for layer in model.layers)
    used, missing, shapes, values = set(), [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = layout.name(layer.name, model)
        if prefix is None:
            raise ValueError(f"Layer {layer.name!r} of {model.name!r} has no "
                             f"counterpart in {layout.publisher}'s layout.")
        flat = None
        if layer.name in layout.flattened:  # the (H, W, C) map its Flatten flattens
            flat = tuple(model.get_layer(layout.flattened[layer.name]).input.shape[1:])
        arrays = []
        for index, (variable, key) in enumerate(zip(layer.weights, _keys(layer, prefix))):
            used.add(key)
            want = _torch_shape(layer, index, tuple(variable.shape))
            if key not in state:
                missing.append(key)
            elif tuple(np.shape(state[key])) != want:
                shapes.append(f"{key}: the model expects {want}, {source} has "
                              f"{tuple(np.shape(state[key]))}")
            else:
                arrays.append(_to_keras(layer, index, state[key], flat))
        values.append((layer, arrays))
    left_out = tuple(p for p in layout.optional if not any(k.startswith(p) for k in used))
    unexpected = [k for k in state if k not in used and not k.endswith(_IGNORED)
                  and (has_top or not k.startswith(layout.head))
                  and not (left_out and k.startswith(left_out))]
    problems = []
    if missing:
        problems.append(f"missing in {source}: {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected[:5])}")
    problems += shapes[:5]
    if problems:
        raise ValueError(f"{source[0].upper()}{source[1:]} does not fit "
                         f"{model.name!r} ({layout.publisher}'s layout): "
                         + "; ".join(problems))
    return values


def _drop_labels(state, layout, offset):
    """The classifier's first ``offset`` outputs removed (TF-slim's checkpoints carry
    a background class before ImageNet's 1000: timm's ``label_offset``)."""
    if not offset:
        return state
    return {k: (v[offset:] if k.startswith(layout.head) and k.endswith((".weight", ".bias"))
                else v) for k, v in state.items()}


def load_torch_file(model, path, layout, *, label_offset=0):
    """Load the torchvision/timm checkpoint at ``path`` into ``model`` (all or
    nothing); ``label_offset`` classifier outputs are dropped first."""
    path = os.fspath(path)
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    state = _drop_labels(_state_dict(load_torch_checkpoint(path), path), layout,
                         label_offset)
    values = torch_values(model, state, layout, source=f"the checkpoint {path!r}")
    for layer, arrays in values:
        layer.set_weights(arrays)
    return model


# ---- weights="imagenet": the publisher's file, converted once ----

def download_checkpoint(info):
    """The published checkpoint of ``info`` through ``keras.utils.get_file``, its
    sha256 checked against the prefix its publisher gives in the file name
    (torch.hub's convention, which torchvision and timm follow); offline a
    ``ConnectionError`` saying what to do instead."""
    checkpoint = info.checkpoint
    publisher = checkpoint.get("publisher", "torchvision")
    filename = checkpoint["url"].rsplit("/", 1)[-1]
    try:
        path = keras.utils.get_file(filename, checkpoint["url"],
                                    cache_subdir=os.path.join("kvision", publisher))
    except Exception as error:  # no network, refused, interrupted
        raise ConnectionError(
            f"Could not download {publisher}'s ImageNet weights of {info.name} from "
            f"{checkpoint['url']} ({error}). Offline, pass a local .pth or .weights.h5 "
            f"file as `weights=`.") from error
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(checkpoint["sha256"]):
        os.remove(path)  # a corrupt download must not be found again in the cache
        raise ValueError(f"{filename}: sha256 {digest.hexdigest()[:12]}... does not start "
                         f"with {publisher}'s {checkpoint['sha256']}; file removed.")
    return path


def imagenet_loader(model, info, include_top):
    """``ModelInfo.imagenet_loader`` of the torchvision/timm-layout networks: the
    downloaded checkpoint converted into the full network once and cached as a
    ``.weights.h5``, then copied by layer name (any input size, with or without top)."""
    from kvision import weights as weights_lib

    def convert():
        reference = info.builder()
        return load_torch_file(reference, download_checkpoint(info), info.torch_layout,
                               label_offset=info.checkpoint.get("label_offset", 0))

    path = weights_lib.cached_weights(f"{info.name}_imagenet.weights.h5", convert)
    reference = info.builder()
    reference.load_weights(path)
    try:
        return weights_lib.copy_by_layer_name(reference, model)
    except ValueError as error:  # a knob changed the shapes (width_multiplier, groups)
        publisher = info.checkpoint.get("publisher", "torchvision")
        raise ValueError(
            f"{publisher}'s ImageNet weights of {info.name} fit its default "
            f"configuration only ({error}); build it with the builder's default "
            f"knobs, or pass weights=None.") from None


def torchvision_weights(layout, filename, top1, top5):
    """The registry metadata of a network with torchvision's ``IMAGENET1K_V1``
    checkpoint ``filename`` (``name-<sha256 prefix>.pth``, under
    download.pytorch.org/models/) and its published accuracy (%)."""
    sha256 = filename.rsplit("-", 1)[1].split(".pth")[0]
    return dict(
        torch_layout=layout, preprocessing="torch", imagenet_loader=imagenet_loader,
        checkpoint=dict(url=f"https://download.pytorch.org/models/{filename}",
                        sha256=sha256, top1=top1, top5=top5, publisher="torchvision",
                        source="torchvision IMAGENET1K_V1 metadata (acc@1, acc@5)"))


def timm_weights(layout, url, top1, top5, *, tag, row, preprocessing="torch",
                 label_offset=0):
    """The registry metadata of a network with timm's checkpoint at ``url`` (a
    GitHub release file ``name-<sha256 prefix>.pth`` named by timm's pretrained cfg
    ``tag``) and the accuracy (%) timm's ``results/results-imagenet.csv`` gives that
    file: ``row`` says which row, at which size and timm commit."""
    sha256 = url.rsplit("-", 1)[1].split(".pth")[0]
    return dict(
        torch_layout=layout, preprocessing=preprocessing, imagenet_loader=imagenet_loader,
        checkpoint=dict(url=url, sha256=sha256, top1=top1, top5=top5, publisher="timm",
                        label_offset=label_offset,
                        source=f"timm {tag}, results-imagenet.csv (top1, top5): {row}"))

"""The backbone of every task: a name or a model -> preprocessing, P2..P5, trainable.

Every model that stands on a classification network builds it here, with
:func:`build_backbone`: YOLO v1 and v3, the localizer, OverFeat, FCN, U-Net's
encoder, DeepLab, the instance model (through its networks),
:func:`kvision.transfer.build_classifier` and :func:`kvision.features.extractor`.
It is keras-hub's backbone (named pyramid outputs a task taps) and torchvision's
``backbone_utils`` (one function every detector calls)::

    "images" (raw pixels 0..255) -> ImagePreprocessing "preprocessing" (its own mode)
        -> nested model "backbone" -> its outputs at the levels the task asks for

The rules, the same in every task:

- **Input**: a kvision zoo name (``"resnet50"``), a keras.applications name
  (``"ResNet50"``) or a functional ``keras.Model``; ``input_shape`` and ``weights``
  (None, "imagenet" or a weights file) as keras.applications takes them. One input
  check (:func:`kvision.models._builder.task_input`: shape, minimum size, multiples of
  the task's stride) and one input name, ``"images"``.
- **Preprocessing**: raw pixels in, always through the backbone's own preprocessing,
  whatever ``weights`` is (a random and a pretrained backbone of one name take the
  same input): the registry's ``ModelInfo.preprocessing`` for a zoo name,
  :func:`kvision.transfer.keras_preprocessing` for a keras.applications name, "none"
  for a ``keras.Model`` (it is called on what its own input takes). An RGB-only mode
  ("caffe", "torch") on a one- or two-channel input falls back to "tf" ([-1, 1]).
- **Outputs**: the levels ``"P2"``, ``"P3"``, ``"P4"``, ``"P5"`` (strides 4, 8, 16,
  32; keras-hub's names): the registry's stage outputs for a zoo name, the graph's
  (:func:`kvision.features.stage_outputs`, the same layers) otherwise; ``None``, the
  backbone's output (its last layer; for a model with a classifier, the layer before
  it). Asking for a level the backbone lacks is a ``ValueError`` naming those it has.
- **Sharing**: a ``keras.Model`` is always copied (a clone with its weights, then
  the ``weights`` file if one is given) and cut before its classifier: training a
  task never changes the caller's model.
- **trainable**: ``True`` (all of it trains), ``False`` (frozen), an int N (its last
  N blocks train, :func:`kvision.features.blocks`) or a regime name of
  :data:`kvision.transfer.REGIMES` (``"small-different"`` also cuts it at its stride-16
  stage output). A pretrained backbone (``weights`` given, or a ``keras.Model``) is an
  :class:`~kvision.layers.InferenceBackbone` (its BatchNorm keeps the statistics it
  was trained with, frozen or not); a random one a plain nested model (its BatchNorm
  learns them). Anything else is a ``ValueError`` naming the accepted forms.
"""

from __future__ import annotations

import numbers

import keras

from kvision import features, registry, transfer
from kvision.layers import ImagePreprocessing, InferenceBackbone
from kvision.layers.preprocessing import check_mode
from kvision.models._builder import task_input

LEVELS = features.PYRAMID_LEVELS  # {"P2": 4, "P3": 8, "P4": 16, "P5": 32}
RGB_ONLY = ("caffe", "torch")


def build_backbone(backbone, levels=(None,), *, input_shape=None, weights=None,
                   trainable=True, preprocessing=None, task=None, multiple=1,
                   fixed_size=False, output_stride=None, name="backbone", **kwargs):
    """The backbone of a task: ``(images, outputs)`` (see the module docstring).

    Args:
        backbone: a kvision zoo name, a keras.applications name or a functional
            ``keras.Model``.
        levels: what the task taps, in order: ``"P2"``..``"P5"``, ``None`` (the
            backbone's output), or (for :func:`kvision.features.extractor`) a stride
            or a layer name.
        input_shape: ``(H, W, C)`` of the raw images; default: a ``keras.Model``'s
            own (where fixed), else ``task``'s default size, else the network's.
        weights: None, "imagenet" or a weights file of the backbone (without its
            top); a ``keras.Model`` keeps its own unless a file is given.
        trainable: True, False, an int (last blocks) or a regime name.
        preprocessing: a mode overriding the backbone's own (None: its own).
        task: the registry name of the task, whose default size and minimum size
            the input takes; ``multiple`` / ``fixed_size``: its sides must be
            multiples of it / known.
        output_stride: 8 or 16 makes the backbone atrous past it (DeepLab): the
            levels are the same layers, at most that stride.
        name: the nested model's name.
        **kwargs: more arguments of a named backbone's builder (``alpha``).

    Returns:
        ``(images, outputs)``: the task model's ``keras.Input`` named "images" and
        the backbone's output tensor per level (one tensor for one level, else a
        list in the order of ``levels``).
    """
    trainable = _check_trainable(trainable)
    shape = _input_shape(backbone, input_shape, task)
    images = None
    if task is not None:  # checked before anything is built
        images = task_input(task, shape, multiple=multiple, fixed_size=fixed_size)
        shape = tuple(images.shape[1:])
    net, mode, pretrained = _network(backbone, shape, weights, kwargs)
    if images is None:
        images = keras.Input(shape=net.input_shape[1:], name="images")
    net = _with_trainable(net, trainable, backbone)
    names = _level_names(backbone, net, list(levels), task)
    nested = _nested(net, names, pretrained, output_stride, name)
    if isinstance(trainable, bool):
        nested.trainable = trainable
    x = _preprocess(images, check_mode(preprocessing) if preprocessing else mode)
    # training=False recorded for a pretrained one (InferenceBackbone keeps it so).
    return images, nested(x, training=False) if pretrained else nested(x)


def _nested(net, names, pretrained, output_stride, name):
    """The nested model ``name`` from ``net``'s input to the layers ``names`` (made
    atrous past ``output_stride`` first: the same layers, weights and flags)."""
    if output_stride is not None:
        from kvision.models.segmentation._common import dilate  # (DeepLab's)
        net = dilate(net, output_stride)
    outputs = features.tap(net, [features.resolve_path(net, n) for n in names])
    kind = InferenceBackbone if pretrained else keras.Model
    return kind(features.model_inputs(net), outputs[0] if len(outputs) == 1 else outputs,
                name=name)


# --- the network ---------------------------------------------------------------------

def _check_trainable(trainable):
    if isinstance(trainable, bool):
        return trainable
    if isinstance(trainable, numbers.Integral) and trainable >= 0:
        return int(trainable)
    if isinstance(trainable, str) and trainable in transfer.REGIMES:
        return trainable
    raise ValueError(
        f"A backbone's trainable must be True (all of it trains), False (frozen), an "
        f"int N >= 0 (its last N blocks train) or a regime name "
        f"{sorted(transfer.REGIMES)}; got {trainable!r}.")


def _input_shape(backbone, input_shape, task):
    """``input_shape``, else a model's own fixed one, else the task's default (None:
    the network's own)."""
    if input_shape is not None:
        return tuple(input_shape)
    if isinstance(backbone, keras.Model) and hasattr(backbone, "input_shape"):
        own = tuple(backbone.input_shape[1:])
        if None not in own or task is None:
            return own
        info = registry.get_info(task)
        return (info.default_size, info.default_size, own[-1])
    if task is not None:
        info = registry.get_info(task)
        return (info.default_size, info.default_size, info.input_channels)
    return None


def _network(backbone, input_shape, weights, kwargs):
    """``(single-output network, preprocessing mode, pretrained)``."""
    if isinstance(backbone, keras.Model):
        if kwargs:
            raise ValueError(f"Builder arguments {sorted(kwargs)} apply to a backbone "
                             f"given by name, not to a keras.Model.")
        return _copy(backbone, weights, input_shape), "none", True
    if not isinstance(backbone, str):
        raise ValueError(f"backbone must be a model name (kvision zoo or "
                         f"keras.applications) or a functional keras.Model, got "
                         f"{type(backbone).__name__}.")
    kind = features.resolve_name(backbone)
    if kind == "kvision" and registry.get_info(backbone).task != "classification":
        raise ValueError(f"{backbone!r} is a {registry.get_info(backbone).task} model; a "
                         f"backbone is a classification network "
                         f"(kvision.list_models(task='classification')).")
    net = features.build_named(backbone, include_top=False, weights=weights,
                               input_shape=input_shape, **kwargs)
    mode = (transfer.keras_preprocessing(backbone) if kind == "keras"
            else registry.get_info(backbone).preprocessing)
    return net, mode, weights is not None


def _copy(model, weights, input_shape):
    """A copy of a user's model with its weights (then ``weights``, a file, if
    given), cut before its classifier: the task trains the copy."""
    from kvision import weights as weights_lib

    features.functional(model)  # a clear error for subclassed models
    own = tuple(model.input_shape[1:])
    if input_shape is not None and (len(own) != len(input_shape) or any(
            o is not None and o != s for o, s in zip(own, input_shape))):
        raise ValueError(f"input_shape={tuple(input_shape)} does not fit the given "
                         f"model's input {own}; leave input_shape=None.")
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    weights = features.check_weights(weights)
    if weights not in (None, "imagenet"):
        weights_lib.load_file(copy, weights)
    last = features.feature_layer(copy)
    if last == _last_layer(copy):
        return copy
    cut = features.tap(copy, [features.resolve_path(copy, last)])[0]
    return keras.Model(features.model_inputs(copy), cut, name=copy.name)


def _with_trainable(net, trainable, backbone):
    """``net`` with the layers an int or a regime selects trainable (a regime that
    cuts, "small-different", ends it at its stride-16 stage output first)."""
    if isinstance(trainable, bool):
        return net
    if isinstance(trainable, str):
        stride = transfer.REGIMES[trainable].cut_stride
        if stride is not None:
            net = _cut(net, stride, _stages(backbone, net))
        transfer.set_trainable(net, regime=trainable)
    else:
        transfer.set_trainable(net, trainable)
    return net


def _stages(backbone, net):
    """``{stride: layer name}``: the registry's for a zoo name, the graph's else."""
    if isinstance(backbone, str) and features.resolve_name(backbone) == "kvision":
        return dict(registry.get_info(backbone).stage_outputs)
    return features.stage_outputs(net)


def _cut(net, stride, stages):
    """``net`` ended at its stage output at ``stride`` (else at its deepest stage
    output below it other than its last layer)."""
    last = features.feature_layer(net)
    usable = {s: n for s, n in stages.items() if n != last}
    if stride not in usable:
        below = [s for s in usable if s < stride]
        if not below:
            raise ValueError(
                f"Cannot cut {net.name!r} shallower at stride {stride} (regime "
                f"'small-different'): its stage outputs are {stages}, {last!r} being "
                f"its last layer. Use regime 'small-similar' or an int of blocks.")
        stride = max(below)
    path = features.resolve_path(net, usable[stride])
    return keras.Model(features.model_inputs(net), features.tap(net, [path])[0],
                       name=net.name)


# --- levels and input ----------------------------------------------------------------

def _level_names(backbone, net, levels, task):
    """The layer name (or path) each level is."""
    if not levels:
        raise ValueError("levels is empty: ask for at least one of "
                         f"{sorted(LEVELS)} or None (the backbone's output).")
    stages = None
    names = []
    for level in levels:
        if level is None:  # (a model was cut before its classifier already)
            names.append(_last_layer(net))
            continue
        if level in LEVELS:
            stages = _stages(backbone, net) if stages is None else stages
            present = {s: n for s, n in stages.items() if _has_layer(net, n)}
            if LEVELS[level] not in present:
                raise ValueError(_missing(level, levels, present, net, task))
            names.append(present[LEVELS[level]])
            continue
        path, stages = features._request_path(net, level, stages)  # a stride, a name
        names.append("/".join(path))
    return names


def _last_layer(net):
    return features.functional(net).outputs[0]._keras_history.operation.name


def _has_layer(net, name):
    try:
        features.resolve_path(net, name)
    except ValueError:
        return False
    return True


def _missing(level, levels, stages, net, task):
    have = [f"P{s.bit_length() - 1}" for s in sorted(stages)]
    who = task or "This model"
    wanted = [lvl for lvl in levels if lvl in LEVELS]
    return (f"{who} needs the backbone's levels {wanted} (P2..P5: its stage outputs at "
            f"strides 4..32); {net.name!r} has {have} ({level} is missing).")


def _preprocess(images, mode):
    """Raw pixels -> what the backbone takes; an RGB-only mode on other channel
    counts falls back to [-1, 1] scaling ("tf")."""
    if mode in RGB_ONLY and images.shape[-1] != 3:
        mode = "tf"
    return ImagePreprocessing(mode, name="preprocessing")(images)

"""The code every builder shares: input checks, the classifier top, pooling, weights.

A family file writes only its body (input tensor -> last feature map) and, where the
family's top is not "global average pool -> Dense", its head; :func:`build` does the
rest, once, for every network (the ~60 lines keras.applications copies per file).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras

from kvision import registry
from kvision import weights as weights_lib

POOLINGS = (None, "avg", "max")


def check_arguments(info, *, include_top, weights, pooling, classes,
                    classifier_activation):
    """Raise ``ValueError`` for arguments no builder accepts."""
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` must be an integer >= 1, got {classes!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of None, 'avg', 'max'; got {pooling!r}.")
    weights_lib.check_weights_argument(info, weights, include_top=include_top,
                                       classes=classes,
                                       classifier_activation=classifier_activation)


def resolve_input_shape(info, input_shape, *, fixed_size: bool, weights,
                        include_top: bool = True) -> tuple:
    """The ``(H, W, C)`` input shape, checked against the architecture's limits.

    ``fixed_size`` says the top needs known spatial dimensions (a Flatten head).
    With no ``input_shape``, a classifier takes the default size (as
    keras.applications does) and a feature extractor any size.
    """
    default = (info.default_size, info.default_size, info.input_channels)
    if input_shape is None:
        return default if (fixed_size or include_top) else (None, None, info.input_channels)
    try:
        shape = tuple(None if d is None else int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"`input_shape` must be a tuple (height, width, channels), got {input_shape!r}."
        ) from None
    if len(shape) != 3:
        raise ValueError(
            f"`input_shape` must have 3 entries (height, width, channels) for "
            f"{info.name}, got {len(shape)}: {input_shape!r}."
        )
    height, width, channels = shape
    if channels is None or channels < 1:
        raise ValueError(f"`input_shape` needs a known channel count >= 1, got {input_shape!r}.")
    if weights is not None and channels != info.input_channels:
        raise ValueError(
            f"Pretrained weights for {info.name} expect {info.input_channels} input "
            f"channels, got input_shape={input_shape!r}."
        )
    for side, label in ((height, "height"), (width, "width")):
        if side is None:
            if fixed_size:
                raise ValueError(
                    f"{info.name} with include_top=True needs a fixed input size; "
                    f"got input_shape={input_shape!r}. Pass e.g. "
                    f"({info.default_size}, {info.default_size}, {channels})."
                )
        elif side < info.min_size:
            raise ValueError(
                f"{info.name} takes inputs of at least {info.min_size}x{info.min_size} "
                f"pixels; got {label} {side} in input_shape={input_shape!r}."
            )
    return shape


def make_input(info, input_tensor, input_shape, *, fixed_size, weights,
               include_top=True):
    """The model's ``keras.Input`` (or the given tensor) and the tensor to build on."""
    if input_tensor is None:
        shape = resolve_input_shape(info, input_shape, fixed_size=fixed_size,
                                    weights=weights, include_top=include_top)
        inputs = keras.Input(shape=shape, name="input_layer")
        return inputs, inputs
    if not keras.backend.is_keras_tensor(input_tensor):
        raise ValueError(
            f"`input_tensor` must be a symbolic tensor from `keras.Input`, got "
            f"{type(input_tensor).__name__}."
        )
    resolve_input_shape(info, tuple(input_tensor.shape[1:]), fixed_size=fixed_size,
                        weights=weights)
    return keras.utils.get_source_inputs(input_tensor), input_tensor


def task_input(task, input_shape, *, multiple=1, fixed_size=False):
    """The input of task model ``task`` (a registry name): ``keras.Input`` named
    ``"images"``, the name of the export signatures' input.

    ``input_shape`` defaults to the task's registered default size; the check is
    the classifiers' (:func:`resolve_input_shape`: three entries, a channel count,
    sides of at least the task's ``min_size``), plus sides that are multiples of
    ``multiple`` (the task's output stride) and, with ``fixed_size``, known.
    """
    info = registry.get_info(task)
    if input_shape is None:
        input_shape = (info.default_size, info.default_size, info.input_channels)
    shape = resolve_input_shape(info, input_shape, fixed_size=False, weights=None)
    if fixed_size and None in shape[:2]:
        raise ValueError(f"{info.name} needs a fixed input size (height, width, "
                         f"channels), got input_shape={input_shape!r}.")
    if any(side is not None and side % multiple for side in shape[:2]):
        raise ValueError(f"{info.name}'s input height and width must be multiples of "
                         f"{multiple} (its output stride), got {input_shape!r}.")
    return keras.Input(shape=shape, name="images")


def global_pool(x, pooling, name="pool"):
    """``pooling`` ("avg", "max" or None) applied to a feature map."""
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=f"avg_{name}")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=f"max_{name}")(x)
    return x


def dense_head(x, classes, classifier_activation, dropout=0.0):
    """The common top: global average pool, optional dropout, Dense classifier."""
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
    return keras.layers.Dense(classes, activation=classifier_activation,
                              name="predictions")(x)


BUILDER_ARGS = ("include_top", "weights", "input_tensor", "input_shape", "pooling",
                "classes", "classifier_activation", "name")


def builder_args(args: dict) -> dict:
    """The keras.applications arguments out of a builder's ``locals()``."""
    return {k: args[k] for k in BUILDER_ARGS}


def build(
    registry_name: str,
    body: Callable,
    *,
    include_top: bool,
    weights,
    input_tensor,
    input_shape,
    pooling,
    classes: int,
    classifier_activation,
    name: str | None,
    head: Callable | None = None,
    dropout: float = 0.0,
    fixed_size: bool = False,
    keras_kwargs: dict | None = None,
) -> keras.Model:
    """Assemble a classification network from its body and head.

    Args:
        registry_name: the registered name whose metadata (sizes, channels,
            keras.applications counterpart) applies.
        body: ``body(x) -> features``, or ``-> (features, extra_outputs)`` where
            ``extra_outputs`` (auxiliary classifier tensors made by the body when
            ``include_top``) are appended to the model's outputs.
        head: ``head(features, classes, classifier_activation) -> tensor`` for a
            family-specific top; default :func:`dense_head`.
        fixed_size: the top flattens a feature map, so with ``include_top`` the
            spatial input size must be known.
        keras_kwargs: extra arguments for the keras.applications builder when
            ``weights="imagenet"`` (``alpha`` for MobileNet…).
        The other arguments are keras.applications' builder arguments.
    """
    info = registry.get_info(registry_name)
    check_arguments(info, include_top=include_top, weights=weights, pooling=pooling,
                    classes=classes, classifier_activation=classifier_activation)
    inputs, x = make_input(info, input_tensor, input_shape,
                           fixed_size=fixed_size and include_top, weights=weights,
                           include_top=include_top)
    features = body(x)
    extra: Sequence = ()
    if isinstance(features, tuple):
        features, extra = features
    if include_top:
        x = (head or (lambda f, c, a: dense_head(f, c, a, dropout)))(
            features, classes, classifier_activation)
        outputs = [x, *extra] if extra else x
    else:
        outputs = global_pool(features, pooling)
    model = keras.Model(inputs, outputs, name=name or registry_name)
    weights_lib.load_into(model, weights, info, include_top=include_top,
                          keras_kwargs=keras_kwargs or {})
    return model

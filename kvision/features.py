"""Features from any functional network: stage outputs found from its graph, and
extractor models that tap chosen layers.

``stage_outputs(model)`` finds, for strides 4, 8, 16 and 32, the layer that ends the
network's stage at that stride: the last layer whose output has that stride and
through which the whole signal passes (a *cut point* of the graph: right after it,
in topological order, its output is the only tensor still needed). A residual
block's ``_out`` add is one; a branch conv inside an Inception reduction block is
not. Strides come from the output's spatial size against the input's (rounded
log2), measured symbolically at a large probe size, so "valid"-padded networks
(InceptionV3 at 299) and models built for tiny inputs get their architectural
strides. This works for keras.applications, kvision and user models, and looks
inside nested models (a transfer model's ``"backbone"``).

``extractor(model, layers=None, pooling="avg")`` returns a ``keras.Model`` from raw
images to the requested layer (default: the layer before the classifier), or a dict
of them, on the backbone every task uses (:mod:`kvision.models.backbone`: a name with
its own preprocessing, or a copy of a model).

The graph is read from Keras 3's functional internals (``Functional._nodes_by_depth``,
``Node.arguments``), the same structures ``Functional.call`` runs through.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import math
import os

import keras

STRIDES = (4, 8, 16, 32)
# keras-hub's names for the feature pyramid levels (P2 = stride 4 ... P5 = stride 32).
PYRAMID_LEVELS = {"P2": 4, "P3": 8, "P4": 16, "P5": 32}
# Side of the symbolic probe input: large enough that "valid" padding does not
# change the rounded stride (InceptionV3's mixed10 is 14x14 at 512: stride 32).
PROBE_SIZE = 512
POOLINGS = (None, "avg", "max")


# --- the graph, nested models inlined ---------------------------------------------

@dataclasses.dataclass
class Step:
    """One operation call of a model's graph, nested models inlined.

    ``inputs``/``outputs`` are tensor ids in the outermost model's numbering;
    ``path`` is the layer name, prefixed by the names of the nested models it is in.
    """

    path: tuple
    op: object
    node: object
    inputs: list
    outputs: list
    alias: dict  # id of a tensor as the node sees it -> id in the outer numbering


@dataclasses.dataclass
class Graph:
    """A flattened functional graph: steps in topological order, input/output ids."""

    model: keras.Model
    steps: list
    inputs: list
    outputs: list

    def name(self, step) -> str:
        """A step's layer name, with its nested-model prefix only where ambiguous."""
        return step.path[-1] if self._counts[step.path[-1]] == 1 else "/".join(step.path)

    def __post_init__(self):
        self._counts = collections.Counter(step.path[-1] for step in self.steps)


def functional(model):
    """The Functional graph of ``model`` (a functional model or a built Sequential)."""
    if isinstance(model, keras.Sequential):
        inner = getattr(model, "_functional", None)
        if inner is None:
            raise ValueError(
                f"Sequential model {model.name!r} has no graph yet: give its first "
                f"layer an input shape (keras.Input) or build it first."
            )
        return inner
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        return model
    raise ValueError(
        f"Expected a functional keras.Model (keras.applications, kvision, or built "
        f"with keras.Model(inputs, outputs)), got {type(model).__name__}; subclassed "
        f"models have no graph to analyze."
    )


def model_inputs(model):
    """``model``'s input tensor (or list of them, for several), to build on."""
    inputs = functional(model).inputs
    return inputs[0] if len(inputs) == 1 else inputs


def _is_nested(op) -> bool:
    return isinstance(op, keras.Model) and (
        hasattr(op, "_nodes_by_depth") or getattr(op, "_functional", None) is not None)


def ordered_nodes(fn):
    """The nodes of a Functional's graph in topological order, inputs left out."""
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        for node in fn._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def _flatten(model, prefix=(), alias=None) -> list:
    fn = functional(model)
    alias = dict(alias or {})
    steps = []
    for node in ordered_nodes(fn):
        op = node.operation
        inputs = [alias.get(id(t), id(t)) for t in node.input_tensors]
        outputs = [id(t) for t in node.outputs]
        if _is_nested(op) and len(functional(op).inputs) == len(inputs):
            inner = functional(op)
            inner_alias = {id(t): i for t, i in zip(inner.inputs, inputs)}
            rename = {id(t): o for t, o in zip(inner.outputs, outputs)}
            for step in _flatten(op, prefix + (op.name,), inner_alias):
                step.inputs = [rename.get(i, i) for i in step.inputs]
                step.outputs = [rename.get(i, i) for i in step.outputs]
                step.alias = {k: rename.get(v, v) for k, v in step.alias.items()}
                steps.append(step)
        else:
            node_alias = {id(t): alias.get(id(t), id(t)) for t in node.input_tensors}
            steps.append(Step(prefix + (op.name,), op, node, inputs, outputs, node_alias))
    return steps


def graph(model) -> Graph:
    """``model``'s graph with nested functional models inlined."""
    fn = functional(model)
    return Graph(model, _flatten(model), [id(t) for t in fn.inputs],
                 [id(t) for t in fn.outputs])


def cut_points(g: Graph) -> list:
    """Indices of the steps after which their single output is the only live tensor.

    A tensor is live after step ``i`` when it was produced at or before ``i`` and is
    used after ``i`` (or is a model output). In a graph with one input and one
    output this is the same set for every topological order: the tensors every
    input-to-output path passes through.
    """
    end = len(g.steps)
    last_use = {}
    for i, step in enumerate(g.steps):
        for t in step.inputs:
            last_use[t] = i
    for t in g.outputs:
        last_use[t] = end
    live = {t for t in g.inputs if t in last_use}
    cuts = []
    for i, step in enumerate(g.steps):
        live.update(t for t in step.outputs if last_use.get(t, -1) > i)
        live.difference_update(t for t in step.inputs if last_use.get(t) == i)
        if len(step.outputs) == 1 and live == {step.outputs[0]}:
            cuts.append(i)
    return cuts


# --- strides ------------------------------------------------------------------------

def _image_input(g: Graph):
    fn = functional(g.model)
    if len(fn.inputs) != 1 or len(fn.inputs[0].shape) != 4:
        shapes = [tuple(t.shape) for t in fn.inputs]
        raise ValueError(
            f"Stage outputs need a model with one image input (N, H, W, C); "
            f"{g.model.name!r} has inputs {shapes}."
        )
    return fn.inputs[0]


def _probe_shapes(g: Graph, size: int) -> dict:
    """``{tensor id: shape}`` with the input at ``size`` x ``size``, symbolically.

    Steps that cannot take that size (a Flatten -> Dense top with fixed width) and
    everything after them are left out.
    """
    image = _image_input(g)
    spec = keras.KerasTensor((1, size, size, image.shape[-1]), dtype=image.dtype)
    values = {id(image): spec}
    for step in g.steps:
        if any(t not in values for t in step.inputs):
            continue
        feed = {raw: values[outer] for raw, outer in step.alias.items()}
        try:
            args, kwargs = step.node.arguments.fill_in(feed)
            result = step.op.compute_output_spec(*args, **kwargs)
        except Exception:  # noqa: BLE001  any failure means: not at this size
            continue  # (a fixed-width Dense after Flatten): this branch stops here
        for t, value in zip(step.outputs, keras.tree.flatten(result)):
            values[t] = value
    return {t: tuple(v.shape) for t, v in values.items()}


def _static_shapes(g: Graph) -> dict:
    shapes = {}
    for step in g.steps:
        for t, tensor in zip(step.outputs, step.node.outputs):
            shapes.setdefault(t, tuple(tensor.shape))
    return shapes


def _stride(input_side, side):
    if not input_side or not side:
        return None
    return 2 ** max(0, round(math.log2(input_side / side)))


def strides(g: Graph) -> dict:
    """``{step index: stride}`` of every 4-D step output (rounded powers of two)."""
    probed = _probe_shapes(g, PROBE_SIZE)
    static = _static_shapes(g)
    input_side = _image_input(g).shape[1]
    found = {}
    for i, step in enumerate(g.steps):
        if len(step.outputs) != 1:
            continue
        t = step.outputs[0]
        if t in probed and len(probed[t]) == 4:
            found[i] = _stride(PROBE_SIZE, probed[t][1])
        elif len(static.get(t, ())) == 4:  # only the model's own size fits
            found[i] = _stride(input_side, static[t][1])
    return {i: s for i, s in found.items() if s is not None}


# Padding and cropping move borders, they compute no features: never stage outputs
# (a ZeroPadding2D before a strided conv is otherwise the last layer at the stride).
_GEOMETRY_ONLY = (keras.layers.ZeroPadding2D, keras.layers.Cropping2D)


def _stage_steps(g: Graph) -> dict:
    """``{stride: step index}`` for strides 4..32: the last cut point at each."""
    stride_of = strides(g)
    counts = collections.Counter(g.name(step) for step in g.steps)
    stages = {}
    for i in cut_points(g):
        if (stride_of.get(i) in STRIDES and counts[g.name(g.steps[i])] == 1
                and not isinstance(g.steps[i].op, _GEOMETRY_ONLY)):
            stages[stride_of[i]] = i  # ascending order: the last one wins
    return dict(sorted(stages.items()))


def stage_outputs(model) -> dict:
    """``{stride: layer name}`` of the stage outputs at strides 4, 8, 16, 32.

    ``model`` is any functional ``keras.Model``. Each value is the last layer whose
    output has that stride and is a cut point of the graph (see the module
    docstring); strides the model does not reach are absent. Layers inside a nested
    model are named by their own name (prefixed ``"outer/"`` only if ambiguous),
    which :func:`extractor` accepts.
    """
    g = graph(model)
    return {s: g.name(g.steps[i]) for s, i in _stage_steps(g).items()}


def blocks(model) -> list:
    """The model's layers grouped into blocks: ``[[layer name, ...], ...]`` in order.

    A block is the run of layers after one cut point of the graph up to and
    including the next (a residual block, an Inception module, one conv of VGG).
    Runs without a convolution or dense kernel (a lone BatchNorm, activation,
    padding or pooling) join the block before them (the first ones the block after),
    so that every block holds a learned transform.
    """
    g = graph(model)
    runs, start = [], 0
    for cut in cut_points(g):
        runs.append(g.steps[start:cut + 1])
        start = cut + 1
    if start < len(g.steps):
        runs.append(g.steps[start:])
    merged, pending = [], []
    for run in runs:
        if any(_has_kernel(step.op) for step in run):
            merged.append(pending + run)
            pending = []
        elif merged:
            merged[-1].extend(run)
        else:
            pending.extend(run)
    if pending:
        merged.append(pending)
    return [[g.name(step) for step in run] for run in merged]


def _has_kernel(op) -> bool:
    weights = getattr(op, "weights", None) or []
    return any("kernel" in w.path.rsplit("/", 1)[-1] or "embeddings" in w.path
               for w in weights)


def layer_strides(model) -> dict:
    """``{layer name: stride}`` of every layer with a 4-D output (names as
    :func:`stage_outputs` gives them)."""
    g = graph(model)
    return {g.name(g.steps[i]): s for i, s in strides(g).items()}


def layer_steps(model) -> list:
    """``[(name, layer)]`` of every layer of the graph (nested models inlined), in
    topological order; ``name`` as :func:`stage_outputs` gives it."""
    g = graph(model)
    return [(g.name(s), s.op) for s in g.steps if isinstance(s.op, keras.layers.Layer)]


# --- tapping layers -----------------------------------------------------------------

def resolve_path(model, name) -> tuple:
    """The path of layer ``name`` (``"conv1"``, ``"backbone/conv1"``) in ``model``."""
    fn = functional(model)
    if any(op.name == name for op in fn.operations):
        return (name,)  # a top-level layer (a nested model's own name included)
    g = graph(model)
    for step in g.steps:
        if name in (g.name(step), "/".join(step.path)):
            return step.path
    names = sorted({g.name(s) for s in g.steps} | {op.name for op in fn.operations})
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise ValueError(
        f"No layer named {name!r} in model {model.name!r}.{hint} "
        f"({len(names)} layers; `[l.name for l in model.layers]` lists the top ones.)"
    )


def tap(model, paths) -> list:
    """The tensors at layer ``paths`` as functions of ``model.inputs``.

    A path into a nested model re-calls a plain functional sub-model of it
    (sharing its layers and weights) on the tensors the nested model was called
    on, with the ``training`` argument recorded there (``False`` for a
    :func:`kvision.transfer.build_classifier` backbone). Extractors are meant for
    inference; ``predict`` runs every layer in inference mode anyway.
    """
    fn = functional(model)
    node_of = {}
    for depth in sorted(fn._nodes_by_depth, reverse=True):  # input nodes included
        for node in fn._nodes_by_depth[depth]:
            node_of.setdefault(id(node.operation), node)
    by_name = {op.name: op for op in reversed(fn.operations)}  # the first of a name
    found = [None] * len(paths)
    nested = {}
    for i, path in enumerate(paths):
        node = node_of[id(by_name[path[0]])]
        if len(path) == 1:
            found[i] = node.outputs[0]
        else:
            nested.setdefault(path[0], []).append(i)
    for name, indices in nested.items():
        inner = by_name[name]
        node = node_of[id(inner)]
        inner_tensors = tap(inner, [paths[i][1:] for i in indices])
        sub = keras.Model(model_inputs(inner), inner_tensors)
        kwargs = {k: v for k, v in node.arguments.kwargs.items() if k == "training"}
        outputs = sub(*node.arguments.args, **kwargs)
        for i, tensor in zip(indices, keras.tree.flatten(outputs)):
            found[i] = tensor
    return found


# --- the layer before the classifier ------------------------------------------------

# Layers that pass a classifier's output through unchanged in meaning: walking back
# from the model's output across them reaches the classifier.
_PASS_THROUGH = (keras.layers.Activation, keras.layers.ReLU, keras.layers.Softmax,
                 keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout)


def feature_layer(model) -> str:
    """The name of the layer before the classifier (``fc2`` for VGG, ``avg_pool``
    for ResNet); a model with no classifier (``include_top=False``) gives its last
    layer. The classifier is the Dense (or 1x1 Conv2D, as in MobileNet) reached by
    walking back from a 2-D output across activations, reshapes and dropout;
    dropout before it is skipped too (identity at inference)."""
    fn = functional(model)
    producer = {}
    for node in ordered_nodes(fn):
        for t in node.outputs:
            producer[id(t)] = node
    output = fn.outputs[0]
    node = producer.get(id(output))
    if node is None:
        raise ValueError(f"Model {model.name!r}'s output is its input: nothing to tap.")
    last = node.operation.name
    if len(output.shape) != 2:
        return last
    while isinstance(node.operation, _PASS_THROUGH) and len(node.input_tensors) == 1:
        node = producer.get(id(node.input_tensors[0]))
        if node is None:
            return last
    if not isinstance(node.operation, (keras.layers.Dense, keras.layers.Conv2D)):
        return last
    node = producer.get(id(node.input_tensors[0]))
    while node is not None and isinstance(node.operation, keras.layers.Dropout):
        node = producer.get(id(node.input_tensors[0]))
    if node is None:  # the classifier sits on the input itself
        return fn.inputs[0]._keras_history.operation.name
    return node.operation.name


# --- models by name -----------------------------------------------------------------

def keras_backbones() -> list:
    """The names of every keras.applications model builder (``"ResNet50"``, ...),
    listed from ``keras.applications`` itself."""
    return sorted(name for name in dir(keras.applications)
                  if name[:1].isupper() and callable(getattr(keras.applications, name)))


def resolve_name(name) -> str:
    """``"keras"`` for an exact keras.applications name, ``"kvision"`` for a
    registry name; anything else is a ``ValueError`` with close matches of both."""
    from kvision import registry

    if not isinstance(name, str):
        raise ValueError(f"A model name must be a string, got {type(name).__name__}.")
    if name in keras_backbones():
        return "keras"
    kvision_names = registry.list_models()
    if name in kvision_names:
        return "kvision"
    close = difflib.get_close_matches(name, keras_backbones(), n=3, cutoff=0.5)
    close += difflib.get_close_matches(name.lower(), kvision_names, n=3, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ValueError(
        f"Unknown model {name!r}: neither a keras.applications builder (CapWords, "
        f"e.g. 'ResNet50') nor a kvision registry name (lower-case, e.g. "
        f"'resnet50').{hint}"
    )


def check_weights(weights):
    """``weights`` must be None, "imagenet" or an existing file."""
    if weights is None or weights == "imagenet":
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"`weights` must be None, 'imagenet' or a path to a weights file, got "
            f"{type(weights).__name__}."
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"Weights file not found: {os.fspath(weights)!r} (expected 'imagenet', "
            f"None or an existing .weights.h5 / .h5 file)."
        )
    return os.fspath(weights)


def build_named(name, *, include_top, weights=None, input_shape=None, **kwargs):
    """Build a keras.applications or kvision network by name (see
    :func:`resolve_name`). ``weights="imagenet"`` that cannot be downloaded is a
    ``ConnectionError`` saying to pass a local file."""
    from kvision import registry

    weights = check_weights(weights)
    if resolve_name(name) == "kvision":
        return registry.create(name, include_top=include_top, weights=weights,
                               input_shape=input_shape, **kwargs)
    builder = getattr(keras.applications, name)
    try:
        return builder(include_top=include_top, weights=weights,
                       input_shape=input_shape, **kwargs)
    except (ValueError, TypeError):
        raise
    except Exception as error:
        if weights != "imagenet":
            raise
        raise ConnectionError(
            f"Could not get ImageNet weights for keras.applications.{name} ({error}). "
            f"Offline, pass a local weights file as `weights=`."
        ) from error


# --- extractor ----------------------------------------------------------------------

def _request_path(model, request, stages):
    """A request (name, stride int, "P2".."P5") -> the layer's path."""
    stride = request
    if isinstance(request, str) and request in PYRAMID_LEVELS:
        stride = PYRAMID_LEVELS[request]
    if isinstance(stride, int) and not isinstance(stride, bool):
        if stages is None:
            stages = stage_outputs(model)
        if stride not in stages:
            raise ValueError(
                f"Model {model.name!r} has no stage output at stride {stride} "
                f"(requested {request!r}); available strides: {sorted(stages)}."
            )
        return resolve_path(model, stages[stride]), stages
    if not isinstance(request, str):
        raise ValueError(
            f"A layer request is a layer name, a stride in {STRIDES} or one of "
            f"{sorted(PYRAMID_LEVELS)}; got {request!r}."
        )
    return resolve_path(model, request), stages


def _pool(tensor, pooling, label):
    if pooling is None or len(tensor.shape) != 4:
        return tensor
    layer = (keras.layers.GlobalAveragePooling2D if pooling == "avg"
             else keras.layers.GlobalMaxPooling2D)
    return layer(name=f"{label}_{pooling}_pool")(tensor)


def extractor(model, layers=None, pooling="avg", *, weights=None, input_shape=None,
              trainable=True, **build_kwargs) -> keras.Model:
    """A model from raw images to features of chosen layers of a backbone.

    The backbone is the one every task uses
    (:func:`kvision.models.backbone.build_backbone`): a keras.Model is copied (its
    variables never change through the extractor) and cut before its classifier; a
    name is built without its top, with ``weights``, ``input_shape`` and
    ``build_kwargs``; the extractor takes raw pixels in [0, 255] through the
    backbone's own preprocessing (none for a keras.Model).

    Args:
        model: a functional ``keras.Model``, a kvision registry name or a
            keras.applications name.
        layers: None (the backbone's output: a model's layer before its classifier,
            :func:`feature_layer`, a named network's last layer), a layer name
            (inside a nested model too: ``"conv1"`` or ``"backbone/conv1"``), a
            stride 4/8/16/32 (its :func:`stage_outputs` layer), ``"P2"``..``"P5"``
            (strides 4..32), or a list of those.
        pooling: "avg", "max" or None, applied to 4-D outputs ``(N, H, W, C)``,
            giving ``(N, C)``.
        trainable: what of the backbone trains, as in every task (True, False, an
            int of last blocks or a regime name).

    Returns:
        A ``keras.Model`` on an input named "images": one output for a single
        request, a dict keyed by the requests for a list (ints stay ints when all
        requests are strides; mixed with names they become strings, ``"8"``; a
        None request is keyed by its layer's name).
    """
    from kvision.models.backbone import build_backbone

    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}.")
    if not isinstance(model, (str, keras.Model)):
        raise ValueError(
            f"`model` must be a keras.Model or a model name, got {type(model).__name__}."
        )
    requests = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not requests:
        raise ValueError("`layers` is an empty list; pass None, a request or a list.")
    images, tensors = build_backbone(model, requests, weights=weights,
                                     input_shape=input_shape, trainable=trainable,
                                     **build_kwargs)
    tensors = tensors if len(requests) > 1 else [tensors]
    tapped = [t._keras_history.operation.name
              for t in functional(tensors[0]._keras_history.operation).outputs]
    keys = [name if r is None else r for r, name in zip(requests, tapped)]
    labels = [f"stride{k}" if isinstance(k, int) else k.replace("/", "_") for k in keys]
    labels = [label if labels.count(label) == 1 else f"{label}_{i}"
              for i, label in enumerate(labels)]
    outputs = [_pool(t, pooling, label) for t, label in zip(tensors, labels)]
    if isinstance(layers, (list, tuple)):
        if len(set(keys)) != len(keys):
            raise ValueError(f"`layers` requests the same key twice: {list(layers)!r}.")
        if not all(isinstance(k, int) for k in keys):
            keys = [str(k) for k in keys]  # Keras cannot sort mixed int/str keys
        outputs = dict(zip(keys, outputs))
    else:
        outputs = outputs[0]
    label = model if isinstance(model, str) else model.name
    return keras.Model(images, outputs, name=f"{label}_features")

"""The model registry: every network is registered by name with its metadata.

A builder is registered with :func:`register`; :func:`create` builds any registered
network by name, :func:`list_models` lists names and :func:`get_info` returns the
metadata (task, family, year, paper, sizes, parameter count, stage outputs).

Detection, segmentation and feature extraction tap backbones through
``ModelInfo.stage_outputs`` (stride -> layer name), never by counting layers.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Callable

_REGISTRY: dict[str, "ModelInfo"] = {}
# The modes of kvision.layers.ImagePreprocessing (not imported: it loads Keras).
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")
# What a network does; "segmentation" is semantic segmentation (a class per pixel).
# A list: a task module may add its own (kvision.tasks.base.register_task).
TASKS = ["classification", "localization", "detection", "segmentation",
         "instance_segmentation", "pose", "embedding"]
_BUILTIN_TASKS = tuple(TASKS)


def add_task(name: str):
    """Let networks register with task ``name`` (:func:`kvision.tasks.base.register_task`)."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"A task name is a lower-case identifier, got {name!r}.")
    if name not in TASKS:
        TASKS.append(name)


def remove_task(name: str):
    """Undo :func:`add_task` for a task of one's own (tests); kvision's stay."""
    if name in TASKS and name not in _BUILTIN_TASKS:
        TASKS.remove(name)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Metadata of one registered network.

    Attributes:
        name: lower-case registry name (``"resnet50"``).
        builder: the public builder function (``ResNet50``).
        task: ``"classification"``, ``"detection"``, ``"segmentation"``…
        family: family name, one file per family (``"resnet"``).
        year: year of the paper.
        paper: paper title.
        key_idea: one line on what the network introduced.
        default_size: default square input size.
        min_size: smallest input side the architecture takes.
        input_channels: channels of the default input (3, or 1 for LeNet-5).
        num_params: parameter count with ``include_top=True`` and 1000 classes (or
            the builder's default classes), counted as ``params_convention`` says.
        params_convention: ``"keras"`` (``count_params()``, BatchNorm moving
            statistics included) or ``"trainable"`` (torchvision/timm/paper figures,
            which leave BatchNorm statistics out).
        params_source: where ``num_params`` comes from.
        stage_outputs: ``{stride: layer_name}`` for strides 4, 8, 16, 32 where the
            network has them: the last layer at that stride.
        keras_application: the ``keras.applications`` builder with the same layout,
            whose ImageNet weights ``weights="imagenet"`` loads; None if none.
        default_classes: classes of the default top (1000, or 10 for LeNet-5).
        imagenet_loader: for networks whose ImageNet weights come from elsewhere than
            keras.applications, ``loader(model, info, include_top)`` that loads them.
        preprocessing: the input preprocessing its ImageNet weights expect, as a
            ``kvision.layers.ImagePreprocessing`` mode: ``"caffe"``, ``"tf"``,
            ``"torch"`` (keras.applications' ``preprocess_input`` of the
            counterpart) or ``"none"`` (the network preprocesses inside, or has no
            ImageNet weights and kvision trains it on raw pixels).
        torch_layout: the torchvision state-dict naming the network follows (a key
            of ``kvision.weights_torch.LAYOUTS``), so ``weights=`` takes a ``.pth``
            file; None if it follows none.
        checkpoint: the published checkpoint ``weights="imagenet"`` converts, with
            what its publisher reports: ``{"url", "sha256"`` (prefix), ``"top1",
            "top5"`` (ImageNet validation, %), ``"source"}``; None if none.
    """

    name: str
    builder: Callable
    task: str
    family: str
    year: int
    paper: str
    key_idea: str = ""
    default_size: int = 224
    min_size: int = 32
    input_channels: int = 3
    num_params: int | None = None
    params_convention: str = "keras"
    params_source: str = ""
    stage_outputs: dict = dataclasses.field(default_factory=dict)
    keras_application: str | None = None
    default_classes: int = 1000
    preprocessing: str = "none"
    imagenet_loader: Callable | None = None
    torch_layout: str | None = None
    checkpoint: dict | None = None

    @property
    def has_imagenet_weights(self) -> bool:
        return self.keras_application is not None or self.imagenet_loader is not None


def register(name: str, **metadata):
    """Decorator registering a builder under ``name`` with its metadata."""
    if name != name.lower():
        raise ValueError(f"Registry names are lower-case; got {name!r}.")

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"A model named {name!r} is already registered.")
        info = ModelInfo(name=name, builder=builder, **metadata)
        if info.params_convention not in ("keras", "trainable"):
            raise ValueError(
                f"params_convention must be 'keras' or 'trainable', "
                f"got {info.params_convention!r} for {name!r}."
            )
        if info.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {info.task!r} for {name!r}.")
        if info.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(
                f"preprocessing must be one of {PREPROCESSING_MODES}, "
                f"got {info.preprocessing!r} for {name!r}."
            )
        _REGISTRY[name] = info
        builder.model_info = info
        return builder

    return decorator


def unregister(name: str):
    """Remove a network registered with :func:`register` (a test's own network)."""
    info = _REGISTRY.pop(name, None)
    if info is None:
        raise ValueError(f"No model named {name!r} is registered.")


def _ensure_loaded():
    # Importing the model packages registers their builders.
    import kvision.models  # noqa: F401


def _plain(name: str) -> str:
    """A name without case or separators: ``MobileNet-V2`` and ``mobilenet_v2`` meet."""
    return "".join(c for c in name.lower() if c not in "_- ")


def closest_names(name: str, names, n: int = 5, cutoff: float = 0.75) -> list[str]:
    """Up to ``n`` of ``names`` a user typing ``name`` most likely meant.

    Names that start with ``name`` (``resnet5`` -> ``resnet50``) come first, then the
    most similar ones (difflib's ratio, separators and case ignored) above ``cutoff``:
    high enough that a made-up word, which shares only common pieces such as "net"
    with the zoo's names (ratio ~0.57), gets no suggestion.
    """
    plain = _plain(name)
    scored = []
    for candidate in names:
        other = _plain(candidate)
        prefix = len(plain) >= 3 and other.startswith(plain)
        ratio = difflib.SequenceMatcher(None, plain, other).ratio()
        if prefix or ratio >= cutoff:
            scored.append((not prefix, -ratio, candidate))
    return [candidate for *_, candidate in sorted(scored)[:n]]


def get_info(name: str) -> ModelInfo:
    """Metadata of a registered network; unknown names raise ``ValueError``."""
    _ensure_loaded()
    if not isinstance(name, str):
        raise ValueError(f"A model name must be a string, got {type(name).__name__}.")
    key = name.lower()
    if key not in _REGISTRY:
        close = closest_names(key, _REGISTRY)
        hint = f" Closest matches: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} "
            f"`kvision.models.list_models()` lists all {len(_REGISTRY)} names."
        )
    return _REGISTRY[key]


def create(model_name: str, /, **kwargs):
    """Build the registered network ``model_name``; ``kwargs`` (``name`` included)
    go to its builder."""
    return get_info(model_name).builder(**kwargs)


def list_models(task: str | None = None, pattern: str | None = None,
                family: str | None = None) -> list[str]:
    """Registered names, sorted; filter by ``task``, ``family`` or a glob ``pattern``."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if task is not None:
        tasks = {info.task for info in _REGISTRY.values()}
        if task not in tasks:
            raise ValueError(f"Unknown task {task!r}; expected one of {sorted(tasks)}.")
        names = [n for n in names if _REGISTRY[n].task == task]
    if family is not None:
        names = [n for n in names if _REGISTRY[n].family == family]
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern.lower())]
    return names

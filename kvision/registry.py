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
        accuracy: the published single-model ImageNet validation accuracy,
            ``{"top1", "top5", "source"}`` in % (:func:`published`; ``top5`` None
            where the source gives none): that of the weights ``weights="imagenet"``
            loads where it loads any. Filled from ``checkpoint`` or from
            keras.applications' table (:data:`KERAS_APPLICATIONS_ACCURACY`) when not
            given; None for networks never trained on ImageNet (LeNet-5, task models).
        paper_accuracy: the paper's own single-model figure, as ``accuracy``, where
            the weights kvision loads report another (a timm checkpoint of a later
            training recipe: SE-Net, Inception-v4); None elsewhere.
        ilsvrc: the ILSVRC classification entry the network (or its family) won or
            placed with, ``{"year", "top5_error", "entry", "source"}`` (test-set
            top-5 error, %, :func:`ilsvrc_entry`); None for most networks.
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
    accuracy: dict | None = None
    paper_accuracy: dict | None = None
    ilsvrc: dict | None = None

    @property
    def has_imagenet_weights(self) -> bool:
        return self.keras_application is not None or self.imagenet_loader is not None


# keras.applications' table of ImageNet validation accuracy (top-1, top-5, %; single
# 224 crop, 299 for Xception/Inception, the native size for EfficientNet):
# keras.io/api/applications. The MobileNetV3 rows are the top-1 of the table in
# keras.applications.MobileNetV3's docstring, which gives no top-5.
KERAS_APPLICATIONS_ACCURACY = {
    "Xception": (79.0, 94.5), "VGG16": (71.3, 90.1), "VGG19": (71.3, 90.0),
    "ResNet50": (74.9, 92.1), "ResNet50V2": (76.0, 93.0), "ResNet101": (76.4, 92.8),
    "ResNet101V2": (77.2, 93.8), "ResNet152": (76.6, 93.1), "ResNet152V2": (78.0, 94.2),
    "InceptionV3": (77.9, 93.7), "InceptionResNetV2": (80.3, 95.3),
    "MobileNet": (70.4, 89.5), "MobileNetV2": (71.3, 90.1),
    "DenseNet121": (75.0, 92.3), "DenseNet169": (76.2, 93.2), "DenseNet201": (77.3, 93.6),
    "EfficientNetB0": (77.1, 93.3), "EfficientNetB1": (79.1, 94.4),
    "EfficientNetB2": (80.1, 94.9), "EfficientNetB3": (81.6, 95.7),
    "EfficientNetB4": (82.9, 96.4), "EfficientNetB5": (83.6, 96.7),
    "EfficientNetB6": (84.0, 96.8), "EfficientNetB7": (84.3, 97.0),
    "MobileNetV3Large": (75.6, None), "MobileNetV3Small": (68.1, None),
}


def published(top1: float, top5: float | None, source: str) -> dict:
    """A published ImageNet accuracy (``ModelInfo.accuracy``): top-1 and top-5 in %
    (``top5`` None where the source reports none) and where the figures come from."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"An accuracy needs its source (paper, table), got {source!r}.")
    if not 0 < top1 <= 100 or (top5 is not None and not top1 <= top5 <= 100):
        raise ValueError(f"Expected 0 < top-1 <= top-5 <= 100 (%), got top-1 {top1!r}, "
                         f"top-5 {top5!r} ({source}).")
    return {"top1": float(top1), "top5": None if top5 is None else float(top5),
            "source": source}


def ilsvrc_entry(year: int, top5_error: float, entry: str, source: str) -> dict:
    """An ILSVRC classification entry (``ModelInfo.ilsvrc``): its year, test-set
    top-5 error (%), what was submitted and where the figure is published."""
    if not 2010 <= year <= 2017:  # the classification challenge ran 2010-2017
        raise ValueError(f"ILSVRC classification ran 2010-2017, got year {year!r}.")
    if not 0 < top5_error < 100 or not entry or not source:
        raise ValueError(f"Expected a top-5 error in (0, 100) %, an entry and a source, "
                         f"got {top5_error!r}, {entry!r}, {source!r}.")
    return {"year": int(year), "top5_error": float(top5_error), "entry": entry,
            "source": source}


def _default_accuracy(metadata: dict):
    """The accuracy a network's weights' publisher reports: its torchvision/timm
    checkpoint's, else keras.applications' table's for its counterpart."""
    checkpoint = metadata.get("checkpoint")
    if checkpoint and "top1" in checkpoint:
        return published(checkpoint["top1"], checkpoint.get("top5"), checkpoint["source"])
    app = metadata.get("keras_application")
    if app in KERAS_APPLICATIONS_ACCURACY:
        where = ("keras.applications.MobileNetV3 docstring table (top-1 only)"
                 if app.startswith("MobileNetV3") else "keras.applications' table")
        return published(*KERAS_APPLICATIONS_ACCURACY[app], f"{where}, {app}")
    return None


def register(name: str, **metadata):
    """Decorator registering a builder under ``name`` with its metadata."""
    if name != name.lower():
        raise ValueError(f"Registry names are lower-case; got {name!r}.")
    accuracy = metadata.get("accuracy")
    if accuracy is None:
        metadata["accuracy"] = _default_accuracy(metadata)
    elif not isinstance(accuracy, dict) or set(accuracy) != {"top1", "top5", "source"}:
        raise ValueError(f"accuracy of {name!r}: expected published(top1, top5, source), "
                         f"got {accuracy!r}.")
    else:
        metadata["accuracy"] = published(**accuracy)
    paper = metadata.get("paper_accuracy")
    if paper is not None:
        if not isinstance(paper, dict) or set(paper) != {"top1", "top5", "source"}:
            raise ValueError(f"paper_accuracy of {name!r}: expected published(top1, top5, "
                             f"source), got {paper!r}.")
        metadata["paper_accuracy"] = published(**paper)

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

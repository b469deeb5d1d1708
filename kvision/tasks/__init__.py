"""Tasks: what a model does, asked of the model itself.

Every registered network declares its task (:data:`kvision.registry.TASKS`:
classification, localization, detection, segmentation (semantic), instance
segmentation); a task model built by kvision is a :class:`TaskModel`, whose config
carries the task, so :func:`task_of` reads it off the model (or off a ``.keras`` file
loaded from disk). ``predict``, ``evaluate`` and ``export`` ask :func:`task_of`;
they never guess from output names, except for files saved before models carried
their task, which :func:`task_of` recognizes by their outputs.
"""

from __future__ import annotations

from kvision.registry import TASKS

# The output protocol of a task's inference model (what predict and export read).
DETECTION_OUTPUTS = ("boxes", "scores", "classes", "num_detections")
INSTANCE_MAP = "instance_map"
# The one output of an embedding model, and of its exports (SavedModel and TFLite).
EMBEDDINGS = "embeddings"
DETECTING = ("localization", "detection")
SEGMENTING = ("segmentation", "instance_segmentation")
# What a model of each task is called in messages.
NOUNS = {"classification": "classifier", "localization": "localizer",
         "detection": "detector", "segmentation": "segmenter",
         "instance_segmentation": "instance segmenter", "embedding": "embedding model"}

__all__ = ["TASKS", "TaskModel", "check_inference_model", "class_word", "noun",
           "output_names", "task_of",
           "with_task"]


def __getattr__(name):  # TaskModel loads Keras: only when asked for
    if name in ("TaskModel", "with_task", "check_task"):
        from kvision.tasks import model

        return getattr(model, name)
    raise AttributeError(f"module 'kvision.tasks' has no attribute {name!r}")


def noun(task) -> str:
    """What a model of ``task`` is called in messages ("detector"); a task of one's
    own says it (:attr:`kvision.tasks.base.Task.noun`)."""
    if task in NOUNS:
        return NOUNS[task]
    from kvision.tasks.base import get_task

    return get_task(task).noun or f"{task} model"


def class_word(task) -> str:
    """What a model of ``task`` calls its class names in messages ("classes", "joints")."""
    if task in NOUNS:
        return "classes"
    from kvision.tasks.base import get_task

    return get_task(task).class_word


def task_of(model) -> str:
    """The task of ``model``: its own (a :class:`TaskModel`), else read off its
    outputs for models saved before tasks travelled with them (a ValueError when
    the outputs fit no task)."""
    from kvision.tasks.model import TaskModel

    if isinstance(model, TaskModel) and model.task is not None:
        return model.task
    return _task_from_outputs(model)


def output_names(model) -> list:
    """A Keras model's output names (dict keys for dict outputs)."""
    output = getattr(model, "output", None)
    if isinstance(output, dict):
        return list(output)
    return list(getattr(model, "output_names", None) or [])


def _task_from_outputs(model):
    """Today's inspection, kept for old files only."""
    try:
        outputs, names = model.outputs, output_names(model)
    except (AttributeError, ValueError):
        raise ValueError(f"{getattr(model, 'name', model)!r} is not a built model, so it "
                         f"has no task.") from None
    if set(DETECTION_OUTPUTS) <= set(names):
        return "instance_segmentation" if INSTANCE_MAP in names else "detection"
    if "semantic" in names and isinstance(getattr(model, "output", None), dict):
        return "instance_segmentation"  # the two-network instance model
    if len(outputs) == 1:
        rank = len(outputs[0].shape)
        if rank == 2 and names == [EMBEDDINGS]:
            return "embedding"  # an embedding model's export: one output, so named
        if rank == 4:
            return "segmentation"
        if rank == 2:
            return "classification"
    raise ValueError(
        f"Cannot tell the task of {model.name!r} from its outputs {names}: expected a "
        f"classifier (N, classes), a segmenter (N, H, W, classes) or a detector's "
        f"{', '.join(DETECTION_OUTPUTS)}. Models kvision builds carry their task.")


def check_inference_model(model, task=None):
    """``model`` answers its task's inference protocol (a detector's four outputs for
    localization, detection and instance models), else a ValueError that says which
    model to use: a training model's raw grids cannot be decoded by predict or
    export."""
    task = task or task_of(model)
    if task in DETECTING + ("instance_segmentation",):
        names = output_names(model)
        two_network = isinstance(model.output, dict) and "semantic" in model.output
        if not two_network and not set(DETECTION_OUTPUTS) <= set(names):
            raise ValueError(
                f"{model.name!r} is a {task} model whose outputs {names} are not "
                f"decoded detections ({', '.join(DETECTION_OUTPUTS)}): it is the "
                f"training model. Predict and export take its inference model (for "
                f"YOLO: kvision.models.detection.yolo.inference_model(model)).")
    return task

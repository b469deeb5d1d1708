"""What a task is: one :class:`Task` object per task, in its own module.

A task module (``kvision/tasks/detection.py``, ``segmentation.py``…) defines a
:class:`Task` subclass and registers one instance with :func:`register_task`. The
command line and the library ask the task of a model (:func:`get_task`) for
everything that differs between tasks, so that training, evaluation, prediction and
export are one code path:

- ``training_data``: the data adapter, a ``--data`` source (``digit-scenes``, a
  folder, a file, ``tfds:NAME``) -> :class:`TrainingData` at the model's input size;
- ``build``: the training model of a registered network, fitted to that data;
- ``losses`` and ``fit_dataset``: what ``model.compile`` and ``model.fit`` take;
  or ``own_fit``: a network trained by a pipeline of its own rather than one
  ``model.fit`` (R-CNN: selective search, fine-tuning, scikit-learn's SVMs), with
  ``defaults`` its own training defaults;
- ``inference_model``: the training model -> the model predict and export take
  (decoding and NMS in the graph for detectors; the model itself otherwise);
- ``load_data`` and ``evaluate``: labelled data to measure a trained model on, and
  the task's figures (a report with ``format()``, ``as_dict()`` and ``figures``
  holding :attr:`Task.metric`, the figure logged every epoch as ``val_<metric>``).

A network declares its task when it is registered (``registry.register(...,
task=...)``); a model built for a task is a :class:`kvision.tasks.TaskModel` whose
config carries that task. So a new task is one task module (this contract) plus its
model module (a registered builder), and nothing else changes.
"""

from __future__ import annotations

import dataclasses
import importlib

from kvision import registry

# The task modules kvision ships, imported when their task is first asked for.
# (Classifiers keep their own paths: kvision.train.train_classifier,
# kvision.evaluate, kvision.predict.predict_images.)
BUILTIN_MODULES = {"localization": "kvision.tasks.detection",
                   "detection": "kvision.tasks.detection",
                   "segmentation": "kvision.tasks.segmentation",
                   "instance_segmentation": "kvision.tasks.segmentation",
                   "pose": "kvision.tasks.pose",
                   "embedding": "kvision.tasks.embedding"}
_TASKS: dict = {}


@dataclasses.dataclass
class TrainingData:
    """A task's training data at the model's input size.

    ``train``: an unbatched ``tf.data.Dataset`` of examples in Keras' dict format
    (``{"images", "bounding_boxes": {"boxes", "labels"}}`` for detectors,
    ``{"images", "segmentation_masks"}`` for segmenters); ``num_train`` examples.
    ``validation``: what :meth:`Task.evaluate` measures after every epoch (the
    task's ``Labelled``). ``class_names``: what the model's classes are called.
    ``source``: where the data came from, ``description``: one line saying so.
    ``extras``: what a task keeps for building (a detector's box sizes, for anchors).
    """

    train: object
    num_train: int
    validation: object
    class_names: tuple
    source: str
    description: str
    extras: dict = dataclasses.field(default_factory=dict)


class Task:
    """The contract of a task (module docstring). Subclasses set the attributes and
    override the methods their task needs."""

    name: str = ""
    noun: str = ""            # what a model of the task is called: "detector"
    metric: str = ""          # the key of the headline figure: "map_50"
    metric_label: str = ""    # how it is printed: "mAP@0.5"
    default_data: str = "digit-scenes"
    default_epochs: int = 10
    default_batch_size: int = 16
    default_learning_rate: float = 2e-3
    default_optimizer: str = "adam"  # a key of kvision.tasks.training.OPTIMIZERS
    augments: bool = False  # fit_dataset takes ``augment`` (--no-augment turns it off)
    warmup_epochs: int = 0  # the learning rate rises linearly from 0 over these first
    export_labels: bool = True  # the SavedModel export carries the class names
    class_word: str = "classes"  # what its class names name ("joints" for pose)
    # How export writes and checks the inference model: "detector" (the four
    # detection outputs, detection by detection), "segmenter" (per-pixel scores,
    # pixel by pixel), "classifier" (top-k) or "outputs" (every output as it is,
    # to float32 error).
    export_kind: str = "outputs"

    def default_image_size(self, info, data) -> int:
        """The input side when ``--image-size`` is not given."""
        return info.default_size

    def model_module(self, name):
        """The module of a registered network's builder: it holds the network's own
        pieces (targets, losses, inference model)."""
        return importlib.import_module(registry.get_info(name).builder.__module__)

    def training_data(self, source, *, image_size, channels, seed, max_images=None):
        raise NotImplementedError(f"{self.name} models cannot be trained from the "
                                  f"command line yet.")

    def build(self, name, data, *, input_shape, model_args, backbone_weights=None,
              regime=None):
        """The training model of network ``name`` for ``data`` (default: the
        registered builder with ``classes`` and ``input_shape``)."""
        kwargs = dict(model_args)
        if backbone_weights is not None and str(backbone_weights).lower() != "none":
            kwargs["backbone_weights"] = backbone_weights  # "none": random, the default
        if regime is not None:
            kwargs["trainable_backbone"] = regime
        check_arguments(name, kwargs)
        return registry.create(name, classes=len(data.class_names),
                               input_shape=input_shape, **kwargs)

    def check_trainable(self, name):
        """A ValueError, before any data is read, when network ``name`` cannot be
        trained through this task."""

    def own_fit(self, name):
        """How network ``name`` trains when it is not by ``model.fit``: ``None`` (the
        default: compiled with :meth:`losses`, fitted on :meth:`fit_dataset`'s
        batches, :attr:`metric` measured on ``data.validation`` after every epoch),
        else a function ``fit(model, data, *, epochs, batch_size, learning_rate,
        seed, verbose) -> {name: [values]}`` (``learning_rate`` None: its own) that trains ``model`` on ``data`` (:class:`TrainingData`)
        itself, showing its own progress, and answers its history; the run measures
        :attr:`metric` on ``data.validation`` once, after it."""
        return None

    def defaults(self, name) -> dict:
        """Network ``name``'s own training defaults where they differ from the task's
        (keys ``epochs``, ``batch_size``, ``learning_rate``, ``max_images``,
        ``image_size``); a flag given on the command line wins."""
        return {}

    def losses(self, name, model):
        """What ``model.compile`` takes as ``loss`` for network ``name``."""
        raise NotImplementedError(f"The {self.name} task gives no losses: kvision train "
                                  f"cannot train {self.noun}s yet.")

    def fit_dataset(self, name, model, data, *, batch_size, seed, shuffle=True):
        """``(inputs, targets)`` batches of ``data.train`` for ``model.fit``."""
        raise NotImplementedError(f"The {self.name} task gives no training batches: "
                                  f"kvision train cannot train {self.noun}s yet.")

    def inference_model(self, name, model):
        """The model predict and export take (by default the model itself)."""
        return model

    def load_data(self, source, trained, *, seed=0, max_images=None):
        """Labelled data from ``source`` to measure ``trained`` on (its input size);
        by default the task module's own ``load_data`` function."""
        return self._module_function("load_data")(source, trained, seed=seed,
                                                  max_images=max_images)

    def evaluate(self, trained, data, batch_size=8):
        """The task's report of ``trained`` (:class:`kvision.predict.Trained`) on
        ``data``: ``format()``, ``as_dict()`` and ``figures[self.metric]``; by
        default the task module's own ``evaluate`` function."""
        return self._module_function("evaluate")(trained, data, batch_size)

    def _module_function(self, name):
        function = getattr(importlib.import_module(type(self).__module__), name, None)
        if function is None:
            raise NotImplementedError(f"kvision evaluate does not measure {self.noun}s "
                                      f"yet.")
        return function

    def predict_files(self, trained, files, args):
        """``kvision predict``'s answers for image ``files``: one dict per file
        (``"path"``, and what :meth:`answer_line` prints), drawn to ``args.out``."""
        raise NotImplementedError(f"kvision predict does not answer for {self.noun}s yet.")

    def answer_line(self, result) -> str:
        """One answer as ``kvision predict`` prints it after the file's path."""
        raise NotImplementedError


def check_arguments(name, arguments):
    """A ValueError naming the builder's parameters when ``arguments`` (``--model-arg``)
    has one the builder of ``name`` does not take (not Python's TypeError from deep
    inside the build)."""
    import inspect

    parameters = inspect.signature(registry.get_info(name).builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(arguments) - set(parameters))
    if unknown:
        raise ValueError(f"{name} takes no argument {', '.join(map(repr, unknown))}; its "
                         f"builder takes {', '.join(parameters)}.")


def register_task(task: Task) -> Task:
    """Make ``task`` known by its name (networks may then register with it)."""
    if not task.name or not task.metric:
        raise ValueError(f"A task needs a name and a metric, got {task.name!r}, "
                         f"{task.metric!r}.")
    registry.add_task(task.name)
    _TASKS[task.name] = task
    return task


def unregister_task(name):
    """Forget a task registered with :func:`register_task` (tests)."""
    _TASKS.pop(name, None)
    if name not in BUILTIN_MODULES:
        registry.remove_task(name)


def export_kind(task) -> str:
    """How a model of ``task`` is exported and checked (:attr:`Task.export_kind`)."""
    return "classifier" if task == "classification" else get_task(task).export_kind


def get_task(name) -> Task:
    """The :class:`Task` called ``name`` (its module imported on first use)."""
    if name not in _TASKS and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _TASKS:
        raise ValueError(f"Unknown task {name!r}; expected one of "
                         f"{sorted(set(registry.TASKS) | set(_TASKS))}.")
    return _TASKS[name]


def check_source(source, what, forms, folders):
    """One line for ``--data`` that is not a task's data: ``source`` a ``tfds:NAME``,
    a ``.json`` file or a folder holding the sub-folders ``folders``; else a
    FileNotFoundError (missing) or ValueError naming ``forms``, what the task takes."""
    import os

    if str(source).startswith("tfds:"):
        return
    if not os.path.exists(source):
        raise FileNotFoundError(f"No {what} data at {source!r}: {forms}.")
    folder = all(os.path.isdir(os.path.join(source, d)) for d in folders)
    if not (folder or os.path.isfile(source) and str(source).lower().endswith(".json")):
        raise ValueError(f"{source!r} is not {what} data: {forms}.")


def split_for_training(load, source, *, seed, max_images=None, most_held=500):
    """``(data, train, train_count, held_out, where)`` from ``load(**options)`` (a
    task's loader of ``source``): a folder's own ``images/val`` split held out as it
    is (at most ``most_held`` of it), else a tenth of the data held out at random
    (:func:`hold_out`); ``where`` says which, for the run's description."""
    import os

    data = load(max_examples=max_images)
    if os.path.isdir(os.path.join(str(source), "images", "val")):
        held = load(split="val", class_names=data.class_names, max_examples=most_held)
        return (data, data.dataset, data.num_examples, held.dataset,
                f"of the val split of {source}")
    train, held, count, _ = hold_out(data.dataset, data.num_examples, seed=seed)
    return data, train, count, held, f"held out at random from {source} (seed {seed})"


def hold_out(dataset, count, *, fraction=0.1, seed=0):
    """``dataset`` (``count`` examples) split at random into ``(train, held_out,
    train_count, held_out_count)``: ``fraction`` of it, at least one example, held out
    (the same ones for the same ``seed``). Fewer than two examples is a ValueError."""
    import numpy as np
    import tensorflow as tf

    if count < 2:
        raise ValueError(f"{count} example(s): training needs at least two, one of them "
                         f"held out to measure the model.")
    held = max(1, int(round(count * fraction)))
    mask = np.zeros(count, bool)
    mask[np.random.default_rng(seed).permutation(count)[:held]] = True
    mask = tf.constant(mask)
    numbered = dataset.enumerate()

    def side(keep_held, size):
        # A filter hides the size: said again, so fit's progress bar knows its end.
        return (numbered.filter(lambda i, _: tf.equal(mask[i], keep_held))
                .map(lambda _, example: example)
                .apply(tf.data.experimental.assert_cardinality(size)))

    return side(False, count - held), side(True, held), count - held, held

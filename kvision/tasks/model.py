"""``TaskModel``: a functional model that knows its task, in its own config."""

from __future__ import annotations

import keras

from kvision.registry import TASKS


def check_task(task):
    """``task`` if it is one of :data:`kvision.registry.TASKS`, else a ValueError."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {list(TASKS)}.")
    return task


@keras.saving.register_keras_serializable(package="kvision")
class TaskModel(keras.Model):
    """A functional model, built as ``TaskModel(inputs, outputs, task=..., name=...)``,
    whose task is part of its config.

    So the task travels with the model through ``model.save``, ``.keras`` files,
    ``clone_model`` and ``from_config``: ``predict``, ``evaluate`` and ``export`` ask
    the model what it is (:func:`kvision.tasks.task_of`) instead of guessing from its
    output names, as keras-hub's ``Task`` models carry theirs. Otherwise it is a plain
    functional model: same layers, same weights, same call.

    The constructor keeps ``Functional``'s signature (``inputs, outputs, name=None,
    **kwargs``, the task a keyword) so Keras serializes its graph as a functional
    model's. ``keras.models.clone_model`` rebuilds it without the task (Keras passes
    only the graph and the name): a clone's task is read off its outputs.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        task = kwargs.pop("task", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.task = None if task is None else check_task(task)

    def get_config(self):
        return {**super().get_config(), "task": self.task}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        task = config.pop("task", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.task = None if task is None else check_task(task)
        return model


def with_task(model, task):
    """``model`` (functional) as a :class:`TaskModel` of ``task``: the same layers and
    weights under the same name; a TaskModel of that task is returned as it is."""
    check_task(task)
    if isinstance(model, TaskModel) and model.task == task:
        return model
    return TaskModel(model.input, model.output, task=task, name=model.name)

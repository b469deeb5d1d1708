"""Training any task's network with ``model.fit``: what ``kvision train`` runs for
detectors and segmenters (classifiers: :func:`kvision.train.train_classifier`).

Everything that differs between tasks comes from the network's task
(:func:`kvision.tasks.base.get_task`): the data adapter, the model fitted to the data,
the losses, the ``(inputs, targets)`` batches, the inference model and the figure
measured on held-out data after every epoch. The run folder is the classifiers' (see
:mod:`kvision.train`): ``run.json``, ``checkpoints/last.keras`` (the training model),
a backup that lets a killed run resume, ``training_log.csv`` with the task's
validation figure every epoch (``val_map_50``, ``val_mean_iou``…) and its plot
``training_curves.png``, then ``<name>.keras`` (the inference model: what predict,
evaluate and export take, its class names inside), ``class_names.txt`` and the
TensorFlow Serving export ``<version>/``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import keras
import numpy as np

from kvision import registry, runs
from kvision.tasks import base

log = logging.getLogger("kvision.train")


@dataclasses.dataclass
class TaskTrainResult:
    """What a task's training run produced and measured: ``report`` is the task's
    report on the held-out data (``report.figures[metric]`` the headline figure)."""

    model: keras.Model            # the training model
    inference_model: keras.Model  # what predict and export take
    task: str
    metric: str
    metric_label: str
    report: object
    seconds: float
    keras_path: str | None
    export_path: str | None
    history: dict
    class_names: tuple
    out_dir: str | None
    initial_epoch: int
    trainable_params: int
    seconds_per_epoch: float
    data_description: str

    @property
    def figure(self) -> float:
        """The task's headline figure on the held-out data."""
        return float(self.report.figures[self.metric])


class HeldOutFigure(keras.callbacks.Callback):
    """After every epoch, the task's figure (:attr:`Task.metric`) of the inference
    model on the held-out data, into the epoch's logs as ``val_<metric>`` (so the CSV
    log, the curves and the progress bar show it)."""

    def __init__(self, task, trained, validation):
        super().__init__()
        self.task, self.trained, self.validation = task, trained, validation

    def on_epoch_end(self, epoch, logs=None):
        # The task's own batch size, as kvision evaluate uses: the same batches, so
        # the logged figure is the one evaluate prints, on any CPU.
        report = self.task.evaluate(self.trained, self.validation)
        if logs is not None:
            logs[f"val_{self.task.metric}"] = float(report.figures[self.task.metric])


#: ``optimizer=`` of :func:`train_task` (``kvision train --optimizer``): each takes the
#: learning-rate schedule. RMSprop at 2.5e-4 is the stacked hourglass paper's recipe.
OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": lambda rate, **clip: keras.optimizers.SGD(rate, momentum=0.9, **clip),
}


def train_task(model_name, data=None, *, epochs=None, batch_size=None, learning_rate=None,
               image_size=None, out_dir=None, overwrite=False, export=True, seed=0,
               verbose=1, backbone_weights=None, regime=None, model_args=None,
               max_images=None, jit_compile=False, steps_per_epoch=None, callbacks=(),
               optimizer=None, augment=None, clipnorm=None, clipvalue=None):
    """Train the registered network ``model_name`` for its task on ``data`` (default
    the task's, ``digit-scenes``) and measure it on held-out data.

    ``model_args``: more builder arguments (``{"width": 0.5}``); ``max_images``: train
    on at most this many images (``digit-scenes``: generate this many). Defaults of
    ``epochs``, ``batch_size``, ``learning_rate`` (cosine-decayed to 0) and
    ``optimizer`` (a key of :data:`OPTIMIZERS`) are the task's. ``augment``: ``False``
    turns off a task's training augmentation (``None``: the task's default; tasks
    whose batches are not augmented refuse ``False``). ``clipnorm`` / ``clipvalue``:
    the optimizer's gradient clipping (:func:`kvision.train.clipping`). Returns a
    :class:`TaskTrainResult`.
    """
    from kvision.predict import Trained
    from kvision.train import _check_arguments, clipping

    info = registry.get_info(model_name)
    task = base.get_task(info.task)
    task.check_trainable(model_name)
    base.check_arguments(model_name, dict(model_args or {}))  # before any data is read
    clip = clipping(clipnorm, clipvalue)
    optimizer = optimizer or task.default_optimizer
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(sorted(OPTIMIZERS))}; "
                         f"got {optimizer!r}.")
    if augment is False and not task.augments:
        raise ValueError(f"{model_name} trains without augmentation already ({task.name} "
                         f"batches are not augmented); --no-augment changes nothing.")
    own_fit = task.own_fit(model_name)  # None: model.fit
    data = data or task.default_data
    own = task.defaults(model_name) if data == task.default_data else {}
    epochs = epochs or own.get("epochs") or task.default_epochs
    batch_size = batch_size or own.get("batch_size") or task.default_batch_size
    learning_rate = learning_rate or own.get("learning_rate")
    max_images = max_images or own.get("max_images")
    _check_arguments(epochs, batch_size, steps_per_epoch)
    if own_fit is not None and (steps_per_epoch or jit_compile or clip or callbacks
                                or optimizer != task.default_optimizer or augment is not None):
        raise ValueError(f"{model_name} trains by its own pipeline, not model.fit: "
                         f"--steps-per-epoch, --jit, --clipnorm, --clipvalue, --optimizer "
                         f"and --no-augment do not apply to it.")
    side = int(image_size or own.get("image_size") or task.default_image_size(info, data))
    channels = 3
    bundle = task.training_data(data, image_size=side, channels=channels, seed=seed,
                                max_images=max_images)
    log.info("data: %s; %d %s: %s", bundle.description, len(bundle.class_names),
             task.class_word, ", ".join(bundle.class_names))
    keras.utils.set_random_seed(seed)
    arguments = dict(model_args or {})
    model = task.build(model_name, bundle, input_shape=(side, side, channels),
                       model_args=arguments, backbone_weights=backbone_weights,
                       regime=regime)
    if own_fit is None:
        per_epoch = steps_per_epoch or -(-bundle.num_train // batch_size)
        model.compile(optimizer=OPTIMIZERS[optimizer](_schedule(
                          learning_rate or task.default_learning_rate, epochs * per_epoch,
                          min(task.warmup_epochs * per_epoch, epochs * per_epoch // 2)),
                          **clip),
                      loss=task.losses(model_name, model), jit_compile=bool(jit_compile))
        extra = {"augment": augment} if task.augments and augment is not None else {}
        train_ds = task.fit_dataset(model_name, model, bundle, batch_size=batch_size,
                                    seed=seed, **extra)
    inference = task.inference_model(model_name, model)
    trained = Trained(inference, bundle.class_names, "(training)")
    settings = {"model": model_name, "task": task.name, "input_size": side,
                "channels": channels, "data": bundle.source, "max_images": max_images,
                "classes": list(bundle.class_names), "seed": seed,
                "model_args": {k: _plain(v) for k, v in sorted(arguments.items())},
                "backbone_weights": backbone_weights, "regime": regime,
                "optimizer": optimizer, "augment": augment}
    run_dir = None
    if out_dir is not False:
        from kvision.train import _claim_run_folder

        run_dir = _claim_run_folder(out_dir or os.path.join("saved_models", model_name),
                                    settings, overwrite, None)
    if own_fit is None:
        figure = HeldOutFigure(task, trained, bundle.validation)
        history, seconds, timer = _fit(model, train_ds, epochs, steps_per_epoch, verbose,
                                       run_dir, figure, callbacks)
    else:  # its held-out figure once, at the end: say so before that wait
        start = time.perf_counter()
        history = keras.callbacks.History()
        history.history = dict(own_fit(model, bundle, epochs=epochs, batch_size=batch_size,
                                       learning_rate=learning_rate, seed=seed,
                                       verbose=verbose))
        seconds = time.perf_counter() - start
        timer = _OwnTimer(seconds, epochs)
        log.info("measuring %s on %s", task.metric_label, bundle.validation.description)
    report = task.evaluate(trained, bundle.validation)
    keras_path = export_path = None
    if run_dir:
        keras_path, export_path = _save_run(task, inference, model_name, bundle, run_dir,
                                            export)
        runs.mark(run_dir, "finished")  # last: the run is complete on disk
    return TaskTrainResult(
        model=model, inference_model=inference, task=task.name, metric=task.metric,
        metric_label=task.metric_label, report=report, seconds=seconds,
        keras_path=keras_path, export_path=export_path,
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
        class_names=tuple(bundle.class_names), out_dir=run_dir,
        initial_epoch=timer.first_epoch or 0,
        trainable_params=int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        seconds_per_epoch=timer.mean(), data_description=bundle.description)


class _OwnTimer:
    """What a run trained by its own pipeline reports as :class:`_EpochTimer` does:
    no resumed epoch, its seconds spread over its epochs."""

    first_epoch = 0

    def __init__(self, seconds, epochs):
        self.seconds, self.epochs = seconds, epochs

    def mean(self):
        return self.seconds / max(1, self.epochs)


def _schedule(rate, steps, warmup):
    """The learning rate: a linear rise from 0 over ``warmup`` steps (a network without
    BatchNorm, as U-Net, can die at the full rate from its first step), then a half
    cosine to 0 at ``steps``."""
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(rate, steps)
    return keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, warmup_target=rate,
                                                  warmup_steps=warmup)


def _plain(value):
    """A builder argument as JSON can hold it (run settings compare as JSON)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fit(model, train_ds, epochs, steps_per_epoch, verbose, run_dir, figure, extra):
    from kvision.train import _callbacks, _EpochTimer

    timer = _EpochTimer()
    start = time.perf_counter()
    # The held-out figure before the CSV log and the checkpoint: they see it in the
    # epoch's logs; the timer before it: evaluation is not training time.
    history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        verbose=verbose, shuffle=False,  # the dataset shuffles itself
                        callbacks=_callbacks(run_dir, extra, first=[timer, figure]))
    return history, time.perf_counter() - start, timer


def _save_run(task, inference, name, bundle, run_dir, export):
    """The inference model (class names inside), the class names, the curves with the
    task's figure and, if asked, the TensorFlow Serving export."""
    from kvision.data.folders import resize
    from kvision.train import save_run_files

    keras_path = save_run_files(inference, name, bundle.class_names, run_dir,
                                metrics=("loss", task.metric))
    if not export:
        return keras_path, None
    from kvision.layers.proposals import host_layers

    if host_layers(inference):  # kvision export refuses it, saying why
        log.info("not exported: %s's detector runs %s on the host; kvision export "
                 "--format savedmodel exports it with the proposals an input, computed "
                 "by the caller", name, host_layers(inference)[0])
        return keras_path, None
    from kvision.export import saved_model

    size = inference.input_shape[1:3]
    check = np.stack([np.asarray(resize(image, size)) for image in
                      list(bundle.validation.images)[:8]])
    path = saved_model(inference, run_dir, check_inputs=check,
                       class_names=bundle.class_names if task.export_labels else None)
    return keras_path, os.fspath(path)

"""Training with plain ``model.fit``: the library behind ``kvision train``.

Networks of other tasks (detectors, segmenters) train through
:func:`kvision.tasks.training.train_task`, into the same run folder;
:func:`task_of_name` says which way a ``kvision train MODEL`` goes. For classifiers
one function, :func:`train_classifier`, covers both ways in:

- **from scratch**: a kvision registry name (``lenet5``, ``resnet18``…) with no
  ``backbone_weights`` and no ``regime``;
- **transfer learning**: a keras.applications name (``MobileNetV2``), a registry name
  with ``backbone_weights`` ("imagenet" or a weights file) or a ``regime``, or a
  ``.keras`` file of a network trained before: :func:`kvision.transfer.build_classifier`
  cuts its head off, freezes what the regime says and attaches a new one.

Before anything is built the data is checked: fewer than two classes with training
images is a ``ValueError`` naming the data and the classes found, a class with no
image on one side of the split a :class:`~kvision.data.TooFewImagesWarning`; the
split (images per class, train/test) is logged and returned in ``TrainResult.split``.

A run writes into a run folder (default ``saved_models/<name>``) that holds that
run's files only: its manifest (``run.json``: the settings, and ``state`` training ->
saving -> finished, written last), a checkpoint every epoch
(``checkpoints/last.keras``), a backup that lets an interrupted run (Ctrl-C, kill)
resume from its last finished epoch when the same command is started again
(Keras' ``BackupAndRestore`` in ``backup/``, written so that a SIGKILL at any moment
leaves the last whole checkpoint and backup: :class:`_Backup`), the CSV log
(``training_log.csv``) and its plot (``training_curves.png``), and at the end the
model (``<name>.keras``), its class names (``class_names.txt``) and a TensorFlow
Serving export (``<version>/``). A finished run is never written into again: the
next run goes to ``<folder>-2`` (``-3`` …), or with ``overwrite=True`` replaces the
whole folder; an unfinished run of other settings (network, input size, data,
classes, seed…) is left resumable and the new run goes to ``<folder>-2`` too
(:mod:`kvision.runs` has the rules); while a run writes its folder it holds the
folder's lock, and a second run asked to write there refuses. The folder chosen is
logged (logger ``kvision.train``; a folder other than the one asked for is a
warning) and returned in ``TrainResult.out_dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

import keras
import numpy as np

from kvision import distribute, registry, runs
from kvision._files import write_text_atomically

log = logging.getLogger(__name__)

SCRATCH_LEARNING_RATE = 3e-3
TRANSFER_LEARNING_RATE = 1e-3


@dataclasses.dataclass
class TrainResult:
    """What a training run produced and measured."""

    model: keras.Model
    test_accuracy: float
    test_loss: float
    seconds: float
    keras_path: str | None
    export_path: str | None
    history: dict
    class_names: tuple = ()
    out_dir: str | None = None
    initial_epoch: int = 0
    trainable_params: int = 0
    seconds_per_epoch: float = 0.0
    split: dict = dataclasses.field(default_factory=dict)  # class -> (train, test)


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """How the network of a run is made: kind "scratch" or "transfer"."""

    kind: str
    name: str
    input_size: int | None
    channels: int


def task_of_name(model) -> str:
    """The task of what ``kvision train`` is given: a registry name's registered task;
    keras.applications names and ``.keras`` files are classifiers to transfer from."""
    if isinstance(model, str) and model in registry.list_models():
        return registry.get_info(model).task
    return "classification"


def plan_model(model, data, *, backbone_weights=None, regime=None, image_size=None):
    """Decide scratch vs transfer, the input size and channels for ``model``."""
    from kvision import models, transfer

    zoo = set(models.list_models())
    if isinstance(model, str) and model.endswith(".keras"):
        if not os.path.isfile(model):
            raise FileNotFoundError(f"No trained model at {model!r}.")
        from kvision.saving import load_keras

        loaded = load_keras(model)  # refuses Lambda layers and escaping entries
        _, height, _, channels = loaded.input_shape
        name = os.path.splitext(os.path.basename(model))[0]
        return ModelPlan("transfer", name, image_size or height, channels), loaded
    if model in zoo and backbone_weights is None and regime is None:
        info = registry.get_info(model)
        default = max(info.min_size, 32) if data == "digits" else info.default_size
        return ModelPlan("scratch", model, image_size or default, info.input_channels), model
    if model in zoo or model in transfer.keras_backbones():
        default = 32 if data == "digits" else 224
        if model in zoo:
            info = registry.get_info(model)
            default = max(info.min_size, default) if data == "digits" else info.default_size
        return ModelPlan("transfer", model, image_size or default, 3), model
    registry.get_info(model)  # raises "Unknown model …" with the closest names
    raise AssertionError("unreachable")


def _build(plan, backbone, classes, backbone_weights, regime):
    if plan.kind == "scratch":
        return registry.create(plan.name, input_shape=(plan.input_size, plan.input_size,
                                                       plan.channels), classes=classes)
    from kvision import transfer

    weights = backbone_weights
    if not isinstance(backbone, str):
        weights = None  # a trained network brings its own weights
    elif weights is None:
        weights = "imagenet"  # transfer learning's default
    elif str(weights).lower() == "none":
        weights = None  # a random backbone, asked for

    return transfer.build_classifier(
        backbone, classes, weights=weights,
        input_shape=(plan.input_size, plan.input_size, plan.channels), regime=regime)


def _float32_outputs(model):
    """Under mixed precision the softmax must run in float32 (Keras' guide)."""
    if all(getattr(o, "dtype", "float32") == "float32" for o in model.outputs):
        return model
    outputs = keras.layers.Activation("linear", dtype="float32",
                                      name="float32_outputs")(model.output)
    return keras.Model(model.input, outputs, name=model.name)


def _pipelines(bundle, batch_size, augment, seed, data):
    import tensorflow as tf

    from kvision.data import augment as augment_lib

    train = bundle.train.shuffle(min(bundle.num_train, 10_000), seed=seed,
                                 reshuffle_each_iteration=True).batch(batch_size)
    if augment:
        layers = (augment_lib.geometric_augmentation(seed=seed) if data == "digits"
                  else augment_lib.photo_augmentation(seed=seed))
        train = train.map(lambda x, y: (layers(x, training=True), y),
                          num_parallel_calls=tf.data.AUTOTUNE)
    test = bundle.test.batch(batch_size)
    return train.prefetch(tf.data.AUTOTUNE), test.prefetch(tf.data.AUTOTUNE)


class _TrainingEnded(keras.callbacks.Callback):
    """Marks the run "saving" when ``fit`` ends, before BackupAndRestore deletes the
    backup (callbacks run in list order): from then on the run cannot resume."""

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir

    def on_train_end(self, logs=None):
        runs.mark(self.run_dir, "saving")


class _Backup(keras.callbacks.BackupAndRestore):
    """Keras' ``BackupAndRestore`` that a kill cannot tear. Keras writes the weights
    over ``latest.weights.h5`` and then the epoch into a JSON file, so a SIGKILL
    during either leaves a backup that cannot be read (an ``OSError`` or a
    ``JSONDecodeError`` at the next start) or one whose weights are an epoch ahead of
    its count. Here each epoch's weights go to a file of their own, then the
    metadata naming them is replaced in one rename, then older weights files go:
    a reader sees the last complete pair. The backup is kept when ``fit`` ends
    (:func:`kvision.runs.mark` removes it once the run is finished), so a run killed
    while saving resumes too."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir, delete_checkpoint=False)

    def _save_model(self):
        import json

        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{self._current_epoch}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        try:
            self.model.save_weights(path, overwrite=True)
        except BaseException:  # a full disk: no half file stays
            if os.path.exists(path):
                os.remove(path)
            raise
        write_text_atomically(self._training_metadata_path, json.dumps(
            {"epoch": self._current_epoch, "batch": self._last_batch_seen,
             "weights": name}))
        for old in os.listdir(self.backup_dir):
            if old.endswith(".weights.h5") and old != name:
                os.remove(os.path.join(self.backup_dir, old))

    def _load_model(self):
        import json

        if os.path.isfile(self._training_metadata_path):
            with open(self._training_metadata_path) as f:
                weights = json.load(f).get("weights")
            if weights:  # else a backup of Keras' own layout, latest.weights.h5
                self._weights_path = os.path.join(self.backup_dir, weights)
        super()._load_model()


class _Checkpoint(keras.callbacks.Callback):
    """``checkpoints/last.keras`` at the end of every epoch, written beside it under a
    hidden name and renamed over it: a kill leaves the last complete checkpoint
    (Keras' ``ModelCheckpoint`` writes the zip in place)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        directory, name = os.path.split(self.path)
        staged = os.path.join(directory, f".{name}-{os.getpid()}.keras")
        try:
            self.model.save(staged)
            os.replace(staged, self.path)
        finally:
            if os.path.exists(staged):
                os.remove(staged)


def _callbacks(out_dir, extra, chief=True, first=()):
    """The run folder's callbacks around ``extra``; ``first`` run before the CSV log
    and the checkpoint (a held-out figure they should record)."""
    callbacks = [*first, *extra]
    if not out_dir:
        return callbacks
    os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
    # Order matters: the backup of an epoch exists before its CSV row does, so a
    # run killed in between resumes no earlier than its log says.
    return [*([_TrainingEnded(out_dir)] if chief else []),
            _Backup(os.path.join(out_dir, runs.BACKUP)),
            *first,
            _Checkpoint(os.path.join(out_dir, "checkpoints", "last.keras")),
            keras.callbacks.CSVLogger(os.path.join(out_dir, "training_log.csv"),
                                      append=True),
            *extra]


def _check_arguments(epochs, batch_size, steps_per_epoch):
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int)
                                        or steps_per_epoch < 1):
        raise ValueError(f"steps_per_epoch must be an integer >= 1 or None, got "
                         f"{steps_per_epoch!r}.")


def clipping(clipnorm=None, clipvalue=None) -> dict:
    """The optimizer's gradient clipping (``kvision train --clipnorm / --clipvalue``):
    ``{"clipnorm": ...}``, ``{"clipvalue": ...}`` or ``{}``. Each must be a positive
    number; Keras' optimizers take one of the two, not both."""
    given = {}
    for key, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not value > 0 or value == float("inf"):
            what = ("the L2 norm each weight's gradient is clipped to" if key == "clipnorm"
                    else "the bound every gradient value is clipped to")
            raise ValueError(f"{key} must be a positive number ({what}), got {value!r}.")
        given[key] = float(value)
    if len(given) > 1:
        raise ValueError("clipnorm and clipvalue: give one of the two (Keras' "
                         f"optimizers take one clipping), got both: {given}.")
    return given


def train_classifier(model_name="lenet5", data="digits", *, epochs=30, batch_size=32,
                     learning_rate=None, augment=True, image_size=None, out_dir=None,
                     overwrite=False, export=True, seed=0, verbose=1, backbone_weights=None,
                     regime=None, strategy=None, mixed_precision=False, jit_compile=False,
                     steps_per_epoch=None, callbacks=(), clipnorm=None, clipvalue=None):
    """Train a classifier on ``data`` and report its held-out top-1 accuracy.

    Args:
        model_name: a registry name (from scratch), a keras.applications name or a
            ``.keras`` file (transfer learning; see the module docstring).
        data: ``"digits"``, an image folder or ``"tfds:NAME"`` (:func:`kvision.data.load`).
        learning_rate: Adam's initial rate, cosine-decayed to 0 over the run;
            default 3e-3 from scratch, 1e-3 for transfer learning.
        augment: random geometric changes of the training images (Keras
            preprocessing layers in the tf.data pipeline; flips only for photos).
        out_dir: the run folder asked for (module docstring); default
            ``saved_models/<name>``; ``False`` writes nothing (and cannot resume).
            ``TrainResult.out_dir`` is the folder used.
        overwrite: replace the run in ``out_dir`` (finished, or of other settings)
            as a whole instead of writing to ``<out_dir>-2``; an unfinished run of
            the same settings resumes either way.
        backbone_weights, regime: transfer learning (``kvision.transfer``):
            ``backbone_weights`` "imagenet" (the default once transfer learning is
            asked for), "none" (a random backbone) or a weights file.
        strategy: None, ``"mirrored"`` or ``"multiworker"`` (``kvision.distribute``).
        mixed_precision: build and train under the ``mixed_float16`` policy
            (float32 outputs); the export is float32.
        jit_compile: XLA-compile the train step.
        clipnorm, clipvalue: Adam clips each weight's gradient to this L2 norm, or
            each gradient value to ``[-clipvalue, clipvalue]`` (one of the two).
    Returns:
        A :class:`TrainResult`.
    Raises:
        ValueError: bad arguments, or data with fewer than two classes.
    """
    from kvision.data import load as load_data

    _check_arguments(epochs, batch_size, steps_per_epoch)
    if out_dir and os.path.isfile(out_dir):  # before the data and the network
        runs.choose(out_dir, {})  # its error names the file
    clip = clipping(clipnorm, clipvalue)
    # First: a multi-worker strategy must exist before TensorFlow runs any op.
    strategy = distribute.get_strategy(strategy)
    plan, backbone = plan_model(model_name, data, backbone_weights=backbone_weights,
                                regime=regime, image_size=image_size)
    bundle = load_data(data, image_size=plan.input_size, channels=plan.channels, seed=seed)
    split = check_classes(bundle)
    learning_rate = learning_rate or (SCRATCH_LEARNING_RATE if plan.kind == "scratch"
                                      else TRANSFER_LEARNING_RATE)
    keras.utils.set_random_seed(seed)  # the shuffle order depends on the global seed too
    train_ds, test_ds = _pipelines(bundle, batch_size, augment, seed, data)
    steps = epochs * (steps_per_epoch or -(-bundle.num_train // batch_size))
    keras.utils.set_random_seed(seed)
    previous_policy = keras.config.dtype_policy()
    try:
        if mixed_precision:
            keras.config.set_dtype_policy("mixed_float16")
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = _float32_outputs(_build(plan, backbone, len(bundle.class_names),
                                            backbone_weights, regime))
            schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
            model.compile(optimizer=keras.optimizers.Adam(schedule, **clip),
                          loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"], jit_compile=bool(jit_compile))
    finally:
        keras.config.set_dtype_policy(previous_policy)
    distribute.prepare_model(model, strategy, next(iter(train_ds)))
    if out_dir is None:
        out_dir = os.path.join("saved_models", plan.name)
    settings = _run_settings(model_name, plan, bundle, seed, backbone_weights, regime,
                             mixed_precision)
    run_dir = _claim_run_folder(out_dir, settings, overwrite, strategy) if out_dir else None
    timer = _EpochTimer()
    start = time.perf_counter()
    try:
        history = model.fit(train_ds, epochs=epochs, validation_data=test_ds,
                            shuffle=False, steps_per_epoch=steps_per_epoch,
                            verbose=verbose,
                            callbacks=_callbacks(run_dir, [timer, *callbacks],
                                                 chief=distribute.is_chief(strategy)))
        seconds = time.perf_counter() - start
        test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
        keras_path = export_path = None
        if run_dir:
            keras_path, export_path = _save_run(model, plan.name, bundle, run_dir,
                                                export and distribute.is_chief(strategy))
            if distribute.is_chief(strategy):
                runs.mark(run_dir, "finished")  # last: the run is complete on disk
    finally:
        if run_dir:
            runs.release(run_dir)
    return TrainResult(
        model=model, test_accuracy=float(test_accuracy), test_loss=float(test_loss),
        seconds=seconds, keras_path=keras_path, export_path=export_path,
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
        class_names=tuple(bundle.class_names), out_dir=run_dir or None,
        initial_epoch=timer.first_epoch or 0, trainable_params=_trainable(model),
        seconds_per_epoch=timer.mean(), split=split)


def _run_settings(model_name, plan, bundle, seed, backbone_weights, regime,
                  mixed_precision):
    """What a run's backup can only be restored into: a run started again resumes
    only when all of these are the same (:mod:`kvision.runs`)."""
    return {"model": _as_path(model_name), "network": plan.name, "kind": plan.kind,
            "input_size": plan.input_size, "channels": plan.channels,
            "data": bundle.source, "test_split": bundle.test_split,
            "classes": list(bundle.class_names), "seed": seed,
            "backbone_weights": _as_path(backbone_weights), "regime": regime,
            "mixed_precision": bool(mixed_precision)}


def _as_path(value):
    """An existing file as its absolute path (so runs compare wherever they start)."""
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        return os.path.abspath(value)
    return value


def check_classes(bundle):
    """The split of ``bundle`` as ``{class: (train, test)}``, logged; a ``ValueError``
    when fewer than two classes have training images (a one-class softmax learns
    nothing, and Keras only warns)."""
    counts = dict(zip(bundle.class_names, zip(bundle.train_counts, bundle.test_counts)))
    learnable = ([name for name, (train, _) in counts.items() if train]
                 if counts else list(bundle.class_names))
    if len(learnable) < 2:
        empty = [name for name in bundle.class_names if name not in learnable]
        found = (f"{len(learnable)} class with images, {learnable[0]!r}" if learnable
                 else "no class with images")
        raise ValueError(
            f"A classifier needs at least two classes; {bundle.source!r} has {found}"
            + (f" (no training image in {empty})" if empty else "")
            + ". Expected one subfolder of images per class (root/<class>/<image>).")
    log.info("%s", describe_split(bundle, counts))
    return counts


def describe_split(bundle, counts, most=30):
    """The split as lines: totals, then images per class (at most ``most`` rows,
    the smallest classes first when there are more)."""
    lines = [f"data: {bundle.source}: {bundle.num_train} training and {bundle.num_test} "
             f"test images in {bundle.num_classes} classes; test split: "
             f"{bundle.test_split}"]
    if not counts:
        return lines[0] + " (images per class not counted for this source)"
    shown = list(counts.items())
    if len(shown) > most:
        shown = sorted(shown, key=lambda item: sum(item[1]))[:most]
        lines.append(f"the {most} smallest of {len(counts)} classes:")
    width = max(len(str(name)) for name, _ in shown)
    lines += [f"  {name:<{width}}  {train:>6} train  {test:>5} test"
              for name, (train, test) in shown]
    return "\n".join(lines)


def _claim_run_folder(out_dir, settings, overwrite, strategy):
    """The run folder this process writes into (:mod:`kvision.runs` chooses; under
    a multi-worker strategy every worker takes the chief's choice)."""
    if not distribute.is_chief(strategy):
        # Only the chief looks at the disk: a worker reading while the chief
        # replaces the folder could see half of it.
        number = _chief_value(strategy, 0)
        base = os.path.normpath(os.fspath(out_dir))
        return distribute.worker_dir(base if number == 1 else f"{base}-{number}", strategy)
    folder = _locked_choice(out_dir, settings, overwrite)
    runs.start(folder, settings)
    if folder.note:
        log.warning("%s", folder.note)
    what = {"new": "a new run", "resume": "resuming its unfinished run",
            "replace": "the old run replaced"}[folder.action]
    log.info("run folder: %s (%s)", folder.path, what)
    _chief_value(strategy, _suffix_number(out_dir, folder.path))  # after start(): see above
    return folder.path


def _locked_choice(out_dir, settings, overwrite):
    """:func:`kvision.runs.choose`'s folder, locked by this process
    (:func:`kvision.runs.lock`) and chosen again under the lock, so that a run which
    ended or began meanwhile is seen; a folder in use is a ``ValueError``."""
    while True:
        folder = runs.choose(out_dir, settings, overwrite=overwrite)
        runs.lock(folder.path)
        if runs.choose(out_dir, settings, overwrite=overwrite) == folder:
            return folder
        runs.release(folder.path)


def _suffix_number(requested, chosen):
    """1 for the requested folder itself, k for ``<requested>-k``."""
    base = os.path.normpath(os.fspath(requested))
    return 1 if chosen == base else int(chosen[len(base) + 1:])


def _chief_value(strategy, value):
    """``value`` as the chief (replica 0) has it, on every worker of a multi-worker
    strategy (a SUM all-reduce to which the other replicas give 0)."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return value

    def mine():
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.cast(first, tf.int64) * value

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(mine), axis=None)
    return int(total)


def save_run_files(model, name, class_names, run_dir, metrics=("loss", "accuracy")):
    """The end of every run: ``<name>.keras`` (the class names inside too: they travel
    with a copied model), ``class_names.txt`` and the curves of ``metrics`` from the
    CSV log. Returns the ``.keras`` path."""
    from kvision.saving import save_model
    from kvision.visualization import plot_training_curves

    keras_path = save_model(model, os.path.join(run_dir, f"{name}.keras"),
                            class_names=class_names)
    write_text_atomically(os.path.join(run_dir, "class_names.txt"),
                          "".join(f"{n}\n" for n in class_names))
    log_path = os.path.join(run_dir, "training_log.csv")
    if os.path.isfile(log_path):
        plot_training_curves(log_path, os.path.join(run_dir, "training_curves.png"),
                             metrics=metrics)
    return keras_path


def _save_run(model, name, bundle, run_dir, export):
    keras_path = save_run_files(model, name, bundle.class_names, run_dir)
    export_path = exported_version(run_dir) if export else None
    if export and export_path is None:
        from kvision.export import saved_model

        check = next(iter(bundle.test.batch(8)))[0].numpy()
        export_path = os.fspath(saved_model(model, run_dir, class_names=bundle.class_names,
                                            check_inputs=check))
    return keras_path, export_path


def exported_version(run_dir):
    """The SavedModel version a run killed while saving already exported (its folder
    holds one run, so that version is of this model), or None: a run that resumes
    its saving does not export a second version."""
    from kvision.export.savedmodel import next_version

    last = os.path.join(run_dir, str(next_version(run_dir) - 1))
    return last if os.path.isfile(os.path.join(last, "saved_model.pb")) else None


def _trainable(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


class _EpochTimer(keras.callbacks.Callback):
    """Seconds per epoch, and the first epoch this run trained (> 0 when resumed)."""

    def __init__(self):
        super().__init__()
        self.times, self.first_epoch, self._start = [], None, None

    def on_train_begin(self, logs=None):
        # A restored backup set the first epoch (all of them, when a run killed
        # while saving resumes: then no epoch begins).
        self.first_epoch = getattr(self.model, "_initial_epoch", None) or None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def mean(self) -> float:
        return float(np.mean(self.times)) if self.times else 0.0


def top1_accuracy(model, x, y, batch_size=256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(y)))

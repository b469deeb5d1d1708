"""Training under ``tf.distribute``: ``kvision train --strategy mirrored | multiworker``.

- ``"mirrored"``: :class:`tf.distribute.MirroredStrategy`, every GPU of one machine
  (the CPU when there is none).
- ``"multiworker"``: :class:`tf.distribute.MultiWorkerMirroredStrategy` across the
  machines that the ``TF_CONFIG`` environment variable lists; every worker runs the
  same command, gradients are all-reduced, and all workers end with the same weights.

Keras 3's ``fit`` does not run under MultiWorkerMirroredStrategy as it ships
(keras-team/keras#20585): it reduces a whole input batch across workers to learn
its shapes, and reduces scalar logs along an axis they do not have.
:func:`prepare_model` builds the model from a local batch instead and gives it
train/test functions that run Keras' own ``train_step``/``test_step`` per replica
with ``strategy.run`` and report the local replica's logs; the gradients are still
all-reduced by the Keras optimizer, so the update is the synchronous one.
"""

from __future__ import annotations

import json
import os

STRATEGIES = ("mirrored", "multiworker")


def get_strategy(name):
    """The ``tf.distribute`` strategy called ``name``, or None for no strategy."""
    if name in (None, "", "none", "default"):
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES} or None.")


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable "
                         "(a JSON with 'cluster': {'worker': [host:port, ...]} and 'task': "
                         "{'type': 'worker', 'index': i}) on every worker.")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        index = int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG is not a valid cluster spec ({error}): {raw!r}") from None
    if not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG task index {index} is outside the {len(workers)} "
                         f"workers listed.")


def task_index(strategy) -> int:
    """This worker's index (0, the chief, when not multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 0
    return int(resolver.task_id or 0)


def is_chief(strategy) -> bool:
    """Whether this process writes the run's results (worker 0)."""
    return strategy is None or task_index(strategy) == 0


def worker_dir(out_dir, strategy):
    """Where this worker writes: ``out_dir`` for the chief, ``out_dir/worker-<i>`` else.

    Every worker must save (saving may take part in collectives), but only the
    chief's files are the run's; the others write beside it and are checked equal.
    """
    index = 0 if strategy is None else task_index(strategy)
    return out_dir if index == 0 else os.path.join(out_dir, f"worker-{index}")


def _is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def prepare_model(model, strategy, example_batch):
    """Make a compiled ``model`` trainable with ``fit`` under ``strategy``.

    Call inside nothing; ``example_batch`` is one local ``(x, y)`` batch. A no-op for
    no strategy and for MirroredStrategy; for MultiWorkerMirroredStrategy it applies
    the workaround of the module docstring.
    """
    if strategy is None or not _is_multi_worker(strategy):
        return model
    import tensorflow as tf

    with strategy.scope():
        model._symbolic_build(data_batch=example_batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def per_replica(step):
        @tf.function
        def function(iterator):
            outputs = strategy.run(step, args=(next(iterator),))
            return tf.nest.map_structure(local, outputs)

        return function

    train_function = per_replica(model.train_step)
    test_function = per_replica(model.test_step)
    model.train_function = train_function
    model.test_function = test_function
    model.make_train_function = lambda force=False: train_function
    model.make_test_function = lambda force=False: test_function
    return model

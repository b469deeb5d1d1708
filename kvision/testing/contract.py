"""Checks every registered network must pass; tests call them, one per model.

- :func:`assert_param_count`: the count at the default size equals the metadata.
- :func:`assert_stage_outputs`: each named stage output exists at its stride and is
  the layer the graph analysis (:func:`kvision.features.stage_outputs`) finds.
- :func:`assert_round_trip`: ``.keras`` save + ``safe_mode=True`` load, same outputs.
- :func:`assert_no_lambda`: no ``keras.layers.Lambda`` anywhere, nested models included.
- :func:`assert_trains`: one training step gives a finite loss and moves a weight.
- :func:`assert_task_contract`: all of the above and the task's inference model, for
  any registered network (its task's row in :mod:`kvision.testing.tasks`).
- :func:`assert_keras_parity`: a keras.applications model's weights file loads into
  the kvision builder and both give the same outputs.
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np

from kvision import features, registry


def built_at_once(*, values=True):
    """A scope in which models are built with their variables created together at
    its end (``keras.StatelessScope``), the same random initial values, built 1.5-2x
    faster here (ResNet-152 at 224: 1.85 s against 1.0 s). ``values=False`` skips
    the initial values too (0.4 s): a model fit to count and inspect, not to call;
    its variables wait in Keras' list of variables to initialize, which
    ``keras.backend.clear_session()`` (after every test: tests/conftest.py) empties.

    Only for builds without weights: an assignment inside the scope (a weights file,
    ``set_weights``) is recorded by the scope and then lost.
    """
    return keras.StatelessScope(initialize_variables=values)


def counted_params(model, convention: str) -> int:
    """Parameters by ``convention``: "keras" (count_params) or "trainable"."""
    if convention == "keras":
        return int(model.count_params())
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def assert_param_count(name: str, **kwargs):
    """Build ``name`` at its default size; its count must equal the registry's.

    Built without initial values (:func:`built_at_once`): the count needs shapes
    only, and EfficientNet-B7 at 600x600 builds in 0.7 s instead of 3-4 s. The
    returned model answers shape and structure questions; it cannot be called.
    """
    info = registry.get_info(name)
    shape = (info.default_size, info.default_size, info.input_channels)
    with built_at_once(values=False):
        model = registry.create(name, input_shape=shape, **kwargs)
    count = counted_params(model, info.params_convention)
    assert count == info.num_params, (
        f"{name}: {count:,} parameters ({info.params_convention}), the reference "
        f"({info.params_source}) says {info.num_params:,}"
    )
    return model


def assert_stage_outputs(name: str, **kwargs):
    """Every stage output named in the metadata exists, has its stride, and is the
    layer :func:`kvision.features.stage_outputs` finds (one convention: a zoo name,
    its keras.applications twin and a keras.Model of it tap the same layers).

    Returns ``(model, outputs)``: the features model (``include_top=False``, any
    input size, ``kwargs``) and its outputs on two random images of the minimum size.
    The stride is measured, not guessed from one size: the stages of a network built
    for any input size are taken at two sizes 64 pixels apart, and a stage at stride
    ``s`` must grow by exactly ``64 / s`` (true for "same" and "valid" padding
    alike). Those sizes are the shapes Keras infers (``compute_output_spec``):
    running a deep network on them cost seconds (EfficientNet-B7 1.7 s); the one real
    run, at the minimum size, must give the shapes inferred there.
    """
    info = registry.get_info(name)
    channels = info.input_channels
    with built_at_once():
        model = registry.create(name, include_top=False,
                                input_shape=(None, None, channels), **kwargs)
    found = features.stage_outputs(model)
    assert found == info.stage_outputs, (
        f"{name}: the registry's stage outputs {info.stage_outputs} differ from the "
        f"graph's last cut points {found}")
    taps = keras.Model(model.input, [model.output] + [
        model.get_layer(n).output for n in info.stage_outputs.values()])
    x = np.random.default_rng(0).uniform(0, 255, (2, info.min_size, info.min_size,
                                                  channels)).astype("float32")
    outputs, *stages = keras.tree.flatten(taps(x))
    assert [tuple(s.shape) for s in stages] == _inferred(taps, x.shape)[1:], (
        f"{name}: the stage shapes Keras infers differ from a real run")
    base = -(-max(info.min_size, 64) // 32) * 32
    small, large = ([s[1] for s in _inferred(taps, (1, size, size, channels))[1:]]
                    for size in (base, base + 64))
    for (stride, layer), before, after in zip(info.stage_outputs.items(), small, large):
        assert after - before == 64 // stride, (
            f"{name}: stage {layer!r} grows by {after - before} for 64 more input "
            f"pixels, so its stride is not {stride}"
        )
    return model, np.asarray(outputs)


def _inferred(model, input_shape):
    """The output shapes Keras infers for an input of ``input_shape``, computing
    nothing."""
    spec = model.compute_output_spec(keras.KerasTensor(tuple(input_shape)))
    return [tuple(s.shape) for s in keras.tree.flatten(spec)]


def randomize_weights(model, seed=0):
    """Random weights everywhere, BatchNorm statistics included, kept tame.

    Kernels keep their (random) initialization; biases, BatchNorm scales, offsets,
    means and variances get random values so that a wrong mapping of any variable
    changes the outputs.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        path = variable.path
        shape = tuple(variable.shape)
        if "variance" in path or "gamma" in path:
            value = rng.uniform(0.5, 1.5, shape)
        elif any(key in path for key in ("mean", "beta", "bias")):
            value = rng.uniform(-0.1, 0.1, shape)
        else:
            continue
        variable.assign(value.astype(variable.dtype))
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()  # its scale is derived from mean and variance
    return model


def _outputs(model, x):
    """Every output of ``model`` on ``x`` as numpy, flattened (dicts by key)."""
    return _flat(model(x, training=False))


def _flat(outputs):
    return [np.asarray(o) for o in keras.tree.flatten(outputs)]


def assert_round_trip(model, x, atol=None, outputs=None):
    """Save as ``.keras``, load with ``safe_mode=True``: the same outputs.

    Integer outputs (classes, counts, instance maps) must be equal; float ones within
    ``atol``, by default :func:`~kvision.testing.float32_atol` of each output (one
    float32 rounding relative to its size: the loaded graph is the same computation).
    ``outputs``: ``model``'s outputs on ``x`` where the caller has them already.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    assert_same_outputs(model, loaded, x, atol=atol, what="reloaded model",
                        outputs=outputs)
    return loaded


def assert_same_outputs(expected, got, x, *, atol=None, what="model", outputs=None):
    """``got`` answers ``x`` as ``expected`` does (or as ``expected`` answered:
    ``outputs``): integer and boolean outputs equal, float ones within ``atol`` (default
    :func:`~kvision.testing.float32_atol` of each)."""
    from kvision.testing.numerics import float32_atol

    before = _outputs(expected, x) if outputs is None else _flat(outputs)
    after = _outputs(got, x)
    assert len(before) == len(after), f"{expected.name}: the {what} has other outputs"
    for i, (a, b) in enumerate(zip(before, after)):
        assert a.shape == b.shape, f"{expected.name}: output {i} {b.shape} != {a.shape}"
        if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
            np.testing.assert_array_equal(b, a, err_msg=f"{expected.name}: {what}")
            continue
        tolerance = float32_atol(a) if atol is None else atol
        assert np.max(np.abs(a - b), initial=0.0) <= tolerance, (
            f"{expected.name}: the {what}'s output {i} differs by "
            f"{np.max(np.abs(a - b)):.3g} (tolerance {tolerance:.3g})")


def assert_no_lambda(model):
    """No ``keras.layers.Lambda`` in ``model`` or any model nested in it: a Lambda's
    Python code is not saved, so its ``.keras`` file would not load with
    ``safe_mode=True``."""
    found = [layer.name for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.Lambda)]
    assert not found, f"{model.name}: Lambda layers {found}"


def assert_trains(model, x, y, loss):
    """One training step with ``loss`` gives a finite loss and changes at least one
    trainable weight. Returns the step's loss figures.

    The step runs eagerly: tracing the training graph costs 7-70 s per network on
    two cores (ResNet-50 17 s, DenseNet-121 66 s at 32x32, against 4-5 s eagerly),
    and the task tests already fit each family with ``model.fit`` in graph mode.
    Plain SGD, because Adam's slot variables made the step 3-4x slower
    (Inception-ResNet-v2: 4.4 s against 1.7 s) and any optimizer moves a weight.
    """
    before = [np.array(w) for w in model.trainable_weights]
    assert before, f"{model.name}: no trainable weights"
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss=loss, run_eagerly=True)
    figures = model.train_on_batch(x, y, return_dict=True)
    assert all(np.isfinite(v) for v in figures.values()), f"{model.name}: {figures}"
    moved = [not np.array_equal(b, np.array(w))
             for b, w in zip(before, model.trainable_weights)]
    assert any(moved), f"{model.name}: one training step changed no trainable weight"
    return figures


def assert_task_contract(name, *, round_trip=True):
    """What every registered network keeps, at a small size (its task's row in
    :data:`kvision.testing.tasks.TASKS`): it is a model of its registered task
    (:func:`kvision.tasks.task_of`), before and after the round trip; no Lambda; the
    task's inference model answers in its documented structure, without Lambda
    either; the ``.keras`` round trip gives the same outputs, and the same inference
    model (what the config holds beyond the outputs, such as YOLO's anchors, must
    survive too); one training step with the task's losses. ``round_trip=False``
    where a sibling with the same code covers it. Returns the model."""
    from kvision.tasks import task_of
    from kvision.testing import tasks

    task = registry.get_info(name).task
    model, case = tasks.build_small(name)
    assert task_of(model) == task, f"{name}: built as a {task_of(model)} model"
    assert_no_lambda(model)
    x, y = case.batch(model, name)
    inference = case.inference(model, name)
    assert_no_lambda(inference)
    # A classifier or a semantic segmenter is its own inference model: it answers
    # the training batch once, for the structure check and the round trip alike.
    itself = inference is model
    images = x if itself else tasks.inference_images(inference)
    answers = inference(images, training=False)
    case.check(inference, images, answers)
    if round_trip:
        loaded = assert_round_trip(model, x, outputs=answers if itself else None)
        assert task_of(loaded) == task, f"{name}: its task did not travel with the file"
        if not itself:
            assert_same_outputs(inference, case.inference(loaded, name), images,
                                what="inference model of the reloaded network",
                                outputs=answers)
    assert_trains(model, x, y, case.loss(model, name))
    return model


def assert_keras_parity(name: str, keras_builder, input_shape, *, classes=10,
                        atol=1e-5, seed=0, kvision_kwargs=None, keras_kwargs=None,
                        include_tops=(True, False)):
    """A keras.applications weights file loads into kvision's ``name``: same outputs.

    Both are built with ``weights=None`` at ``input_shape``; the keras model gets
    random weights (BatchNorm statistics too), is saved to ``.weights.h5``, the file
    is loaded with ``weights=path``, and logits and pooled features must agree.
    ``include_tops=(True,)`` checks the full network only: the deep variants of a
    family, whose top-less file goes through the same loader as the shallow one's.
    Returns the largest absolute difference seen.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (2, *input_shape)).astype("float32")
    worst = 0.0
    for include_top in include_tops:
        common = dict(include_top=include_top, input_shape=input_shape, weights=None)
        top = dict(classes=classes, classifier_activation=None) if include_top \
            else dict(pooling="avg")
        reference = keras_builder(**common, **top, **(keras_kwargs or {}))
        randomize_weights(reference, seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "reference.weights.h5")
            reference.save_weights(path)
            common["weights"] = path
            model = registry.create(name, **common, **top, **(kvision_kwargs or {}))
        expected, got = _outputs(reference, x)[0], _outputs(model, x)[0]
        assert expected.shape == got.shape, f"{name}: shape {got.shape} != {expected.shape}"
        diff = float(np.max(np.abs(expected - got)))
        scale = max(1.0, float(np.max(np.abs(expected))))
        assert diff <= atol * scale, (
            f"{name} (include_top={include_top}): max abs diff {diff:.3g} vs "
            f"keras.applications (scale {scale:.3g})"
        )
        worst = max(worst, diff / scale)
    return worst


def tiny_encoder(size=64):
    """A small functional backbone for task tests: five stride-2 conv-BN-ReLU steps
    (stage outputs at strides 2..32), ``(size, size, 3)`` in."""
    inputs = keras.Input((size, size, 3))
    x = inputs
    for b, width in enumerate((8, 8, 16, 16, 16), start=1):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name=f"s{b}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"s{b}_bn")(x)
        x = keras.layers.ReLU(name=f"s{b}_relu")(x)
    return keras.Model(inputs, x, name="encoder")

"""Checks every registered network must pass; tests call them, one per model.

- :func:`assert_param_count`: the count at the default size equals the metadata.
- :func:`assert_stage_outputs`: each named stage output exists at its stride and is
  the layer the graph analysis (:func:`kvision.features.stage_outputs`) finds.
- :func:`assert_round_trip`: ``.keras`` save + ``safe_mode=True`` load, same outputs.
- :func:`assert_keras_parity`: a keras.applications model's weights file loads into
  the kvision builder and both give the same outputs.
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np

from kvision import features, registry


def counted_params(model, convention: str) -> int:
    """Parameters by ``convention``: "keras" (count_params) or "trainable"."""
    if convention == "keras":
        return int(model.count_params())
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def assert_param_count(name: str, **kwargs):
    """Build ``name`` at its default size; its count must equal the registry's."""
    info = registry.get_info(name)
    shape = (info.default_size, info.default_size, info.input_channels)
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

    Returns the features model (``include_top=False``, any input size, ``kwargs``).
    The stride is measured, not guessed from one size: the features of a network
    built for any input size are run at two sizes 64 pixels apart, and a stage at
    stride ``s`` must grow by exactly ``64 / s`` (true for "same" and "valid"
    padding alike).
    """
    info = registry.get_info(name)
    model = registry.create(name, include_top=False,
                            input_shape=(None, None, info.input_channels), **kwargs)
    found = features.stage_outputs(model)
    assert found == info.stage_outputs, (
        f"{name}: the registry's stage outputs {info.stage_outputs} differ from the "
        f"graph's last cut points {found}")
    if not info.stage_outputs:
        return model
    taps = keras.Model(model.input,
                       [model.get_layer(n).output for n in info.stage_outputs.values()])
    base = -(-max(info.min_size, 64) // 32) * 32
    sizes = []
    for size in (base, base + 64):
        x = np.zeros((1, size, size, info.input_channels), "float32")
        outs = taps(x)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        sizes.append([int(o.shape[1]) for o in outs])
    for (stride, layer), small, large in zip(info.stage_outputs.items(), *sizes):
        assert large - small == 64 // stride, (
            f"{name}: stage {layer!r} grows by {large - small} for 64 more input "
            f"pixels, so its stride is not {stride}"
        )
    return model


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
    out = model(x, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]


def assert_round_trip(model, x, atol=1e-5):
    """Save as ``.keras``, load with ``safe_mode=True``: the same outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(_outputs(model, x), _outputs(loaded, x)):
        assert np.max(np.abs(a - b)) <= atol, f"{model.name}: reloaded model differs"
    return loaded


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

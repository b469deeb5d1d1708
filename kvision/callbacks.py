"""Training diagnostics: per-layer gradient norms recorded during ``fit``, and their plot.

``GradientNorms(batch, every=50)`` computes, every ``every`` training batches, the
gradient of the model's compiled loss on one held batch with a ``GradientTape`` and
keeps each layer's L2 norm (all its trainable weights together). A held batch, not the
batch being trained on, so that the norms at different steps are comparable (the same
examples every time) and ``fit``'s own train step stays as Keras compiled it: the cost
is one forward and backward pass every ``every`` batches.

    norms = GradientNorms((x[:64], y[:64]), every=20)
    model.fit(x, y, epochs=5, callbacks=[norms])
    plot_gradient_norms(norms, "gradients.png")      # per layer, over training

Layers are named as :func:`kvision.features.layer_steps` names them (nested models
inlined: a transfer model's backbone layers are listed one by one) and ordered from the
input to the output, so that the plot reads as depth.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class GradientNorms(keras.callbacks.Callback):
    """Record per-layer gradient norms of the loss on ``batch`` every ``every`` batches.

    Args:
        batch: ``(x, y)`` or ``(x, y, sample_weight)``: the held batch (arrays or
            tensors; keep it small: it is run forward and backward each time).
        every: record after every ``every``-th training batch (the first record is
            taken before the first batch, at step 0).
        training: run the forward pass in training mode (BatchNorm on batch
            statistics, dropout on), as the train step does. The moving statistics a
            training-mode BatchNorm updates are put back afterwards: recording changes
            nothing in the model.

    After ``fit``: ``steps`` (the training steps recorded, ``[0, every, ...]``),
    ``norms`` (``{layer: [norm at each step]}``, input to output), ``history`` (both,
    as one dict for :func:`plot_gradient_norms`).
    """

    def __init__(self, batch, every=50, training=True):
        super().__init__()
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError(f"batch must be (x, y) or (x, y, sample_weight), got "
                             f"{type(batch).__name__}"
                             f"{f' of length {len(batch)}' if hasattr(batch, '__len__') else ''}.")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}.")
        self.batch = tuple(batch)
        self.every = every
        self.training = bool(training)
        self.steps, self.norms = [], {}
        self._step = 0
        self._groups = None

    @property
    def history(self) -> dict:
        """``{"steps": [...], "norms": {layer: [...]}}``."""
        return {"steps": list(self.steps), "norms": {k: list(v) for k, v in self.norms.items()}}

    def on_train_begin(self, logs=None):
        self._groups = layer_groups(self.model)
        self.record()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every == 0:
            self.record()

    def record(self):
        """Compute the norms now and append them (at the current step)."""
        for name, norm in gradient_norms(self.model, self.batch, self.training,
                                         self._groups).items():
            self.norms.setdefault(name, []).append(norm)
        self.steps.append(self._step)


def layer_groups(model) -> list:
    """``[(layer name, [indices into model.trainable_variables])]`` of every layer
    with trainable weights, input to output (nested models inlined)."""
    from kvision.features import layer_steps

    try:
        layers = layer_steps(model)
    except ValueError:  # a subclassed model: its layers as Keras lists them
        layers = [(layer.name, layer) for layer in model._flatten_layers(include_self=False)
                  if not layer._layers]
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    groups, seen = [], set()
    for name, layer in layers:
        indices = [position[id(v)] for v in layer.trainable_weights
                   if id(v) in position and id(v) not in seen]
        seen.update(id(model.trainable_variables[i]) for i in indices)
        if indices:
            groups.append((name, indices))
    return groups


def gradient_norms(model, batch, training=True, groups=None) -> dict:
    """``{layer: L2 norm of d loss / d (its trainable weights)}`` of the compiled
    ``model`` on ``batch`` ``(x, y[, sample_weight])``, in float64 (summed from the
    float32 gradients)."""
    if not getattr(model, "compiled", False):
        raise ValueError(f"Model {model.name!r} is not compiled: gradient norms are of "
                         f"its compiled loss; call model.compile(loss=...) first.")
    x, y, *weight = batch
    groups = layer_groups(model) if groups is None else groups
    variables = model.trainable_variables
    kept = [v.numpy() for v in model.non_trainable_variables] if training else None
    try:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=training)
            loss = model.compute_loss(x, y, y_pred, weight[0] if weight else None)
        grads = tape.gradient(loss, variables)
    finally:
        if kept is not None:  # BatchNorm's moving statistics, as they were
            for v, value in zip(model.non_trainable_variables, kept):
                v.assign(value)
    squares = [0.0 if g is None else float(np.sum(np.square(np.asarray(
        tf.convert_to_tensor(g), "float64")))) for g in grads]
    return {name: float(np.sqrt(sum(squares[i] for i in indices)))
            for name, indices in groups}


def plot_gradient_norms(history, path, title=None):
    """The gradient norms of a :class:`GradientNorms` (or its ``history`` dict) to
    ``path`` (PNG): left, each layer's norm against its depth at the first, middle and
    last recorded step; right, every layer's norm over training, coloured by depth.
    Log scale: vanishing gradients show as a slope toward the input; norms that are
    exactly 0 (a layer whose units all died) are left out and counted in a title."""
    from kvision.visualization.plots import _pyplot, _save

    history = getattr(history, "history", history)
    steps, norms = list(history.get("steps", [])), dict(history.get("norms", {}))
    if not steps or not norms:
        raise ValueError("No gradient norms recorded: expected a GradientNorms callback "
                         "that ran in fit (or its history dict with 'steps' and 'norms').")
    names = list(norms)
    values = np.array([norms[n] for n in names], "float64")
    zeros = values == 0  # dead layers (all ReLUs off): no point on a log scale
    values[zeros] = np.nan
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    shown = sorted({0, len(steps) // 2, len(steps) - 1})
    for column in shown:
        left.plot(range(1, len(names) + 1), values[:, column], marker="o", markersize=3,
                  label=f"step {steps[column]}")
    left.set_yscale("log")
    left.set_xlabel("layer (1 = nearest the input)")
    left.set_ylabel("gradient L2 norm")
    left.legend()
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(names)))
    for row, colour in zip(values, colours):
        right.plot(steps, row, color=colour, linewidth=1)
    right.set_yscale("log")
    right.set_xlabel("training step")
    right.set_title("per layer (dark: input side, light: output side)", fontsize=9)
    if zeros.any():
        left.set_title(f"exactly 0, not drawn: {int(zeros.sum())} of {zeros.size} "
                       f"(layer, step) norms", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)

"""Proving an export: it must answer as the Keras model does before it is kept.

:func:`compare` measures an export against the Keras model on the same inputs,
:func:`check` turns the figures into a pass or a ``ValueError`` that reports them,
and :func:`as_float32` gives the float32 twin of a mixed-precision model (exports
are float32 unless asked otherwise).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass
class ExportResult:
    """What one export wrote and measured.

    Attributes:
        path: the file or version directory written.
        format: ``"savedmodel"``, ``"tflite"``, ``"tflite-float16"``,
            ``"tflite-dynamic"`` or ``"tflite-int8"``.
        size_mb: size on disk in MB (a directory: all its files).
        parity: the figures of :func:`compare` on the check inputs.
        latency_ms: mean time of one batch-1 call, where measured.
    """

    path: str
    format: str
    size_mb: float
    parity: dict = dataclasses.field(default_factory=dict)
    latency_ms: float | None = None

    def __fspath__(self):
        return self.path

    def __str__(self):
        return self.path


def size_mb(path) -> float:
    """Size of a file, or of all files under a directory, in MB (10^6 bytes)."""
    if os.path.isfile(path):
        return os.path.getsize(path) / 1e6
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6


def compare(reference, candidate, labels=None) -> dict:
    """Figures of ``candidate`` outputs against ``reference`` outputs.

    Args:
        reference: Keras outputs, ``(N, ...)``; for classifiers ``(N, classes)``.
        candidate: the export's outputs for the same inputs, same shape.
        labels: optional true labels ``(N,)``: adds both accuracies.
    Returns:
        ``{"max_abs_diff", "top1_agreement"}`` (agreement of the argmax over the last
        axis, for 2-D outputs) and, with labels, ``"accuracy_reference"``,
        ``"accuracy_candidate"`` and ``"accuracy_drop"`` (reference minus
        candidate, in points of accuracy, i.e. percent).
    """
    reference = np.asarray(reference, dtype="float64")
    candidate = np.asarray(candidate, dtype="float64")
    if reference.shape != candidate.shape:
        raise ValueError(f"The export's outputs have shape {candidate.shape}, the Keras "
                         f"model's {reference.shape}: they should be the same.")
    figures = {"max_abs_diff": float(np.max(np.abs(reference - candidate), initial=0.0))}
    if reference.ndim == 2:
        ref_top = reference.argmax(-1)
        cand_top = candidate.argmax(-1)
        figures["top1_agreement"] = float(np.mean(ref_top == cand_top))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            figures["accuracy_reference"] = float(np.mean(ref_top == labels))
            figures["accuracy_candidate"] = float(np.mean(cand_top == labels))
            figures["accuracy_drop"] = 100.0 * (figures["accuracy_reference"]
                                                - figures["accuracy_candidate"])
    return figures


def check(figures, *, what="The export", max_abs_diff=None, min_top1_agreement=None,
          max_accuracy_drop=None):
    """Raise ``ValueError`` naming every figure outside its threshold.

    A threshold of None is not checked (``max_accuracy_drop`` also needs labels).
    """
    failures = []
    if max_abs_diff is not None and figures["max_abs_diff"] > max_abs_diff:
        failures.append(f"max abs diff {figures['max_abs_diff']:.3g} > {max_abs_diff:g}")
    agreement = figures.get("top1_agreement")
    if min_top1_agreement is not None and agreement is not None \
            and agreement < min_top1_agreement:
        failures.append(f"top-1 agreement {agreement:.2%} < {min_top1_agreement:.2%}")
    drop = figures.get("accuracy_drop")
    if max_accuracy_drop is not None and drop is not None and drop > max_accuracy_drop:
        failures.append(f"accuracy {figures['accuracy_candidate']:.2%} is {drop:.2f} points "
                        f"below the Keras model's {figures['accuracy_reference']:.2%} "
                        f"(allowed {max_accuracy_drop:g})")
    if failures:
        raise ValueError(f"{what} does not answer as the Keras model does: "
                         f"{'; '.join(failures)}. Nothing was written.")
    return figures


def _float32_config(config):
    """The config with every mixed dtype policy replaced by float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            name = config["config"].get("name", "")
            if str(name).startswith("mixed_"):
                return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    if isinstance(config, str) and config.startswith("mixed_"):
        return "float32"
    return config


def is_mixed(model) -> bool:
    """Whether any layer of ``model`` computes in a reduced-precision policy."""
    return any(getattr(layer, "compute_dtype", "float32") in ("float16", "bfloat16")
               for layer in model._flatten_layers(include_self=False))


def as_float32(model):
    """``model`` itself if it is float32 everywhere, else a float32 twin.

    A model trained under ``mixed_float16`` keeps float32 variables; its twin is the
    same architecture with float32 policies everywhere and the same weights, so an
    export of it is an ordinary float32 graph.
    """
    import keras

    if not is_mixed(model):
        return model
    config = _float32_config(model.get_config())
    twin = model.__class__.from_config(config) if not isinstance(model, keras.Sequential) \
        else keras.Sequential.from_config(config)
    twin.set_weights([np.asarray(w, dtype="float32") if np.asarray(w).dtype.kind == "f"
                      else np.asarray(w) for w in model.get_weights()])
    return twin

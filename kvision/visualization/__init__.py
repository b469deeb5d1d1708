"""Pictures people look at, written as PNG files (matplotlib, no display needed)."""

from kvision.visualization.plots import plot_confusion_matrix, plot_training_curves

# Attribution maps, layers by path, DeepDream and atlases load Keras: imported
# when first asked for.
_LAZY = {"kvision.visualization.attribution": (
             "deconvnet", "deletion_insertion", "gradcam", "gradcam_plus_plus",
             "guided_backprop", "occlusion", "randomization_check", "saliency"),
         "kvision.visualization.layers": (
             "activations", "activations_grid", "filters_grid", "layer_output"),
         "kvision.visualization.dream": ("class_model", "deep_dream", "dream_loss"),
         "kvision.visualization.atlas": ("activation_atlas",)}

__all__ = ["plot_confusion_matrix", "plot_training_curves",
           *(name for names in _LAZY.values() for name in names)]


def __getattr__(name):
    import importlib

    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'kvision.visualization' has no attribute {name!r}")

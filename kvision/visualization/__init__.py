"""Pictures people look at, written as PNG files (matplotlib, no display needed)."""

from kvision.visualization.plots import plot_confusion_matrix, plot_training_curves

__all__ = ["plot_confusion_matrix", "plot_training_curves"]

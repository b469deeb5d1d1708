"""Datasets: the embedded handwritten digits (more sources arrive with later tasks)."""

from kvision.data.digits import load_digits

__all__ = ["load_digits"]

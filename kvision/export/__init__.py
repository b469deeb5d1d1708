"""Exports for servers and phones (TensorFlow Serving SavedModel first)."""

from kvision.export.savedmodel import next_version, saved_model

__all__ = ["next_version", "saved_model"]

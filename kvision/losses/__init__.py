"""Losses, one file per task: ``detection``, ``segmentation``."""

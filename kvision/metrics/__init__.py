"""Evaluation metrics, one file per task: ``detection``, ``segmentation``, ``pose``."""

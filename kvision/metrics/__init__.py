"""Evaluation metrics, one file per task: ``detection``, ``segmentation``, ``pose``,
``embedding`` (verification, identification, open set)."""

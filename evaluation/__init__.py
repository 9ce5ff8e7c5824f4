"""Evaluation library (no Ray): metrics, alignment, evaluation-set layouts and reports."""

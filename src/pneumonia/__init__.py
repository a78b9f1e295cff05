"""Pneumonia detection on pediatric chest X-rays: a reproducible DVC + MLflow + Optuna pipeline."""

__version__ = "0.1.0"

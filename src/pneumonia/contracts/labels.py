"""The two classes, and the one rule that turns a probability into a call."""

from __future__ import annotations

import numpy as np
import pandas as pd

CLASSES = ("NORMAL", "PNEUMONIA")
NEGATIVE_CLASS, POSITIVE_CLASS = CLASSES


def is_positive(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """Called PNEUMONIA when the probability is >= the threshold: scikit-learn's convention, so a
    threshold taken from `roc_curve` reproduces its sensitivity exactly."""
    return np.asarray(scores) >= threshold


def label_for(probability: float, threshold: float) -> str:
    return POSITIVE_CLASS if is_positive(probability, threshold) else NEGATIVE_CLASS


def class_names(calls: np.ndarray) -> np.ndarray:
    """0/1 (or False/True) -> NORMAL/PNEUMONIA."""
    return np.array(CLASSES)[np.asarray(calls).astype(int)]


def binary_labels(names: pd.Series | np.ndarray) -> np.ndarray:
    """NORMAL/PNEUMONIA -> 0/1 uint8 (1 = pneumonia)."""
    return (np.asarray(names) == POSITIVE_CLASS).astype(np.uint8)

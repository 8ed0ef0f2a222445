"""The team's own metric, referenced by name from gate.yaml: of the malignant tumours, the share the model calls
malignant (a missed malignant diagnosis is the costly error here)."""

from __future__ import annotations

import numpy as np


def malignant_recall(y_true: np.ndarray, y_pred: np.ndarray, *, probabilities: np.ndarray, labels: list[str]) -> float:
    malignant = y_true == "malignant"
    return float((y_pred[malignant] == "malignant").mean())

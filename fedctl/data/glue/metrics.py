"""GLUE's official metric per task: CoLA Matthews correlation, STS-B Pearson/Spearman, MRPC/QQP F1 and
accuracy, the rest accuracy (scikit-learn and scipy do the arithmetic)."""

from __future__ import annotations

import math

import numpy as np

from fedctl.data.glue.tasks import GlueSpec


def predictions(spec: GlueSpec, logits: np.ndarray) -> np.ndarray:
    """Class ids (argmax) for classification, the scalar score for regression."""
    logits = np.asarray(logits)
    return logits.reshape(-1) if spec.is_regression else logits.argmax(-1)


def glue_metrics(spec: GlueSpec, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics, keyed by name (accuracy, f1, matthews, pearson, spearman)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    preds, labels = np.asarray(preds), np.asarray(labels)
    out: dict[str, float] = {}
    for name in spec.metrics:
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, preds))
        elif name == "f1":
            out[name] = float(f1_score(labels, preds, pos_label=1, zero_division=0.0))
        elif name == "matthews":
            out[name] = float(matthews_corrcoef(labels, preds))
        elif name in ("pearson", "spearman"):
            # both are undefined when either side is constant (a freshly initialised regressor can be)
            if np.std(preds) == 0 or np.std(labels) == 0:
                out[name] = math.nan
            else:
                fn = pearsonr if name == "pearson" else spearmanr
                out[name] = float(fn(preds, labels)[0])
    return out

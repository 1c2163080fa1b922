"""Input checks and small helpers shared by the metrics modules."""
from __future__ import annotations

import numpy as np


def _as_binary_1d(y_true01, name: str = "y_true01") -> np.ndarray:
    y = np.asarray(y_true01)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype != bool:
        bad = (y != 0) & (y != 1)
        if np.any(bad):
            raise ValueError(f"{name} must hold only 0/1 (drop VOC '0' cells and map -1 to 0 "
                             f"first); found {np.unique(y[bad])[:5].tolist()}")
    return y.astype(bool)


def _as_scores(scores, shape, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != tuple(shape):
        raise ValueError(f"{name} has shape {s.shape}, expected {tuple(shape)}")
    if np.isnan(s).any():
        raise ValueError(f"{name} contains NaN")
    return s


def _as_labels(labels) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be 2-D (n_images, n_classes), got shape {lab.shape}")
    bad = (lab != 1) & (lab != 0) & (lab != -1)
    if np.any(bad):
        raise ValueError(f"labels must use VOC codes 1 / 0 / -1; found {np.unique(lab[bad])[:5].tolist()}")
    return lab.astype(np.int8)


def _grouped_counts(y: np.ndarray, s: np.ndarray):
    """Cumulative (tp, fp) at each distinct score, scores sorted in decreasing order.

    Returns ``(thresholds_desc, tp, fp)``: ``tp[k]``/``fp[k]`` count the positives/negatives
    with score >= ``thresholds_desc[k]``. Tied scores form
    one group, so the result does not depend on the input order.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order].astype(np.int64)
    ends = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[ends].astype(np.float64)
    fp = (ends + 1) - tp
    return s_sorted[ends], tp, fp


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def _ratio(num, den, empty_value: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(empty_value))
    np.divide(num, den, out=out, where=den > 0)
    return out


def _scalar_or_array(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x

"""One class's score as a function of its decision threshold, and the best threshold."""
from __future__ import annotations

import numpy as np

from fewlabel.metrics._checks import _as_binary_1d, _grouped_counts
from fewlabel.metrics.counts import score_from_counts


def _prepare_1class(y_true01, probabilities, ignore):
    y = np.asarray(y_true01)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"y_true01 shape {y.shape} != probabilities shape {p.shape}")
    if ignore is not None:
        ig = np.asarray(ignore, dtype=bool)
        if ig.shape != y.shape:
            raise ValueError(f"ignore shape {ig.shape} != y_true01 shape {y.shape}")
        y, p = y[~ig], p[~ig]
    y = _as_binary_1d(y.ravel())
    p = p.ravel()
    if np.isnan(p).any():
        raise ValueError("probabilities contain NaN")
    return y, p


def threshold_curve(y_true01, probabilities, metric: str = "f1", ignore=None):
    """Score of ``metric`` at every candidate threshold, in O(n log n).

    Candidates are the distinct probability values; candidate ``t`` predicts positive where
    ``p >= t``. Inputs may be 1-D (one class) or any shape (pooled over all cells, e.g. one
    global threshold), with ``ignore`` a boolean mask of the same shape (True = leave out).
    Returns ``(thresholds, scores)`` with thresholds in increasing order (empty arrays when
    nothing is left).
    """
    y, p = _prepare_1class(y_true01, probabilities, ignore)
    if y.size == 0:
        return np.empty(0), np.empty(0)
    thr_desc, tp, fp = _grouped_counts(y, p)
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    scores = score_from_counts(metric, tp, fp, n_pos - tp, n_neg - fp)
    return thr_desc[::-1].copy(), scores[::-1].copy()


def best_threshold(y_true01, probabilities, metric: str = "f1", ignore=None):
    """Threshold maximising ``metric`` over all candidates (see :func:`threshold_curve`).

    Returns ``(threshold, best_score, curve_thresholds, curve_scores)``; the curve is
    :func:`threshold_curve`'s (increasing thresholds).

    The score is a step function of the threshold: every ``t`` in ``(q, c]`` -- ``c`` a
    candidate, ``q`` the next lower distinct probability -- gives the same predictions as
    ``c``. The returned threshold is the middle of the best plateau: adjacent candidates
    whose scores tie with the best (within 1e-12) are merged into one interval, the widest
    such interval is chosen (the highest one if still tied), and its midpoint
    ``(c_high + q) / 2`` is returned, so the rule keeps a margin on both sides instead of
    sitting on a training probability. When the plateau reaches the lowest candidate there
    is no lower value ``q`` and that lowest candidate itself is returned (predict all
    positive). ``best_score`` is the score at the returned threshold.

    With no positive at all, every candidate scores 0 and the whole range is one plateau, so
    the lowest candidate is returned (predict all positive): callers should treat such classes
    separately (e.g. ``calibrate.min_positives``). Raises
    ``ValueError`` if no cell is left.
    """
    thr, scores = threshold_curve(y_true01, probabilities, metric, ignore)
    if thr.size == 0:
        raise ValueError("best_threshold: no cells left to score")
    threshold, at = best_plateau_threshold(thr, scores)
    return threshold, float(scores[at]), thr, scores


def best_plateau_threshold(thresholds, scores) -> tuple[float, int]:
    """The middle of the best plateau of a step-function score curve (see :func:`best_threshold`).

    ``thresholds`` are the candidates in increasing order, ``scores[k]`` what predicting
    ``p >= thresholds[k]`` scores. Returns ``(threshold, k)``: the chosen threshold and the
    index of the candidate whose predictions it reproduces.
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    best = scores.max()
    is_best = scores >= best - 1e-12 * max(1.0, abs(best))
    # runs of adjacent best candidates (thresholds increasing)
    edges = np.diff(np.r_[0, is_best.astype(np.int8), 0])
    run_starts = np.flatnonzero(edges == 1)
    run_ends = np.flatnonzero(edges == -1) - 1
    lower = np.where(run_starts > 0, thr[np.maximum(run_starts - 1, 0)], thr[run_starts])
    upper = thr[run_ends]
    width = upper - lower
    # widest run; among equal widths the highest (last, since thresholds increase)
    pick = np.flatnonzero(width >= width.max() - 1e-15 * max(1.0, abs(width.max())))[-1]
    if run_starts[pick] == 0:
        threshold = float(thr[0])
    else:
        threshold = float((upper[pick] + lower[pick]) / 2.0)
        if threshold <= lower[pick]:  # adjacent floats: no room for a midpoint
            threshold = float(upper[pick])
    # the candidate whose predictions the threshold reproduces: smallest candidate >= threshold
    return threshold, int(np.searchsorted(thr, threshold, side="left"))


def score_at_threshold(y_true01, probabilities, threshold: float, metric: str = "f1",
                       ignore=None) -> float:
    """``metric`` of predicting ``p >= threshold``; same input conventions as :func:`best_threshold`."""
    y, p = _prepare_1class(y_true01, probabilities, ignore)
    pred = p >= threshold
    tp = float(np.sum(pred & y))
    fp = float(np.sum(pred & ~y))
    fn = float(np.sum(~pred & y))
    tn = float(np.sum(~pred & ~y))
    return float(score_from_counts(metric, tp, fp, fn, tn))

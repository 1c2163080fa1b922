"""Thresholded multilabel scores: F1 (micro, macro), Dice, Jaccard, P@k, and the per-class and
per-image counts that decision rules are fitted on."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from fewlabel.metrics._checks import _as_labels, _as_scores, _nanmean, _ratio, _scalar_or_array


#: Keys of :func:`multilabel_scores` with the default ``top_k=(1, 3)``, in order.
METRIC_KEYS = ("f1_micro", "f1_macro", "dice", "jaccard", "precision_at_1", "precision_at_3",
               "hamming_loss", "subset_accuracy", "empty_rate")


#: Target metrics scored per image and averaged over images (the others pool all cells).
PER_IMAGE_METRICS = ("dice", "jaccard")


def threshold_predictions(probabilities, thresholds) -> np.ndarray:
    """0/1 int predictions: ``1`` where ``probability >= threshold``.

    ``thresholds`` is a scalar or a ``(C,)`` array broadcast over the rows of an ``(n, C)``
    ``probabilities``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim > 1 or (t.ndim == 1 and p.ndim >= 1 and t.shape[0] != p.shape[-1]):
        raise ValueError(f"thresholds shape {t.shape} does not match probabilities {p.shape}")
    return (p >= t).astype(np.int64)


def per_class_confusion(labels, predictions) -> np.ndarray:
    """Per-class 2x2 confusion matrices, shape ``(C, 2, 2)``, ignoring ``0`` cells.

    Layout as :func:`sklearn.metrics.multilabel_confusion_matrix`: ``[[tn, fp], [fn, tp]]``
    (int64).
    """
    lab = _as_labels(labels)
    pred = np.asarray(predictions)
    if pred.shape != lab.shape:
        raise ValueError(f"predictions shape {pred.shape} != labels shape {lab.shape}")
    pred = pred.astype(bool)
    valid = lab != 0
    truth = lab == 1
    tp = np.sum(valid & truth & pred, axis=0)
    fp = np.sum(valid & ~truth & pred, axis=0)
    fn = np.sum(valid & truth & ~pred, axis=0)
    tn = np.sum(valid & ~truth & ~pred, axis=0)
    return np.stack([np.stack([tn, fp], axis=-1), np.stack([fn, tp], axis=-1)], axis=1).astype(np.int64)


def multilabel_scores(labels, probabilities, predictions, top_k: Sequence[int] = (1, 3),
                      zero_division: float = 0.0) -> dict[str, float]:
    """Multilabel metrics of 0/1 ``predictions`` (and top-k of ``probabilities``), ignoring ``0`` cells.

    ``predictions`` has the shape of ``labels`` (e.g. :func:`threshold_predictions`, or a
    decision rule's output). Keys, in order:

    * ``f1_micro``: F1 of the tp/fp/fn summed over all non-ignored cells (sklearn ``micro``).
    * ``f1_macro``: mean over classes of each class's F1 on its non-ignored cells (sklearn
      ``macro``). A class with no positive and no predicted positive (tp+fp+fn = 0) gets
      ``zero_division`` -- 0.0 by default, as sklearn's default; pass ``nan`` to leave such
      classes out of the mean.
    * ``dice``: mean over images of ``2|Y∩P| / (|Y| + |P|)``, 1.0 when Y and P are both empty
      (sklearn ``f1_score(average='samples', zero_division=1.0)``).
    * ``jaccard`` (mean IoU): mean over images of ``|Y∩P| / |Y∪P|``, 1.0 when both empty
      (sklearn ``jaccard_score(average='samples', zero_division=1.0)``).
    * ``precision_at_<k>`` for each ``k`` in ``top_k``: mean over images of the fraction of the
      ``k`` highest-probability classes that are true. Ignored cells are left out of the
      ranking; equal probabilities rank by class index; an image with fewer than ``k``
      non-ignored classes divides by that number instead of ``k``.
    * ``hamming_loss``: fraction of non-ignored cells predicted wrong.
    * ``subset_accuracy``: fraction of images whose non-ignored cells are all right.
    * ``empty_rate``: fraction of images with no predicted class at all. It describes what
      users get, so it is the one metric that counts predictions on ignored cells too.

    In the per-image metrics, an image's ignored cells are removed from both Y and P; images
    whose cells are all ignored are left out of the per-image means.
    """
    lab = _as_labels(labels)
    p = _as_scores(probabilities, lab.shape, "probabilities")
    pred = np.asarray(predictions)
    if pred.shape != lab.shape:
        raise ValueError(f"predictions have shape {pred.shape}, expected {lab.shape}")
    if not np.isin(pred, (0, 1)).all():
        raise ValueError("predictions must hold only 0/1 (apply thresholds or a decision rule first)")
    pred = pred.astype(bool)
    valid = lab != 0
    truth = lab == 1
    pred_v = pred & valid
    tp_cell = truth & pred_v
    fp_cell = ~truth & pred_v & valid
    fn_cell = truth & ~pred_v

    # per class (macro) and pooled (micro)
    tp_c, fp_c, fn_c = tp_cell.sum(0), fp_cell.sum(0), fn_cell.sum(0)
    f1_c = _ratio(2 * tp_c, 2 * tp_c + fp_c + fn_c, zero_division)
    tp, fp, fn = tp_c.sum(), fp_c.sum(), fn_c.sum()
    f1_micro = float(_ratio(2 * tp, 2 * tp + fp + fn, zero_division))

    # per image
    has_cells = valid.any(axis=1)
    inter = tp_cell.sum(1)
    n_true = truth.sum(1)       # truth implies valid
    n_pred = pred_v.sum(1)
    dice = dice_from_counts(inter, n_pred - inter, n_true - inter)[has_cells]
    jacc = jaccard_from_counts(inter, n_pred - inter, n_true - inter)[has_cells]
    wrong = (fp_cell | fn_cell)

    out: dict[str, float] = {
        "f1_micro": f1_micro,
        "f1_macro": _nanmean(f1_c),  # nan entries only when zero_division is nan
        "dice": _nanmean(dice),
        "jaccard": _nanmean(jacc),
    }
    for k, value in precision_at_k(lab, p, top_k).items():
        out[f"precision_at_{k}"] = value
    n_valid = int(valid.sum())
    out["hamming_loss"] = float(wrong.sum() / n_valid) if n_valid else float("nan")
    out["subset_accuracy"] = _nanmean((~wrong.any(axis=1))[has_cells].astype(np.float64))
    out["empty_rate"] = float(np.mean(~pred.any(axis=1))) if len(pred) else float("nan")
    return out


def precision_at_k(labels, scores, top_k: Sequence[int] = (1, 3)) -> dict[int, float]:
    """``{k: mean over images of (true classes among the k top-scored) / k}``, ignoring 0 cells.

    See :func:`multilabel_scores` for the tie and short-row conventions.
    """
    lab = _as_labels(labels)
    s = _as_scores(scores, lab.shape)
    valid = lab != 0
    n_valid = valid.sum(1)
    has_cells = n_valid > 0
    ranked = np.where(valid, s, -np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")
    hits_sorted = np.take_along_axis((lab == 1), order, axis=1)  # ignored cells rank last, never hits
    cum_hits = np.cumsum(hits_sorted, axis=1)
    out = {}
    for k in top_k:
        k = int(k)
        if k < 1:
            raise ValueError(f"top_k values must be >= 1, got {k}")
        kk = min(k, lab.shape[1])
        if kk == 0:
            out[k] = float("nan")
            continue
        denom = np.minimum(k, n_valid)
        frac = _ratio(cum_hits[:, kk - 1], denom, np.nan)
        out[k] = _nanmean(frac[has_cells])
    return out


def fbeta_from_counts(tp, fp, fn, beta: float = 1.0):
    """F-beta from counts: ``(1+b²)tp / ((1+b²)tp + b²fn + fp)``, 0 when that is 0/0.

    Arrays broadcast (vectorised over thresholds); scalars in give a float out.
    """
    b2 = float(beta) ** 2
    tp = np.asarray(tp, dtype=np.float64)
    den = (1 + b2) * tp + b2 * np.asarray(fn, np.float64) + np.asarray(fp, np.float64)
    return _scalar_or_array(_ratio((1 + b2) * tp, den, 0.0))


def mcc_from_counts(tp, fp, fn, tn):
    """Matthews correlation from counts; 0 when the denominator is 0 (as sklearn).

    Arrays broadcast; scalars in give a float out.
    """
    tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn, tn))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return _scalar_or_array(_ratio(tp * tn - fp * fn, den, 0.0))


def dice_from_counts(tp, fp, fn) -> np.ndarray:
    """Per-image Dice ``2tp / (2tp + fp + fn)``: 1 when the image has no true and no predicted class."""
    tp = np.asarray(tp, dtype=np.float64)
    return _ratio(2 * tp, 2 * tp + np.asarray(fp, np.float64) + np.asarray(fn, np.float64), 1.0)


def jaccard_from_counts(tp, fp, fn) -> np.ndarray:
    """Per-image Jaccard (IoU) ``tp / (tp + fp + fn)``: 1 when the image has no true and no predicted class."""
    tp = np.asarray(tp, dtype=np.float64)
    return _ratio(tp, tp + np.asarray(fp, np.float64) + np.asarray(fn, np.float64), 1.0)


_FBETA = re.compile(r"^f(\d+(?:\.\d+)?)$")


def score_from_counts(metric: str, tp, fp, fn, tn):
    """Score ``metric`` ('f1', 'f2', 'f0.5' -- any 'f<beta>' -- or 'mcc') from confusion counts."""
    name = str(metric).lower().strip()
    if name == "mcc":
        return mcc_from_counts(tp, fp, fn, tn)
    match = _FBETA.match(name)
    if match and float(match.group(1)) > 0:
        return fbeta_from_counts(tp, fp, fn, float(match.group(1)))
    raise ValueError(f"unknown metric {metric!r}: use f1, f2, f0.5 (any f<beta>) or mcc")


def metric_parts(metric: str, tp, fp, fn, tn) -> np.ndarray:
    """Per-image parts of a target metric that add up over images, shape ``(..., k)``.

    ``tp``/``fp``/``fn``/``tn`` are one image's counts (arrays broadcast). For the pooled
    metrics (f-beta, mcc) the parts are the four counts; for the per-image metrics
    (``dice``, ``jaccard``) the part is the image's score. Summing parts over images and
    passing the sum to :func:`metric_from_parts` gives the metric, so a search can update a
    score incrementally when only some images change.
    """
    name = str(metric).lower().strip()
    if name == "dice":
        return dice_from_counts(tp, fp, fn)[..., None]
    if name == "jaccard":
        return jaccard_from_counts(tp, fp, fn)[..., None]
    score_from_counts(name, 1.0, 0.0, 0.0, 1.0)  # validates the name
    return np.stack(np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (tp, fp, fn, tn))), axis=-1)


def metric_from_parts(metric: str, summed_parts: np.ndarray, n_images: int):
    """The target metric from :func:`metric_parts` summed over ``n_images`` images (``(..., k)`` in)."""
    parts = np.asarray(summed_parts, dtype=np.float64)
    if str(metric).lower().strip() in PER_IMAGE_METRICS:
        return _scalar_or_array(parts[..., 0] / max(n_images, 1))
    return score_from_counts(metric, parts[..., 0], parts[..., 1], parts[..., 2], parts[..., 3])


def target_score(metric: str, targets01, predictions) -> float:
    """A calibration target metric of 0/1 ``predictions`` against 0/1 ``targets01`` (``(n, C)``).

    f1/f2/f0.5/mcc pool the counts of all (image, class) cells (f1: micro-F1); ``dice`` and
    ``jaccard`` are means over images of ``2|Y∩P| / (|Y| + |P|)`` and ``|Y∩P| / |Y∪P|``
    (1 for an image with neither true nor predicted class), as :func:`multilabel_scores`.
    """
    parts = image_parts(metric, targets01, predictions)
    return float(metric_from_parts(metric, parts.sum(axis=0), len(parts)))


def image_parts(metric: str, targets01, predictions) -> np.ndarray:
    """:func:`metric_parts` of each image (row) of 0/1 ``predictions`` against ``targets01``: ``(n, k)``."""
    truth = np.asarray(targets01).astype(bool)
    pred = np.asarray(predictions).astype(bool)
    if truth.shape != pred.shape or truth.ndim != 2:
        raise ValueError(f"targets {truth.shape} and predictions {pred.shape} must be equal 2-D shapes")
    tp = np.sum(truth & pred, axis=1)
    fp = np.sum(pred, axis=1) - tp
    fn = np.sum(truth, axis=1) - tp
    return metric_parts(metric, tp, fp, fn, truth.shape[1] - tp - fp - fn)

"""Evaluation and calibration metrics: pure numpy, no file I/O.

Label convention (the VOC devkit's): ``labels`` is an ``(n_images, n_classes)`` integer array
with ``1`` = present, ``0`` = only *difficult* objects, ``-1`` = absent. A ``0`` cell is
**ignored** for that class by every function here that takes ``labels``: it is dropped from
that class's ranking / counts, and from that image's label and prediction sets, exactly as if
the (image, class) pair did not exist. Changing the score or prediction of a ``0`` cell never
changes any result, except ``empty_rate``, which describes the predictions alone.

Functions that work on one class take ``y_true01`` (0/1 or bool, 1-D) instead; the caller
drops ignored cells first (or passes ``ignore=`` where offered).

Overview
--------
ranking:      :func:`average_precision`, :func:`voc07_average_precision`, :func:`per_class_ap`,
              :func:`mean_ap`, :func:`bootstrap_map_ci`, :func:`precision_recall_points`
thresholded:  :func:`threshold_predictions`, :func:`multilabel_scores`,
              :func:`precision_at_k`, :func:`per_class_confusion`
calibration:  :func:`fbeta_from_counts`, :func:`mcc_from_counts`, :func:`score_from_counts`,
              :func:`dice_from_counts`, :func:`jaccard_from_counts`, :func:`target_score`,
              :func:`image_parts`, :func:`metric_parts`, :func:`metric_from_parts`, :func:`threshold_curve`,
              :func:`best_threshold`, :func:`best_plateau_threshold`, :func:`score_at_threshold`
"""
from __future__ import annotations

from fewlabel.metrics.counts import (METRIC_KEYS, PER_IMAGE_METRICS, dice_from_counts, fbeta_from_counts, image_parts,
                                     jaccard_from_counts, mcc_from_counts, metric_from_parts, metric_parts,
                                     multilabel_scores, per_class_confusion, precision_at_k, score_from_counts,
                                     target_score, threshold_predictions)
from fewlabel.metrics.ranking import (average_precision, bootstrap_map_ci, mean_ap, per_class_ap,
                                      precision_recall_points, voc07_average_precision)
from fewlabel.metrics.thresholds import best_plateau_threshold, best_threshold, score_at_threshold, threshold_curve

__all__ = [
    "average_precision",
    "voc07_average_precision",
    "per_class_ap",
    "mean_ap",
    "bootstrap_map_ci",
    "precision_recall_points",
    "threshold_predictions",
    "multilabel_scores",
    "precision_at_k",
    "per_class_confusion",
    "fbeta_from_counts",
    "mcc_from_counts",
    "score_from_counts",
    "dice_from_counts",
    "jaccard_from_counts",
    "metric_parts",
    "metric_from_parts",
    "target_score",
    "image_parts",
    "threshold_curve",
    "best_threshold",
    "best_plateau_threshold",
    "score_at_threshold",
    "METRIC_KEYS",
    "PER_IMAGE_METRICS",
]

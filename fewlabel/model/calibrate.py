"""Calibration: choose the decision rule (global or per-class thresholds, at least / at most k
labels) on out-of-fold probabilities, and the threshold curves that show the choice.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from fewlabel.plots import panel_grid
from fewlabel.metrics import best_plateau_threshold, image_parts, metric_from_parts, metric_parts, target_score
from fewlabel.model.rules import DEFAULT_THRESHOLD, DecisionRule, constrained_labels, apply_rule, score_order
from fewlabel.params import CalibrateParams

# Simplest first: on a tie, auto keeps the simpler strategy.
STRATEGIES = ("none", "global", "per_class")
# Coordinate ascent over the per-class thresholds stops after this many passes over the
# classes (it usually settles in two; each pass only ever raises the score).
MAX_SWEEPS = 4


def _step_curve(values: np.ndarray, base_parts: np.ndarray, step_parts: np.ndarray, metric: str,
                n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Score at every threshold when items switch on in decreasing ``values`` order.

    ``base_parts`` (``(k,)``) are the summed :func:`metric_parts` with nothing on; switching
    item ``j`` on adds ``step_parts[j]``. Items must be ordered so that, among equal values,
    they may switch on in the given order. Candidates are the distinct values and one
    above them all (nothing on). Returns (thresholds increasing, scores).
    """
    events = np.argsort(-values, kind="stable")
    sorted_values = values[events]
    totals = base_parts + np.cumsum(step_parts[events], axis=0)
    last_of_value = np.r_[np.flatnonzero(sorted_values[1:] != sorted_values[:-1]), sorted_values.size - 1]
    thresholds = np.r_[np.nextafter(sorted_values[0], np.inf), sorted_values[last_of_value]]
    totals = np.vstack([base_parts, totals[last_of_value]])
    scores = np.asarray(metric_from_parts(metric, totals, n_images), dtype=np.float64)
    return thresholds[::-1].copy(), scores[::-1].copy()


def global_threshold_curve(targets: np.ndarray, probabilities: np.ndarray, metric: str, min_labels: int,
                           max_labels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of the rule with one threshold for every class, at every candidate threshold.

    Exact and O(nC log nC): with one threshold, an image's passing classes are its top-k
    by score, so the rule predicts its top ``clip(k, min_labels, max_labels)``; lowering the
    threshold past a cell raises that image's k by one.
    """
    truth = np.asarray(targets).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    n, n_classes = p.shape
    order = score_order(p)
    top_m = np.arange(n_classes + 1)
    tp = np.hstack([np.zeros((n, 1)), np.cumsum(np.take_along_axis(truth, order, axis=1), axis=1)])
    fn = truth.sum(axis=1, keepdims=True) - tp
    parts_top_m = metric_parts(metric, tp, top_m - tp, fn, n_classes - top_m - fn)  # (n, C+1, k)
    predicted_count = np.clip(top_m, min_labels, n_classes if max_labels is None else max_labels)
    parts_k_passing = parts_top_m[:, predicted_count]
    steps = np.diff(parts_k_passing, axis=1).reshape(n * n_classes, -1)  # cell (i, r): k from r to r+1
    return _step_curve(np.take_along_axis(p, order, axis=1).ravel(), parts_k_passing[:, 0].sum(axis=0), steps,
                       metric, n)


def class_threshold_curve(targets: np.ndarray, probabilities: np.ndarray, rule: DecisionRule, class_index: int,
                          metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of ``rule`` at every candidate threshold of one class, the others unchanged.

    Exact: each image is in one of two states (the class passes or not), whatever the
    label-count constraints then do; lowering the threshold switches images to "passes" in
    decreasing order of their probability for the class.
    """
    truth = np.asarray(targets).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    order = score_order(p)
    passing = p >= np.array(rule.thresholds)
    state_parts = []
    for passes in (False, True):
        passing[:, class_index] = passes
        predictions = constrained_labels(passing, order, rule.min_labels, rule.max_labels)
        state_parts.append(image_parts(metric, truth, predictions))
    fails, passes = state_parts
    return _step_curve(p[:, class_index], fails.sum(axis=0), passes - fails, metric, len(p))


def best_global_threshold(targets: np.ndarray, probabilities: np.ndarray, metric: str, min_labels: int,
                          max_labels: int | None) -> float:
    """The global threshold maximising ``metric`` of the rule (middle of the best plateau)."""
    thresholds, scores = global_threshold_curve(targets, probabilities, metric, min_labels, max_labels)
    return best_plateau_threshold(thresholds, scores)[0]


def per_class_rule(targets: np.ndarray, probabilities: np.ndarray, params: CalibrateParams,
                   global_threshold: float) -> DecisionRule:
    """Per-class thresholds by coordinate ascent on ``params.metric`` of the whole rule, then shrunk.

    Starts from ``global_threshold`` everywhere; each step moves one class's threshold to
    the middle of its best plateau when that raises the score. A class with fewer than
    ``params.min_positives`` positives keeps the global threshold; the others end at
    ``global + w (t - global)`` with ``w = n_pos / (n_pos + params.shrinkage)``, since a
    threshold fitted on few positives is mostly noise.
    """
    n_classes = targets.shape[1]
    positives = np.asarray(targets).sum(axis=0)
    tunable = np.flatnonzero(positives >= max(params.min_positives, 1))
    rule = DecisionRule.uniform(n_classes, global_threshold, params.min_labels, params.max_labels)
    score = target_score(params.metric, targets, apply_rule(probabilities, rule))
    for _ in range(MAX_SWEEPS):
        moved = False
        for c in tunable:
            candidates, scores = class_threshold_curve(targets, probabilities, rule, c, params.metric)
            if scores.max() > score + 1e-12:
                threshold, at = best_plateau_threshold(candidates, scores)
                thresholds = list(rule.thresholds)
                thresholds[c] = threshold
                rule, score, moved = replace(rule, thresholds=tuple(thresholds)), scores[at], True
        if not moved:
            break
    weight = positives / np.maximum(positives + params.shrinkage, 1e-12)  # untuned classes sit at global
    shrunk = global_threshold + weight * (np.array(rule.thresholds) - global_threshold)
    return replace(rule, thresholds=tuple(shrunk))


def choose_rule(targets: np.ndarray, probabilities: np.ndarray, strategy: str,
                params: CalibrateParams) -> tuple[DecisionRule, float]:
    """The decision rule of one strategy (none / global / per_class) and its global threshold.

    ``targets`` are 0/1. Every strategy carries ``params.min_labels`` / ``params.max_labels``
    and is chosen for the metric of the rule with those constraints applied.
    """
    n_classes = targets.shape[1]
    if strategy == "none":
        return DecisionRule.uniform(n_classes, DEFAULT_THRESHOLD, params.min_labels,
                                    params.max_labels), DEFAULT_THRESHOLD
    global_threshold = best_global_threshold(targets, probabilities, params.metric, params.min_labels,
                                             params.max_labels)
    if strategy == "global":
        return DecisionRule.uniform(n_classes, global_threshold, params.min_labels,
                                    params.max_labels), global_threshold
    if strategy == "per_class":
        return per_class_rule(targets, probabilities, params, global_threshold), global_threshold
    raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


def out_of_fold_strategy_scores(targets: np.ndarray, probabilities: np.ndarray, folds: np.ndarray,
                                params: CalibrateParams) -> dict[str, float]:
    """Each strategy's ``params.metric`` when its rule is chosen without the scored fold."""
    scores = {}
    for strategy in STRATEGIES:
        predictions = np.zeros(targets.shape, dtype=np.int64)
        for fold in np.unique(folds):
            held_out = folds == fold
            rule, _ = choose_rule(targets[~held_out], probabilities[~held_out], strategy, params)
            predictions[held_out] = apply_rule(probabilities[held_out], rule)
        scores[strategy] = target_score(params.metric, targets, predictions)
    return scores


@dataclass
class Calibration:
    strategy: str
    rule: DecisionRule
    global_threshold: float
    strategy_scores: dict


def calibrate(targets: np.ndarray, probabilities: np.ndarray, folds: np.ndarray,
              params: CalibrateParams) -> Calibration:
    """The decision rule from out-of-fold ``probabilities``, 0/1 ``targets`` and their ``folds``.

    Scores every strategy out of fold (recorded whatever is requested), picks the requested
    one or, for ``auto``, the best (the simpler on a tie), and fits its rule on all images.
    """
    scores = out_of_fold_strategy_scores(targets, probabilities, folds, params)
    strategy = params.strategy
    if strategy == "auto":
        strategy = max(STRATEGIES, key=lambda name: (round(scores[name], 12), -STRATEGIES.index(name)))
    rule, global_threshold = choose_rule(targets, probabilities, strategy, params)
    return Calibration(strategy, rule, float(global_threshold), scores)


def threshold_curves(targets: np.ndarray, probabilities: np.ndarray, rule: DecisionRule, classes,
                     metric: str) -> dict:
    """Per class, ``metric`` of the whole rule against that class's threshold (for plots);
    column ``chosen`` repeats the class's threshold in ``rule`` (the page marks it)."""
    curves = {}
    for c, name in enumerate(classes):
        thresholds, scores = class_threshold_curve(targets, probabilities, rule, c, metric)
        curves[name] = pd.DataFrame({"threshold": thresholds, "score": scores, "chosen": rule.thresholds[c]})
    return curves


def curves_figure(curves: dict, chosen: dict, metric: str):
    """One small panel per class: score against threshold, the chosen threshold marked."""
    figure, axes = panel_grid(len(curves), panel_size=(3, 2.4))
    for axis, (name, curve) in zip(axes, curves.items()):
        axis.plot(curve["threshold"], curve["score"], color="tab:blue")
        axis.axvline(chosen[name], color="tab:red", linestyle="--", label=f"{chosen[name]:.2f}")
        axis.axvline(DEFAULT_THRESHOLD, color="gray", linestyle=":")
        axis.set_title(name, fontsize=9)
        axis.set_xlim(0, 1)
        axis.legend(fontsize=7, loc="lower left")
    figure.suptitle(f"out-of-fold {metric} of the whole rule against one class's threshold "
                    "(red: chosen, gray: 0.5)")
    figure.tight_layout()
    return figure

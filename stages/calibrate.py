"""calibrate: decision thresholds from out-of-fold probabilities on the training images only.

``predict_proba >= 0.5`` is rarely the best rule for a rare class. Per class, the threshold
that maximises ``calibrate.metric`` on the out-of-fold probabilities is used instead.
With 750 images those per-class thresholds are noisy for rare classes, so
``strategy: auto`` compares per-class, one global threshold and plain 0.5 by choosing each
one's thresholds inside the folds and scoring them on the held-out fold, and keeps the best.
Evaluation labels are never read here.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.common import (PipelineError, panel_grid, read_csv, run_main, write_csv_dir, write_figure,
                           write_json)
from stages.metrics import best_threshold, score_from_counts, threshold_curve
from stages.params import CalibrateParams, load_params

DEFAULT_THRESHOLD = 0.5
# Simplest first: on a tie, auto keeps the simpler strategy.
STRATEGIES = ("none", "global", "per_class")


def choose_thresholds(targets: np.ndarray, probabilities: np.ndarray, strategy: str, metric: str,
                      min_positives: int) -> tuple[np.ndarray, float]:
    """Thresholds (one per class) and the global threshold for one strategy.

    ``targets`` are 0/1. Under ``per_class``, a class with fewer than ``min_positives``
    positives keeps the global threshold.
    """
    n_classes = targets.shape[1]
    if strategy == "none":
        return np.full(n_classes, DEFAULT_THRESHOLD), DEFAULT_THRESHOLD
    global_threshold = best_threshold(targets, probabilities, metric)[0]
    thresholds = np.full(n_classes, global_threshold)
    if strategy == "per_class":
        for c in range(n_classes):
            if targets[:, c].sum() >= max(min_positives, 1):
                thresholds[c] = best_threshold(targets[:, c], probabilities[:, c], metric)[0]
    return thresholds, global_threshold


def pooled_score(targets: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, metric: str) -> float:
    """``metric`` over all (image, class) cells pooled, e.g. micro-F1."""
    predicted = probabilities >= thresholds
    truth = targets.astype(bool)
    tp, fp = np.sum(predicted & truth), np.sum(predicted & ~truth)
    fn, tn = np.sum(~predicted & truth), np.sum(~predicted & ~truth)
    return float(score_from_counts(metric, tp, fp, fn, tn))


def out_of_fold_strategy_scores(targets: np.ndarray, probabilities: np.ndarray, folds: np.ndarray,
                                metric: str, min_positives: int) -> dict[str, float]:
    """Each strategy's pooled score when its thresholds are chosen without the scored fold."""
    scores = {}
    for strategy in STRATEGIES:
        predicted_thresholds = np.zeros_like(probabilities)
        for fold in np.unique(folds):
            held_out = folds == fold
            thresholds, _ = choose_thresholds(targets[~held_out], probabilities[~held_out], strategy,
                                              metric, min_positives)
            predicted_thresholds[held_out] = thresholds
        scores[strategy] = pooled_score(targets, probabilities, predicted_thresholds, metric)
    return scores


@dataclass
class Calibration:
    strategy: str
    thresholds: np.ndarray
    global_threshold: float
    strategy_scores: dict


def calibrate(targets: np.ndarray, probabilities: np.ndarray, folds: np.ndarray,
              params: CalibrateParams) -> Calibration:
    """Pick the strategy (``auto``: best out-of-fold) and its thresholds on all training images."""
    scores = out_of_fold_strategy_scores(targets, probabilities, folds, params.metric, params.min_positives)
    strategy = params.strategy
    if strategy == "auto":
        strategy = max(STRATEGIES, key=lambda name: (round(scores[name], 12), -STRATEGIES.index(name)))
    thresholds, global_threshold = choose_thresholds(targets, probabilities, strategy, params.metric,
                                                     params.min_positives)
    return Calibration(strategy, thresholds, float(global_threshold), scores)


def threshold_curves(targets: np.ndarray, probabilities: np.ndarray, classes, metric: str) -> dict:
    """Per class, the score at each candidate threshold (for plots)."""
    curves = {}
    for c, name in enumerate(classes):
        thresholds, scores = threshold_curve(targets[:, c], probabilities[:, c], metric)
        curves[name] = pd.DataFrame({"threshold": thresholds, "score": scores})
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
    figure.suptitle(f"out-of-fold {metric} against threshold (red: chosen, gray: 0.5)")
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--oof", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plots", required=True, help="directory of per-class threshold curves")
    parser.add_argument("--figure", required=True, help="PNG of all threshold curves")
    args = parser.parse_args()

    params = load_params()
    classes = params.data.classes
    columns = [f"y_{c}" for c in classes] + [f"p_{c}" for c in classes]
    oof = read_csv(args.oof, required=["image_id", "fold", *columns])
    targets = oof[[f"y_{c}" for c in classes]].to_numpy(dtype=int)
    probabilities = oof[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    if not np.isfinite(probabilities).all():
        raise PipelineError(f"{args.oof}: holds non-finite probabilities; rerun the train stage")

    result = calibrate(targets, probabilities, oof["fold"].to_numpy(), params.calibrate)
    chosen = {name: float(t) for name, t in zip(classes, result.thresholds)}
    write_json(args.out, {
        "strategy": result.strategy,
        "requested_strategy": params.calibrate.strategy,
        "metric": params.calibrate.metric,
        "global_threshold": result.global_threshold,
        "out_of_fold_scores": result.strategy_scores,
        "positives": {name: int(targets[:, c].sum()) for c, name in enumerate(classes)},
        "thresholds": chosen,
    })
    curves = threshold_curves(targets, probabilities, classes, params.calibrate.metric)
    write_csv_dir(args.plots, curves)
    write_figure(args.figure, curves_figure(curves, chosen, params.calibrate.metric))
    scores = ", ".join(f"{k}={v:.4f}" for k, v in result.strategy_scores.items())
    print(f"calibrate: strategy {result.strategy} (out-of-fold {params.calibrate.metric}: {scores})")


if __name__ == "__main__":
    run_main(main)

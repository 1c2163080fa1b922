"""calibrate: the decision rule, chosen on out-of-fold probabilities of the training images only.

A decision rule turns probabilities into labels: per-class thresholds plus label-count
constraints (at least ``calibrate.min_labels`` labels per image, the top-scored classes
filling in; optionally at most ``calibrate.max_labels``). :func:`apply_rule` is the one
implementation, used here, by evaluate and by predict.

The thresholds maximise ``calibrate.metric`` of the *whole rule* (constraints included) on
the out-of-fold probabilities: one global threshold (exact search over every candidate),
or per-class thresholds (coordinate ascent from the global one, each step an exact search
over one class's candidates), shrunk toward the global threshold for classes with few
positives. ``strategy: auto`` compares none (0.5) / global / per_class by choosing each
one's rule inside the folds and scoring it on the held-out fold, and keeps the best.
Evaluation labels are never read here.
"""
from __future__ import annotations

import argparse

from fewlabel.artifacts import read_oof
from fewlabel.errors import run_main
from fewlabel.io import file_md5, write_csv_dir, write_json
from fewlabel.model.calibrate import calibrate, curves_figure, threshold_curves
from fewlabel.params import load_params
from fewlabel.plots import write_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--oof", required=True)
    parser.add_argument("--model", required=True, help="the model the out-of-fold probabilities belong to")
    parser.add_argument("--out", required=True)
    parser.add_argument("--plots", required=True, help="directory of per-class threshold curves")
    parser.add_argument("--figure", required=True, help="PNG of all threshold curves")
    args = parser.parse_args()

    params = load_params()
    classes = params.data.classes
    oof = read_oof(args.oof, classes)
    targets, probabilities = oof.targets, oof.probabilities
    settings = params.calibrate
    result = calibrate(targets, probabilities, oof.folds, settings)
    write_json(args.out, {
        "model_md5": file_md5(args.model),
        "strategy": result.strategy,
        "requested_strategy": settings.strategy,
        "metric": settings.metric,
        **result.rule.to_record(classes),
        "global_threshold": result.global_threshold,
        "shrinkage": settings.shrinkage,
        "min_positives": settings.min_positives,
        "out_of_fold_scores": result.strategy_scores,
        "positives": {name: int(targets[:, c].sum()) for c, name in enumerate(classes)},
    })
    curves = threshold_curves(targets, probabilities, result.rule, classes, settings.metric)
    write_csv_dir(args.plots, curves)
    write_figure(args.figure, curves_figure(curves, dict(zip(classes, result.rule.thresholds)), settings.metric))
    scores = ", ".join(f"{k}={v:.4f}" for k, v in result.strategy_scores.items())
    print(f"calibrate: strategy {result.strategy}, at least {settings.min_labels} and at most "
          f"{settings.max_labels or 'any'} labels (out-of-fold {settings.metric}: {scores})")


if __name__ == "__main__":
    run_main(main)

"""suggest: which pool images to label next, which training labels to check, what more labels would buy.

    python -m stages.suggest --model models/model.joblib --thresholds models/thresholds.json ...

- **Next to label** (``suggestions/next.csv``): the pool ranked by ``suggest.strategy``
  (:mod:`fewlabel.active.strategies`), the top ``suggest.n`` with the classes the model is
  unsure of and its labels under the calibrated rule; ``suggestions/label_studio.json`` holds
  them as Label Studio tasks with those labels as pre-annotations, for the labelling config
  ``suggestions/label_studio_config.xml``; ``plots/suggestions.png`` shows the first ones.
- **Labels to check** (``suggestions/check_labels.csv``): training images whose labels the
  train stage's out-of-fold probabilities contradict most (``suggest.check_score``), with the classes in doubt.
- **Learning curve** (``plots/learning_curve.csv``/``.png``, ``metrics/suggest.json``):
  cross-validated mAP at nested fractions of the training set, extrapolated to 1.5x and 2x the
  labels; ``suggestions/class_gains.csv``: per class, AP gained per 10 more positives.
"""
from __future__ import annotations

import argparse

import numpy as np

from fewlabel.active.label_check import label_check
from fewlabel.active.learning_curve import learning_curve
from fewlabel.active.report import (check_table, label_studio_config, label_studio_json, learning_curve_figure,
                                    learning_curve_table, suggestion_table, thumbnails_figure)
from fewlabel.active.strategies import rank_pool
from fewlabel.artifacts import (feature_signature, read_features, read_label_table, read_oof, read_pool,
                                training_targets)
from fewlabel.errors import PipelineError, run_main
from fewlabel.io import read_json, write_csv, write_json, write_text
from fewlabel.model.rules import load_rule
from fewlabel.model.svm import load_model, positive_probabilities
from fewlabel.params import load_params
from fewlabel.plots import write_figure

OUTPUTS = ("--next", "--label-studio", "--label-studio-config", "--check", "--curve", "--curve-png",
           "--class-gains", "--thumbnails", "--metrics")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag in ("--model", "--thresholds", "--features", "--meta", "--labels", "--oof", "--pool", *OUTPUTS):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)

    params = load_params()
    classes, settings = params.data.classes, params.suggest
    ids, labels = read_label_table(args.labels, classes)
    targets = training_targets(labels)
    _, train_features = read_features(args.features, expected_ids=ids)
    model = load_model(args.model, classes, feature_signature(read_json(args.meta)))["model"]
    rule = load_rule(args.thresholds, classes, model_path=args.model)

    pool_ids, pool_paths, pool_features = read_pool(args.pool, dims=train_features.shape[1])
    training = sorted(set(pool_ids) & set(ids))
    if training:  # a suggestion is never a current training image
        raise PipelineError(f"{args.pool}: holds training image(s) {', '.join(training[:10])} of {args.labels}; "
                            f"rerun featurize_pool (dvc repro), which leaves them out")
    probabilities = positive_probabilities(model, pool_features) if len(pool_ids) else np.zeros((0, len(classes)))
    ranking = rank_pool(settings.strategy, probabilities, pool_features, train_features, targets,
                        n=min(settings.n, len(pool_ids)), seed=settings.seed, classes=classes)
    table = suggestion_table(ranking, pool_ids, pool_paths, probabilities, rule, classes)
    write_csv(args.next, table)
    write_text(args.label_studio, label_studio_json(table))
    write_text(args.label_studio_config, label_studio_config(classes))
    write_figure(args.thumbnails, thumbnails_figure(table, settings.thumbnails))

    oof = read_oof(args.oof, classes, expected_ids=ids, labels_path=args.labels)
    # train's own out-of-fold probabilities: averaging 3 or 5 fold assignments was within noise of
    # them on held-out halves of the development photos (docs/labelling.md, "Labels to check")
    check = label_check(oof.probabilities, targets, settings.check_score, classes,
                        min_labels=params.calibrate.min_labels)
    write_csv(args.check, check_table(check, ids, targets, classes))

    curve = learning_curve(train_features, targets, classes, params.svm, folds=settings.curve_folds,
                           seed=settings.seed, labels=labels)
    write_csv(args.curve, learning_curve_table(curve))
    write_figure(args.curve_png, learning_curve_figure(curve))
    write_csv(args.class_gains, curve.per_class.sort_values("ap_gain_per_10_positives", ascending=False))
    forecast = dict(zip(curve.forecast["scale"], curve.forecast["map_predicted"]))
    numbers = {"cv_map": _number(curve.summary["map_mean"].iloc[-1]), "map_at_1_5x": _number(forecast.get(1.5)),
               "map_at_2x": _number(forecast.get(2.0)), "pool": int(len(pool_ids))}
    write_json(args.metrics, {key: value for key, value in numbers.items() if value is not None})
    print(f"suggest: {len(table)} of {len(pool_ids)} pool images suggested ({settings.strategy}) -> {args.next}; "
          f"labels to check -> {args.check}; cross-validated mAP {curve.summary['map_mean'].iloc[-1]:.3f}, "
          f"forecast {_number(forecast.get(1.5))} at 1.5x and {_number(forecast.get(2.0))} at 2x the labels")


def _number(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


if __name__ == "__main__":
    run_main(main)

"""evaluate: multilabel metrics, per-class tables, predictions and plots on the eval set.

Reports the ranking quality (mAP, the VOC07 11-point mAP and a bootstrap 95% interval)
and the labelling quality of three decision rules over the same probabilities: the
calibrated rule (thresholds.json), 0.5 for every class, and 0.5 plus the top class when no
class passes, so what calibration buys is always visible. Difficult-only (``0``) entries
are ignored per class, as the VOC devkit does. With ``--images`` and ``--heatmaps-png``:
class heatmaps of ``evaluate.heatmap_photos`` eval photos (a figure of true positives, false
positives and misses) and, with ``--annotations`` holding boxes, the pointing game on them.
"""
from __future__ import annotations

import argparse

from fewlabel.errors import PipelineError, run_main
from fewlabel.evaluation import (
    compared_rules,
    confusion_grid_figure,
    heatmap_figure,
    heatmap_report,
    confusion_records,
    evaluate,
    headline,
    label_count_figure,
    label_count_table,
    pr_curves,
)
from fewlabel.artifacts import feature_signature, probability_table, read_features, read_label_table
from fewlabel.io import read_json, write_csv, write_csv_dir, write_json
from fewlabel.model.rules import apply_rule, load_rule
from fewlabel.model.svm import load_model, positive_probabilities
from fewlabel.params import load_params
from fewlabel.plots import write_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--model", "--thresholds", "--features", "--meta", "--labels", "--metrics-out", "--scores-out",
                 "--per-class-out", "--predictions-out", "--confusion-dir", "--pr-dir", "--confusion-png",
                 "--label-counts-out", "--label-counts-png"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--images", help="the eval photos' folder (JPEGImages), for the heatmaps")
    parser.add_argument("--annotations", help="the VOC Annotations folder: boxes for the pointing game")
    parser.add_argument("--heatmaps-png", help="the heatmaps figure to write (with --images)")
    args = parser.parse_args()

    params = load_params()
    classes = params.data.classes
    bundle = load_model(args.model, classes, feature_signature(read_json(args.meta)))
    rule = load_rule(args.thresholds, classes, model_path=args.model)
    ids, labels = read_label_table(args.labels, classes)
    _, features = read_features(args.features, expected_ids=ids)

    probabilities = positive_probabilities(bundle["model"], features)
    metrics, per_class = evaluate(labels, probabilities, rule, classes, params.evaluate)
    metrics = {"n_train": bundle["n_train"], "n_eval": len(ids), **metrics}
    predicted = apply_rule(probabilities, rule)
    label_counts = label_count_table(labels, predicted)

    write_csv(args.predictions_out, probability_table({"image_id": ids}, classes, probabilities, decisions=predicted))
    write_csv(args.per_class_out, per_class)
    write_csv_dir(args.confusion_dir, confusion_records(labels, predicted, classes))
    write_csv_dir(args.pr_dir, pr_curves(labels, probabilities, classes))
    write_figure(args.confusion_png, confusion_grid_figure(per_class))
    write_csv(args.label_counts_out, label_counts)
    write_figure(args.label_counts_png, label_count_figure(label_counts))
    if args.heatmaps_png:
        metrics["pointing_game"] = write_heatmaps(args, params, ids, labels, predicted)
    write_json(args.scores_out, metrics)
    write_json(args.metrics_out, headline(metrics))
    print(f"evaluate: {len(ids)} images, mAP {metrics['map']}")
    for name in compared_rules(rule):
        scores = metrics[name]
        print(f"  {name}: F1 micro {scores['f1_micro']}, macro {scores['f1_macro']}, Dice {scores['dice']}, "
              f"Jaccard {scores['jaccard']}, no label {scores['empty_rate']}")
    if metrics.get("pointing_game"):
        game = metrics["pointing_game"]
        print(f"  pointing game on {game['n_photos']} photos: {game['accuracy']} (image centre: "
              f"{game['centre_baseline']})")


def write_heatmaps(args, params, ids, labels, predicted) -> dict | None:
    """plots/heatmaps.png (an empty figure when evaluate.heatmap_photos is 0) and the pointing game."""
    if not args.images:
        raise PipelineError("--heatmaps-png needs --images (the eval photos' folder)")
    figure, pointing = None, None
    if params.evaluate.heatmap_photos:
        # here, not at the top: only the maps need the classifier (and TensorFlow: seconds to start)
        from pathlib import Path

        from fewlabel.api import load
        from fewlabel.data.images import subset_image_paths

        classifier = load(".", model=args.model, thresholds=args.thresholds, meta=args.meta)
        _, paths, _ = subset_image_paths(Path(args.images), Path(args.labels))
        figure, pointing = heatmap_report(classifier, ids, paths, labels, predicted, args.annotations,
                                          params.evaluate.heatmap_photos, params.evaluate.seed)
    write_figure(args.heatmaps_png, figure if figure is not None else heatmap_figure([], {}, ids, params.data.classes))
    return pointing


if __name__ == "__main__":
    run_main(main)

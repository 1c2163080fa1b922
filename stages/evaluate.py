"""evaluate: multilabel metrics, per-class tables, predictions and plots on the eval set.

Reports the ranking quality (mAP, the VOC07 11-point mAP and a bootstrap 95% interval)
and the thresholded quality twice: with the calibrated thresholds and with 0.5 for every
class, so the effect of calibration is always visible. Difficult-only (``0``) entries are
ignored per class, as the VOC devkit does.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from stages.common import (PipelineError, feature_signature, load_features, panel_grid, read_json,
                           read_label_table, run_main, write_csv, write_csv_dir, write_figure, write_json)
from stages.calibrate import DEFAULT_THRESHOLD
from stages.metrics import (bootstrap_map_ci, fbeta_from_counts, mean_ap, multilabel_scores, per_class_ap,
                            per_class_confusion, precision_recall_points, threshold_predictions)
from stages.model import load_model, positive_probabilities
from stages.params import EvaluateParams, load_params


def load_thresholds(path: str, classes) -> np.ndarray:
    """Per-class thresholds from calibrate's thresholds.json, in class order."""
    record = read_json(path)
    missing = [c for c in classes if c not in record.get("thresholds", {})]
    if missing:
        raise PipelineError(f"{path}: has no threshold for {', '.join(missing)}; rerun calibrate (dvc repro)")
    return np.array([record["thresholds"][c] for c in classes], dtype=float)


def evaluate(labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, classes,
             params: EvaluateParams) -> tuple[dict, pd.DataFrame]:
    """The metrics.json content (without the counts) and the per-class table."""
    low, high = bootstrap_map_ci(labels, probabilities, params.bootstrap, params.seed)
    metrics = {
        "map": mean_ap(labels, probabilities),
        "map_voc07": mean_ap(labels, probabilities, voc07=True),
        # A mapping, not [low, high]: DVC's metrics show / exp show / diff drop list values.
        "map_ci95": {"low": low, "high": high},
        "calibrated": multilabel_scores(labels, probabilities, thresholds, params.top_k),
        "default_threshold": multilabel_scores(labels, probabilities, np.full(len(classes), DEFAULT_THRESHOLD),
                                               params.top_k),
    }
    predicted = threshold_predictions(probabilities, thresholds)
    confusion = per_class_confusion(labels, predicted)
    default_confusion = per_class_confusion(labels, threshold_predictions(probabilities, DEFAULT_THRESHOLD))
    tn, fp, fn, tp = (confusion[:, i, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))

    def f1(counts):
        return fbeta_from_counts(counts[:, 1, 1], counts[:, 0, 1], counts[:, 1, 0])

    per_class = pd.DataFrame({
        "class": list(classes),
        "support": (labels == 1).sum(axis=0),
        "ignored": (labels == 0).sum(axis=0),
        "ap": per_class_ap(labels, probabilities),
        "ap_voc07": per_class_ap(labels, probabilities, voc07=True),
        "threshold": thresholds,
        "f1": f1(confusion),
        "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0),
        "recall": np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0),
        "f1_at_0.5": f1(default_confusion),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    })
    return _rounded(metrics), per_class


def _rounded(value):
    """Round floats for a readable, diff-friendly metrics.json (nan becomes null)."""
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else round(float(value), 6)
    return value


def predictions_table(ids, probabilities: np.ndarray, predicted: np.ndarray, classes) -> pd.DataFrame:
    """``image_id, p_<class>..., y_<class>...`` (y: 0/1 after the calibrated threshold)."""
    table = pd.DataFrame({"image_id": ids})
    for c, name in enumerate(classes):
        table[f"p_{name}"] = probabilities[:, c]
    for c, name in enumerate(classes):
        table[f"y_{name}"] = predicted[:, c]
    return table


def confusion_records(labels: np.ndarray, predicted: np.ndarray, classes) -> dict[str, pd.DataFrame]:
    """Per class, one record per scored image with ``actual``/``predicted`` (DVC confusion template)."""
    names = np.array(["absent", "present"])
    records = {}
    for c, name in enumerate(classes):
        scored = labels[:, c] != 0
        records[name] = pd.DataFrame({"actual": names[(labels[scored, c] == 1).astype(int)],
                                      "predicted": names[predicted[scored, c]]})
    return records


def pr_curves(labels: np.ndarray, probabilities: np.ndarray, classes) -> dict[str, pd.DataFrame]:
    """Per class, precision-recall points (ignored cells left out)."""
    curves = {}
    for c, name in enumerate(classes):
        scored = labels[:, c] != 0
        points = precision_recall_points(labels[scored, c] == 1, probabilities[scored, c])
        curves[name] = pd.DataFrame(points)[["recall", "precision", "threshold"]]
    return curves


def confusion_grid_figure(per_class: pd.DataFrame):
    """All per-class 2x2 confusion matrices with counts, in one figure (4 x 5 for VOC)."""
    figure, axes = panel_grid(len(per_class), panel_size=(2.6, 2.6))
    for axis, row in zip(axes, per_class.itertuples()):
        matrix = np.array([[row.tn, row.fp], [row.fn, row.tp]])
        # Shade by row (the share of absent / present images predicted each way), so the
        # rare "present" row is as visible as the large "absent" one.
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix):
            axis.text(j, i, str(count), ha="center", va="center", fontsize=10,
                      color="white" if shares[i, j] > 0.5 else "black")
        axis.set_xticks([0, 1], ["absent", "present"], fontsize=7)
        axis.set_yticks([0, 1], ["absent", "present"], fontsize=7)
        axis.set_title(f"{row._1} (t={row.threshold:.2f}, F1={row.f1:.2f})", fontsize=8)
    figure.supxlabel("predicted")
    figure.supylabel("actual")
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--model", "--thresholds", "--features", "--meta", "--labels", "--metrics-out",
                 "--per-class-out", "--predictions-out", "--confusion-dir", "--pr-dir", "--confusion-png"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()

    params = load_params()
    classes = params.data.classes
    bundle = load_model(args.model, classes, feature_signature(read_json(args.meta)))
    thresholds = load_thresholds(args.thresholds, classes)
    ids, labels = read_label_table(args.labels, classes)
    _, features = load_features(args.features, expected_ids=ids)

    probabilities = positive_probabilities(bundle["model"], features)
    metrics, per_class = evaluate(labels, probabilities, thresholds, classes, params.evaluate)
    metrics = {"n_train": bundle["n_train"], "n_eval": len(ids), **metrics}
    predicted = threshold_predictions(probabilities, thresholds)

    write_csv(args.predictions_out, predictions_table(ids, probabilities, predicted, classes))
    write_csv(args.per_class_out, per_class)
    write_csv_dir(args.confusion_dir, confusion_records(labels, predicted, classes))
    write_csv_dir(args.pr_dir, pr_curves(labels, probabilities, classes))
    write_figure(args.confusion_png, confusion_grid_figure(per_class))
    write_json(args.metrics_out, metrics)
    calibrated, default = metrics["calibrated"], metrics["default_threshold"]
    print(f"evaluate: {len(ids)} images, mAP {metrics['map']}, F1 micro {calibrated['f1_micro']} "
          f"(0.5: {default['f1_micro']}), Dice {calibrated['dice']} (0.5: {default['dice']})")


if __name__ == "__main__":
    run_main(main)

"""Evaluation: ranking and thresholded metrics of the decision rule (and of fixed rules beside it,
so what calibration buys is visible), per-class tables, confusion records and figures.

Difficult-only (``0``) entries are ignored, as the VOC devkit does (:mod:`fewlabel.metrics`).
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from fewlabel.plots import panel_grid, pyplot
from fewlabel.model.rules import DEFAULT_THRESHOLD, DecisionRule, apply_rule
from fewlabel.metrics import (bootstrap_map_ci, fbeta_from_counts, mean_ap, multilabel_scores, per_class_ap,
                            per_class_confusion, precision_recall_points)
from fewlabel.params import EvaluateParams


def compared_rules(calibrated: DecisionRule) -> dict[str, DecisionRule]:
    """The rules metrics.json reports, by name: the calibrated one and two 0.5 baselines."""
    n_classes = len(calibrated.thresholds)
    return {
        "calibrated": calibrated,
        "default_threshold": DecisionRule.uniform(n_classes, DEFAULT_THRESHOLD),
        "default_threshold_top1": DecisionRule.uniform(n_classes, DEFAULT_THRESHOLD, min_labels=1),
    }


def rule_metrics(labels: np.ndarray, probabilities: np.ndarray, rule: DecisionRule,
                 top_k=(1, 3)) -> dict[str, dict[str, float]]:
    """Per compared rule (:func:`compared_rules`), :func:`multilabel_scores` of its predictions.

    ``labels`` hold VOC codes (1 / 0 ignored / -1); each rule's scores hold f1_micro,
    f1_macro, dice, jaccard, precision_at_<k>, hamming_loss, subset_accuracy, empty_rate.
    """
    return {name: multilabel_scores(labels, probabilities, apply_rule(probabilities, compared), top_k)
            for name, compared in compared_rules(rule).items()}


def evaluate(labels: np.ndarray, probabilities: np.ndarray, rule: DecisionRule, classes,
             params: EvaluateParams) -> tuple[dict, pd.DataFrame]:
    """Every score (scores.json, without the counts) and the per-class table."""
    low, high = bootstrap_map_ci(labels, probabilities, params.bootstrap, params.seed)
    metrics = {
        "map": mean_ap(labels, probabilities),
        "map_voc07": mean_ap(labels, probabilities, voc07=True),
        # A mapping, not [low, high]: DVC's metrics show / exp show / diff drop list values.
        "map_ci95": {"low": low, "high": high},
        **rule_metrics(labels, probabilities, rule, params.top_k),
    }
    confusion = per_class_confusion(labels, apply_rule(probabilities, rule))
    default_rule = compared_rules(rule)["default_threshold"]
    default_confusion = per_class_confusion(labels, apply_rule(probabilities, default_rule))
    tn, fp, fn, tp = (confusion[:, i, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))

    def f1(counts):
        return fbeta_from_counts(counts[:, 1, 1], counts[:, 0, 1], counts[:, 1, 0])

    per_class = pd.DataFrame({
        "class": list(classes),
        "support": (labels == 1).sum(axis=0),
        "ignored": (labels == 0).sum(axis=0),
        "ap": per_class_ap(labels, probabilities),
        "ap_voc07": per_class_ap(labels, probabilities, voc07=True),
        "threshold": rule.thresholds,
        "f1": f1(confusion),
        "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0),
        "recall": np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0),
        "f1_at_0.5": f1(default_confusion),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    })
    return _rounded(metrics), per_class


def headline(scores: dict) -> dict[str, float]:
    """metrics.json: what a user compares first, from :func:`evaluate`'s scores: mAP and the
    calibrated rule's micro-F1, Dice, Jaccard and precision@1, under short keys.

    DVC's ``metrics show`` / ``exp show`` sort files by path and keys by name, so a small
    metrics/metrics.json puts these five columns first; metrics/scores.json holds the rest.
    """
    calibrated = scores["calibrated"]
    record = {"map": scores["map"], "f1": calibrated["f1_micro"], "dice": calibrated["dice"],
              "jaccard": calibrated["jaccard"]}
    if "precision_at_1" in calibrated:
        record["p_at_1"] = calibrated["precision_at_1"]
    return record


def _rounded(value):
    """Round floats for a readable, diff-friendly metrics.json (nan becomes null)."""
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else round(float(value), 6)
    return value


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


def label_count_table(labels: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """Images per number of labels: ``labels_per_image, actual, predicted``.

    ``actual`` counts the present (``1``) classes of each image, ``predicted`` its predicted
    classes; rows run from 0 to the largest count seen.
    """
    actual = np.bincount((labels == 1).sum(axis=1), minlength=labels.shape[1] + 1)
    predicted_counts = np.bincount(np.asarray(predicted).sum(axis=1), minlength=labels.shape[1] + 1)
    last = int(np.flatnonzero((actual > 0) | (predicted_counts > 0)).max(initial=0))
    return pd.DataFrame({"labels_per_image": np.arange(last + 1), "actual": actual[:last + 1],
                         "predicted": predicted_counts[:last + 1]})


def label_count_figure(table: pd.DataFrame):
    """Bars of the images per label count, actual against predicted by the calibrated rule."""
    figure, axis = pyplot().subplots(figsize=(5, 3))
    x = table["labels_per_image"].to_numpy()
    axis.bar(x - 0.2, table["actual"], width=0.4, label="actual", color="tab:gray")
    axis.bar(x + 0.2, table["predicted"], width=0.4, label="predicted (calibrated rule)", color="tab:blue")
    axis.set_xticks(x)
    axis.set_xlabel("labels per image")
    axis.set_ylabel("images")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


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


#: What plots/heatmaps.png shows, per kind, at most: photos of the evaluation set.
HEATMAP_PANELS = 4
HEATMAP_KINDS = ("true positive", "false positive", "miss")


def heatmap_sample(labels: np.ndarray, predicted: np.ndarray, n_photos: int, seed: int = 0
                   ) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """(rows of ``n_photos`` eval photos to map, in order; the figure's panels as (row, class, kind)).

    The panels: up to ``HEATMAP_PANELS`` (photo, class) pairs of each kind (a predicted class
    present, a predicted class absent, a missed class present), drawn with ``seed`` (a fixed
    sample: the same photos from run to run while the labels and rule stay); the other rows
    are drawn at random among the rest, for the pointing game."""
    rng = np.random.default_rng(seed)
    kinds = {"true positive": (predicted == 1) & (labels == 1), "false positive": (predicted == 1) & (labels == -1),
             "miss": (predicted == 0) & (labels == 1)}
    panels = []
    for kind in HEATMAP_KINDS:
        pairs = np.argwhere(kinds[kind])
        for row, c in pairs[rng.permutation(len(pairs))[:min(HEATMAP_PANELS, n_photos // len(HEATMAP_KINDS))]]:
            panels.append((int(row), int(c), kind))
    chosen = list(dict.fromkeys(row for row, _, _ in panels))
    others = [int(r) for r in rng.permutation(len(labels)) if int(r) not in set(chosen)]
    return np.array(sorted(chosen + others[:max(0, n_photos - len(chosen))]), dtype=int), panels


def heatmap_figure(panels: list[tuple[int, int, str]], heatmaps: dict, ids, classes):
    """The figure of plots/heatmaps.png: per panel, the photo with its class's map over it."""
    from fewlabel.overlays import overlay_image

    figure, axes = panel_grid(max(len(panels), 1), (3.2, 3.0), columns=HEATMAP_PANELS)
    for axis, (row, c, kind) in zip(axes, panels):
        heatmap = heatmaps[row]
        axis.imshow(np.asarray(overlay_image(heatmap, [c], classes, caption=False)))
        axis.set_title(f"{ids[row]}: {classes[c]} ({kind}, p {heatmap.probabilities[c]:.2f})", fontsize=8)
        axis.axis("off")
    if not panels:
        axes[0].text(0.5, 0.5, "no photo to map", ha="center", va="center")
        axes[0].axis("off")
    figure.suptitle("where the model sees each class (fewlabel.heatmaps): true positives, false positives, misses")
    return figure


def pointing_scores(heatmaps: dict, labels: np.ndarray, boxes: dict[int, dict], classes) -> dict | None:
    """The pointing game (and the centre baseline) over the mapped photos' present classes with
    boxes, as % (mean over classes); None when no photo has a box."""
    from fewlabel import pointing

    hits, centre = [], []
    for row, heatmap in heatmaps.items():
        for c, name in enumerate(classes):
            photo_boxes = boxes.get(row, {}).get(name)
            if labels[row, c] != 1 or not photo_boxes:
                continue
            hits.append((name, pointing.hit(pointing.peak(heatmap.maps([c])[0]), photo_boxes)))
            centre.append((name, pointing.hit(((heatmap.width - 1) / 2, (heatmap.height - 1) / 2), photo_boxes)))
    if not hits:
        return None
    return {"accuracy": round(100 * pointing.class_mean(hits), 2),
            "centre_baseline": round(100 * pointing.class_mean(centre), 2),
            "n_photos": len(heatmaps), "n_pairs": len(hits)}


def heatmap_report(classifier, ids, paths: list[str], labels: np.ndarray, predicted: np.ndarray,
                   annotations, n_photos: int, seed: int = 0):
    """plots/heatmaps.png's figure and the pointing game (None without boxes) on ``n_photos``
    eval photos (:func:`heatmap_sample`), their maps from :meth:`fewlabel.api.Classifier.heatmaps`;
    boxes from ``annotations`` (the VOC Annotations folder; None: no pointing game)."""
    from pathlib import Path

    from fewlabel.data.voc import class_matcher, match_class
    from fewlabel.pointing import parse_boxes

    rows, panels = heatmap_sample(labels, predicted, n_photos, seed)
    by_path = {}
    for heatmap in classifier.heatmaps([paths[r] for r in rows]):
        by_path[heatmap.path] = heatmap
    heatmaps = {int(r): by_path[paths[r]] for r in rows if paths[r] in by_path}
    figure = heatmap_figure([p for p in panels if p[0] in heatmaps], heatmaps, ids, list(classifier.classes))
    boxes, matcher = {}, class_matcher(classifier.classes)
    for row in heatmaps:
        xml = Path(annotations) / f"{ids[row]}.xml" if annotations is not None else None
        if xml is not None and xml.is_file():
            per_class = {}
            for name, found in parse_boxes(xml.read_bytes(), str(xml)).items():
                matched = match_class(name, matcher)
                if matched is not None:
                    per_class.setdefault(matched, []).extend(found)
            boxes[row] = per_class
    return figure, pointing_scores(heatmaps, labels, boxes, list(classifier.classes))

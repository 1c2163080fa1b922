"""What the suggest stage writes: the ranked suggestions, a Label Studio import file with the
model's labels as pre-annotations (so labelling is correcting), the labels to check, the
learning curve, and thumbnails of the top suggestions."""
from __future__ import annotations

import json
import os
import textwrap
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from fewlabel.active.label_check import LabelCheck
from fewlabel.artifacts import probability_table
from fewlabel.active.learning_curve import LearningCurve
from fewlabel.active.strategies import Ranking
from fewlabel.model.rules import DecisionRule, apply_rule
from fewlabel.plots import panel_grid, pyplot

#: The names the Label Studio config gives its image and its choices (the import file uses them).
LS_IMAGE, LS_CHOICES = "image", "labels"


def _label_names(row, classes) -> str:
    return " ".join(c for c, on in zip(classes, row) if on)


def suggestion_table(ranking: Ranking, ids, paths, probabilities: np.ndarray, rule: DecisionRule,
                     classes) -> pd.DataFrame:
    """One row per suggested image, best first: rank, image_id, path, score, why (the classes in
    doubt), the model's labels under the calibrated rule, and every class's probability."""
    rows = ranking.indices
    chosen = probabilities[rows]
    predicted = apply_rule(chosen, rule) if len(rows) else np.zeros((0, len(classes)), dtype=int)
    return probability_table({"rank": np.arange(1, len(rows) + 1), "image_id": np.asarray(ids, dtype=str)[rows],
                              "path": np.asarray(paths, dtype=str)[rows], "score": ranking.scores,
                              "why": ranking.why, "labels": [_label_names(r, classes) for r in predicted]},
                             classes, chosen)


def label_studio_config(classes) -> str:
    """The labelling config to paste into a Label Studio project (Settings > Labeling Interface)."""
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in classes)
    return (f'<View>\n  <Image name="{LS_IMAGE}" value="${LS_IMAGE}"/>\n'
            f'  <Choices name="{LS_CHOICES}" toName="{LS_IMAGE}" choice="multiple" showInLine="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def label_studio_tasks(table: pd.DataFrame) -> list[dict]:
    """Label Studio tasks (JSON import) for the suggestions, each with the model's labels as a
    prediction. Images are Label Studio local files: ``/data/local-files/?d=<absolute path>``, the
    path with symbolic links resolved, as Label Studio's document root ``/`` (its default) serves
    them once a Local Storage holds their folder (``fewlabel labels push`` adds it)."""
    tasks = []
    for row in table.itertuples(index=False):
        path = quote(os.path.realpath(str(row.path)).lstrip(os.sep).replace(os.sep, "/"), safe="/")
        tasks.append({
            "data": {LS_IMAGE: f"/data/local-files/?d={path}", "image_id": row.image_id, "rank": int(row.rank),
                     "why": row.why},
            "predictions": [{"model_version": "fewlabel", "score": float(row.score), "result": [
                {"from_name": LS_CHOICES, "to_name": LS_IMAGE, "type": "choices",
                 "value": {"choices": row.labels.split()}}]}],
        })
    return tasks


def label_studio_json(table: pd.DataFrame) -> str:
    return json.dumps(label_studio_tasks(table), indent=1) + "\n"


def check_table(check: LabelCheck, ids, targets: np.ndarray, classes) -> pd.DataFrame:
    """Training images whose labels the out-of-fold probabilities contradict most, first: rank,
    image_id, score, the classes in doubt, and the labels as given."""
    order = check.order
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "image_id": np.asarray(ids, dtype=str)[order],
                         "score": check.scores[order], "doubt": [check.doubt[i] for i in order],
                         "labels": [_label_names(targets[i], classes) for i in order]})


def learning_curve_table(curve: LearningCurve) -> pd.DataFrame:
    """The DVC plot of the learning curve: cross-validated mAP at each training size, measured and
    forecast by the fitted saturating curve (``kind``)."""
    measured = pd.DataFrame({"n_train": curve.summary["n_train"].round(1), "map": curve.summary["map_mean"],
                             "map_sd": curve.summary["map_sd"], "kind": "measured"})
    forecast = pd.DataFrame({"n_train": curve.forecast["n_train"].round(1), "map": curve.forecast["map_predicted"],
                             "map_sd": np.nan, "kind": "forecast"})
    return pd.concat([measured, forecast], ignore_index=True)


def learning_curve_figure(curve: LearningCurve):
    """mAP against training images: the cross-validated points (± sd), the fitted curve, the forecast."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    summary = curve.summary
    axis.errorbar(summary["n_train"], summary["map_mean"], yerr=summary["map_sd"].fillna(0), fmt="o",
                  label="cross-validated (nested fractions)")
    if curve.fit.get("ok"):
        from fewlabel.active.learning_curve import saturating
        n = np.linspace(summary["n_train"].min(), curve.forecast["n_train"].max(), 100)
        axis.plot(n, saturating(n, curve.fit["a"], curve.fit["b"], curve.fit["c"]), "-", alpha=0.6,
                  label="fitted a - b n^-c")
        axis.plot(curve.forecast["n_train"], curve.forecast["map_predicted"], "s", label="forecast")
    axis.set_xlabel("training images")
    axis.set_ylabel("mAP")
    axis.set_title("what more labels would buy")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def thumbnail_title(row, width: int = 34) -> str:
    """Rank and id, the predicted labels wrapped to the thumbnail's width (at most 3 lines), and
    ``why`` on one line, cut at a word with an ellipsis (never mid-number)."""
    labels = textwrap.wrap(row.labels or "(none)", width, max_lines=3, placeholder=" …")
    why = textwrap.shorten(str(row.why), width, placeholder=" …")
    return "\n".join([f"#{row.rank} {row.image_id}", *labels, why])


def thumbnails_figure(table: pd.DataFrame, n: int, columns: int = 6):
    """The top ``n`` suggestions as thumbnails titled with rank, predicted labels and why."""
    from PIL import Image
    shown = table.head(n)
    figure, axes = panel_grid(max(len(shown), 1), (2.4, 3.0), columns=columns)
    for axis, row in zip(axes, shown.itertuples(index=False)):
        axis.axis("off")
        try:
            with Image.open(row.path) as image:
                image.thumbnail((256, 256))
                axis.imshow(np.asarray(image.convert("RGB")))
        except OSError:
            axis.text(0.5, 0.5, "unreadable", ha="center", va="center")
        axis.set_title(thumbnail_title(row), fontsize=6)
    if shown.empty:
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, "no pool: set data.pool_split or data.pool_images", ha="center", va="center")
    return figure

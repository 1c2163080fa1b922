"""Choosing the views (``features.image_size: auto``) by cross-validated mAP on the training
images, and featurizing a train and an eval subset with the chosen ones."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fewlabel.features.engine import Engine, resolve_engine
from fewlabel.features.extract import extract_features, extract_views, resolve_runtime, view_caches
from fewlabel.features.int8 import calibrate
from fewlabel.features.recipes import Recipe, assemble, candidate_recipes, fixed_recipes
from fewlabel.features.runtimes import RuntimeChoice, cpu_kind
from fewlabel.features.screening import screen_images
from fewlabel.io import training_targets
from fewlabel.params import FeaturesParams, SvmParams, TuneParams


# The classifier that scores candidate views: the default svm.* settings, fixed here (not read
# from svm.*) so that changing an SVM setting never reruns featurize; 'median' gamma adapts
# to each view's feature scale.
SELECTION_SVM = SvmParams(C=1.0, gamma="median", scaler="sqrt", approximation="auto")


def score_candidates(candidates: list[list[Recipe]], view_features: dict, targets: np.ndarray, classes,
                     folds: int) -> pd.DataFrame:
    """Cross-validated mAP of each candidate on the training images (``targets`` 0/1).

    Uses :data:`SELECTION_SVM` and the same folds for every candidate.
    """
    from fewlabel.model.svm import tune_grid
    grid = TuneParams(enabled=True, C=(SELECTION_SVM.C,), gamma=(SELECTION_SVM.gamma,), folds=folds)
    rows = []
    for candidate in candidates:
        scores = tune_grid(assemble(candidate, view_features), targets, SELECTION_SVM, grid, classes)
        rows.append({"candidate": " | ".join(r.label for r in candidate),
                     "input_sizes": [list(r.sizes) for r in candidate],
                     "cost": round(sum(r.cost for r in candidate), 3),
                     "cv_map": float(scores["map_mean"].iloc[0]), "cv_map_std": float(scores["map_std"].iloc[0])})
    return pd.DataFrame(rows)


def candidate_views(params: FeaturesParams) -> dict[str, list]:
    """Per backbone, every view some candidate of ``image_size: auto`` uses."""
    backbone_views: dict[str, set] = {}
    for candidate in candidate_recipes(params):
        for recipe in candidate:
            backbone_views.setdefault(recipe.backbone, set()).update(recipe.views())
    return {backbone: sorted(views) for backbone, views in backbone_views.items()}


def choose_recipes(train_paths: list[str], train_targets: np.ndarray, params: FeaturesParams, classes,
                   progress: bool = True, engine: Engine = Engine(),
                   runtime: RuntimeChoice | None = None) -> tuple[list[Recipe], pd.DataFrame, dict]:
    """``image_size: auto``: the candidate with the best cross-validated mAP on the training
    images (the cheaper one on a tie). Only training images and their labels are read.
    Returns (chosen recipes, the scored candidates, extraction stats)."""
    candidates = candidate_recipes(params)
    view_features, stats = extract_views(train_paths, candidate_views(params),
                                         params.weights, params.batch_size, progress,
                                         runtime or resolve_runtime(params), engine)
    table = score_candidates(candidates, view_features, train_targets, classes, params.select_folds)
    best = max(range(len(candidates)), key=lambda i: (round(table["cv_map"][i], 6), -table["cost"][i]))
    table["chosen"] = [i == best for i in range(len(candidates))]
    return candidates[best], table, stats


@dataclass
class Featurized:
    train: np.ndarray
    eval: np.ndarray
    recipes: list[Recipe]
    selection: pd.DataFrame | None
    stats: dict


def featurize_subsets(train_paths: list[str], train_labels: np.ndarray, eval_paths: list[str],
                      params: FeaturesParams, classes, progress: bool = True) -> Featurized:
    """Features of the train and eval images, choosing the views first if ``image_size: auto``.

    ``train_labels`` (VOC codes) are read only to choose views; eval labels are never needed.
    The work runs on ``features.engine`` (see :mod:`fewlabel.features.engine`).
    """
    engine = resolve_engine(params.engine, params.workers)
    runtime = calibrate(resolve_runtime(params), train_paths)  # INT8: on training images only
    selection = None
    if params.image_size == "auto":
        # every image checked at once, before the views are chosen on the training images
        screen_images(list(train_paths) + list(eval_paths),
                      view_caches(candidate_views(params), params.weights, runtime))
        recipes, selection, _ = choose_recipes(train_paths, training_targets(train_labels), params, classes,
                                               progress, engine, runtime)
    else:
        recipes = fixed_recipes(params)
    features, stats = extract_features(list(train_paths) + list(eval_paths), params, progress, recipes, engine,
                                       runtime=runtime)
    n_train = len(train_paths)
    return Featurized(features[:n_train], features[n_train:], recipes, selection, stats)


def build_run_stats(params: FeaturesParams, result: Featurized) -> dict:
    """reports/featurize.json (not a DVC metric: it holds text): how this run went (device, speed, cache use, the view choice)."""
    stats = result.stats
    record = {
        "device": stats["device"],
        # what ran: features.runtime as resolved on this machine (auto: and why)
        "runtime": stats["runtime"].runtime,
        "precision": stats["runtime"].precision,
        "runtime_requested": stats["runtime"].requested,
        "runtime_note": stats["runtime"].note,
        "cpu_kind": cpu_kind(),  # what auto's rule saw (fewlabel.features.runtimes.AUTO_RULE)
        "engine": stats["engine"],
        "batch_size": params.batch_size,
        "n_train": len(result.train),
        "n_eval": len(result.eval),
        "n_extracted": stats["n_extracted"],
        "n_cached": stats["n_cached"],
        "images_per_second": _round(stats["images_per_second"]),
        "views": " | ".join(r.label for r in result.recipes),
        # strings, not lists: DVC's metrics show / exp show drop list values
        "per_backbone": {i["name"]: {"views": " ".join(i["views"]), "n_extracted": i["n_extracted"],
                                     "n_cached": i["n_cached"], "images_per_second": _round(i["images_per_second"])}
                         for i in stats["per_backbone"]},
    }
    if result.selection is not None:
        # keyed by candidate (not a list), so dvc metrics show / exp show list every score
        record["view_selection"] = {
            "folds": params.select_folds,
            "classifier": f"SVC(rbf, C={SELECTION_SVM.C:g}, gamma={SELECTION_SVM.gamma}, "
                          f"scaler={SELECTION_SVM.scaler})",
            "chosen": result.selection.loc[result.selection["chosen"], "candidate"].iloc[0],
            "candidates": {row.candidate: {"cv_map": round(row.cv_map, 6), "cv_map_std": round(row.cv_map_std, 6),
                                           "cost": row.cost, "chosen": bool(row.chosen)}
                           for row in result.selection.itertuples()}}
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)

"""Choosing the views (``features.image_size: auto``) by cross-validated mAP on the training
images."""
from __future__ import annotations

import numpy as np
import pandas as pd

from fewlabel.features.engine import Engine
from fewlabel.features.extract import extract_views, resolve_runtime
from fewlabel.features.recipes import Recipe, assemble, candidate_recipes
from fewlabel.features.runtimes import RuntimeChoice
from fewlabel.params import FeaturesParams, SvmParams, TuneParams


# The classifier that scores candidate views: the schema's svm.* defaults, not the svm.* read
# from params.yaml, so that changing an SVM setting never reruns featurize; 'median' gamma
# adapts to each view's feature scale.
SELECTION_SVM = SvmParams()


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

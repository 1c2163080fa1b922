"""Training: one probabilistic SVM per class, its out-of-fold probabilities, the optional grid
search, and what train writes besides the model (the out-of-fold table, the tuning heat map).

See :mod:`fewlabel.model.svm` for the model itself.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from fewlabel.errors import PipelineError
from fewlabel.artifacts import lacking_kind, training_targets
from fewlabel.model.svm import (RANDOM_STATE, build_model, describe_kernel_method, for_training_set,
                          positive_probabilities, tune_grid)
from fewlabel.params import SvmParams, TuneParams
from fewlabel.model.folds import check_folds, multilabel_kfold



def check_targets(targets: np.ndarray, classes) -> None:
    """Each class needs at least one positive and one negative training image."""
    for index, name in enumerate(classes):
        kind = lacking_kind(targets[:, index])
        if kind:
            raise PipelineError(
                f"class '{name}' has no {kind} training image among {len(targets)}: "
                f"raise subset.min_per_class or subset.n_images, or drop it from data.classes")


def out_of_fold_probabilities(features: np.ndarray, targets: np.ndarray, svm: SvmParams,
                              folds: np.ndarray) -> np.ndarray:
    """Probabilities for each image from a model trained on the other folds."""
    oof = np.zeros(targets.shape, dtype=float)
    for fold in np.unique(folds):
        held_out = folds == fold
        model = build_model(svm).fit(features[~held_out], targets[~held_out])
        oof[held_out] = positive_probabilities(model, features[held_out])
    return oof


def best_settings(grid: pd.DataFrame, svm: SvmParams) -> SvmParams:
    """The grid row with the best mean mAP (first one on ties), as SVM settings."""
    best = grid.loc[grid["map_mean"].idxmax()]
    gamma = best["gamma"]
    gamma = gamma if gamma in ("scale", "auto", "median") else float(gamma)
    return replace(svm, C=float(best["C"]), gamma=gamma, scaler=str(best["scaler"]))


@dataclass
class TrainResult:
    model: Pipeline
    svm: SvmParams  # as trained: tuned values, ``approximation`` resolved to exact or nystroem
    oof_probabilities: np.ndarray
    folds: np.ndarray
    grid: pd.DataFrame | None
    kernel: dict  # the kernel method and why (:func:`fewlabel.model.svm.describe_kernel_method`)


def train(features: np.ndarray, labels: np.ndarray, classes, svm: SvmParams, oof_folds: int,
          tune: TuneParams) -> TrainResult:
    """Fit the final model and the out-of-fold probabilities (after tuning, if enabled).

    ``labels`` holds VOC codes; difficult-only (0) counts as present for training.
    """
    targets = training_targets(labels)
    check_targets(targets, classes)
    kernel = describe_kernel_method(svm, len(features))
    svm = for_training_set(svm, len(features))
    grid = None
    if tune.enabled:
        grid = tune_grid(features, targets, svm, tune, classes)
        svm = best_settings(grid, svm)
    folds = multilabel_kfold(targets, oof_folds, seed=RANDOM_STATE)
    check_folds(targets, folds, classes, purpose=f"train.oof_folds={oof_folds}")
    oof = out_of_fold_probabilities(features, targets, svm, folds)
    model = build_model(svm).fit(features, targets)
    return TrainResult(model=model, svm=svm, oof_probabilities=oof, folds=folds, grid=grid, kernel=kernel)


#: plots/tune.csv's columns: the grid search's cross-validated mAP per setting
GRID_COLUMNS = ["scaler", "gamma", "C", "map_mean", "map_std"]


def tune_table(grid: pd.DataFrame | None) -> pd.DataFrame:
    """The grid search's table for the results page's heatmap; no rows when tuning is off
    (the page then draws nothing for it: no placeholder)."""
    return pd.DataFrame(columns=GRID_COLUMNS) if grid is None else grid[GRID_COLUMNS]


def kernel_summary(kernel: dict) -> str:
    """One line for the log: the kernel method and why it was chosen."""
    if kernel["method"] == "exact":
        return f"exact ({kernel['reason']})"
    return (f"approximate: Nystroem with {kernel['n_components']} landmarks + {kernel['classifier']} "
            f"({kernel['reason']})")

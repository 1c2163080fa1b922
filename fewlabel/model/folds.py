"""Cross-validation folds of a multilabel training set: iterative stratification (Sechidis,
Tsoumakas & Vlahavas, 2011), as :func:`fewlabel.data.stratify.stratified_subset` draws subsets."""
from __future__ import annotations

import numpy as np

from fewlabel.artifacts import lacking_kind
from fewlabel.errors import PipelineError


def multilabel_kfold(targets: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold number (0..n_folds-1) for each row of the 0/1 matrix ``targets``.

    Iterative stratification: repeatedly take the label with the fewest unassigned
    examples and give each such example to the fold that lacks that label most
    (ties: the fold lacking the most examples, then at random).
    """
    targets = np.asarray(targets, dtype=bool)
    n_samples = len(targets)
    if n_folds > n_samples:
        raise PipelineError(f"cannot split {n_samples} images into {n_folds} folds")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_samples)
    fold_need = np.full(n_folds, n_samples / n_folds)
    label_need = np.outer(np.full(n_folds, 1.0 / n_folds), targets.sum(axis=0))  # folds x labels
    folds = np.full(n_samples, -1)
    remaining = targets.copy()

    def assign(sample: int, label_wish: np.ndarray) -> None:
        best = np.flatnonzero(label_wish == label_wish.max())
        best = best[fold_need[best] == fold_need[best].max()]
        fold = best[rng.integers(len(best))] if len(best) > 1 else best[0]
        folds[sample] = fold
        fold_need[fold] -= 1
        label_need[fold] -= targets[sample]
        remaining[sample] = False

    while remaining.any():
        counts = remaining.sum(axis=0)
        label = np.flatnonzero(counts == counts[counts > 0].min())[0]
        for sample in order[remaining[order, label]]:
            assign(sample, label_need[:, label])
    for sample in order[folds[order] < 0]:  # rows with no label at all
        assign(sample, fold_need)
    return folds


def check_folds(targets: np.ndarray, folds: np.ndarray, class_names=None, purpose: str = "cross-validation") -> None:
    """Every training part of every fold must hold a positive and a negative of each class."""
    targets = np.asarray(targets, dtype=bool)
    for fold in np.unique(folds):
        train_part = targets[folds != fold]
        for c in range(targets.shape[1]):
            kind = lacking_kind(train_part[:, c])
            if kind:
                name = class_names[c] if class_names is not None else f"class {c}"
                raise PipelineError(
                    f"{purpose}: class '{name}' has no {kind} training image "
                    f"in fold {fold}; it has {int(targets[:, c].sum())} positives of {len(targets)} "
                    f"images: use fewer folds or more images of that class (subset.min_per_class)")

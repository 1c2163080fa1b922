"""Multilabel iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011).

Two uses, one idea (serve the rarest label first, give each of its examples to the
place that wants that label most):
- :func:`stratified_subset` draws a fixed-size subset whose per-class positive counts
  follow the pool's proportions, with a floor per class and exact per-class quotas;
- :func:`multilabel_kfold` assigns samples to k folds with balanced label counts.
"""
from __future__ import annotations

import numpy as np

from stages.common import PipelineError


def _class_name(class_names, index: int) -> str:
    return class_names[index] if class_names is not None else f"class {index}"


def subset_targets(targets: np.ndarray, n: int, min_per_class: int = 0,
                   quotas: dict[int, int] | None = None, class_names=None) -> np.ndarray:
    """Per-class positive counts a subset of ``n`` drawn from ``targets`` should reach.

    Proportional to the pool, raised to ``min_per_class`` where the pool allows, and
    replaced by the exact quota for the classes named in ``quotas``.
    """
    pool_size, n_classes = targets.shape
    if n > pool_size:
        raise PipelineError(f"n_images={n} is larger than the pool of {pool_size} images; "
                            f"choose at most {pool_size}")
    pool_positives = targets.sum(axis=0).astype(float)
    wanted = n * pool_positives / max(pool_size, 1)
    wanted = np.maximum(wanted, np.minimum(min_per_class, pool_positives))
    for index, quota in (quotas or {}).items():
        if quota > pool_positives[index]:
            raise PipelineError(
                f"class_quota asks for {quota} images of '{_class_name(class_names, index)}' but the pool "
                f"has only {int(pool_positives[index])}; choose at most that")
        if quota > n:
            raise PipelineError(f"class_quota asks for {quota} images of "
                                f"'{_class_name(class_names, index)}', more than n_images={n}")
        wanted[index] = quota
    return wanted


def stratified_subset(targets: np.ndarray, n: int, min_per_class: int = 0,
                      quotas: dict[int, int] | None = None, seed: int = 0,
                      class_names=None) -> np.ndarray:
    """Indices (sorted) of ``n`` rows of the 0/1 matrix ``targets`` chosen by iterative stratification.

    Guarantees ``min_per_class`` positives per class where the pool has them, and exactly
    ``quotas[c]`` positives for each class ``c`` with a quota (images of a class whose quota
    is full are no longer eligible). Deterministic for a seed.
    """
    targets = np.asarray(targets, dtype=bool)
    wanted = subset_targets(targets, n, min_per_class, quotas, class_names)
    capped = np.zeros(targets.shape[1], dtype=bool)
    capped[list((quotas or {}).keys())] = True
    need = wanted.copy()
    scale = 1.0 / np.maximum(wanted, 1.0)
    labels_per_image = np.maximum(targets.sum(axis=1), 1)
    rng = np.random.default_rng(seed)
    tie_break = rng.random(len(targets)) * 1e-9
    selected = np.zeros(len(targets), dtype=bool)
    target_matrix = targets.astype(float)

    for count in range(n):
        full = capped & (need <= 0)
        eligible = ~selected & ~targets[:, full].any(axis=1)
        if not eligible.any():
            raise PipelineError(
                f"only {count} images can be drawn before the class quotas are exceeded "
                f"(n_images={n}); lower n_images to {count} or raise the quotas")
        # The mean share of its classes' target still missing: an image with many labels is
        # not preferred for having many (that would skew co-occurrences), only for needed ones.
        score = (target_matrix @ (need * scale)) / labels_per_image + tie_break
        available = target_matrix[eligible].sum(axis=0)
        open_labels = np.flatnonzero((need >= 0.5) & (available > 0))
        if open_labels.size:
            rarest = open_labels[np.argmin(available[open_labels])]
            candidates = eligible & targets[:, rarest]
        else:
            candidates = eligible
        chosen = np.flatnonzero(candidates)[np.argmax(score[candidates])]
        selected[chosen] = True
        need -= target_matrix[chosen]

    selected = _improve_by_swaps(target_matrix, selected, wanted, min_per_class, capped, rng)

    missing = [(_class_name(class_names, c), int(wanted[c]), int(targets[selected, c].sum()))
               for c in np.flatnonzero(capped) if targets[selected, c].sum() != wanted[c]]
    if missing:
        details = ", ".join(f"{name}: wanted {want}, got {got}" for name, want, got in missing)
        raise PipelineError(f"class quotas cannot be met within n_images={n} ({details}); "
                            f"adjust subset.class_quota or subset.n_images")
    return np.flatnonzero(selected)


def _subset_cost(counts: np.ndarray, wanted: np.ndarray, floor: np.ndarray, capped: np.ndarray) -> np.ndarray:
    """Chi-square-like distance of per-class counts (last axis) from the wanted ones.

    Falling below a class's floor or missing a quota costs far more than drifting from
    the proportional target, so swaps never trade a guarantee for proportions.
    """
    drift = ((counts - wanted) ** 2 / np.maximum(wanted, 1.0)).sum(axis=-1)
    shortfall = (np.maximum(floor - counts, 0.0) ** 2).sum(axis=-1)
    quota_miss = ((counts - wanted) ** 2 * capped).sum(axis=-1)
    return drift + 1e3 * (shortfall + quota_miss)


def _improve_by_swaps(target_matrix: np.ndarray, selected: np.ndarray, wanted: np.ndarray,
                      min_per_class: int, capped: np.ndarray, rng: np.random.Generator,
                      patience: int = 300, max_swaps: int = 20000) -> np.ndarray:
    """Swap chosen images for unchosen ones while that brings class counts closer to ``wanted``.

    The greedy pass serves rare classes first, which over-represents images with many
    labels (an image holding a rare class tends to hold others too); swapping corrects it.
    """
    selected = selected.copy()
    floor = np.minimum(min_per_class, target_matrix.sum(axis=0))
    counts = target_matrix[selected].sum(axis=0)
    current = _subset_cost(counts, wanted, floor, capped)
    failures = 0
    for _ in range(max_swaps):
        if failures >= patience:
            break
        inside = np.flatnonzero(selected)
        outside = np.flatnonzero(~selected)
        if outside.size == 0:
            break
        leaving = inside[rng.integers(inside.size)]
        trial_counts = counts - target_matrix[leaving] + target_matrix[outside]
        trial_cost = _subset_cost(trial_counts, wanted, floor, capped)
        best = int(np.argmin(trial_cost))
        if trial_cost[best] < current - 1e-9:
            entering = outside[best]
            selected[leaving], selected[entering] = False, True
            counts, current, failures = trial_counts[best], trial_cost[best], 0
        else:
            failures += 1
    return selected


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
            positives = int(train_part[:, c].sum())
            if positives == 0 or positives == len(train_part):
                kind = "positive" if positives == 0 else "negative"
                raise PipelineError(
                    f"{purpose}: class '{_class_name(class_names, c)}' has no {kind} training image "
                    f"in fold {fold}; it has {int(targets[:, c].sum())} positives of {len(targets)} "
                    f"images: use fewer folds or more images of that class (subset.min_per_class)")

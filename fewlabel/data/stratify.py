"""Multilabel iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011) of a subset draw.

:func:`stratified_subset` draws a fixed-size subset whose per-class positive counts follow the
pool's proportions, with a floor per class and exact per-class quotas: serve the rarest label
first, give each of its examples to the place that wants that label most. The same idea splits
the training images into cross-validation folds: :func:`fewlabel.model.folds.multilabel_kfold`.
"""
from __future__ import annotations

import numpy as np

from fewlabel.errors import PipelineError


def _class_name(class_names, index: int) -> str:
    return class_names[index] if class_names is not None else f"class {index}"


#: Seconds the integer solver may spend on one repair or diagnosis of a subset draw.
SOLVER_TIME_LIMIT_S = 30.0


def subset_targets(targets: np.ndarray, n: int, min_per_class: int = 0,
                   quotas: dict[int, int] | None = None, class_names=None) -> np.ndarray:
    """Per-class positive counts a subset of ``n`` drawn from ``targets`` should reach.

    Proportional to the pool, raised to ``min_per_class`` where the pool allows, and
    replaced by the exact quota for the classes named in ``quotas``.
    """
    pool_size, n_classes = targets.shape
    if n > pool_size:
        raise PipelineError(f"subset.n_images={n} is larger than the pool of {pool_size} images; "
                            f"choose at most {pool_size}")
    pool_positives = targets.sum(axis=0).astype(float)
    wanted = n * pool_positives / max(pool_size, 1)
    wanted = np.maximum(wanted, np.minimum(min_per_class, pool_positives))
    for index, quota in (quotas or {}).items():
        name = _class_name(class_names, index)
        if quota > pool_positives[index]:
            raise PipelineError(
                f"subset.class_quota.{name}={quota} asks for {quota} images of '{name}' but the pool "
                f"has only {int(pool_positives[index])}; choose at most that")
        if quota > n:
            raise PipelineError(f"subset.class_quota.{name}={quota} asks for more images of '{name}' "
                                f"than subset.n_images={n}")
        wanted[index] = quota
    return wanted


def class_floors(targets: np.ndarray, min_per_class: int, capped: np.ndarray) -> np.ndarray:
    """The positives each class must get: ``min_per_class``, or all the pool has if fewer;
    none for a class with a quota (the quota is exact instead)."""
    floor = np.minimum(min_per_class, np.asarray(targets, dtype=bool).sum(axis=0)).astype(float)
    floor[capped] = 0.0
    return floor


def stratified_subset(targets: np.ndarray, n: int, min_per_class: int = 0,
                      quotas: dict[int, int] | None = None, seed: int = 0,
                      class_names=None) -> np.ndarray:
    """Indices (sorted) of ``n`` rows of the 0/1 matrix ``targets`` chosen by iterative stratification.

    Guarantees ``min_per_class`` positives per class where the pool has them, and exactly
    ``quotas[c]`` positives for each class ``c`` with a quota. The stratified draw (greedy,
    then swaps) keeps the pool's proportions; when it misses a guarantee, an integer program
    repairs it with the fewest changes, so a subset is found whenever one exists. When none
    exists, the :class:`PipelineError` says which constraint is binding and what would fit.
    Deterministic for a seed.
    """
    targets = np.asarray(targets, dtype=bool)
    quotas = dict(quotas or {})
    wanted = subset_targets(targets, n, min_per_class, quotas, class_names)
    capped = np.zeros(targets.shape[1], dtype=bool)
    capped[list(quotas)] = True
    floor = class_floors(targets, min_per_class, capped)
    need = wanted.copy()
    scale = 1.0 / np.maximum(wanted, 1.0)
    labels_per_image = np.maximum(targets.sum(axis=1), 1)
    rng = np.random.default_rng(seed)
    tie_break = rng.random(len(targets)) * 1e-9
    selected = np.zeros(len(targets), dtype=bool)
    target_matrix = targets.astype(float)

    for _ in range(n):
        full = capped & (need <= 0)
        eligible = ~selected & ~targets[:, full].any(axis=1)
        if not eligible.any():
            eligible = ~selected  # every image left breaks a quota: the repair below settles it
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

    selected = _improve_by_swaps(target_matrix, selected, wanted, floor, capped, rng)
    if _missing_positives(target_matrix[selected].sum(axis=0), wanted, floor, capped) > 0:
        selected = _repair(target_matrix, selected, n, wanted, floor, capped, min_per_class, class_names)
        selected = _improve_by_swaps(target_matrix, selected, wanted, floor, capped, rng)
    return np.flatnonzero(selected)


def _missing_positives(counts: np.ndarray, wanted: np.ndarray, floor: np.ndarray,
                       capped: np.ndarray) -> np.ndarray:
    """How far per-class counts (last axis) are from the guarantees: positives below a
    class's floor plus the distance from each quota."""
    below = np.maximum(floor - counts, 0.0)
    off_quota = np.abs(counts - wanted) * capped
    return (below + off_quota).sum(axis=-1)


def _subset_cost(counts: np.ndarray, wanted: np.ndarray, floor: np.ndarray, capped: np.ndarray) -> np.ndarray:
    """Distance of per-class counts (last axis) from the wanted ones, guarantees first.

    Any missed guarantee (floor or quota) outweighs every proportion drift, so swaps never
    trade a guarantee for proportions (nor one guarantee for another).
    """
    drift = ((counts - wanted) ** 2 / np.maximum(wanted, 1.0)).sum(axis=-1)
    return drift + 1e9 * _missing_positives(counts, wanted, floor, capped)


def _improve_by_swaps(target_matrix: np.ndarray, selected: np.ndarray, wanted: np.ndarray,
                      floor: np.ndarray, capped: np.ndarray, rng: np.random.Generator,
                      patience: int = 300, max_swaps: int = 20000) -> np.ndarray:
    """Swap chosen images for unchosen ones while that brings class counts closer to ``wanted``.

    The greedy pass serves rare classes first, which over-represents images with many
    labels (an image holding a rare class tends to hold others too); swapping corrects it.
    """
    selected = selected.copy()
    counts = target_matrix[selected].sum(axis=0)
    current = _subset_cost(counts, wanted, floor, capped)
    failures = 0
    for _ in range(max_swaps):
        if failures >= patience:
            break
        inside = np.flatnonzero(selected)
        outside = np.flatnonzero(~selected)
        if outside.size == 0 or inside.size == 0:
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


# --------------------------------------------------------------------------- exact repair

def _solve(target_matrix: np.ndarray, floor: np.ndarray, quota: dict[int, int], size: int | None,
           objective: np.ndarray | None = None):
    """Solve the 0/1 program: pick images so that class ``c`` has at least ``floor[c]``
    positives, exactly ``quota[c]`` for the quota classes, and (``size`` not None) exactly
    ``size`` images; minimise ``objective`` (default: the number of images).

    Returns the selection (bool array), ``None`` if no selection exists, or raises
    :class:`PipelineError` if the solver ran out of time without deciding.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_images = len(target_matrix)
    rows, low, high = [], [], []
    if size is not None:
        rows.append(np.ones(n_images))
        low.append(size)
        high.append(size)
    for c in np.flatnonzero(floor > 0):
        rows.append(target_matrix[:, c])
        low.append(floor[c])
        high.append(np.inf)
    for c, target in quota.items():
        rows.append(target_matrix[:, c])
        low.append(target)
        high.append(target)
    cost = np.ones(n_images) if objective is None else objective
    constraints = [LinearConstraint(np.array(rows), low, high)] if rows else []
    result = milp(cost, constraints=constraints, integrality=np.ones(n_images), bounds=Bounds(0, 1),
                  options={"time_limit": SOLVER_TIME_LIMIT_S})
    if result.x is not None:
        chosen = result.x > 0.5
        counts = target_matrix[chosen].sum(axis=0)
        if (counts >= floor - 1e-9).all() and all(counts[c] == t for c, t in quota.items()) and \
                (size is None or chosen.sum() == size):
            return chosen
    if result.status == 2:  # proven infeasible
        return None
    raise PipelineError(f"the integer solver found no subset within {SOLVER_TIME_LIMIT_S:.0f} s "
                        f"({result.message}); lower subset.min_per_class or the class quotas")


def _repair(target_matrix: np.ndarray, selected: np.ndarray, n: int, wanted: np.ndarray,
            floor: np.ndarray, capped: np.ndarray, min_per_class: int, class_names) -> np.ndarray:
    """The subset of ``n`` images meeting every floor and quota with the fewest changes to
    ``selected``; or a :class:`PipelineError` naming the constraint that makes it impossible."""
    quota = {int(c): int(wanted[c]) for c in np.flatnonzero(capped)}
    fewest_changes = np.where(selected, -1.0, 1.0)
    repaired = _solve(target_matrix, floor, quota, n, objective=fewest_changes)
    if repaired is None:
        raise PipelineError(_why_infeasible(target_matrix, n, floor, quota, min_per_class, class_names))
    return repaired


def _why_infeasible(target_matrix: np.ndarray, n: int, floor: np.ndarray, quota: dict[int, int],
                    min_per_class: int, class_names) -> str:
    """Which constraint (a quota, quotas together, or the floors) rules out every subset of
    ``n`` images, and the nearest values that would fit."""
    pool_size = len(target_matrix)
    pool_positives = target_matrix.sum(axis=0)
    no_floor = np.zeros_like(floor)
    names = {c: _class_name(class_names, c) for c in range(target_matrix.shape[1])}
    if _solve(target_matrix, no_floor, quota, n) is None:
        for c, target in quota.items():
            without = int(pool_size - pool_positives[c])
            if n - target > without:
                return (f"subset.class_quota.{names[c]}={target} cannot be met with subset.n_images={n}: "
                        f"the other {n - target} images must be without '{names[c]}', and the pool has "
                        f"only {without} such images; raise the quota to at least {n - without} or lower "
                        f"subset.n_images to at most {without + target}")
        listed = ", ".join(f"subset.class_quota.{names[c]}={t}" for c, t in quota.items())
        return (f"{listed} cannot all be met with exactly subset.n_images={n} images (images hold "
                f"several of these classes at once); change one of these quotas or subset.n_images")

    # The quotas fit: the floors are binding. The highest floor that fits ...
    low, high = 0, int(min_per_class)  # a floor of `low` fits, `high` does not
    while high - low > 1:
        middle = (low + high) // 2
        trial = np.where(floor > 0, np.minimum(middle, floor), 0)
        if _solve(target_matrix, trial, quota, n) is None:
            high = middle
        else:
            low = middle
    # ... and the fewest images that hold every floor (with the quotas).
    smallest = _solve(target_matrix, floor, quota, None)
    with_quotas = (" together with " + ", ".join(f"subset.class_quota.{names[c]}={t}" for c, t in quota.items())
                   if quota else "")
    if smallest is None:
        short = [names[c] for c in np.flatnonzero(floor > 0)
                 if _solve(target_matrix, np.where(np.arange(len(floor)) == c, floor, 0), quota, None) is None]
        which = f" ({', '.join(short)})" if short else ""
        lower = f"lower subset.min_per_class to at most {low} or " if low >= 1 else ""
        return (f"subset.min_per_class={min_per_class} cannot be met{with_quotas}: the images those "
                f"quotas leave hold too few positives of some classes{which}; {lower}change the quotas")
    # Never advise a floor below 1: every class needs a positive training image (subset.py).
    if low >= 1:
        lower = f" or lower subset.min_per_class to at most {low}"
    else:
        one_each = _solve(target_matrix, np.minimum(floor, 1), quota, None) if min_per_class > 1 else None
        lower = (f", or to at least {int(one_each.sum())} with subset.min_per_class=1" if one_each is not None
                 else "") + " (subset.min_per_class cannot go below 1: every class needs a positive training image)"
    return (f"subset.min_per_class={min_per_class} does not fit in subset.n_images={n}{with_quotas}: "
            f"giving every class {min_per_class} positives (or all the pool has) takes at least "
            f"{int(smallest.sum())} images; raise subset.n_images to at least {int(smallest.sum())}{lower}")

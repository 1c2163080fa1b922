"""Labels to check: which training images the model contradicts most, and in which classes.

From out-of-fold probabilities (each image scored by a model that did not train on it, e.g. the
train stage's ``oof_probabilities``) and the given 0/1 training targets, every (image, class)
cell gets a contradiction score; an image's score is the largest over its classes, and the
classes in doubt are its highest cells. Pure numpy; nothing is fitted here.

Cell scores (``SCORES``), higher = more suspicious:

``max_abs``
    ``|y - p|``: the simplest.
``sum_abs``
    ``|y - p|`` summed over classes (an image-level score; its "cells" are ``|y - p|``).
``normalised``
    ``|y - p|`` divided by the mean ``|y - p|`` of the cells with the same class and label: a
    contradiction counts relative to how much the model usually disagrees with that class's
    positives (or negatives). Rare and hard classes, whose true positives often get low
    probabilities, stop dominating.
``cross_rank``
    per class, where the cell's probability falls among the images labelled the other way: for
    a cell labelled present, the fraction of the class's labelled negatives scored at least as
    high; for a cell labelled absent, the fraction of the labelled positives scored at most as
    high. Rank-based, so each class's probability scale (rare classes rarely reach 0.5) does
    not matter. Ties between images are broken by ``max_abs``.
``self_confidence``
    cleanlab-style per-class thresholds: the probability of the given label divided by its
    class's threshold (the mean probability of that label among the images given it), cells
    below 1 are suspicious; score ``1 - ratio``.

``min_labels`` (default 1, as ``calibrate.min_labels``: the product's decision rule gives
every image at least one label): an image given fewer labels than that (e.g. none at all) ranks
before every other image, whatever its cells say; 0 turns this off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORES = ("max_abs", "sum_abs", "normalised", "cross_rank", "self_confidence")
# Chosen on one half of the development photos and scored on the other, both ways (bench/active.py
# label-check-heldout, docs/labelling.md): the simplest, max_abs, scored best on both halves;
# self_confidence (chosen before on all of them) was no better on either.
DEFAULT_SCORE = "max_abs"
EPS = 1e-12


@dataclass
class LabelCheck:
    """``scores`` (n,) per image, higher = check sooner; ``order`` (n,) images most suspicious
    first; ``cells`` (n, C) the per-class contradiction; ``doubt`` per image, e.g.
    'dog: labelled absent, p 0.93; cat: labelled present, p 0.04'."""
    score: str
    scores: np.ndarray
    order: np.ndarray
    cells: np.ndarray
    doubt: list[str]


def _check(oof_probabilities, targets) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(oof_probabilities, dtype=float)
    y = np.asarray(targets)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"oof_probabilities {p.shape} and targets {y.shape} must be the same (n, C) shape")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    return p, y.astype(bool)


def _cross_rank(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    cells = np.zeros_like(p)
    for c in range(p.shape[1]):
        positives, negatives = np.sort(p[y[:, c], c]), np.sort(p[~y[:, c], c])
        present, absent = y[:, c], ~y[:, c]
        if len(negatives):   # labelled present: share of negatives scored >= p
            cells[present, c] = 1 - np.searchsorted(negatives, p[present, c], side="left") / len(negatives)
        if len(positives):   # labelled absent: share of positives scored <= p
            cells[absent, c] = np.searchsorted(positives, p[absent, c], side="right") / len(positives)
    return cells


def cell_scores(oof_probabilities: np.ndarray, targets: np.ndarray, score: str = DEFAULT_SCORE) -> np.ndarray:
    """(n, C) contradiction of each cell by ``score`` (see the module doc)."""
    p, y = _check(oof_probabilities, targets)
    distance = np.where(y, 1 - p, p)                       # |y - p|
    if score in ("max_abs", "sum_abs"):
        return distance
    if score == "normalised":
        cells = np.zeros_like(p)
        for c in range(p.shape[1]):
            for value in (True, False):
                rows = y[:, c] == value
                if rows.any():
                    cells[rows, c] = distance[rows, c] / max(distance[rows, c].mean(), EPS)
        return cells
    if score == "cross_rank":
        return _cross_rank(p, y) + 1e-6 * distance       # ties: the plain distance decides
    if score == "self_confidence":
        confidence = 1 - distance                          # probability of the given label
        cells = np.zeros_like(p)
        for c in range(p.shape[1]):
            for value in (True, False):
                rows = y[:, c] == value
                if rows.any():
                    cells[rows, c] = 1 - confidence[rows, c] / max(confidence[rows, c].mean(), EPS)
        return cells
    raise ValueError(f"unknown score {score!r}; expected one of {', '.join(SCORES)}")


def label_check(oof_probabilities: np.ndarray, targets: np.ndarray, score: str = DEFAULT_SCORE,
                classes=None, top: int = 2, min_labels: int = 1) -> LabelCheck:
    """Rank the training images by how much their out-of-fold probabilities contradict their
    labels; per image, the ``top`` most contradicted classes (with label and probability).
    Images given fewer than ``min_labels`` labels come first (their score is raised by the
    largest possible cell score + 1)."""
    p, y = _check(oof_probabilities, targets)
    cells = cell_scores(p, y, score)
    scores = cells.sum(axis=1) if score == "sum_abs" else cells.max(axis=1)
    too_few = y.sum(axis=1) < min_labels
    if too_few.any():
        scores = scores + too_few * (np.abs(scores).max() + 1.0)
    order = np.argsort(-scores, kind="stable")
    names = list(classes) if classes is not None else [str(c) for c in range(p.shape[1])]
    doubt = []
    for i in range(len(p)):
        worst = np.argsort(-cells[i], kind="stable")[:top]
        doubt.append("; ".join(f"{names[c]}: labelled {'present' if y[i, c] else 'absent'}, p {p[i, c]:.2f}"
                               for c in worst))
    return LabelCheck(score, scores, order, cells, doubt)


def corrupt_labels(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A copy of the 0/1 ``targets`` where ``round(fraction * n)`` images get a wrong label set:
    one present class dropped or one absent class added (50/50; an image with no class present
    gets one added, an image with every class gets one dropped). Returns (noisy targets,
    corrupted rows, corrupted classes). For measuring label checks."""
    rng = np.random.default_rng(seed)
    y = np.asarray(targets).astype(np.int8).copy()
    rows = np.sort(rng.choice(len(y), size=int(round(fraction * len(y))), replace=False))
    changed = np.empty(len(rows), dtype=int)
    for j, row in enumerate(rows):
        present, absent = np.flatnonzero(y[row] == 1), np.flatnonzero(y[row] == 0)
        drop = len(absent) == 0 or (len(present) > 0 and rng.random() < 0.5)
        column = rng.choice(present if drop else absent)
        y[row, column] = 0 if drop else 1
        changed[j] = column
    return y, rows, changed


def found_in_top(scores: np.ndarray, corrupted_rows: np.ndarray, top_fraction: float = 0.1) -> float:
    """Share of ``corrupted_rows`` ranked in the top ``top_fraction`` of ``scores`` (ties: by row)."""
    k = int(round(top_fraction * len(scores)))
    top = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return float(np.isin(corrupted_rows, top).mean())

"""The files passed between stages: each one's format is stated here, once.

| file | written by | read by | here |
|---|---|---|---|
| ``data/labels.csv``, ``data/subset/*.csv`` | prepare, subset | every later stage | :func:`read_label_table` |
| ``data/features/{train,eval}.npz`` | featurize | train, evaluate, suggest | :func:`write_features`, :func:`read_features` |
| ``data/features/pool.npz`` | featurize_pool | suggest | :func:`write_pool`, :func:`read_pool` |
| ``data/features/meta.json`` | featurize | train, evaluate, featurize_pool, predict | :func:`feature_signature` |
| ``models/oof_probabilities.csv`` | train | calibrate, suggest | :func:`oof_table`, :func:`read_oof` |
| ``predictions/eval.csv``, ``predict --out`` | evaluate, predict | you | :func:`probability_table` |
| ``suggestions/next.csv`` | suggest | you, Label Studio | :func:`probability_table` |
| ``models/model.joblib`` | train | calibrate, evaluate, suggest, predict | :mod:`fewlabel.model.svm` (``save_model``, ``load_model``) |
| ``models/thresholds.json`` | calibrate | evaluate, suggest, predict | :mod:`fewlabel.model.rules` (``load_rule``) |

Column prefixes of the probability tables, one meaning each: ``p_<class>`` a probability,
``y_<class>`` a decision (0/1 under the calibrated rule), ``true_<class>`` a training target
(0/1: the label as trained on).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fewlabel.errors import PipelineError
from fewlabel.io import atomic_path, read_csv

#: Column prefixes: a probability, a decision of the rule, a training target.
PROBABILITY, DECISION, TARGET = "p_", "y_", "true_"


def class_columns(prefix: str, classes) -> list[str]:
    """``[prefix + class, ...]`` in the classes' order."""
    return [f"{prefix}{name}" for name in classes]


# --------------------------------------------------------------------------- label tables

def read_label_table(path: str | Path, classes) -> tuple[np.ndarray, np.ndarray]:
    """Read ``image_id, split, <class>...`` and return (ids, labels) with VOC codes 1/0/-1."""
    frame = read_csv(path, required=["image_id", *classes])
    return frame["image_id"].to_numpy(dtype=str), frame[list(classes)].to_numpy(dtype=np.int8)


def training_targets(labels: np.ndarray) -> np.ndarray:
    """VOC codes to 0/1 training targets: difficult-only (0) counts as present."""
    return (labels >= 0).astype(np.int8)


def lacking_kind(targets_column: np.ndarray) -> str | None:
    """``'positive'`` or ``'negative'`` when a class's 0/1 targets lack one (its SVM cannot be
    fitted), else None: the one test behind every "cannot be learnt" check."""
    positives = int(np.asarray(targets_column, dtype=bool).sum())
    return "positive" if positives == 0 else "negative" if positives == len(targets_column) else None


# --------------------------------------------------------------------------- probability tables

def probability_table(front: dict, classes, probabilities: np.ndarray, decisions: np.ndarray | None = None,
                      targets: np.ndarray | None = None) -> pd.DataFrame:
    """The one layout of every per-image probability table: the ``front`` columns (e.g.
    ``image_id``), then ``true_<class>`` (targets, if given), ``p_<class>``, ``y_<class>``
    (decisions, if given)."""
    table = pd.DataFrame(front)
    for prefix, values in ((TARGET, targets), (PROBABILITY, probabilities), (DECISION, decisions)):
        if values is not None:
            for c, column in enumerate(class_columns(prefix, classes)):
                table[column] = values[:, c]
    return table


def class_values(table: pd.DataFrame, prefix: str, classes, dtype=float) -> np.ndarray:
    """The n x classes matrix of one prefix's columns (e.g. every ``p_<class>``)."""
    return table[class_columns(prefix, classes)].to_numpy(dtype=dtype)


def oof_table(ids, folds: np.ndarray, targets: np.ndarray, oof_probabilities: np.ndarray, classes) -> pd.DataFrame:
    """``models/oof_probabilities.csv``: ``image_id, fold, true_<class>..., p_<class>...``."""
    return probability_table({"image_id": ids, "fold": folds}, classes, oof_probabilities, targets=targets)


@dataclass(frozen=True)
class OutOfFold:
    """``models/oof_probabilities.csv`` read back: each training image's fold, target and
    out-of-fold probability per class."""
    ids: np.ndarray
    folds: np.ndarray
    targets: np.ndarray
    probabilities: np.ndarray


def read_oof(path: str | Path, classes, expected_ids=None, labels_path: str | Path | None = None) -> OutOfFold:
    """Read train's out-of-fold table, checking its columns, that every probability is finite
    and (if given) that its images are ``expected_ids`` in that order (from ``labels_path``)."""
    frame = read_csv(path, required=["image_id", "fold", *class_columns(TARGET, classes),
                                     *class_columns(PROBABILITY, classes)])
    ids = frame["image_id"].to_numpy(dtype=str)
    if expected_ids is not None and list(ids) != list(np.asarray(expected_ids, dtype=str)):
        raise PipelineError(f"{path}: its images differ from {labels_path or 'the training subset'}; "
                            f"rerun train (dvc repro)")
    probabilities = class_values(frame, PROBABILITY, classes)
    if not np.isfinite(probabilities).all():
        raise PipelineError(f"{path}: holds non-finite probabilities; rerun the train stage")
    return OutOfFold(ids=ids, folds=frame["fold"].to_numpy(), targets=class_values(frame, TARGET, classes, int),
                     probabilities=probabilities)


# --------------------------------------------------------------------------- feature files

def write_features(path: str | Path, ids, features: np.ndarray) -> None:
    """``<split>.npz``: ``ids`` (str, the subset CSV's order) and ``features`` (float32, n x d)."""
    _write_npz(path, ids=np.asarray(ids, dtype=str), features=np.asarray(features, dtype=np.float32))


def write_pool(path: str | Path, ids, paths, features: np.ndarray) -> None:
    """``pool.npz``: a features file with each image's ``paths`` too (pool images may lie anywhere)."""
    _write_npz(path, ids=np.asarray(ids, dtype=str), paths=np.asarray(paths, dtype=str),
               features=np.asarray(features, dtype=np.float32))


def _write_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def read_features(path: str | Path, expected_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``ids`` and ``features`` from a featurize .npz, checking the id order if given and
    that every value is finite (NaN would reach scikit-learn as a raw ValueError)."""
    archive = _read_npz(path, ("ids", "features"), "featurize")
    ids, features = archive["ids"].astype(str), archive["features"]
    if expected_ids is not None and not np.array_equal(ids, np.asarray(expected_ids, dtype=str)):
        raise PipelineError(f"{path}: its image ids do not match the subset CSV; rerun featurize")
    _check_finite(path, ids, features)
    return ids, features


def read_pool(path: str | Path, dims: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read featurize_pool's ``pool.npz``: (ids, paths, features), checking the features are
    finite and (if ``dims`` is given) as wide as the training features."""
    archive = _read_npz(path, ("ids", "paths", "features"), "featurize_pool")
    ids, paths, features = archive["ids"].astype(str), archive["paths"].astype(str), archive["features"]
    if dims is not None and len(ids) and features.shape[1] != dims:
        raise PipelineError(f"{path}: its features have {features.shape[1]} dimensions, the training "
                            f"features {dims}; rerun featurize_pool (dvc repro)")
    _check_finite(path, ids, features)
    return ids, paths, features


def _read_npz(path: str | Path, keys: tuple[str, ...], stage: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: not found; run the {stage} stage first (dvc repro {stage})")
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise PipelineError(f"{path}: lacks {', '.join(missing)}; rerun the {stage} stage (dvc repro -f {stage})")
        return {key: archive[key] for key in keys}


def _check_finite(path, ids: np.ndarray, features: np.ndarray) -> None:
    finite = np.isfinite(features).all(axis=tuple(range(1, features.ndim)))
    if not finite.all():
        bad = ids[~finite] if len(ids) == len(finite) else np.flatnonzero(~finite).astype(str)
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise PipelineError(f"{path}: {len(bad)} feature row(s) hold NaN or inf (image(s) {shown}); the file is "
                            f"damaged or was not written by this featurize: rerun it (dvc repro -f featurize)")


# --------------------------------------------------------------------------- meta.json

FEATURE_IDENTITY_KEYS = ("backbones", "dims", "input_sizes", "resize", "combine", "flip_tta", "weights")


def feature_signature(meta: dict) -> dict:
    """The fields of ``data/features/meta.json`` that identify the feature space.

    A model is only ever applied to features with the same signature it was trained on.
    """
    return {key: meta.get(key) for key in FEATURE_IDENTITY_KEYS}

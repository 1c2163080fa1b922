"""The decision rule: per-class thresholds plus label-count constraints, applied to probabilities,
and read back from thresholds.json with a check that it belongs to the model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.io import file_md5, read_json


DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class DecisionRule:
    """Per-class thresholds plus label-count constraints (see :func:`apply_rule`).

    ``max_labels`` None means no upper limit. Round-trips through thresholds.json with
    :meth:`to_record` / :meth:`from_record`.
    """
    thresholds: tuple[float, ...]
    min_labels: int = 0
    max_labels: int | None = None

    def __post_init__(self):
        thresholds = tuple(float(t) for t in np.ravel(self.thresholds))
        object.__setattr__(self, "thresholds", thresholds)
        if not all(np.isfinite(thresholds)):
            raise ValueError(f"thresholds must be finite numbers, got {thresholds}")
        if isinstance(self.min_labels, bool) or not isinstance(self.min_labels, (int, np.integer)) \
                or self.min_labels < 0:
            raise ValueError(f"min_labels must be an integer >= 0, got {self.min_labels!r}")
        if self.max_labels is not None and (
                isinstance(self.max_labels, bool) or not isinstance(self.max_labels, (int, np.integer))
                or self.max_labels < max(self.min_labels, 1)):
            raise ValueError(f"max_labels must be null or an integer >= max(1, min_labels={self.min_labels}), "
                             f"got {self.max_labels!r}")

    @classmethod
    def uniform(cls, n_classes: int, threshold: float = DEFAULT_THRESHOLD, min_labels: int = 0,
                max_labels: int | None = None) -> DecisionRule:
        """One threshold for every class."""
        return cls((float(threshold),) * n_classes, min_labels, max_labels)

    def to_record(self, classes) -> dict:
        """The rule's part of thresholds.json: ``thresholds`` by class name, ``min_labels``, ``max_labels``."""
        return {"thresholds": dict(zip(classes, self.thresholds)),
                "min_labels": int(self.min_labels),
                "max_labels": None if self.max_labels is None else int(self.max_labels)}

    @classmethod
    def from_record(cls, record: dict, classes, source: str = "thresholds.json") -> DecisionRule:
        """The rule in a thresholds.json mapping, thresholds in ``classes`` order."""
        thresholds = record.get("thresholds")
        missing = [c for c in classes if not isinstance(thresholds, dict) or c not in thresholds]
        if missing:
            raise PipelineError(f"{source}: has no threshold for {', '.join(missing)}; rerun calibrate (dvc repro)")
        if "min_labels" not in record or "max_labels" not in record:
            raise PipelineError(f"{source}: has no min_labels/max_labels (written by an older calibrate); "
                                "rerun calibrate (dvc repro)")
        try:
            return cls(tuple(thresholds[c] for c in classes), record["min_labels"], record["max_labels"])
        except (TypeError, ValueError) as error:
            raise PipelineError(f"{source}: not a valid decision rule: {error}") from error


def load_rule(path, classes, model_path=None) -> DecisionRule:
    """The decision rule calibrate wrote to ``path`` (thresholds.json).

    With ``model_path``, refuse a rule calibrated for another model: calibrate records the
    md5 of the model file whose out-of-fold probabilities it used (``model_md5``).
    """
    record = read_json(path)
    if model_path is not None:
        recorded, actual = record.get("model_md5"), file_md5(model_path)
        if recorded != actual:
            raise PipelineError(f"{path}: was calibrated for another model (model_md5 {recorded}), not for "
                                f"{model_path} (md5 {actual}); pass the thresholds calibrated with this "
                                f"model (--thresholds), or rerun calibrate (dvc repro calibrate)")
    return DecisionRule.from_record(record, classes, source=str(path))


def score_order(probabilities: np.ndarray) -> np.ndarray:
    """Per image, class indices from the highest probability down (ties: lower class index first)."""
    return np.argsort(-probabilities, axis=1, kind="stable")


def apply_rule(probabilities, rule: DecisionRule) -> np.ndarray:
    """0/1 int predictions ``(n, C)`` of ``rule`` on ``probabilities``.

    A class is predicted where ``probability >= its threshold``; of those, only the
    ``max_labels`` highest-scored are kept; an image left with fewer than ``min_labels``
    labels gets the highest-scored remaining classes until it has ``min_labels``. Ties in
    probability go to the lower class index.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(rule.thresholds):
        raise ValueError(f"probabilities of shape {p.shape} do not fit a rule for {len(rule.thresholds)} classes")
    return constrained_labels(p >= np.array(rule.thresholds), score_order(p), rule.min_labels, rule.max_labels)


def constrained_labels(passing: np.ndarray, order: np.ndarray, min_labels: int, max_labels: int | None) -> np.ndarray:
    """:func:`apply_rule` from the threshold-passing cells and :func:`score_order`."""
    chosen = np.take_along_axis(passing, order, axis=1)  # columns: best-scored class first
    if max_labels is not None:
        chosen &= np.cumsum(chosen, axis=1) <= max_labels
    missing = np.maximum(min_labels - chosen.sum(axis=1), 0)
    chosen |= ~chosen & (np.cumsum(~chosen, axis=1) <= missing[:, None])
    predictions = np.zeros(passing.shape, dtype=np.int64)
    np.put_along_axis(predictions, order, chosen.astype(np.int64), axis=1)
    return predictions

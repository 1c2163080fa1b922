"""The whole method in memory, on feature matrices: train, calibrate, then score.

What the train, calibrate and evaluate stages do through files, for a notebook or a benchmark::

    from fewlabel.fit import fit
    fitted = fit(train_features, train_labels, params)          # labels: VOC codes 1/0/-1
    metrics, per_class = fitted.evaluate(eval_features, eval_labels, params)

The stages call the same functions (:func:`fewlabel.model.train.train`,
:func:`fewlabel.model.calibrate.calibrate`, :func:`fewlabel.evaluation.evaluate`), so the
numbers are the pipeline's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fewlabel.artifacts import training_targets
from fewlabel.evaluation import evaluate
from fewlabel.model.calibrate import Calibration, calibrate
from fewlabel.model.svm import positive_probabilities
from fewlabel.model.train import TrainResult, train
from fewlabel.params import Params


@dataclass(frozen=True)
class Fitted:
    """A trained model (``trained``: the train stage's result) with its decision rule."""
    trained: TrainResult
    calibration: Calibration

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Per-class probabilities (n x classes)."""
        return positive_probabilities(self.trained.model, features)

    def evaluate(self, features: np.ndarray, labels: np.ndarray, params: Params) -> tuple[dict, pd.DataFrame]:
        """The evaluate stage's scores (mAP, the rule's F1, Dice, Jaccard, ...) and per-class table
        on labelled images (VOC codes: 0, difficult only, is ignored for that class)."""
        return evaluate(labels, self.probabilities(features), self.calibration.rule, params.data.classes,
                        params.evaluate)


def fit(features: np.ndarray, labels: np.ndarray, params: Params, trained: TrainResult | None = None) -> Fitted:
    """Train (``params.svm``, ``params.tune``; out-of-fold probabilities over ``params.train.oof_folds``)
    and calibrate the decision rule (``params.calibrate``) on the training images only.

    ``trained``: a model already trained on these images (e.g. to compare decision rules
    without training again); only the rule is then fitted.
    """
    if trained is None:
        trained = train(features, labels, params.data.classes, params.svm, params.train.oof_folds, params.tune)
    calibration = calibrate(training_targets(labels), trained.oof_probabilities, trained.folds, params.calibrate)
    return Fitted(trained, calibration)

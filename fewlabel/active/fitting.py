"""The product's classifier fitted on any subset of labelled images (shared by the active modules).

Every model here is :func:`fewlabel.model.svm.build_model` with the given ``SvmParams`` (its
``approximation`` resolved for the training set by :func:`fewlabel.model.svm.for_training_set`), so
active learning, label checks and learning curves measure the same classifier the train stage
ships. A class that has only positives or only negatives in a (small) subset cannot be fitted by
an SVM: it gets a constant probability (its positive rate in the subset) instead of an error.
"""
from __future__ import annotations

import numpy as np

from fewlabel.model.svm import build_model, for_training_set, positive_probabilities
from fewlabel.params import SvmParams

DEFAULT_SVM = SvmParams()  # the schema's defaults: params.yaml's svm section


def fit_predict(train_features: np.ndarray, train_targets: np.ndarray, predict_features: list[np.ndarray],
                svm: SvmParams = DEFAULT_SVM) -> list[np.ndarray]:
    """Fit the product's model on ``train_features`` / ``train_targets`` (0/1, n x C) and return
    the positive-class probabilities (m x C) of each array in ``predict_features``."""
    targets = np.asarray(train_targets).astype(np.int8)
    rate = targets.mean(axis=0)
    fittable = (rate > 0) & (rate < 1)
    outputs = [np.tile(rate.astype(float), (len(block), 1)) for block in predict_features]
    if fittable.any():
        svm = for_training_set(svm, len(targets))
        model = build_model(svm).fit(np.asarray(train_features), targets[:, fittable])
        for out, block in zip(outputs, predict_features):
            if len(block):
                out[:, fittable] = positive_probabilities(model, np.asarray(block))
    return outputs


def repeated_out_of_fold(features: np.ndarray, targets: np.ndarray, svm: SvmParams = DEFAULT_SVM, folds: int = 5,
                         repeats: int = 3, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities averaged over ``repeats`` fold assignments (the product's
    ``multilabel_kfold`` with seeds ``seed`` .. ``seed + repeats - 1``; the train stage's is seed 0),
    each by the train stage's ``out_of_fold_probabilities``. Less dependent on one split: for
    label checks."""
    from fewlabel.model.folds import multilabel_kfold
    from fewlabel.model.train import out_of_fold_probabilities
    svm = for_training_set(svm, len(targets))
    runs = [out_of_fold_probabilities(features, targets, svm, multilabel_kfold(targets, folds, seed=seed + r))
            for r in range(repeats)]
    return np.mean(runs, axis=0)


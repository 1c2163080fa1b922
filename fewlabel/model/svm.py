"""The classifier shared by train, evaluate and predict: kernel map + one Platt-scaled SVM per class.

Two kernel methods (``svm.approximation``, resolved for a training set by :func:`kernel_method`):

- **exact**: the n x n kernel matrix and ``SVC(kernel='precomputed', probability=True)``;
  memory O(n^2) (3.2 GB at 20,000 images) and libsvm's time grows faster than n^2.
- **nystroem**: scikit-learn's ``Nystroem`` map onto ``svm.n_components`` (m) landmarks, then
  a linear classifier with sigmoid (Platt) probabilities; memory and time O(n m).

Kept in its own module so the pickled model refers to ``fewlabel.model.svm`` classes, whichever
command wrote it.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.kernel_approximation import Nystroem
from sklearn.metrics.pairwise import pairwise_kernels
from sklearn.multioutput import MultiOutputClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from fewlabel.errors import PipelineError
from fewlabel.io import atomic_path
from fewlabel.metrics import mean_ap
from fewlabel.params import SvmParams, TuneParams
from fewlabel.model.folds import check_folds, multilabel_kfold

RANDOM_STATE = 0
TRANSFORM_ROWS = 2048  # rows mapped at a time by the approximate kernel map
PROBABILITY_FOLDS = 5

# scikit-learn 1.9 deprecates SVC(probability=True) (removal planned for 1.11). It is the
# method's Platt scaling and requirements.txt pins 1.9, so keep it and silence the notice.
warnings.filterwarnings("ignore", message="The `probability` parameter was deprecated",
                        category=FutureWarning)


class KernelMap(BaseEstimator, TransformerMixin):
    """Map features to their kernel values against the training features.

    ``gamma`` may be a number, 'scale' (1 / (d * var(X))), 'auto' (1 / d) or 'median'
    (1 / the median squared distance between training points), resolved in ``fit`` from
    the training data only, so cross-validation folds never see held-out features.
    """

    def __init__(self, kernel: str = "rbf", gamma="scale"):
        self.kernel = kernel
        self.gamma = gamma

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        self.train_features_ = X
        self.gamma_ = resolve_gamma(self.gamma, X)
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        return pairwise_kernels(X, self.train_features_, metric=self.kernel,
                                **kernel_parameters(self.kernel, self.gamma_))


class NystroemMap(BaseEstimator, TransformerMixin):
    """Nystroem's approximate kernel map: features -> ``n_components`` values whose dot
    products approximate the kernel (scikit-learn's ``Nystroem`` on landmarks drawn at random
    from the training features).

    ``gamma`` is resolved in ``fit`` exactly as :class:`KernelMap` does it ('median' included),
    so both kernel methods use the same kernel. Memory O(n x n_components), never n x n.
    """

    def __init__(self, kernel: str = "rbf", gamma="scale", n_components: int = 1500):
        self.kernel = kernel
        self.gamma = gamma
        self.n_components = n_components

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        self.gamma_ = resolve_gamma(self.gamma, X)
        self.nystroem_ = Nystroem(kernel=self.kernel, n_components=min(self.n_components, len(X)),
                                  random_state=RANDOM_STATE, **kernel_parameters(self.kernel, self.gamma_))
        self.nystroem_.fit(X)
        return self

    def transform(self, X):
        X = np.asarray(X)
        mapped = np.empty((len(X), self.nystroem_.n_components), dtype=np.float64)
        for start in range(0, len(X), TRANSFORM_ROWS):  # no float64 copy of all of X at once
            mapped[start:start + TRANSFORM_ROWS] = self.nystroem_.transform(
                np.asarray(X[start:start + TRANSFORM_ROWS], dtype=np.float64))
        return mapped


class ThreadedMultiOutputClassifier(MultiOutputClassifier):
    """``MultiOutputClassifier`` whose per-class fits run in threads, not processes: liblinear
    releases the GIL, so they run in parallel on one copy of the n x m map instead of one copy
    per worker process (the approximate path's memory stays O(n m) once)."""

    def fit(self, X, y, **fit_params):
        with parallel_config(backend="threading"):
            return super().fit(X, y, **fit_params)


def kernel_parameters(kernel: str, gamma: float) -> dict:
    """The keyword arguments that make scikit-learn's pairwise kernels equal SVC's kernel."""
    params = {} if kernel == "linear" else {"gamma": gamma}
    if kernel in ("poly", "sigmoid"):
        params.update(coef0=0.0)  # SVC's defaults (pairwise_kernels' coef0 default is 1)
    if kernel == "poly":
        params.update(degree=3)
    return params


APPROXIMATE_CLASSIFIER = "LinearSVC with sigmoid (Platt) probabilities"


def kernel_method(svm: SvmParams, n_images: int) -> str:
    """'exact' or 'nystroem' for a training set of ``n_images``: ``svm.approximation``, where
    ``auto`` means exact up to ``svm.max_exact_kernel`` images and nystroem past it."""
    if svm.approximation != "auto":
        return svm.approximation
    return "nystroem" if n_images > svm.max_exact_kernel else "exact"


def for_training_set(svm: SvmParams, n_images: int) -> SvmParams:
    """``svm`` with ``approximation`` resolved for ``n_images`` training images (see :func:`kernel_method`).

    Resolve once for the whole training set, so that the cross-validation folds' models and
    the final model use the same method even when the folds are below the threshold."""
    return replace(svm, approximation=kernel_method(svm, n_images))


def describe_kernel_method(svm: SvmParams, n_images: int) -> dict:
    """What :func:`kernel_method` chose and why, for logs and ``reports/tune.json``."""
    method = kernel_method(svm, n_images)
    if svm.approximation != "auto":
        reason = f"svm.approximation is {svm.approximation}"
    else:
        relation = ">" if method == "nystroem" else "<="
        reason = f"{n_images} training images {relation} svm.max_exact_kernel ({svm.max_exact_kernel})"
    record = {"method": method, "reason": reason, "n_train": int(n_images),
              "max_exact_kernel": svm.max_exact_kernel}
    if method == "nystroem":
        record.update(n_components=min(svm.n_components, int(n_images)), classifier=APPROXIMATE_CLASSIFIER)
    return record


def resolve_gamma(gamma, features: np.ndarray) -> float:
    """Turn a gamma setting into a number for these (scaled) training features."""
    if gamma == "scale":
        variance = features.var()
        return 1.0 / (features.shape[1] * variance) if variance > 0 else 1.0
    if gamma == "auto":
        return 1.0 / features.shape[1]
    if gamma == "median":
        sample = features[np.random.default_rng(RANDOM_STATE).permutation(len(features))[:1000]]
        squared = pairwise_kernels(sample, metric="linear")
        norms = np.diag(squared)
        distances = norms[:, None] + norms[None, :] - 2 * squared
        positive = distances[np.triu_indices_from(distances, k=1)]
        positive = positive[positive > 0]
        return 1.0 / float(np.median(positive)) if positive.size else 1.0
    return float(gamma)


def signed_sqrt(features: np.ndarray) -> np.ndarray:
    """Power normalisation ``sign(x) * sqrt(|x|)``: it damps the few large activations that
    dominate pooled CNN features (the ``sqrt`` scaler; +0.65 mAP on devdata, see README)."""
    return np.sign(features) * np.sqrt(np.abs(features))


def build_model(svm: SvmParams) -> Pipeline:
    """The unfitted model for these SVM settings (``svm.approximation`` resolved: exact or nystroem).

    exact: ``SVC(kernel='precomputed')`` on the kernel map's output gives the same SVMs as
    ``SVC(kernel=svm.kernel, gamma=...)``, but the kernel matrix is computed once (with
    BLAS) for all classes and all of libsvm's internal Platt-scaling folds.
    nystroem: the approximate map, then per class a linear classifier with sigmoid probabilities.
    """
    if svm.approximation not in ("exact", "nystroem"):
        raise ValueError(f"svm.approximation is {svm.approximation!r}: resolve it for the training set "
                         f"first (for_training_set(svm, n_images))")
    scalers = {"none": "passthrough", "standard": StandardScaler(), "l2": Normalizer(norm="l2"),
               "sqrt": FunctionTransformer(signed_sqrt)}
    if svm.approximation == "exact":
        kernel_map = KernelMap(kernel=svm.kernel, gamma=svm.gamma)
        classifier = SVC(kernel="precomputed", C=svm.C, probability=svm.probability == "libsvm",
                         class_weight=svm.class_weight, random_state=RANDOM_STATE)
        if svm.probability != "libsvm":
            # Platt (sigmoid) or isotonic map fitted on 5-fold cross-validated decision values;
            # the SVM itself is trained on all images (ensemble=False), as libsvm does.
            classifier = CalibratedClassifierCV(classifier, method=svm.probability, cv=PROBABILITY_FOLDS,
                                                ensemble=False)
        per_class = MultiOutputClassifier
    else:
        kernel_map = NystroemMap(kernel=svm.kernel, gamma=svm.gamma, n_components=svm.n_components)
        classifier = PlattLinearSVC(C=svm.C, class_weight=svm.class_weight)
        per_class = ThreadedMultiOutputClassifier
    return Pipeline([
        ("scaler", scalers[svm.scaler]),
        ("kernel", kernel_map),
        ("svm", per_class(classifier, n_jobs=svm.n_jobs)),
    ])


class PlattLinearSVC(ClassifierMixin, BaseEstimator):
    """A linear SVM with libsvm's probability recipe: Platt's sigmoid fitted on out-of-fold
    decision values (5 stratified folds, fewer when a class has fewer than 5 images), then the
    SVM refitted on all images. A class with a single image leaves no held-out decision
    value for it: the sigmoid is then fitted on the training decision values.

    Measured on devdata (README, "Beyond one machine"): on the Nystroem map, within 0.3 mAP
    of the exact kernel SVM; ``LogisticRegression(C=svm.C)`` in its place was 5.9 mAP below it.
    """

    def __init__(self, C: float = 1.0, class_weight=None):
        self.C = C
        self.class_weight = class_weight

    def fit(self, X, y):
        svm = LinearSVC(C=self.C, class_weight=self.class_weight, random_state=RANDOM_STATE)
        rarest = int(np.unique(y, return_counts=True)[1].min())
        if rarest >= 2:
            self.calibrated_ = CalibratedClassifierCV(svm, method="sigmoid", cv=min(PROBABILITY_FOLDS, rarest),
                                                      ensemble=False)
        else:  # one "split" whose test part is every image: the sigmoid sees training decision values
            everything = np.arange(len(y))
            self.calibrated_ = CalibratedClassifierCV(FrozenEstimator(svm.fit(X, y)), method="sigmoid",
                                                      cv=[(everything, everything)])
        self.calibrated_.fit(X, y)
        self.classes_ = self.calibrated_.classes_
        return self

    def predict_proba(self, X):
        return self.calibrated_.predict_proba(X)

    def predict(self, X):
        return self.calibrated_.predict(X)


def positive_probabilities(model: Pipeline, features: np.ndarray) -> np.ndarray:
    """(n_images, n_classes) probability of each class being present."""
    per_class = model.predict_proba(features)
    return np.column_stack([proba[:, 1] for proba in per_class])


def tune_grid(features: np.ndarray, targets: np.ndarray, svm: SvmParams, tune: TuneParams,
              classes) -> pd.DataFrame:
    """Cross-validated mAP of every (scaler, gamma, C) in the grid, on the training images only.

    The kernel of each (fold, scaler, gamma) is computed once and reused for every C.
    ``svm.approximation`` is resolved for all of ``features`` (see :func:`for_training_set`).
    """
    svm = for_training_set(svm, len(features))
    folds = multilabel_kfold(targets, tune.folds, seed=RANDOM_STATE)
    check_folds(targets, folds, classes, purpose=f"tune.folds={tune.folds}")
    scalers = tune.scaler or (svm.scaler,)
    rows = []
    for scaler, gamma in itertools.product(scalers, tune.gamma):
        fold_scores = {c: [] for c in tune.C}
        resolved = []
        for fold in np.unique(folds):
            held_out = folds == fold
            prefix = build_model(replace(svm, scaler=scaler, gamma=gamma))[:2]  # scaler + kernel map
            train_kernel = prefix.fit_transform(features[~held_out])
            test_kernel = prefix.transform(features[held_out])
            resolved.append(prefix[-1].gamma_)
            for c in tune.C:
                classifier = build_model(replace(svm, C=c))[-1]
                classifier.fit(train_kernel, targets[~held_out])
                scores = np.column_stack([p[:, 1] for p in classifier.predict_proba(test_kernel)])
                fold_scores[c].append(mean_ap(targets[held_out] * 2 - 1, scores))
        for c in tune.C:
            rows.append({"scaler": scaler, "gamma": str(gamma), "gamma_value": float(np.mean(resolved)),
                         "C": c, "map_mean": float(np.mean(fold_scores[c])),
                         "map_std": float(np.std(fold_scores[c]))})
    return pd.DataFrame(rows)


def save_model(path, model: Pipeline, classes, svm: SvmParams, signature: dict, n_train: int) -> None:
    """Save the fitted model with what it was trained for (classes, feature space, settings)."""
    import joblib
    bundle = {"model": model, "classes": list(classes), "svm": asdict(svm),
              "feature_signature": signature, "n_train": int(n_train)}
    with atomic_path(path) as tmp:
        joblib.dump(bundle, tmp)


def load_model(path, classes, signature: dict | None = None) -> dict:
    """Load a model bundle, refusing one trained for other classes or another feature space."""
    import joblib

    if not Path(path).exists():
        raise PipelineError(f"{path}: not found; run the train stage first (dvc repro train)")
    try:
        bundle = joblib.load(path)
    except Exception as error:  # a truncated or foreign file fails in pickle/zlib/numpy in many ways
        raise PipelineError(f"{path}: cannot be read as a model ({type(error).__name__}: {error}); it is "
                            f"truncated or not written by the train stage: retrain it "
                            f"(dvc repro -f train)") from error
    if not isinstance(bundle, dict) or not {"model", "classes", "feature_signature"} <= set(bundle):
        raise PipelineError(f"{path}: is not a model bundle written by the train stage; retrain it "
                            f"(dvc repro -f train)")
    if list(bundle["classes"]) != list(classes):
        raise PipelineError(f"{path}: was trained for classes {bundle['classes']}, but data.classes is "
                            f"{list(classes)}; retrain (dvc repro)")
    if signature is not None and bundle["feature_signature"] != signature:
        raise PipelineError(f"{path}: was trained on features {bundle['feature_signature']}, not on "
                            f"{signature}; retrain (dvc repro) or set the matching features.* params")
    return bundle

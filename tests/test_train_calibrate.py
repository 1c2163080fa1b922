"""train and calibrate: the SVMs, out-of-fold probabilities, tuning and thresholds."""

import numpy as np
import pytest
from sklearn.multioutput import MultiOutputClassifier
from sklearn.svm import SVC

from bench.synthetic import synthetic_split
from stages.calibrate import calibrate, choose_thresholds, out_of_fold_strategy_scores, pooled_score
from stages.common import PipelineError, training_targets
from stages.metrics import multilabel_scores
from stages.model import build_model, positive_probabilities, resolve_gamma
from stages.params import CalibrateParams, SvmParams, TuneParams
from stages.stratify import multilabel_kfold
from stages.train import out_of_fold_probabilities, train

CLASSES = tuple(f"class{i}" for i in range(20))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=0.35, size=(20, 48)).astype(np.float32)
    train_labels, train_features = synthetic_split(240, 48, rng, centers)
    eval_labels, eval_features = synthetic_split(400, 48, rng, centers)
    return train_labels, train_features, eval_labels, eval_features


@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid"])
def test_precomputed_kernel_model_equals_plain_svc(data, kernel):
    labels, features, _, eval_features = data
    targets = training_targets(labels)[:, :4]
    svm = SvmParams(kernel=kernel, gamma="scale", C=3.0, n_jobs=1)
    ours = positive_probabilities(build_model(svm).fit(features, targets), eval_features)
    reference = MultiOutputClassifier(SVC(kernel=kernel, gamma="scale", C=3.0, probability=True,
                                          random_state=0)).fit(features, targets)
    expected = np.column_stack([p[:, 1] for p in reference.predict_proba(eval_features)])
    np.testing.assert_allclose(ours, expected, atol=1e-8)


def test_gamma_resolution(data):
    _, features, _, _ = data
    x = features.astype(np.float64)
    assert resolve_gamma("scale", x) == pytest.approx(1 / (x.shape[1] * x.var()))
    assert resolve_gamma("auto", x) == pytest.approx(1 / x.shape[1])
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)[np.triu_indices(len(x), 1)]
    assert resolve_gamma("median", x) == pytest.approx(1 / np.median(squared), rel=1e-6)
    assert resolve_gamma(0.25, x) == 0.25


def test_out_of_fold_probabilities_come_from_models_that_never_saw_the_image(data):
    labels, features, _, _ = data
    targets = training_targets(labels)
    svm = SvmParams(gamma="scale", n_jobs=1)
    folds = multilabel_kfold(targets, 3, seed=0)
    oof = out_of_fold_probabilities(features, targets, svm, folds)
    held_out = folds == 1
    by_hand = positive_probabilities(build_model(svm).fit(features[~held_out], targets[~held_out]),
                                     features[held_out])
    np.testing.assert_allclose(oof[held_out], by_hand)
    in_sample = positive_probabilities(build_model(svm).fit(features, targets), features[held_out])
    assert not np.allclose(oof[held_out], in_sample, atol=1e-3)


def test_a_class_without_positives_is_named(data):
    labels, features, _, _ = data
    labels = labels.copy()
    labels[:, 3] = -1
    with pytest.raises(PipelineError, match="class 'class3' has no positive training image"):
        train(features, labels, CLASSES, SvmParams(n_jobs=1), 3, TuneParams())


def test_tuning_records_the_grid_and_refits_the_best(data):
    labels, features, _, _ = data
    tune = TuneParams(enabled=True, C=(0.1, 10.0), gamma=("scale", 0.5), folds=3)
    result = train(features, labels, CLASSES, SvmParams(n_jobs=1), 3, tune)
    grid = result.grid
    assert len(grid) == 4 and set(zip(grid["C"], grid["gamma"])) == {(0.1, "scale"), (10.0, "scale"),
                                                                      (0.1, "0.5"), (10.0, "0.5")}
    best = grid.loc[grid["map_mean"].idxmax()]
    assert (result.svm.C, str(result.svm.gamma)) == (best["C"], best["gamma"])
    assert grid["map_mean"].max() > grid["map_mean"].min()  # the grid really differs
    refit = build_model(result.svm).fit(features, training_targets(labels))
    np.testing.assert_allclose(positive_probabilities(result.model, features[:5]),
                               positive_probabilities(refit, features[:5]))


def brute_force_f1_threshold(targets, probabilities):
    candidates = np.unique(probabilities)
    scores = []
    for t in candidates:
        predicted = probabilities >= t
        tp = np.sum(predicted & (targets == 1))
        scores.append(2 * tp / (predicted.sum() + targets.sum()))
    return max(scores)


def test_per_class_thresholds_maximise_f1_and_rare_classes_fall_back():
    rng = np.random.default_rng(3)
    targets = (rng.random((200, 3)) < [0.3, 0.1, 0.01]).astype(int)
    targets[:, 2] = 0
    targets[:2, 2] = 1
    probabilities = np.clip(0.25 * targets + rng.random((200, 3)) * 0.5, 0, 1)
    thresholds, global_threshold = choose_thresholds(targets, probabilities, "per_class", "f1", min_positives=3)
    for c in range(2):
        predicted = probabilities[:, c] >= thresholds[c]
        f1 = 2 * np.sum(predicted & (targets[:, c] == 1)) / (predicted.sum() + targets[:, c].sum())
        assert f1 == pytest.approx(brute_force_f1_threshold(targets[:, c], probabilities[:, c]))
    assert targets[:, 2].sum() < 3 and thresholds[2] == global_threshold
    assert np.all(choose_thresholds(targets, probabilities, "none", "f1", 3)[0] == 0.5)
    assert np.all(choose_thresholds(targets, probabilities, "global", "f1", 3)[0] == global_threshold)


def test_auto_keeps_the_strategy_that_scores_best_out_of_fold():
    rng = np.random.default_rng(5)
    targets = (rng.random((300, 4)) < 0.2).astype(int)
    probabilities = np.clip(0.3 * targets + rng.random((300, 4)) * 0.3, 0, 1)  # all below 0.5-ish
    folds = np.arange(300) % 5
    result = calibrate(targets, probabilities, folds, CalibrateParams(strategy="auto"))
    scores = out_of_fold_strategy_scores(targets, probabilities, folds, "f1", 3)
    assert result.strategy_scores == scores
    assert scores[result.strategy] == max(scores.values())
    assert scores["none"] < scores["global"]  # 0.5 misses most positives here
    assert pooled_score(targets, probabilities, result.thresholds, "f1") > pooled_score(
        targets, probabilities, np.full(4, 0.5), "f1")


def test_calibrated_thresholds_beat_half_on_held_out_data_built_to_need_them():
    """Rare classes: Platt-scaled SVM probabilities rarely reach 0.5, so 0.5 misses positives."""
    rng = np.random.default_rng(11)
    n_train, n_eval, dim = 400, 1500, 32
    centers = rng.normal(scale=0.25, size=(5, dim))

    def split(n):
        present = rng.random((n, 5)) < [0.05, 0.06, 0.08, 0.1, 0.5]
        features = present @ centers + rng.normal(scale=0.9, size=(n, dim))
        return np.where(present, 1, -1), features

    train_labels, train_features = split(n_train)
    eval_labels, eval_features = split(n_eval)
    names = tuple("abcde")
    result = train(train_features, train_labels, names, SvmParams(gamma="scale", n_jobs=1), 5, TuneParams())
    calibration = calibrate(training_targets(train_labels), result.oof_probabilities, result.folds,
                            CalibrateParams(strategy="per_class"))
    probabilities = positive_probabilities(result.model, eval_features)
    calibrated = multilabel_scores(eval_labels, probabilities, calibration.thresholds)
    default = multilabel_scores(eval_labels, probabilities, np.full(5, 0.5))
    # Measured: macro-F1 0.36 calibrated against 0.18 at 0.5. (Micro-F1 drops here, as the
    # architecture notes for RBF SVMs, which is why calibrate.strategy defaults to auto.)
    assert calibrated["f1_macro"] > default["f1_macro"] + 0.1, (calibrated, default)
    assert np.all(calibration.thresholds[:4] < 0.5)

"""Active learning (fewlabel/active): strategies, labels to check, learning curves. Generated data only."""
from __future__ import annotations

import numpy as np
import pytest

from fewlabel.active.label_check import SCORES, corrupt_labels, found_in_top, label_check
from fewlabel.active.learning_curve import fit_saturating, learning_curve, nested_subsets, saturating
from fewlabel.active.fitting import DEFAULT_SVM, fit_predict, repeated_out_of_fold
from fewlabel.active.strategies import STRATEGIES, propose, rank_pool
from fewlabel.metrics import per_class_ap
from fewlabel.model.svm import build_model, for_training_set, positive_probabilities
from fewlabel.model.folds import multilabel_kfold

N_CLASSES = 3


def make_data(n=150, d=12, seed=0):
    """Features = sum of the present classes' prototypes + noise; every class ~35 % present."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, N_CLASSES)) < 0.35).astype(np.int8)
    prototypes = rng.normal(size=(N_CLASSES, d)) * 2.0
    features = np.abs(targets @ prototypes + rng.normal(size=(n, d)))  # non-negative, like pooled CNN maps
    return features.astype(np.float32), targets


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def pool_inputs(data):
    features, targets = data
    train, pool = np.arange(40), np.arange(40, len(features))
    probabilities = fit_predict(features[train], targets[train], [features[pool]])[0]
    return probabilities, features[pool], features[train], targets[train]


# --------------------------------------------------------------------------- strategies

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rank_pool_is_deterministic_valid_and_seeded(strategy, pool_inputs):
    first = rank_pool(strategy, *pool_inputs, n=15, seed=3, classes=["a", "b", "c"])
    again = rank_pool(strategy, *pool_inputs, n=15, seed=3, classes=["a", "b", "c"])
    np.testing.assert_array_equal(first.indices, again.indices)
    assert first.why == again.why
    assert len(first.indices) == 15 == len(set(first.indices.tolist())) == len(first.scores) == len(first.why)
    assert first.indices.min() >= 0 and first.indices.max() < len(pool_inputs[0])
    np.testing.assert_allclose(first.scores, first.pool_scores[first.indices])
    if strategy == "random":
        other = rank_pool(strategy, *pool_inputs, n=15, seed=4)
        assert not np.array_equal(first.indices, other.indices)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_propose_never_reads_pool_labels(strategy, data):
    """Shuffling (or destroying) the unlabelled rows' labels changes nothing; changing a
    labelled row's label does change the model (the test can fail)."""
    features, targets = data
    labelled = np.arange(40)
    shuffled = targets.copy()
    rng = np.random.default_rng(1)
    shuffled[40:] = shuffled[40:][rng.permutation(len(targets) - 40)]
    garbage = targets.copy()
    garbage[40:] = 7
    base = propose(features, targets, labelled, 10, strategy, seed=0)
    for other in (shuffled, garbage):
        again = propose(features, other, labelled, 10, strategy, seed=0)
        np.testing.assert_array_equal(base.indices, again.indices)
        np.testing.assert_allclose(base.pool_scores, again.pool_scores, equal_nan=True)
    assert not np.isin(base.indices, labelled).any()
    if strategy not in ("random", "coreset"):  # the labelled rows' labels are read
        flipped = targets.copy()
        flipped[:40] = 1 - flipped[:40]
        changed = propose(features, flipped, labelled, 10, strategy, seed=0)
        assert not np.allclose(base.pool_scores, changed.pool_scores, equal_nan=True)


def test_uncertainty_prefers_half_probabilities():
    p = np.array([[0.99, 0.01], [0.5, 0.5], [0.6, 0.02], [0.9, 0.9]])
    features = np.ones((4, 3))
    ranking = rank_pool("uncertainty", p, features, features[:0], np.zeros((0, 2)), n=4, seed=0, classes=["x", "y"])
    assert ranking.indices.tolist() == [1, 2, 3, 0]  # summed entropies 2, 1.11, 0.94, 0.16
    assert ranking.why[0] == "x 0.50, y 0.50"


def test_rare_margin_serves_the_rarest_class_first():
    # class 1 is rare in training; row 2 is the pool image nearest 0.5 for class 1
    p = np.array([[0.5, 0.01], [0.45, 0.02], [0.9, 0.3], [0.1, 0.05]])
    train_targets = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    ranking = rank_pool("rare_margin", p, np.ones((4, 3)), np.ones((4, 3)), train_targets, n=2, seed=0,
                        classes=["common", "rare"])
    assert ranking.indices.tolist() == [2, 0]
    assert ranking.why[0].startswith("rare 0.30")


def test_coreset_picks_the_point_farthest_from_the_labelled_set():
    train = np.array([[1.0, 0.0, 0.0]])
    pool = np.array([[0.9, 0.1, 0.0], [0.0, 0.0, 1.0], [0.8, 0.2, 0.0]])
    ranking = rank_pool("coreset", np.full((3, 1), 0.5), pool, train, np.ones((1, 1)), n=1, seed=0)
    assert ranking.indices.tolist() == [1]


def test_unknown_strategy_is_refused(pool_inputs):
    with pytest.raises(ValueError, match="unknown strategy"):
        rank_pool("nope", *pool_inputs, n=2)


# --------------------------------------------------------------------------- labels to check

def test_label_check_finds_an_obviously_flipped_label():
    # 40 images, 2 classes; the model is sure of every label except image 7, whose 'b' label says
    # absent while the model gives it 0.97
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 2)) < 0.5).astype(np.int8)
    targets[7] = [1, 0]
    p = np.where(targets == 1, rng.uniform(0.6, 0.95, targets.shape), rng.uniform(0.02, 0.4, targets.shape))
    p[7, 1] = 0.97
    for score in SCORES:
        check = label_check(p, targets, score, classes=["a", "b"], min_labels=0)
        assert check.order[0] == 7, score
        assert check.doubt[7].startswith("b: labelled absent, p 0.97"), score


def test_label_check_puts_images_without_labels_first():
    targets = np.array([[1, 0], [0, 1], [0, 0], [1, 1]])
    p = np.array([[0.1, 0.0], [0.5, 0.9], [0.0, 0.2], [0.9, 0.9]])  # image 0 is the most contradicted
    assert label_check(p, targets, "max_abs", min_labels=0).order[0] == 0
    check = label_check(p, targets, "max_abs", min_labels=1)
    assert check.order.tolist()[:2] == [2, 0]


def test_label_check_on_a_model_finds_corrupted_images(data):
    from fewlabel.model.train import out_of_fold_probabilities
    features, targets = data
    noisy, rows, _ = corrupt_labels(targets, 0.05, seed=0)
    assert (np.abs(noisy.astype(int) - targets).sum(axis=1) == 1).sum() == len(rows) == 8
    svm = for_training_set(DEFAULT_SVM, len(noisy))
    oof = out_of_fold_probabilities(features, noisy, svm, multilabel_kfold(noisy, 5, seed=0))
    found = found_in_top(label_check(oof, noisy, "self_confidence", min_labels=0).scores, rows, 0.10)
    assert found >= 0.75
    # a score of no information finds about 10 %
    assert found_in_top(np.zeros(len(noisy)), rows, 0.10) < 0.5


def test_cross_rank_is_rank_based():
    rng = np.random.default_rng(2)
    targets = (rng.random((30, 2)) < 0.4).astype(np.int8)
    p = rng.random((30, 2))
    a = label_check(p, targets, "cross_rank")
    b = label_check(p ** 3, targets, "cross_rank")  # a monotone transform of each class's scale
    np.testing.assert_allclose(a.cells, b.cells, atol=2e-6)   # equal up to the 1e-6 tie-breaker
    assert not np.allclose(label_check(p, targets, "max_abs").cells, label_check(p ** 3, targets, "max_abs").cells)


# --------------------------------------------------------------------------- learning curve

def test_nested_subsets_are_nested_and_sized():
    _, targets = make_data(n=80)
    subsets = nested_subsets(targets, (0.25, 0.5, 0.75, 1.0), seed=0)
    sizes = [len(subsets[f]) for f in (0.25, 0.5, 0.75, 1.0)]
    assert sizes[-1] == 80 and all(abs(s - 20 * (i + 1)) <= 2 for i, s in enumerate(sizes))
    for small, large in ((0.25, 0.5), (0.5, 0.75), (0.75, 1.0)):
        assert set(subsets[small]) <= set(subsets[large])
    with pytest.raises(ValueError):
        nested_subsets(targets, (0.3, 1.7))


def test_learning_curve_points_equal_a_hand_run_cross_validation():
    features, targets = make_data(n=90, seed=5)
    curve = learning_curve(features, targets, classes=["a", "b", "c"], folds=3, fractions=(0.5, 1.0), seed=1)
    assert len(curve.points) == 6
    svm = for_training_set(DEFAULT_SVM, len(targets))
    folds = multilabel_kfold(targets, 3, seed=1)
    for fold in range(3):
        test, train = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        halves = multilabel_kfold(targets[train], 2, seed=1)
        for fraction, part in ((0.5, train[halves == 0]), (1.0, train)):
            model = build_model(svm).fit(features[part], targets[part])
            ap = per_class_ap(targets[test] * 2 - 1, positive_probabilities(model, features[test]))
            row = curve.points[(curve.points["fold"] == fold) & (curve.points["fraction"] == fraction)].iloc[0]
            assert row["n_train"] == len(part)
            assert row["map"] == pytest.approx(float(np.mean(ap)), abs=1e-12)
            assert row["ap_b"] == pytest.approx(float(ap[1]), abs=1e-12)
    summary = curve.summary.set_index("fraction")
    assert summary.loc[1.0, "map_mean"] == pytest.approx(curve.points.query("fraction == 1.0")["map"].mean())
    assert list(curve.per_class["class"]) == ["a", "b", "c"]
    assert list(curve.forecast["scale"]) == [1.0, 1.5, 2.0]


def test_fit_saturating_recovers_a_known_curve():
    n = np.array([150.0, 300.0, 450.0, 600.0, 900.0])
    y = saturating(n, 0.9, 1.5, 0.6)
    fit = fit_saturating(n, y)
    assert fit["ok"]
    assert saturating(2000.0, fit["a"], fit["b"], fit["c"]) == pytest.approx(saturating(2000.0, 0.9, 1.5, 0.6),
                                                                            abs=2e-3)
    assert not fit_saturating(n[:2], y[:2])["ok"]


def test_repeated_out_of_fold_averages_the_train_stage_oof(data):
    from fewlabel.model.train import out_of_fold_probabilities
    features, targets = data
    svm = for_training_set(DEFAULT_SVM, len(targets))
    runs = [out_of_fold_probabilities(features, targets, svm, multilabel_kfold(targets, 3, seed=s)) for s in (4, 5)]
    np.testing.assert_allclose(repeated_out_of_fold(features, targets, DEFAULT_SVM, 3, 2, seed=4), np.mean(runs, axis=0))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("pool_size", [0, 1])
def test_an_empty_or_one_image_pool_is_ranked_without_error(strategy, pool_size):
    """No pool configured (0 images) or a single image left: every strategy still answers."""
    rng = np.random.default_rng(0)
    train_features, train_targets = rng.normal(size=(12, 6)), rng.integers(0, 2, size=(12, 3))
    ranking = rank_pool(strategy, rng.uniform(size=(pool_size, 3)), rng.normal(size=(pool_size, 6)),
                        train_features, train_targets, n=5, seed=0)
    assert list(ranking.indices) == list(range(pool_size)) and len(ranking.why) == pool_size

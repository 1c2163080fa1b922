"""Tests for fewlabel.metrics: against scikit-learn, hand-computed examples, and the VOC
convention that a label 0 (difficult-only) cell is ignored for that class."""
from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, fbeta_score,
                             hamming_loss, jaccard_score, matthews_corrcoef,
                             multilabel_confusion_matrix, precision_recall_curve)

from fewlabel import metrics as M

SEEDS = [0, 1, 2, 3]


def random_problem(seed, n=60, c=6, with_zero=False, ties=False):
    """VOC-coded labels (1/-1, optionally some 0) and probabilities correlated with them."""
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.1, 0.5, c)
    labels = np.where(rng.random((n, c)) < prevalence, 1, -1)
    labels[0] = 1                      # every class has a positive ...
    labels[1] = -1                     # ... and a negative
    if with_zero:
        labels[rng.random((n, c)) < 0.15] = 0
    logits = rng.normal(size=(n, c)) + 1.2 * (labels == 1)
    probs = 1.0 / (1.0 + np.exp(-logits))
    if ties:
        probs = np.round(probs, 1)
    return labels, probs


def to01(labels):
    return (np.asarray(labels) == 1).astype(int)


# ----------------------------------------------------------------------------- average precision

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(seed, ties):
    labels, probs = random_problem(seed, n=200, c=5, ties=ties)
    for c in range(labels.shape[1]):
        y = to01(labels[:, c])
        assert M.average_precision(y, probs[:, c]) == pytest.approx(
            average_precision_score(y, probs[:, c]), abs=1e-12)
    expected = [average_precision_score(to01(labels[:, c]), probs[:, c]) for c in range(5)]
    np.testing.assert_allclose(M.per_class_ap(labels, probs), expected, atol=1e-12)
    assert M.mean_ap(labels, probs) == pytest.approx(np.mean(expected), abs=1e-12)


def test_average_precision_order_independent_and_constant_scores():
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.5, 0.5, 0.2, 0.9, 0.2, 0.5])
    perm = np.array([3, 0, 5, 1, 4, 2])
    assert M.average_precision(y, s) == pytest.approx(M.average_precision(y[perm], s[perm]))
    assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    # all scores equal: one point, precision = prevalence
    assert M.average_precision(y, np.zeros(6)) == pytest.approx(0.5)


def test_ap_nan_without_positive_and_mean_ap_skips_it():
    assert np.isnan(M.average_precision([0, 0, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(M.voc07_average_precision([0, 0], [0.1, 0.2]))
    labels = np.array([[1, -1], [-1, -1], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.9]])
    ap = M.per_class_ap(labels, scores)
    assert ap[0] == pytest.approx(1.0) and np.isnan(ap[1])
    assert M.mean_ap(labels, scores) == pytest.approx(1.0)


def test_voc07_hand_example():
    # scores already in decreasing order; labels P N P N P (3 positives)
    y = np.array([1, 0, 1, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # cumulative tp: 1 1 2 2 3 ; fp: 0 1 1 2 2
    # precision:  1, 1/2, 2/3, 1/2, 3/5 ; recall: 1/3, 1/3, 2/3, 2/3, 1
    # t = 0, .1, .2, .3 -> max precision at recall >= t over all points        = 1    (4 levels)
    # t = .4, .5, .6    -> points with recall >= t: 2/3, 1/2, 3/5 -> max        = 2/3  (3 levels)
    # t = .7, .8, .9, 1 -> only the last point (recall 1): 3/5                  = 0.6  (4 levels)
    # AP = (4 * 1 + 3 * 2/3 + 4 * 0.6) / 11 = 8.4 / 11
    assert M.voc07_average_precision(y, s) == pytest.approx(8.4 / 11, abs=1e-12)
    # non-interpolated AP for comparison: (1 + 2/3 + 3/5) / 3
    assert M.average_precision(y, s) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3, abs=1e-12)


def test_voc07_recall_exactly_on_a_level():
    # 10 positives: 3 positives first (precision 1 up to recall exactly 0.3), then 10
    # negatives, then 7 positives: precisions 4/14, 5/15, ..., 10/20 = 0.5 (the max) at
    # recalls 0.4 ... 1.0.
    y = np.r_[np.ones(3), np.zeros(10), np.ones(7)].astype(int)
    s = -np.arange(y.size, dtype=float)
    # t = 0, .1, .2, .3 -> 1 (recall 3/10 reaches t = 0.3 exactly); t = .4 ... 1 -> 0.5
    # AP = (4 * 1 + 7 * 0.5) / 11 = 7.5 / 11
    assert M.voc07_average_precision(y, s) == pytest.approx(7.5 / 11, abs=1e-12)


def devkit_voc07(y, s):
    """Direct transcription of VOCevalcls's 11-point AP (for distinct scores)."""
    order = np.argsort(-s, kind="mergesort")
    gt = y[order]
    tp = np.cumsum(gt == 1)
    fp = np.cumsum(gt == 0)
    rec = tp / (gt == 1).sum()
    prec = tp / (tp + fp)
    ap = 0.0
    for t in np.arange(11) / 10:
        p = prec[rec >= t].max() if np.any(rec >= t) else 0.0
        ap += p / 11
    return ap


@pytest.mark.parametrize("seed", SEEDS)
def test_voc07_matches_devkit_transcription(seed):
    labels, probs = random_problem(seed, n=150, c=4)
    for c in range(4):
        y = to01(labels[:, c])
        assert M.voc07_average_precision(y, probs[:, c]) == pytest.approx(
            devkit_voc07(y, probs[:, c]), abs=1e-12)
    expected = [devkit_voc07(to01(labels[:, c]), probs[:, c]) for c in range(4)]
    np.testing.assert_allclose(M.per_class_ap(labels, probs, voc07=True), expected, atol=1e-12)
    assert M.mean_ap(labels, probs, voc07=True) == pytest.approx(np.mean(expected))


# ----------------------------------------------------------------------------- thresholded metrics

@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_scores_match_sklearn(seed):
    labels, probs = random_problem(seed, n=80, c=6)
    rng = np.random.default_rng(seed + 100)
    thresholds = rng.uniform(0.3, 0.7, 6)
    # make sure the conventions are exercised: an image with no true and no predicted class,
    # an image with predictions but no truth
    labels[5] = -1
    probs[5] = 0.01
    labels[6] = -1
    probs[6, 0] = 0.99
    y = to01(labels)
    pred = (probs >= thresholds).astype(int)
    out = M.multilabel_scores(labels, probs, pred)
    assert list(out) == list(M.METRIC_KEYS)
    assert out["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert out["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert out["dice"] == pytest.approx(f1_score(y, pred, average="samples", zero_division=1.0))
    assert out["jaccard"] == pytest.approx(
        jaccard_score(y, pred, average="samples", zero_division=1.0))
    assert out["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert out["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert out["empty_rate"] == pytest.approx(np.mean(pred.sum(axis=1) == 0)) and out["empty_rate"] > 0
    # precision@k: brute force by sorting each row
    for k in (1, 3):
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        expected = np.mean([y[i, top[i]].sum() / k for i in range(len(y))])
        assert out[f"precision_at_{k}"] == pytest.approx(expected)


def test_f1_macro_zero_division_convention():
    # class 1 has no positive and is never predicted: F1 ill-defined
    labels = np.array([[1, -1], [-1, -1], [1, -1]])
    probs = np.array([[0.9, 0.1], [0.2, 0.1], [0.3, 0.1]])
    y, pred = to01(labels), (probs >= 0.5).astype(int)
    out = M.multilabel_scores(labels, probs, pred)
    # class 0: tp 1, fn 1 -> F1 2/3; class 1 -> 0 (sklearn's default)
    assert out["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert out["f1_macro"] == pytest.approx((2 / 3 + 0) / 2)
    skipped = M.multilabel_scores(labels, probs, pred, zero_division=np.nan)
    assert skipped["f1_macro"] == pytest.approx(2 / 3)


def test_top_k_keys_follow_argument():
    labels, probs = random_problem(0, n=10, c=4)
    out = M.multilabel_scores(labels, probs, M.threshold_predictions(probs, 0.5), top_k=(2, 5))
    assert set(out) == {"f1_micro", "f1_macro", "dice", "jaccard", "precision_at_2",
                        "precision_at_5", "hamming_loss", "subset_accuracy", "empty_rate"}


def test_precision_at_k_hand_example():
    labels = np.array([
        [1, -1, 1, -1],    # top-1: class 0 (true); top-3: 0, 3, 2 -> 2 true
        [-1, 1, -1, -1],   # top-1: class 3 (false); top-3: 3, 1, 2 -> 1 true
        [1, 0, -1, 1],     # class 1 ignored; ranking 3, 0, 2 -> top-1 true; top-3 -> 2 true
    ])
    probs = np.array([
        [0.9, 0.1, 0.5, 0.6],
        [0.1, 0.7, 0.3, 0.8],
        [0.5, 0.99, 0.2, 0.6],  # 0.99 on the ignored cell must not count
    ])
    out = M.precision_at_k(labels, probs, (1, 3))
    # P@1 = mean(1, 0, 1) = 2/3 ; P@3 = mean(2/3, 1/3, 2/3) = 5/9
    assert out[1] == pytest.approx(2 / 3)
    assert out[3] == pytest.approx(5 / 9)
    ms = M.multilabel_scores(labels, probs, M.threshold_predictions(probs, 0.5))
    assert ms["precision_at_1"] == pytest.approx(2 / 3)
    assert ms["precision_at_3"] == pytest.approx(5 / 9)


def test_threshold_predictions():
    p = np.array([[0.2, 0.5, 0.7], [0.6, 0.4, 0.1]])
    np.testing.assert_array_equal(M.threshold_predictions(p, [0.2, 0.5, 0.8]),
                                  [[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(M.threshold_predictions(p, 0.5), [[0, 1, 1], [1, 0, 0]])
    assert M.threshold_predictions(p, 0.5).dtype.kind == "i"
    with pytest.raises(ValueError):
        M.threshold_predictions(p, [0.5, 0.5])


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_confusion_matches_sklearn(seed):
    labels, probs = random_problem(seed, n=50, c=5)
    pred = (probs >= 0.5).astype(int)
    np.testing.assert_array_equal(M.per_class_confusion(labels, pred),
                                  multilabel_confusion_matrix(to01(labels), pred))


# ----------------------------------------------------------------------------- ignored (0) cells

def all_metrics(labels, probs, thresholds):
    pred = M.threshold_predictions(probs, thresholds)
    return {
        "ap": M.per_class_ap(labels, probs),
        "ap07": M.per_class_ap(labels, probs, voc07=True),
        "map": M.mean_ap(labels, probs),
        "scores": M.multilabel_scores(labels, probs, pred),
        "confusion": M.per_class_confusion(labels, pred),
        "ci": M.bootstrap_map_ci(labels, probs, 50, seed=3),
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_zero_cells_scores_do_not_matter(seed):
    labels, probs = random_problem(seed, n=70, c=5, with_zero=True)
    zero = labels == 0
    assert zero.any()
    thresholds = np.full(5, 0.5)
    before = all_metrics(labels, probs, thresholds)
    for fill in (0.0, 1.0):           # every ignored cell predicted negative, then positive
        changed = probs.copy()
        changed[zero] = fill
        after = all_metrics(labels, changed, thresholds)
        np.testing.assert_allclose(after["ap"], before["ap"])
        np.testing.assert_allclose(after["ap07"], before["ap07"])
        assert after["map"] == pytest.approx(before["map"])
        # empty_rate describes the predictions alone, ignored cells included (checked below)
        assert {k: v for k, v in after["scores"].items() if k != "empty_rate"} == pytest.approx(
            {k: v for k, v in before["scores"].items() if k != "empty_rate"})
        np.testing.assert_array_equal(after["confusion"], before["confusion"])
        assert after["ci"] == pytest.approx(before["ci"])


def test_zero_cell_equals_removing_it():
    labels, probs = random_problem(7, n=40, c=4)
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    i, c = 3, 2
    labels[i, c] = 0
    probs[i, c] = 0.97                 # would be a confident false positive if counted
    keep = np.arange(len(labels)) != i
    y = to01(labels)
    pred = (probs >= thresholds).astype(int)

    # per-class metrics: identical to sklearn on the class column with row i dropped
    yc, pc = y[keep, c], probs[keep, c]
    assert M.per_class_ap(labels, probs)[c] == pytest.approx(average_precision_score(yc, pc))
    assert M.per_class_ap(labels, probs, voc07=True)[c] == pytest.approx(devkit_voc07(yc, pc))
    np.testing.assert_array_equal(M.per_class_confusion(labels, pred)[c],
                                  multilabel_confusion_matrix(yc, pred[keep, c])[1])
    out = M.multilabel_scores(labels, probs, pred)
    per_class_f1 = [f1_score(y[:, k] if k != c else yc, pred[:, k] if k != c else pred[keep, c],
                             zero_division=0) for k in range(4)]
    assert out["f1_macro"] == pytest.approx(np.mean(per_class_f1))
    # micro-F1 from counts over all cells but (i, c)
    mask = np.ones_like(y, dtype=bool)
    mask[i, c] = False
    tp = (y & pred)[mask].sum()
    fp = ((1 - y) & pred)[mask].sum()
    fn = (y & (1 - pred))[mask].sum()
    assert out["f1_micro"] == pytest.approx(2 * tp / (2 * tp + fp + fn))

    # per-image metrics: removing the cell from Y and P is the same as a true negative there
    y_neutral, pred_neutral = y.copy(), pred.copy()
    y_neutral[i, c] = 0
    pred_neutral[i, c] = 0
    assert out["dice"] == pytest.approx(
        f1_score(y_neutral, pred_neutral, average="samples", zero_division=1.0))
    assert out["jaccard"] == pytest.approx(
        jaccard_score(y_neutral, pred_neutral, average="samples", zero_division=1.0))
    assert out["subset_accuracy"] == pytest.approx(accuracy_score(y_neutral, pred_neutral))
    assert out["empty_rate"] == pytest.approx(np.mean(pred.sum(axis=1) == 0))  # the (i, c) prediction counts
    # hamming: the wrong cells are the same, the denominator loses one cell
    wrong = (y_neutral != pred_neutral).sum()
    assert out["hamming_loss"] == pytest.approx(wrong / (y.size - 1))
    # precision@k: the cell leaves the ranking, i.e. it behaves like -inf and not true
    ranked = probs.copy()
    ranked[i, c] = -np.inf
    for k in (1, 3):
        top = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
        expected = np.mean([y_neutral[r, top[r]].sum() / k for r in range(len(y))])
        assert out[f"precision_at_{k}"] == pytest.approx(expected)


def test_empty_rate_counts_predictions_on_ignored_cells():
    labels = np.array([[1, 0], [1, -1]])
    probs = np.array([[0.1, 0.9], [0.1, 0.2]])
    out = M.multilabel_scores(labels, probs, M.threshold_predictions(probs, 0.5))
    assert out["empty_rate"] == 0.5    # image 0 gets a label (its difficult-only class), image 1 none
    assert out["dice"] == 0.0          # ... though for the scores image 0 predicted nothing


def test_invalid_codes_rejected():
    with pytest.raises(ValueError):
        M.per_class_ap(np.array([[2, 1], [1, -1]]), np.zeros((2, 2)))
    with pytest.raises(ValueError):
        M.average_precision(np.array([1, -1]), np.array([0.3, 0.2]))   # VOC codes, not 0/1
    with pytest.raises(ValueError):
        M.multilabel_scores(np.ones((2, 2), int), np.zeros((3, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="predictions have shape"):
        M.multilabel_scores(np.ones((2, 2), int), np.zeros((2, 2)), np.array([0.5, 0.5]))  # thresholds, not 0/1
    with pytest.raises(ValueError, match="only 0/1"):
        M.multilabel_scores(np.ones((2, 2), int), np.zeros((2, 2)), np.full((2, 2), 0.7))


# ----------------------------------------------------------------------------- bootstrap

def bootstrap_reference(labels, scores, n_resamples, seed, level=0.95):
    """Materialise every resample (same draws as the documented procedure)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    maps = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        maps.append(M.mean_ap(labels[idx], scores[idx]))
    return tuple(np.nanpercentile(maps, [50 * (1 - level), 50 * (1 + level)]))


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_equals_materialised_resamples(ties):
    labels, probs = random_problem(11, n=40, c=5, with_zero=True, ties=ties)
    labels[:, 4] = np.where(labels[:, 4] == 0, 0, -1)
    labels[2, 4] = 1                  # a rare class: absent from many resamples (skipped)
    got = M.bootstrap_map_ci(labels, probs, 200, seed=5)
    assert got == pytest.approx(bootstrap_reference(labels, probs, 200, 5), abs=1e-12)
    got90 = M.bootstrap_map_ci(labels, probs, 200, seed=5, level=0.9)
    assert got90 == pytest.approx(bootstrap_reference(labels, probs, 200, 5, 0.9), abs=1e-12)
    assert got[0] <= got90[0] <= got90[1] <= got[1]


def test_bootstrap_contains_point_and_is_deterministic():
    labels, probs = random_problem(2, n=300, c=8, with_zero=True)
    point = M.mean_ap(labels, probs)
    low, high = M.bootstrap_map_ci(labels, probs, 300, seed=0)
    assert low < point < high
    assert high - low < 0.3
    assert M.bootstrap_map_ci(labels, probs, 300, seed=0) == (low, high)
    assert M.bootstrap_map_ci(labels, probs, 300, seed=1) != (low, high)
    assert all(np.isnan(M.bootstrap_map_ci(labels, probs, 0, seed=0)))


def test_bootstrap_speed_realistic_size():
    rng = np.random.default_rng(0)
    n, c = 5000, 20
    labels = np.where(rng.random((n, c)) < rng.uniform(0.02, 0.3, c), 1, -1)
    labels[rng.random((n, c)) < 0.02] = 0
    scores = rng.normal(size=(n, c)) + 1.5 * (labels == 1)
    start = time.perf_counter()
    low, high = M.bootstrap_map_ci(labels, scores, 1000, seed=0)
    elapsed = time.perf_counter() - start
    assert low < M.mean_ap(labels, scores) < high
    assert elapsed < 10, f"bootstrap took {elapsed:.1f}s"


# ----------------------------------------------------------------------------- thresholds

def brute_force_curve(y, p, metric):
    cands = np.unique(p)
    out = []
    for t in cands:
        pred = p >= t
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        fn, tn = np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))
        if metric == "mcc":
            out.append(matthews_corrcoef(y, pred.astype(int)))
        else:
            beta = float(metric[1:])
            out.append(fbeta_score(y, pred.astype(int), beta=beta, zero_division=0))
        assert tp + fp + fn + tn == len(y)
    return cands, np.array(out)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("metric", ["f1", "mcc", "f2", "f0.5"])
@pytest.mark.parametrize("ties", [False, True])
def test_best_threshold_matches_brute_force(seed, metric, ties):
    labels, probs = random_problem(seed, n=120, c=1, ties=ties)
    y, p = to01(labels[:, 0]), probs[:, 0]
    cands, brute = brute_force_curve(y, p, metric)
    threshold, best, thr, scores = M.best_threshold(y, p, metric)
    np.testing.assert_allclose(thr, cands)
    np.testing.assert_allclose(scores, brute, atol=1e-12)
    assert best == pytest.approx(brute.max(), abs=1e-12)
    # the returned threshold really achieves the best score, and sits strictly inside a
    # plateau (not on a training probability) unless it is the lowest candidate
    assert M.score_at_threshold(y, p, threshold, metric) == pytest.approx(best, abs=1e-12)
    assert threshold == cands[0] or threshold not in set(p)


def test_best_threshold_plateau_midpoint():
    # F1 = 2tp / (2tp + fp + fn). Sorted probabilities 0.9 P, 0.8 P, 0.6 N, 0.3 N, 0.1 P (3 P):
    #   t=0.9: tp1 fp0 fn2 -> 2/4 = 0.5     t=0.8: tp2 fp0 fn1 -> 4/5 = 0.8
    #   t=0.6: tp2 fp1 fn1 -> 4/6           t=0.3: tp2 fp2 fn1 -> 4/7
    #   t=0.1: tp3 fp2 fn0 -> 6/8 = 0.75
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.1])
    threshold, best, thr, scores = M.best_threshold(y, p, "f1")
    np.testing.assert_allclose(thr, [0.1, 0.3, 0.6, 0.8, 0.9])
    np.testing.assert_allclose(scores, [0.75, 4 / 7, 4 / 6, 0.8, 0.5])
    assert best == pytest.approx(0.8)
    # best candidate 0.8, next lower distinct probability 0.6 -> midpoint 0.7
    assert threshold == pytest.approx(0.7)
    assert M.score_at_threshold(y, p, threshold) == pytest.approx(0.8)


def test_best_threshold_ties():
    # binary fractions so that interval widths compare exactly
    # (a) two separate best runs: 0.875 P | 0.75 N | 0.625 {P, N} | 0.5 N   (2 P)
    #   t=0.875: tp1 fn1 -> 2/3 ; t=0.75: tp1 fp1 fn1 -> 2/4 ; t=0.625: tp2 fp2 -> 4/6 = 2/3 ;
    #   t=0.5: tp2 fp3 -> 4/7. Runs {0.625}: (0.5, 0.625] and {0.875}: (0.75, 0.875], both
    #   0.125 wide -> the higher one, midpoint 0.8125
    y = np.array([1, 0, 1, 0, 0])
    p = np.array([0.875, 0.75, 0.625, 0.625, 0.5])
    threshold, best, _, scores = M.best_threshold(y, p, "f1")
    np.testing.assert_allclose(scores, [4 / 7, 2 / 3, 0.5, 2 / 3])
    assert best == pytest.approx(2 / 3) and threshold == 0.8125
    # (b) same, but the last negative at 0.25: run {0.625} spans (0.25, 0.625], wider than
    #   (0.75, 0.875] -> midpoint (0.625 + 0.25) / 2 = 0.4375
    p_b = np.array([0.875, 0.75, 0.625, 0.625, 0.25])
    threshold, best, _, _ = M.best_threshold(y, p_b, "f1")
    assert best == pytest.approx(2 / 3) and threshold == 0.4375
    # (c) adjacent tied candidates form one plateau: 0.875 P | 0.5 {P, N, N} | 0.25 N
    #   t=0.875: tp1 fn1 -> 2/3 ; t=0.5: tp2 fp2 -> 2/3 ; t=0.25: tp2 fp3 -> 4/7
    #   plateau (0.25, 0.875] -> midpoint 0.5625 (which predicts like t=0.875: still 2/3)
    y_c = np.array([1, 1, 0, 0, 0])
    p_c = np.array([0.875, 0.5, 0.5, 0.5, 0.25])
    threshold, best, _, scores = M.best_threshold(y_c, p_c, "f1")
    np.testing.assert_allclose(scores, [4 / 7, 2 / 3, 2 / 3])
    assert threshold == 0.5625 and best == pytest.approx(2 / 3)
    assert M.score_at_threshold(y_c, p_c, threshold) == pytest.approx(2 / 3)
    # (d) the best plateau reaches the lowest candidate: that candidate itself is returned
    t_d, b_d, _, _ = M.best_threshold(np.array([1, 1, 1]), np.array([0.8, 0.5, 0.2]), "f1")
    assert t_d == 0.2 and b_d == pytest.approx(1.0)
    # (e) MCC: only t=0.7 separates perfectly -> midpoint (0.7 + 0.5) / 2
    t_e, b_e, _, _ = M.best_threshold(np.array([1, 1, 0, 0]), np.array([0.9, 0.7, 0.5, 0.2]), "mcc")
    assert b_e == pytest.approx(1.0) and t_e == pytest.approx(0.6)


def test_rare_class_best_f1_threshold_well_below_half():
    # a rare class whose probabilities are low (Platt scaling of a rare class): the 8
    # positives sit around 0.15-0.35, the 292 negatives mostly below 0.12
    rng = np.random.default_rng(0)
    neg = rng.uniform(0.0, 0.12, 292)
    pos = rng.uniform(0.15, 0.35, 8)
    p = np.r_[neg, pos]
    y = np.r_[np.zeros(292, int), np.ones(8, int)]
    threshold, best, _, _ = M.best_threshold(y, p, "f1")
    assert threshold < 0.2
    assert best == pytest.approx(1.0)
    assert M.score_at_threshold(y, p, 0.5, "f1") == 0.0   # the default threshold finds nothing
    assert M.score_at_threshold(y, p, threshold, "f1") == pytest.approx(1.0)


def test_pooled_2d_with_ignore_mask():
    labels, probs = random_problem(4, n=50, c=4, with_zero=True)
    ignore = labels == 0
    y2d = (labels == 1).astype(int)
    t2d, b2d, thr2d, s2d = M.best_threshold(y2d, probs, "f1", ignore=ignore)
    t1d, b1d, thr1d, s1d = M.best_threshold(y2d[~ignore], probs[~ignore], "f1")
    assert (t2d, b2d) == (t1d, b1d)
    np.testing.assert_array_equal(thr2d, thr1d)
    np.testing.assert_array_equal(s2d, s1d)
    # changing ignored cells changes nothing
    changed = probs.copy()
    changed[ignore] = 1.0
    assert M.best_threshold(y2d, changed, "f1", ignore=ignore)[:2] == (t2d, b2d)
    assert M.score_at_threshold(y2d, probs, 0.5, "mcc", ignore=ignore) == pytest.approx(
        matthews_corrcoef(y2d[~ignore], (probs[~ignore] >= 0.5).astype(int)))


def test_score_helpers_match_sklearn():
    labels, probs = random_problem(9, n=100, c=1)
    y, pred = to01(labels[:, 0]), (probs[:, 0] >= 0.5).astype(int)
    tp, fp = np.sum((y == 1) & (pred == 1)), np.sum((y == 0) & (pred == 1))
    fn, tn = np.sum((y == 1) & (pred == 0)), np.sum((y == 0) & (pred == 0))
    assert M.score_from_counts("f1", tp, fp, fn, tn) == pytest.approx(f1_score(y, pred))
    assert M.score_from_counts("f2", tp, fp, fn, tn) == pytest.approx(fbeta_score(y, pred, beta=2))
    assert M.score_from_counts("f0.5", tp, fp, fn, tn) == pytest.approx(
        fbeta_score(y, pred, beta=0.5))
    assert M.mcc_from_counts(tp, fp, fn, tn) == pytest.approx(matthews_corrcoef(y, pred))
    assert isinstance(M.score_from_counts("f1", tp, fp, fn, tn), float)
    np.testing.assert_allclose(M.fbeta_from_counts(np.array([1, 2]), np.array([1, 0]), 1),
                               [0.5, 0.8])
    assert M.fbeta_from_counts(0, 0, 0) == 0.0
    assert M.mcc_from_counts(0, 0, 3, 5) == 0.0
    with pytest.raises(ValueError):
        M.score_from_counts("auc", 1, 1, 1, 1)


# ----------------------------------------------------------------------------- target metrics

def test_target_scores_match_sklearn():
    labels, probs = random_problem(4, n=90, c=5)
    y, pred = to01(labels), (probs >= 0.55).astype(int)
    y[3], pred[3] = 0, 0               # neither true nor predicted: Dice and Jaccard 1
    pred[4] = 0                        # truth but no prediction: 0
    assert M.target_score("f1", y, pred) == pytest.approx(f1_score(y, pred, average="micro"))
    assert M.target_score("f2", y, pred) == pytest.approx(fbeta_score(y, pred, beta=2, average="micro"))
    assert M.target_score("mcc", y, pred) == pytest.approx(matthews_corrcoef(y.ravel(), pred.ravel()))
    assert M.target_score("dice", y, pred) == pytest.approx(
        f1_score(y, pred, average="samples", zero_division=1.0))
    assert M.target_score("jaccard", y, pred) == pytest.approx(
        jaccard_score(y, pred, average="samples", zero_division=1.0))
    # the same per-image definitions as the evaluation metrics
    scores = M.multilabel_scores(np.where(y == 1, 1, -1), probs, pred)
    assert M.target_score("dice", y, pred) == pytest.approx(scores["dice"])
    assert M.target_score("jaccard", y, pred) == pytest.approx(scores["jaccard"])
    with pytest.raises(ValueError, match="unknown metric"):
        M.target_score("auc", y, pred)


def test_dice_and_jaccard_hand_example():
    y = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]])
    pred = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 1, 1]])
    # image 0: |Y∩P| 1, |Y| 2, |P| 2 -> Dice 1/2, Jaccard 1/3; image 1: 1, 1; image 2: empty,
    # empty -> 1, 1; image 3: 0, 0
    assert M.target_score("dice", y, pred) == pytest.approx((1 / 2 + 1 + 1 + 0) / 4)
    assert M.target_score("jaccard", y, pred) == pytest.approx((1 / 3 + 1 + 1 + 0) / 4)
    # parts add up over images, so a sum over any split gives the same score
    parts = M.image_parts("dice", y, pred)
    assert parts.shape == (4, 1)
    assert M.metric_from_parts("dice", parts[:2].sum(0) + parts[2:].sum(0), 4) == pytest.approx(0.625)
    counts = M.image_parts("f1", y, pred)
    np.testing.assert_array_equal(counts.sum(0), [2, 3, 2, 5])  # tp, fp, fn, tn


# ----------------------------------------------------------------------------- PR curve points

def test_precision_recall_points_full_curve_matches_sklearn():
    labels, probs = random_problem(5, n=100, c=1, ties=True)
    y, s = to01(labels[:, 0]), probs[:, 0]
    pts = M.precision_recall_points(y, s, max_points=500)
    precision, recall, thresholds = precision_recall_curve(y, s)
    # sklearn: increasing thresholds plus an appended (precision 1, recall 0) end point
    np.testing.assert_allclose(pts["threshold"], thresholds[::-1])
    np.testing.assert_allclose(pts["precision"], precision[:-1][::-1])
    np.testing.assert_allclose(pts["recall"], recall[:-1][::-1])


def test_precision_recall_points_decimated():
    labels, probs = random_problem(6, n=3000, c=1)
    y, s = to01(labels[:, 0]), probs[:, 0]
    full = M.precision_recall_points(y, s, max_points=10**6)
    pts = M.precision_recall_points(y, s, max_points=200)
    assert len(full["threshold"]) == 3000
    assert 150 <= len(pts["threshold"]) <= 200
    assert len(pts["precision"]) == len(pts["recall"]) == len(pts["threshold"])
    for key in ("precision", "recall", "threshold"):
        assert pts[key][0] == full[key][0] and pts[key][-1] == full[key][-1]
    assert np.all(np.diff(pts["threshold"]) < 0) and np.all(np.diff(pts["recall"]) >= 0)
    # every kept point is a point of the full curve
    idx = np.searchsorted(-full["threshold"], -pts["threshold"])
    np.testing.assert_array_equal(full["precision"][idx], pts["precision"])
    # shape kept: the step-wise area from the decimated points stays close to the full AP
    area = np.sum(np.diff(pts["recall"], prepend=0) * pts["precision"])
    assert area == pytest.approx(M.average_precision(y, s), abs=0.01)
    # the best-F1 point survives decimation
    f1 = lambda d: np.max(2 * d["precision"] * d["recall"] / (d["precision"] + d["recall"]))
    assert f1(pts) == pytest.approx(f1(full))
    assert f1(M.precision_recall_points(y, s, max_points=12)) == pytest.approx(f1(full))
    assert len(M.precision_recall_points(y, s, max_points=12)["recall"]) <= 12

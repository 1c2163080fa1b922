"""Why calibrated thresholds do not beat "0.5 + top class" held out: a study on devdata.

    python bench/rule_study.py --draws 5

Per draw (the quality harness's draws: 750 training images by the subset stage's own draw,
the rest of devdata's 2,334 photos scored), with the default views and SVM on devdata's
Lite0, it collects once (cached under ``--cache``) the out-of-fold (OOF) probabilities and
decision values of the calibration folds' models and the final model's on the eval images.
Then it scores decision rules of four kinds on the eval images (mean over draws):

- the shipped rule (``calibrate`` with params.yaml) and the 0.5 + top-1 baseline;
- upper bounds: thresholds fitted on the *eval labels themselves* (oracles);
- transfer without any model shift: rules fitted on a random half of the eval images
  (the final model's probabilities, so no 600- vs 750-image model difference) and scored
  on the other half, beside the same rule fitted out of fold;
- rules with no fitted threshold (plug-in expected Dice/Jaccard of the top-k from the
  probabilities) and other rule families (rank-wise, ratio-to-top), and a recalibration
  of the final model's decision values with a Platt map fitted on OOF decision values.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from quality import DEVDATA_VOC, LITE0, REPO_ROOT, apply_overrides, draw_split, load_pool  # noqa: E402

COLUMNS = ("micro-F1", "macro-F1", "Dice", "Jaccard", "labels/image")


# ------------------------------------------------------------------ data

def decision_values(model, features: np.ndarray) -> np.ndarray:
    kernel = model[:-1].transform(features)
    return np.column_stack([estimator.decision_function(kernel) for estimator in model[-1].estimators_])


def collect(draw: int, params, pool, cache: Path) -> dict:
    """OOF and eval probabilities / decision values of one draw (cached as .npz)."""
    path = cache / f"draw{draw}.npz"
    if path.exists():
        return dict(np.load(path))
    from fewlabel.artifacts import training_targets
    from fewlabel.featurize import featurize_subsets
    from fewlabel.model.svm import RANDOM_STATE, build_model, for_training_set, positive_probabilities
    from fewlabel.model.folds import multilabel_kfold
    _, labels, paths = pool
    train_rows, eval_rows = draw_split(labels, params, draw)
    featurized = featurize_subsets([paths[i] for i in train_rows], labels[train_rows],
                                   [paths[i] for i in eval_rows], params.features, params.data.classes,
                                   progress=False)
    targets = training_targets(labels[train_rows])
    folds = multilabel_kfold(targets, params.train.oof_folds, seed=RANDOM_STATE)  # as train does
    svm = for_training_set(params.svm, len(targets))  # svm.approximation auto -> exact or nystroem
    oof_p, oof_d = np.zeros(targets.shape), np.zeros(targets.shape)
    for fold in np.unique(folds):
        held_out = folds == fold
        model = build_model(svm).fit(featurized.train[~held_out], targets[~held_out])
        oof_p[held_out] = positive_probabilities(model, featurized.train[held_out])
        oof_d[held_out] = decision_values(model, featurized.train[held_out])
    model = build_model(svm).fit(featurized.train, targets)
    arrays = {"targets": targets, "folds": folds, "oof_p": oof_p, "oof_d": oof_d,
              "eval_p": positive_probabilities(model, featurized.eval),
              "eval_d": decision_values(model, featurized.eval), "eval_labels": labels[eval_rows]}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


# ------------------------------------------------------------------ rules without a fitted threshold

def top_k_predictions(p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """0/1 predictions: each image's ``k`` highest-probability classes."""
    order = np.argsort(-p, axis=1, kind="stable")
    predictions = np.zeros(p.shape, dtype=np.int64)
    np.put_along_axis(predictions, order, (np.arange(p.shape[1]) < k[:, None]).astype(np.int64), axis=1)
    return predictions


def plug_in_k(p: np.ndarray, metric: str) -> np.ndarray:
    """Per image, the k >= 1 maximising the expected Dice or Jaccard of its top-k, labels taken
    as independent with these probabilities (ratio-of-expectations approximation)."""
    top = np.cumsum(-np.sort(-p, axis=1), axis=1)
    k = np.arange(1, p.shape[1] + 1)[None, :]
    total = top[:, -1:]
    expected = top / (k + total - top) if metric == "jaccard" else 2 * top / (k + total)
    return np.argmax(expected, axis=1) + 1


def monte_carlo_jaccard_k(p: np.ndarray, samples: int = 2000, max_k: int = 5, seed: int = 0) -> np.ndarray:
    """Per image, the k maximising expected Jaccard of its top-k under independent labels
    conditioned on at least one label (every VOC image has one), by sampling."""
    rng = np.random.default_rng(seed)
    sorted_p = -np.sort(-p, axis=1)
    best = np.ones(len(p), dtype=int)
    for i, row in enumerate(sorted_p):
        truth = rng.random((samples, len(row))) < row
        truth = truth[truth.any(axis=1)]
        n_true = truth.sum(axis=1)
        expected = [np.mean(truth[:, :k].sum(1) / (k + n_true - truth[:, :k].sum(1))) for k in range(1, max_k + 1)]
        best[i] = int(np.argmax(expected)) + 1
    return best


# ------------------------------------------------------------------ other rule families

def family_predictions(family: str, parameters, p: np.ndarray) -> np.ndarray:
    """rank: top-1, the 2nd if >= t2, the 3rd on if >= t3; ratio: top-1 and every p >= max(a * p1, b)."""
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    first, second = parameters
    if family == "rank":
        keep = np.ones(sorted_p.shape, bool)
        keep[:, 1] = sorted_p[:, 1] >= first
        keep[:, 2:] = sorted_p[:, 2:] >= second
        keep = np.cumprod(keep, axis=1).astype(bool)
    else:
        keep = (sorted_p >= first * sorted_p[:, :1]) & (sorted_p >= second)
        keep[:, 0] = True
    predictions = np.zeros(p.shape, dtype=np.int64)
    np.put_along_axis(predictions, order, keep.astype(np.int64), axis=1)
    return predictions


def fit_family(family: str, truth: np.ndarray, p: np.ndarray):
    """The family's parameters maximising mean per-image Jaccard on (truth, p), by grid search."""
    from fewlabel.metrics import target_score
    grid = np.round(np.arange(0.2, 0.86, 0.025), 3)
    seconds = grid if family == "rank" else np.round(np.arange(0.0, 0.6, 0.05), 3)
    scored = [(target_score("jaccard", truth, family_predictions(family, (a, b), p)), (a, b))
              for a in grid for b in seconds]
    return max(scored, key=lambda item: item[0])[1]


def platt(oof_d: np.ndarray, targets: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``d`` mapped by per-class sigmoids fitted on the OOF decision values."""
    from sklearn.linear_model import LogisticRegression
    out = np.zeros(d.shape)
    for c in range(d.shape[1]):
        out[:, c] = LogisticRegression(C=1e6).fit(oof_d[:, [c]], targets[:, c]).predict_proba(d[:, [c]])[:, 1]
    return out


# ------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--halves", type=int, default=4, help="random eval halves per draw")
    parser.add_argument("--cache", default="/tmp/fewlabel-rule-study")
    args = parser.parse_args()
    from fewlabel.model.rules import DecisionRule, apply_rule
    from fewlabel.model.calibrate import best_global_threshold, calibrate, per_class_rule
    from fewlabel.metrics import multilabel_scores
    from fewlabel.params import parse_params, read_params_file
    base_raw = read_params_file(REPO_ROOT / "params.yaml")
    raw = apply_overrides(base_raw, {"features.backbones": [str(LITE0)], "evaluate.bootstrap": 0})
    pool = load_pool(DEVDATA_VOC, "train", parse_params(raw).data.classes)
    rows: dict[str, list] = {}

    def score(name, labels, p, predictions):
        s = multilabel_scores(labels, p, predictions, (1,))
        rows.setdefault(name, []).append([s["f1_micro"], s["f1_macro"], s["dice"], s["jaccard"],
                                          predictions.sum(1).mean() / 100])

    for draw in range(args.draws):
        params = parse_params(apply_overrides(raw, {"subset.seed": draw}))
        arrays = collect(draw, params, pool, Path(args.cache))
        targets, folds, labels, p = arrays["targets"], arrays["folds"], arrays["eval_labels"], arrays["eval_p"]
        truth = (labels == 1).astype(int)
        n_classes = targets.shape[1]
        top1 = DecisionRule.uniform(n_classes, 0.5, 1)

        def uniform(threshold):
            return DecisionRule.uniform(n_classes, threshold, 1)

        score("0.5 + top-1", labels, p, apply_rule(p, top1))
        score("shipped: calibrate (auto, jaccard)", labels, p,
              apply_rule(p, calibrate(targets, arrays["oof_p"], folds, params.calibrate).rule))
        oof_global = best_global_threshold(targets, arrays["oof_p"], "jaccard", 1, None)
        score("global threshold fitted out of fold", labels, p, apply_rule(p, uniform(oof_global)))
        eval_global = best_global_threshold(truth, p, "jaccard", 1, None)
        score("ORACLE: global threshold fitted on the eval labels", labels, p, apply_rule(p, uniform(eval_global)))
        oracle = per_class_rule(truth, p, replace(params.calibrate, metric="jaccard", shrinkage=0), eval_global)
        score("ORACLE: per-class thresholds fitted on the eval labels", labels, p, apply_rule(p, oracle))
        for metric in ("dice", "jaccard"):
            score(f"plug-in expected {metric} (no fitting)", labels, p, top_k_predictions(p, plug_in_k(p, metric)))
        score("Monte Carlo expected Jaccard, >= 1 label (no fitting)", labels, p,
              top_k_predictions(p, monte_carlo_jaccard_k(p)))
        for family in ("rank", "ratio"):
            fitted = fit_family(family, targets, arrays["oof_p"])
            score(f"{family} family fitted out of fold", labels, p, family_predictions(family, fitted, p))
        recalibrated = platt(arrays["oof_d"], targets, arrays["eval_d"])
        score("OOF Platt map on final decision values, 0.5 + top-1", labels, recalibrated,
              apply_rule(recalibrated, top1))

        oof_per_class = per_class_rule(targets, arrays["oof_p"], params.calibrate, oof_global)
        rng = np.random.default_rng(draw)
        for _ in range(args.halves):
            half = rng.permutation(len(labels)) < len(labels) // 2
            fit_truth, fit_p, rest_labels, rest_p = truth[half], p[half], labels[~half], p[~half]
            score("HALVES: 0.5 + top-1", rest_labels, rest_p, apply_rule(rest_p, top1))
            half_global = best_global_threshold(fit_truth, fit_p, "jaccard", 1, None)
            score("HALVES: global threshold fitted on the other half", rest_labels, rest_p,
                  apply_rule(rest_p, uniform(half_global)))
            half_per_class = per_class_rule(fit_truth, fit_p, params.calibrate, half_global)
            score("HALVES: per-class (shrinkage 10) fitted on the other half", rest_labels, rest_p,
                  apply_rule(rest_p, half_per_class))
            score("HALVES: per-class (shrinkage 10) fitted out of fold", rest_labels, rest_p,
                  apply_rule(rest_p, oof_per_class))
            for family in ("rank", "ratio"):
                fitted = fit_family(family, fit_truth, fit_p)
                score(f"HALVES: {family} family fitted on the other half", rest_labels, rest_p,
                      family_predictions(family, fitted, rest_p))
        print(f"draw {draw}: OOF-fitted global threshold {oof_global:.2f}, eval-label oracle {eval_global:.2f}",
              file=sys.stderr, flush=True)

    print(f"\n{args.draws} draws of 750 training images, devdata Lite0, default views and SVM; "
          "mean over draws (HALVES: also over halves).\n")
    print("| rule | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, values in rows.items():
        mean = np.mean(values, axis=0) * 100
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in mean) + " |")


if __name__ == "__main__":
    main()

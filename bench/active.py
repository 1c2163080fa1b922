"""Active learning on devdata: which images to label next, labels to check, learning curves.

    python bench/active.py features --backbone lite0 --size 352          # once: all 2,334 photos
    python bench/active.py strategies --seeds 5 --json bench/results/active_lite0.json
    python bench/active.py label-check --draws 5 --json bench/results/label_check_lite0.json
    python bench/active.py label-check-heldout --draws 10 --repeats 1 3 5 --json bench/results/label_check_heldout_lite0.json
    python bench/active.py curve --json bench/results/curve_lite0.json
    python bench/active.py report bench/results/active_lite0.json bench/results/active_lite0_weighted.json

Features: ``bench/active_features.py`` runs the product's ``fewlabel.features.extract.extract_features``
(its per-image cache included) on every photo of devdata's VOC2007 train split and stores one
array; the default is EfficientNet-Lite0 at 352 with flip (what ``image_size: auto`` chooses on
devdata), run by the ``auto`` runtime (OpenVINO bf16 on a CPU with bfloat16, else Keras).

``strategies`` protocol, per seed s: a random split of the photos into a pool (2/3: 1,556) and a
held-out scored set (1/3: 778); the start is 250 images of the pool drawn by the subset stage's
stratified draw (``fewlabel.data.stratify.stratified_subset``, ``subset.min_per_class`` 10, seed s);
then each strategy adds 100 pool images per round (their labels revealed only once chosen) up to
950, then 50 to reach 1,000. After every round the product's model (``fewlabel.model.svm.build_model``
with params.yaml's SVM settings: C 1, gamma median, scaler sqrt) is fitted on the labelled images
and scored on the held-out set (mAP, ``fewlabel.metrics.mean_ap``, difficult-only cells ignored).
``stratified`` is the reference: stratified draws of each budget from the pool (seed s), no
rounds. Output: a markdown table of mean ± sd mAP over seeds per budget, and JSON.

``label-check``: per draw d, 750 images by the stratified draw (seed d) from all photos; 5 % of
them get a wrong label set (one present class dropped or one absent class added, 50/50, seeded);
out-of-fold probabilities (``multilabel_kfold``, 5 or 10 folds) from the noisy labels; per score,
the percentage of the corrupted images ranked in the top 10 %.

``label-check-heldout``: the same protocol within each of two fixed halves of the photos (the
product's stratified 2-fold split, seed 0: 1,167 + 1,167), draws of 750 within the half; the
candidate (score, fold assignments, min_labels) best on one half is scored on the other, both ways,
and the simplest candidate within noise (sd over draws / sqrt(draws)) of that choice on both
held-out halves is named.

``curve``: the learning curve (:func:`fewlabel.active.learning_curve.learning_curve`) of a
stratified 750 draw, checked against the mAP actually measured with more labels on the held-out set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.active_features import build as build_features, features_file  # noqa: E402

BUDGETS = (250, 350, 450, 550, 650, 750, 850, 950, 1000)
TABLE_BUDGETS = (250, 350, 450, 550, 650, 750, 1000)


def load(args):
    from fewlabel.artifacts import training_targets
    path = features_file(args.backbone, args.size, not args.no_flip, args.runtime)
    if not path.is_file():
        build_features(Path(args.voc), args.split, args.backbone, args.size, not args.no_flip, args.runtime)
    data = np.load(path)
    return data["features"], data["labels"], training_targets(data["labels"])


def svm_params():
    from fewlabel.params import load_params
    return load_params(REPO_ROOT / "params.yaml").svm


# --------------------------------------------------------------------------- strategies

def score(features, targets, labels, train_rows, eval_rows, svm, also=()):
    """mAP on ``eval_rows`` of the product's model fitted on ``train_rows``; plus probabilities of ``also``."""
    from fewlabel.active.fitting import fit_predict
    from fewlabel.metrics import mean_ap
    outputs = fit_predict(features[train_rows], targets[train_rows], [features[eval_rows], features[also]], svm)
    return float(mean_ap(labels[eval_rows], outputs[0])), outputs[1]


def run_seed(seed, features, labels, targets, strategies, svm, start_n=250, min_per_class=10, log=print):
    from fewlabel.active.strategies import rank_pool
    from fewlabel.data.stratify import stratified_subset
    rng = np.random.default_rng(1000 + seed)
    order = rng.permutation(len(features))
    n_pool = int(round(len(features) * 2 / 3))
    pool, held_out = np.sort(order[:n_pool]), np.sort(order[n_pool:])
    start = pool[stratified_subset(targets[pool], start_n, min_per_class, seed=seed)]
    result = {"seed": seed, "n_pool": len(pool), "n_held_out": len(held_out), "curves": {}, "seconds": {}}
    for strategy in strategies:
        began = time.perf_counter()
        labelled = list(start)
        curve = {}
        for i, budget in enumerate(BUDGETS):
            unlabelled = np.setdiff1d(pool, labelled)
            curve[budget], pool_probabilities = score(features, targets, labels, np.asarray(labelled), held_out,
                                                      svm, also=unlabelled)
            if i + 1 == len(BUDGETS):
                break
            ranking = rank_pool(strategy, pool_probabilities, features[unlabelled], features[labelled],
                                targets[labelled], BUDGETS[i + 1] - budget, seed=seed * 100 + i)
            labelled.extend(unlabelled[ranking.indices].tolist())  # only now are their labels read
        result["curves"][strategy] = curve
        result["seconds"][strategy] = time.perf_counter() - began
        log(f"seed {seed} {strategy}: " + " ".join(f"{b}:{100 * m:.1f}" for b, m in curve.items())
            + f" ({result['seconds'][strategy]:.0f} s)")
    curve = {}
    for budget in BUDGETS:
        rows = pool[stratified_subset(targets[pool], budget, min_per_class, seed=seed)]
        curve[budget] = score(features, targets, labels, rows, held_out, svm)[0]
    result["curves"]["stratified"] = curve
    log(f"seed {seed} stratified: " + " ".join(f"{b}:{100 * m:.1f}" for b, m in curve.items()))
    return result


def strategy_table(runs, budgets=TABLE_BUDGETS) -> str:
    names = list(runs[0]["curves"])
    lines = ["| strategy | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for name in names:
        cells = []
        for b in budgets:
            values = [100 * r["curves"][name][b] for r in runs]
            cells.append(f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bars(runs, strategy) -> dict:
    """The issue's bars for ``strategy``: mean mAP (and per-seed paired differences) against
    stratified draws and random rounds."""
    def mean(name, b):
        return float(np.mean([r["curves"][name][b] for r in runs]))
    out = {"strategy": strategy,
           "at_750_vs_stratified_1000": mean(strategy, 750) - mean("stratified", 1000),
           "at_600_vs_stratified_750": None,
           "vs_random_min_over_budgets": min(mean(strategy, b) - mean("random", b) for b in BUDGETS[1:]),
           "labels_to_reach_stratified_750": None}
    target = mean("stratified", 750)
    reached = [b for b in BUDGETS if mean(strategy, b) >= target]
    out["labels_to_reach_stratified_750"] = reached[0] if reached else None
    # 600 is between rounds 550 and 650: linear interpolation of the mean curve
    out["at_600_vs_stratified_750"] = (mean(strategy, 550) + mean(strategy, 650)) / 2 - target
    return out


def cmd_strategies(args) -> None:
    from fewlabel.active.strategies import STRATEGIES
    features, labels, targets = load(args)
    svm = svm_params()
    strategies = args.strategies or list(STRATEGIES)
    runs = []
    out = Path(args.json) if args.json else None
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        runs.append(run_seed(seed, features, labels, targets, strategies, svm,
                             log=lambda m: print(m, file=sys.stderr, flush=True)))
        if out:
            out.write_text(json.dumps({"backbone": args.backbone, "size": args.size, "flip": not args.no_flip,
                                       "runtime": args.runtime, "svm": str(svm), "runs": runs}, indent=1))
    table = strategy_table(runs)
    print(f"\nheld-out mAP (%) of {args.backbone}@{args.size}{' flip' if not args.no_flip else ''}, "
          f"{len(runs)} seeds, mean ± sd\n\n{table}\n")
    for strategy in strategies:
        if strategy not in ("random",):
            print(strategy, json.dumps({k: (round(100 * v, 2) if isinstance(v, float) else v)
                                        for k, v in bars(runs, strategy).items()}))
    if out:
        out.write_text(json.dumps({"backbone": args.backbone, "size": args.size, "flip": not args.no_flip,
                                   "runtime": args.runtime, "svm": str(svm), "runs": runs, "markdown": table,
                                   "bars": {s: bars(runs, s) for s in strategies if s != "random"}}, indent=1))


def _int_budgets(runs):
    for run in runs:
        for name in run["curves"]:
            run["curves"][name] = {int(b): v for b, v in run["curves"][name].items()}
    return runs


def merge_runs(paths) -> list[dict]:
    """The runs of several ``strategies`` JSON files (same seeds), their curves merged per seed."""
    merged: dict[int, dict] = {}
    for path in paths:
        for run in _int_budgets(json.loads(Path(path).read_text())["runs"]):
            into = merged.setdefault(run["seed"], {"seed": run["seed"], "curves": {}})
            for name, curve in run["curves"].items():
                if name in into["curves"] and into["curves"][name] != curve:
                    raise SystemExit(f"{path}: seed {run['seed']} {name} differs from an earlier file")
                into["curves"][name] = curve
    return [merged[seed] for seed in sorted(merged)]


def paired_table(runs, budgets=TABLE_BUDGETS[1:], against="random") -> str:
    """Per strategy and budget: mean ± sd over seeds of (strategy - ``against``), same seed."""
    lines = [f"| strategy - {against} | " + " | ".join(str(b) for b in budgets) + " | mean |",
             "|---|" + "---|" * (len(budgets) + 1)]
    for name in runs[0]["curves"]:
        if name == against:
            continue
        cells, means = [], []
        for b in budgets:
            d = [100 * (r["curves"][name][b] - r["curves"][against][b]) for r in runs]
            cells.append(f"{np.mean(d):+.2f} ± {np.std(d, ddof=1):.2f}")
            means.append(np.mean(d))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(means):+.2f} |")
    return "\n".join(lines)


def cmd_report(args) -> None:
    runs = merge_runs(args.inputs)
    print(f"{len(runs)} seeds: {[r['seed'] for r in runs]}\n\n{strategy_table(runs)}\n\n{paired_table(runs)}\n")
    print("per seed and budget (350..1000), strategy - random rounds:")
    for name in runs[0]["curves"]:
        if name != "random":
            d = 100 * np.array([[r["curves"][name][b] - r["curves"]["random"][b] for b in BUDGETS[1:]] for r in runs])
            print(f"  {name}: {(d < 0).sum()}/{d.size} cells below random, worst {d.min():+.2f}, mean {d.mean():+.2f}")
    print("bars (mAP points; at_600 interpolates the 550 and 650 rounds):")
    for name in runs[0]["curves"]:
        if name not in ("random", "stratified"):
            print(f"  {name}: " + json.dumps({k: (round(100 * v, 2) if isinstance(v, float) else v)
                                              for k, v in bars(runs, name).items() if k != "strategy"}))


# --------------------------------------------------------------------------- label check

def label_check_draw(features, targets, rows, draw, folds, repeats, svm, results, label="") -> None:
    """One draw of the ``label-check`` protocol on the images ``rows``: 5 % of them given a wrong label
    set (seed ``draw``), out-of-fold probabilities from the noisy labels, and per candidate (score,
    folds, fold assignments, min_labels) the share of the corrupted images in the top 10 %, appended
    to ``results[candidate]``."""
    from fewlabel.active.label_check import SCORES, corrupt_labels, found_in_top, label_check
    from fewlabel.active.fitting import repeated_out_of_fold
    noisy, corrupted, _ = corrupt_labels(targets[rows], 0.05, seed=draw)
    for n_folds in folds:
        began = time.perf_counter()
        single = [repeated_out_of_fold(features[rows], noisy, svm, n_folds, 1, seed=r) for r in range(max(repeats))]
        for n_repeats in repeats:
            oof = np.mean(single[:n_repeats], axis=0)   # = repeated_out_of_fold(..., n_repeats, seed=0)
            for score in SCORES:
                for min_labels in (0, 1):
                    found = found_in_top(label_check(oof, noisy, score, min_labels=min_labels).scores,
                                         corrupted, 0.10)
                    key = f"{score}, {n_folds} folds x {n_repeats}, min_labels {min_labels}"
                    results.setdefault(key, []).append(found)
            print(f"{label}draw {draw}, {n_folds} folds x {n_repeats} ({time.perf_counter() - began:.0f} s): " + ", ".join(
                f"{k.split(',')[0]}/{k[-1]} {100 * v[-1]:.0f}" for k, v in results.items()
                if f" {n_folds} folds x {n_repeats}," in k), file=sys.stderr, flush=True)


def mean_sd(values) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1) if len(values) > 1 else 0:.1f}"


def cmd_label_check(args) -> None:
    features, labels, targets = load(args)
    svm = svm_params()
    results = {}
    for draw in range(args.draws):
        label_check_draw(features, targets, stratified_subset_all(targets, draw), draw, args.folds, args.repeats,
                         svm, results)
    lines = ["| score, OOF, min_labels | corrupted images in the top 10 % (mean ± sd) | per draw |", "|---|---|---|"]
    for key, values in results.items():
        lines.append(f"| {key} | {mean_sd(values)} | " + " ".join(f"{100 * v:.0f}" for v in values) + " |")
    table = "\n".join(lines)
    print(f"\nlabel check, {args.backbone}@{args.size}: 750 stratified images, 5 % ({round(0.05 * 750)}) given a "
          f"wrong label set, {args.draws} draws\n\n{table}")
    if args.json:
        Path(args.json).write_text(json.dumps({"backbone": args.backbone, "draws": args.draws, "results": results,
                                               "markdown": table}, indent=1))


def stratified_subset_all(targets, draw):
    """The 750 training images of draw ``draw``: the subset stage's stratified draw from the rows of ``targets``."""
    from fewlabel.data.stratify import stratified_subset
    return stratified_subset(targets, 750, 10, seed=draw)


PRODUCT_MIN_LABELS = 1   # calibrate.min_labels, what the suggest stage passes to label_check


def devdata_halves(targets) -> dict[str, np.ndarray]:
    """Two fixed halves of the photos (A, B): the product's stratified 2-fold split, seed 0, so each
    half has about half of every class."""
    from fewlabel.model.folds import multilabel_kfold
    fold = multilabel_kfold(targets, 2, seed=0)
    return {"A": np.flatnonzero(fold == 0), "B": np.flatnonzero(fold == 1)}


def simplicity(key: str) -> tuple:
    """Sort key of a candidate 'score, F folds x R, min_labels M': simpler score (``SCORES`` lists
    them from the simplest to the most elaborate), fewer fits, the product's min_labels first."""
    from fewlabel.active.label_check import SCORES
    score, oof, min_labels = (part.strip() for part in key.split(","))
    n_folds, n_repeats = (int(v) for v in oof.replace(" folds", "").split(" x "))
    return SCORES.index(score), n_repeats, n_folds, int(min_labels.split()[-1]) != PRODUCT_MIN_LABELS


def heldout_choice(results: dict[str, dict[str, list[float]]]) -> tuple[str, dict]:
    """Choose on one half, report on the other (both ways). ``results[half][candidate]`` are the
    per-draw shares. Noise on a half: the sd over draws / sqrt(draws) of the candidate chosen on the
    other half. Shipped: the simplest candidate within that noise of the chosen one on both halves."""
    (a, on_a), (b, on_b) = results.items()
    summary = {}
    for held, chosen_on, other in ((b, a, on_a), (a, b, on_b)):
        best = max(sorted(other, key=simplicity), key=lambda k: np.mean(other[k]))
        values = results[held][best]
        summary[held] = {"chosen_on": chosen_on, "chosen": best, "mean": float(np.mean(values)),
                         "se": float(np.std(values, ddof=1) / np.sqrt(len(values)))}
    within = [k for k in sorted(on_a, key=simplicity)
              if all(np.mean(results[h][k]) >= s["mean"] - s["se"] for h, s in summary.items())]
    return within[0], summary


def heldout_report(results, shipped, summary) -> tuple[str, str]:
    """The markdown table of every candidate on both halves (with its paired difference from the
    shipped one, draw by draw) and the lines on the choice."""
    def se(values):
        return 100 * np.std(values, ddof=1) / np.sqrt(len(values))
    (a, on_a), (b, on_b) = results.items()
    lines = [f"| score, OOF, min_labels | half {a}: mean ± sd (± se) | half {b}: mean ± sd (± se) "
             f"| − shipped, paired: {a} / {b} (± se) |", "|---|---|---|---|"]
    for key in sorted(on_a, key=simplicity):
        cells = []
        for name in (a, b):
            mark = "**" if key == summary[name]["chosen"] else ""
            cells.append(f"{mark}{mean_sd(results[name][key])} (± {se(results[name][key]):.1f}){mark}")
        paired = [np.subtract(results[name][key], results[name][shipped]) for name in (a, b)]
        cells.append("=" if key == shipped else " / ".join(f"{100 * np.mean(d):+.1f} (± {se(d):.1f})" for d in paired))
        lines.append(f"| {key}{' (shipped)' if key == shipped else ''} | " + " | ".join(cells) + " |")
    text = "\n".join(f"- chosen on half {s['chosen_on']}: {s['chosen']}; on half {held} (held out): "
                     f"{100 * s['mean']:.1f} ± {100 * s['se']:.1f} (se)" for held, s in summary.items())
    text += (f"\n- held-out figure of the choice (mean of both halves): "
             f"{100 * np.mean([s['mean'] for s in summary.values()]):.1f}\n"
             f"- shipped (the simplest within one se of the choice on both held-out halves): {shipped}, "
             f"{100 * np.mean(results[a][shipped]):.1f} / {100 * np.mean(results[b][shipped]):.1f}")
    return "\n".join(lines), text


def cmd_label_check_heldout(args) -> None:
    """The ``label-check`` protocol within each of two fixed halves of the photos; every candidate's
    figure on both halves, the choice made on one half scored on the other, and the shipped one."""
    features, labels, targets = load(args)
    svm = svm_params()
    halves = devdata_halves(targets)
    results = {name: {} for name in halves}
    for name, half in halves.items():
        for draw in range(args.draws):
            label_check_draw(features, targets, half[stratified_subset_all(targets[half], draw)], draw, args.folds,
                             args.repeats, svm, results[name], label=f"half {name} ({len(half)}), ")
    shipped, summary = heldout_choice(results)
    table, text = heldout_report(results, shipped, summary)
    print(f"\nlabel check held out, {args.backbone}@{args.size}: halves of "
          + " and ".join(str(len(half)) for half in halves.values())
          + f" photos, in each {args.draws} draws of 750 stratified images, 5 % ({round(0.05 * 750)}) given a wrong "
          f"label set; % of them in the top 10 % (bold: chosen on the other half)\n\n{table}\n\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps({"backbone": args.backbone, "draws": args.draws, "results": results,
                                               "summary": summary, "shipped": shipped, "markdown": table}, indent=1))


# --------------------------------------------------------------------------- learning curve

def cmd_curve(args) -> None:
    """Per seed: the split of ``strategies``; the learning curve of a stratified 750 draw from the
    pool; its forecast at 1.5x and 2x against the held-out mAP of stratified draws of those sizes."""
    from fewlabel.active.learning_curve import learning_curve
    from fewlabel.params import VOC_CLASSES
    from fewlabel.data.stratify import stratified_subset
    features, labels, targets = load(args)
    svm = svm_params()
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        began = time.perf_counter()
        order = np.random.default_rng(1000 + seed).permutation(len(features))
        n_pool = int(round(len(features) * 2 / 3))
        pool, held_out = np.sort(order[:n_pool]), np.sort(order[n_pool:])
        train = pool[stratified_subset(targets[pool], 750, 10, seed=seed)]
        curve = learning_curve(features[train], targets[train], VOC_CLASSES, svm, folds=5, seed=seed,
                               labels=labels[train])
        measured = {}
        for scale in (1.0, 1.5, 2.0):
            n = min(int(round(750 * scale)), len(pool))
            rows = train if scale == 1.0 else pool[stratified_subset(targets[pool], n, 10, seed=seed)]
            measured[scale] = score(features, targets, labels, rows, held_out, svm)[0]
        forecast = dict(zip(curve.forecast["scale"], curve.forecast["map_predicted"]))
        run = {"seed": seed, "summary": curve.summary.to_dict(orient="records"), "fit": curve.fit,
               "forecast": {str(k): v for k, v in forecast.items()},
               "held_out": {str(k): v for k, v in measured.items()},
               "n_held_out_sizes": {str(k): min(int(round(750 * k)), len(pool)) for k in (1.0, 1.5, 2.0)},
               "per_class": curve.per_class.to_dict(orient="records"), "seconds": time.perf_counter() - began}
        runs.append(run)
        print(f"seed {seed}: CV " + " ".join(f"{r['n_train']:.0f}:{100 * r['map_mean']:.1f}" for r in run["summary"])
              + f"; fit a={curve.fit['a']:.3f} b={curve.fit['b']:.3g} c={curve.fit['c']:.3g}; forecast "
              + " ".join(f"{k}x:{100 * v:.1f}" for k, v in forecast.items()) + "; held-out "
              + " ".join(f"{k}x:{100 * v:.1f}" for k, v in measured.items()) + f" ({run['seconds']:.0f} s)",
              file=sys.stderr, flush=True)

    def ms(values):
        return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1) if len(values) > 1 else 0:.2f}"
    lines = ["| | 1x (750) | 1.5x (1,125) | 2x (1,500) | gain 1x -> 2x |", "|---|---|---|---|---|"]
    for name, key in (("forecast (CV curve)", "forecast"), ("measured (held-out, stratified draws)", "held_out")):
        cells = [ms([r[key][k] for r in runs]) for k in ("1.0", "1.5", "2.0")]
        cells.append(ms([r[key]["2.0"] - r[key]["1.0"] for r in runs]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    per_class = {}
    for run in runs:
        for row in run["per_class"]:
            per_class.setdefault(row["class"], []).append(row)
    lines += ["", "| class | positives (of 750) | CV AP | AP gained per 10 more positives |", "|---|---|---|---|"]
    for name, rows in sorted(per_class.items(), key=lambda kv: -np.nanmean([r["ap_gain_per_10_positives"]
                                                                             for r in kv[1]])):
        lines.append(f"| {name} | {np.mean([r['positives'] for r in rows]):.0f} | "
                     f"{100 * np.mean([r['ap_cv'] for r in rows]):.1f} | "
                     f"{100 * np.nanmean([r['ap_gain_per_10_positives'] for r in rows]):+.2f} |")
    table = "\n".join(lines)
    print(f"\nlearning curve, {args.backbone}@{args.size}, {len(runs)} seeds (mAP %, mean ± sd)\n\n{table}")
    if args.json:
        Path(args.json).write_text(json.dumps({"backbone": args.backbone, "runs": runs, "markdown": table},
                                              indent=1, default=float))


# --------------------------------------------------------------------------- main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("features", "strategies", "label-check", "label-check-heldout", "curve",
                                             "report"))
    parser.add_argument("inputs", nargs="*", help="report: strategies JSON files to merge")
    parser.add_argument("--voc", default=str(REPO_ROOT.parent / "shared" / "devdata" / "VOCdevkit" / "VOC2007"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--backbone", default="lite0")
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="*")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--folds", type=int, nargs="*", default=[5], help="label-check: OOF folds")
    parser.add_argument("--repeats", type=int, nargs="*", default=[1, 3],
                        help="label-check: OOF averaged over this many fold assignments")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.command == "features":
        load(args)
    elif args.command == "strategies":
        cmd_strategies(args)
    elif args.command == "report":
        cmd_report(args)
    elif args.command == "label-check":
        cmd_label_check(args)
    elif args.command == "label-check-heldout":
        cmd_label_check_heldout(args)
    else:
        cmd_curve(args)


if __name__ == "__main__":
    main()

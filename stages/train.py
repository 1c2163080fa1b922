"""train: one probabilistic SVM per class on frozen CNN features, plus out-of-fold probabilities.

The model is an sklearn Pipeline: the ``svm.scaler`` step, a kernel map, and
``MultiOutputClassifier(SVC(kernel='precomputed', probability=True))``. The kernel map
computes the kernel matrix (RBF by default) once with BLAS and shares it across the 20
per-class SVMs; libsvm would otherwise recompute it, slowly, for every class and every
internal Platt-scaling fold. The SVMs are exactly those of ``SVC(kernel='rbf', gamma=...)``.

Out-of-fold probabilities (``calibrate.folds``-fold multilabel-stratified CV with the same
settings) feed the calibrate stage. ``tune.enabled`` grid-searches C x gamma (x scaler) by
cross-validated mAP on the training images only, then refits the best.

Past ``svm.max_exact_kernel`` training images (or with ``svm.approximation: nystroem``) the
kernel is approximated (:mod:`fewlabel.model.svm`: Nystroem landmarks + a linear classifier with
sigmoid probabilities), so memory grows as n x m instead of n x n; the choice is printed and
recorded in ``reports/tune.json`` (``kernel``). Calibrate and evaluate read probabilities
either way.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from fewlabel.errors import run_main
from fewlabel.io import (
    feature_signature,
    load_features,
    read_json,
    read_label_table,
    training_targets,
    write_csv,
    write_json,
)
from fewlabel.model.svm import describe_kernel_method, save_model
from fewlabel.model.train import kernel_summary, oof_table, train, tune_heatmap
from fewlabel.params import load_params
from fewlabel.plots import write_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--features", "--meta", "--labels", "--model-out", "--oof-out", "--tune-out", "--tune-heatmap"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()

    params = load_params()
    classes = params.data.classes
    ids, labels = read_label_table(args.labels, classes)
    _, features = load_features(args.features, expected_ids=ids)
    meta = read_json(args.meta)

    print(f"train: kernel: {kernel_summary(describe_kernel_method(params.svm, len(ids)))}", flush=True)
    started = time.perf_counter()
    result = train(features, labels, classes, params.svm, params.calibrate.folds, params.tune)
    seconds = time.perf_counter() - started

    save_model(args.model_out, result.model, classes, result.svm, feature_signature(meta), len(ids))
    write_csv(args.oof_out, oof_table(ids, result.folds, training_targets(labels), result.oof_probabilities, classes))

    chosen = {"C": result.svm.C, "gamma": result.svm.gamma, "scaler": result.svm.scaler}
    tune_record = {"enabled": params.tune.enabled, "best": chosen, "kernel": result.kernel}
    if result.grid is not None:
        best_row = result.grid.loc[result.grid["map_mean"].idxmax()]
        tune_record["best"]["cv_map"] = float(best_row["map_mean"])
        tune_record["grid"] = result.grid.to_dict(orient="records")
    write_json(args.tune_out, tune_record)
    write_tune_heatmap(Path(args.tune_heatmap), result.grid)
    print(f"train: {len(ids)} images, {len(classes)} classes, C={result.svm.C:g}, gamma={result.svm.gamma}, "
          f"scaler={result.svm.scaler}, kernel {result.kernel['method']} ({seconds:.1f} s)")


def write_tune_heatmap(path: Path, grid) -> None:
    """The grid's heatmap when tuning ran; else no file (its folder, a DVC output, stays empty:
    no placeholder picture on the results page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if grid is None:
        path.unlink(missing_ok=True)
    else:
        write_figure(path, tune_heatmap(grid))


if __name__ == "__main__":
    run_main(main)

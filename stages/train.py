"""train: one probabilistic SVM per class on frozen CNN features, plus out-of-fold probabilities.

The model is an sklearn Pipeline: the ``svm.scaler`` step, a kernel map, and
``MultiOutputClassifier(SVC(kernel='precomputed', probability=True))``. The kernel map
computes the kernel matrix (RBF by default) once with BLAS and shares it across the 20
per-class SVMs; libsvm would otherwise recompute it, slowly, for every class and every
internal Platt-scaling fold. The SVMs are exactly those of ``SVC(kernel='rbf', gamma=...)``.

Out-of-fold probabilities (``train.oof_folds``-fold multilabel-stratified CV with the same
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

from fewlabel.errors import run_main
from fewlabel.artifacts import feature_signature, oof_table, read_features, read_label_table, training_targets
from fewlabel.io import read_json, write_csv, write_json
from fewlabel.model.svm import describe_kernel_method, save_model
from fewlabel.model.train import kernel_summary, train, tune_table
from fewlabel.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--features", "--meta", "--labels", "--model-out", "--oof-out", "--tune-out", "--tune-grid"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()

    params = load_params()
    classes = params.data.classes
    ids, labels = read_label_table(args.labels, classes)
    _, features = read_features(args.features, expected_ids=ids)
    meta = read_json(args.meta)

    print(f"train: kernel: {kernel_summary(describe_kernel_method(params.svm, len(ids)))}", flush=True)
    started = time.perf_counter()
    result = train(features, labels, classes, params.svm, params.train.oof_folds, params.tune)
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
    write_csv(args.tune_grid, tune_table(result.grid))
    print(f"train: {len(ids)} images, {len(classes)} classes, C={result.svm.C:g}, gamma={result.svm.gamma}, "
          f"scaler={result.svm.scaler}, kernel {result.kernel['method']} ({seconds:.1f} s)")


if __name__ == "__main__":
    run_main(main)

"""The train stage's precomputed-kernel SVMs against plain SVC(kernel='rbf'), in one run.

    python bench/svm_kernel.py [--n-train 750] [--n-test 1000] [--dim 2304] [--classes 20]

Both fit MultiOutputClassifier(SVC(probability=True)) on the same synthetic features shaped
like EfficientNetB6's; it prints both times, the speed-up and the largest difference in
predicted probabilities (the models are the same, so it should be ~1e-12).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.multioutput import MultiOutputClassifier  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from fewlabel.artifacts import training_targets  # noqa: E402
from fewlabel.model.svm import build_model, positive_probabilities  # noqa: E402
from fewlabel.params import SvmParams  # noqa: E402
from tests.synthetic import synthetic_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=750)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--classes", type=int, default=20)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=0.2, size=(20, args.dim)).astype(np.float32)
    labels, features = synthetic_split(args.n_train + args.n_test, args.dim, rng, centers)
    targets = training_targets(labels)[:, :args.classes]
    train, test = slice(0, args.n_train), slice(args.n_train, None)

    began = time.perf_counter()
    ours = build_model(SvmParams(gamma="scale", scaler="none", approximation="exact", n_jobs=-1)).fit(
        features[train], targets[train])
    ours_probabilities = positive_probabilities(ours, features[test])
    ours_seconds = time.perf_counter() - began

    began = time.perf_counter()
    plain = MultiOutputClassifier(SVC(kernel="rbf", gamma="scale", probability=True, random_state=0),
                                  n_jobs=-1).fit(features[train], targets[train])
    plain_probabilities = np.column_stack([p[:, 1] for p in plain.predict_proba(features[test])])
    plain_seconds = time.perf_counter() - began

    print(f"{args.n_train} train / {args.n_test} test images, {args.dim}-d, {args.classes} classes")
    print(f"precomputed kernel (fewlabel.model.svm): {ours_seconds:6.2f} s")
    print(f"plain SVC(kernel='rbf'):           {plain_seconds:6.2f} s")
    print(f"speed-up: {plain_seconds / ours_seconds:.1f}x; "
          f"max |probability difference|: {np.abs(ours_probabilities - plain_probabilities).max():.1e}")


if __name__ == "__main__":
    main()

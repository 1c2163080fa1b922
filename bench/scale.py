"""Train and predict at scale: seconds, peak memory and quality as the image count grows.

    python bench/scale.py                      # the issue's grid; a markdown table
    python bench/scale.py --json               # one JSON object: {"train": [...], "predict": [...]}
    python bench/scale.py --only train --train-sizes 750 5000 --methods exact nystroem

**train**: the train stage's core (``fewlabel.model.train.train``: 5-fold out-of-fold probabilities
plus the final model, params.yaml's SVM settings with ``svm.approximation`` forced to each
method) on synthetic VOC-shaped features (2304-d, VOC07 class frequencies,
:mod:`tests.synthetic`) for each n; ``cv_map`` is the mAP of the out-of-fold probabilities.
The exact kernel is skipped above ``--exact-max`` images (its n x n matrix alone is 3.2 GB
at 20,000, and libsvm's time grows faster than n^2); the row says so.

**predict**: ``python -m stages.predict --list ... --out ....parquet`` over n small generated
JPEGs (``--backbone`` with random weights at ``--image-size``), with an empty feature cache,
in this process (``single``) and on Ray Data with ``--workers`` local workers (``ray``).
``images_per_second`` is n over the command's whole wall time (start-up included).

Each measurement runs in its own subprocess, so memory is not shared between them.
``peak_rss_gb`` is the peak, sampled every 0.5 s, of the summed resident memory of that
subprocess and all its descendants (joblib workers, Ray's processes and workers; pages
shared between processes, such as libraries, are counted in each, so it is an upper bound),
and never less than the subprocess's own ru_maxrss. ``peak_pss_gb`` (an extra field) sums
proportional set sizes instead, which splits shared pages between the processes that map
them: the memory the run really takes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DIM = 2304


class PeakMemory:
    """Samples the summed RSS of this process and its descendants in a background thread."""

    def __init__(self, interval: float = 0.5):
        import psutil
        self.process, self.interval, self.peak, self.peak_pss = psutil.Process(), interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        import psutil
        rss = pss = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + info.pss
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self._sample()
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        self.peak_gb = round(max(self.peak, own_peak) / 1e9, 3)
        self.peak_pss_gb = round(self.peak_pss / 1e9, 3)


# --------------------------------------------------------------------------- one measurement

def measure_train(n: int, method: str) -> dict:
    """Train on ``n`` synthetic images with ``method`` (exact or nystroem), in this process."""
    import numpy as np
    from dataclasses import replace

    from tests.synthetic import synthetic_split
    from fewlabel.artifacts import training_targets
    from fewlabel.metrics import mean_ap
    from fewlabel.params import VOC_CLASSES, TuneParams, load_params
    from fewlabel.model.train import train

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=0.2, size=(len(VOC_CLASSES), DIM)).astype(np.float32)
    parts = [synthetic_split(min(2000, n - start), DIM, rng, centers) for start in range(0, n, 2000)]
    labels = np.concatenate([p[0] for p in parts])
    features = np.concatenate([p[1] for p in parts])
    del parts
    params = load_params(REPO_ROOT / "params.yaml")
    svm = replace(params.svm, approximation=method)
    with PeakMemory() as memory:
        began = time.perf_counter()
        result = train(features, labels, VOC_CLASSES, svm, params.train.oof_folds, TuneParams())
        seconds = time.perf_counter() - began
    cv_map = mean_ap(training_targets(labels) * 2 - 1, result.oof_probabilities)
    return {"n": n, "method": method, "seconds": round(seconds, 1), "peak_rss_gb": memory.peak_gb,
            "cv_map": round(float(cv_map), 4), "peak_pss_gb": memory.peak_pss_gb}


def measure_predict(project: Path, image_list: Path, n_images: int, engine: str, workers: int) -> dict:
    """``stages.predict`` over the images of ``image_list`` with ``engine``, in this process."""
    from stages.predict import main as predict_main

    os.chdir(project)
    os.environ["FEWLABEL_CACHE_DIR"] = tempfile.mkdtemp(prefix="scale-cache-")  # nothing cached
    args = ["--list", str(image_list), "--out", f"predictions-{engine}.parquet", "--meta", "meta.json",
            "--engine", engine, "--workers", str(workers), "--quiet"]
    with PeakMemory() as memory:
        began = time.perf_counter()
        predict_main(args)
        seconds = time.perf_counter() - began
    return {"n_images": n_images, "engine": engine if engine == "single" else f"ray ({workers} local workers)",
            "images_per_second": round(n_images / seconds, 1), "peak_rss_gb": memory.peak_gb,
            "peak_pss_gb": memory.peak_pss_gb}


# --------------------------------------------------------------------------- the grid

def run_child(*args: str, timeout: float) -> dict:
    """Run one measurement in a fresh subprocess; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--measure", *args]
    print(f"scale: {' '.join(args)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"scale: {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"scale: {result}", file=sys.stderr, flush=True)
    return result


def train_rows(sizes: list[int], methods: list[str], exact_max: int, timeout: float) -> list[dict]:
    rows = []
    for n in sizes:
        for method in methods:
            if method == "exact" and n > exact_max:
                rows.append({"n": n, "method": method, "seconds": None, "peak_rss_gb": None, "cv_map": None,
                             "skipped": f"n > --exact-max {exact_max}: the n x n kernel alone is "
                                        f"{n * n * 8 / 1e9:.1f} GB (float64)"})
                continue
            rows.append(run_child("train", str(n), method, timeout=timeout))
    return rows


def predict_rows(sizes: list[int], engines: list[str], workers: int, backbone: str, image_size: int,
                 timeout: float) -> list[dict]:
    from tests.synthetic import write_images, write_predict_project

    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-predict-") as tmp:
        os.environ["FEWLABEL_CACHE_DIR"] = str(Path(tmp, "setup-cache"))
        project = write_predict_project(Path(tmp, "project"), backbone, image_size)
        images = write_images(Path(tmp, "images"), max(sizes), seed=1, max_side=96)
        for n in sizes:
            image_list = Path(tmp, f"images-{n}.txt")
            image_list.write_text("\n".join(images[:n]) + "\n")
            for engine in engines:
                rows.append(run_child("predict", str(project), str(image_list), str(n), engine, str(workers),
                                      timeout=timeout))
    return rows


def markdown(results: dict) -> str:
    lines = []
    if results.get("train"):
        lines += ["| n | method | seconds | peak RSS (GB) | peak PSS (GB) | CV mAP |", "|---|---|---|---|---|---|"]
        for row in results["train"]:
            if row.get("skipped"):
                lines.append(f"| {row['n']} | {row['method']} | skipped: {row['skipped']} | | | |")
            else:
                lines.append(f"| {row['n']} | {row['method']} | {row['seconds']} | {row['peak_rss_gb']} | "
                             f"{row['peak_pss_gb']} | {100 * row['cv_map']:.1f} |")
        lines.append("")
    if results.get("predict"):
        lines += ["| images | engine | images/s | peak RSS (GB) | peak PSS (GB) |", "|---|---|---|---|---|"]
        for row in results["predict"]:
            lines.append(f"| {row['n_images']} | {row['engine']} | {row['images_per_second']} | "
                         f"{row['peak_rss_gb']} | {row['peak_pss_gb']} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        kind, *args = sys.argv[2:]
        if kind == "train":
            result = measure_train(int(args[0]), args[1])
        else:
            result = measure_predict(Path(args[0]), Path(args[1]), int(args[2]), args[3], int(args[4]))
        print(json.dumps(result), flush=True)
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("train", "predict"), help="measure only one part")
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[750, 5000, 20000])
    parser.add_argument("--methods", nargs="+", choices=("exact", "nystroem"), default=["exact", "nystroem"])
    parser.add_argument("--exact-max", type=int, default=5000,
                        help="skip the exact kernel above this many images (default 5000)")
    parser.add_argument("--predict-sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--engines", nargs="+", choices=("single", "ray"), default=["single", "ray"])
    parser.add_argument("--workers", type=int, default=2, help="ray: local workers (default 2)")
    parser.add_argument("--backbone", default="EfficientNetB0", help="predict: keras.applications name")
    parser.add_argument("--image-size", type=int, default=64, help="predict: input size (default 64)")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()

    results = {"train": [], "predict": []}
    if args.only in (None, "train"):
        results["train"] = train_rows(args.train_sizes, args.methods, args.exact_max, args.timeout)
    if args.only in (None, "predict"):
        results["predict"] = predict_rows(args.predict_sizes, args.engines, args.workers, args.backbone,
                                          args.image_size, args.timeout)
    print(json.dumps(results, indent=2) if args.json else markdown(results))


if __name__ == "__main__":
    main()

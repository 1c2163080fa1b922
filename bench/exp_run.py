"""How long `dvc exp run -S svm.C=10` takes once features are cached, against the full pipeline.

    python bench/exp_run.py [--n-train 750] [--n-eval 5000] [--dim 2304] [--featurize-rate R]

Builds a throwaway git + DVC project holding the real train, calibrate and evaluate stages
of dvc.yaml on synthetic features shaped like EfficientNetB6's (750 x 2304 train,
5000 x 2304 eval), runs `dvc repro` once, commits, then times `dvc exp run -S svm.C=10`
(which reruns exactly those three stages). The full pipeline on the same data would also
extract the features of all 5,750 images: that time is n_images / images-per-second, with
the rate measured here on real JPEGs by bench/featurize.py's code for EfficientNetB6 at 528
(weights: null, same speed as ImageNet weights), or given with --featurize-rate.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.synthetic import write_synthetic_inputs  # noqa: E402

SVM_STAGES = ("train", "calibrate", "evaluate")


def make_project(root: Path, n_train: int, n_eval: int, dim: int) -> dict:
    """A git + DVC repo with the SVM stages of dvc.yaml and synthetic inputs; returns its env."""
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    pipeline["stages"] = {name: pipeline["stages"][name] for name in SVM_STAGES}
    pipeline["plots"] = [p for p in pipeline["plots"] if "class_distribution" not in str(p)]
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["svm"]["gamma"] = "scale"  # the synthetic features are not on B6's scale
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_synthetic_inputs(root, n_train=n_train, n_eval=n_eval, dim=dim)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                    ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"],
                    ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(command, cwd=root, env=env, check=True)
    (root / ".gitignore").write_text("/data/\n")
    return env


def timed(command: list[str], root: Path, env: dict) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def measure_featurize_rate(n_images: int = 16) -> float:
    """Images/s of the featurize core for EfficientNetB6 at 528 on real JPEGs (empty cache)."""
    from bench.featurize import make_jpegs
    from fewlabel.features.extract import extract_features
    from fewlabel.params import FeaturesParams

    with tempfile.TemporaryDirectory() as folder:
        os.environ["FEWLABEL_CACHE_DIR"] = str(Path(folder) / "cache")
        paths = make_jpegs(Path(folder), n_images)
        params = FeaturesParams(backbones=("EfficientNetB6",), weights=None, image_size=528, batch_size=8,
                                flip_tta=False, runtime="keras")
        _, stats = extract_features(paths, params, progress=False)
        # After the first batch (one-off graph optimisation), as over 5,750 images.
        return stats["per_backbone"][0]["steady_images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=750)
    parser.add_argument("--n-eval", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--featurize-rate", type=float,
                        help="images/s of featurize; default: measure EfficientNetB6 at 528 here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        env = make_project(root, args.n_train, args.n_eval, args.dim)
        first, _ = timed(["dvc", "repro"], root, env)
        subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
        subprocess.run(["git", "commit", "-qm", "baseline"], cwd=root, env=env, check=True)
        experiment, output = timed(["dvc", "exp", "run", "-S", "svm.C=10"], root, env)
    rerun = sorted(set(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")))

    rate = args.featurize_rate or measure_featurize_rate()
    n_images = args.n_train + args.n_eval
    featurize_seconds = n_images / rate
    full = featurize_seconds + first
    print(f"data: {args.n_train} train + {args.n_eval} eval images, {args.dim}-d synthetic features; "
          f"{os.cpu_count()} CPUs")
    print(f"dvc repro of train+calibrate+evaluate (first run):  {first:7.1f} s")
    print(f"dvc exp run -S svm.C=10 (cached features):          {experiment:7.1f} s  (reran: {', '.join(rerun)})")
    print(f"featurize of {n_images} images at {rate:.2f} images/s:     {featurize_seconds:7.1f} s "
          f"({'given' if args.featurize_rate else 'measured: EfficientNetB6 at 528, CPU'})")
    print(f"full pipeline (featurize + SVM stages):             {full:7.1f} s")
    print(f"ratio exp run / full pipeline: {experiment / full:.4f}  "
          f"(exp run / SVM stages first run: {experiment / first:.2f})")


if __name__ == "__main__":
    main()

"""featurize: frozen CNN features of the train and eval images, with a per-image cache.

    python -m stages.featurize --images data/raw/voc/JPEGImages \
        --train data/subset/train.csv --eval data/subset/eval.csv --out-dir data/features \
        --stats-out reports/featurize.json

Writes ``<out-dir>/train.npz`` and ``eval.npz`` (``ids`` in the CSV's order, ``features``
float32 n x d) and ``meta.json`` (what the features are: backbones, sizes, views, weights).

The views are chosen and the images featurized by :mod:`fewlabel.features.selection`
(``image_size: auto`` chooses among ``features.select_scales`` by cross-validated mAP on the
training images only), through the per-image cache of :mod:`fewlabel.features.cache`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fewlabel.data.images import subset_image_paths
from fewlabel.errors import PipelineError, run_main
from fewlabel.features.recipes import build_meta
from fewlabel.model.selection import build_run_stats, featurize_subsets
from fewlabel.io import atomic_path, write_json
from fewlabel.params import FeaturesParams, load_params


def write_features(path: Path, ids: np.ndarray, features: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, ids=np.asarray(ids, dtype=str), features=np.asarray(features, dtype=np.float32))


def featurize(images_dir, train_csv, eval_csv, out_dir, params: FeaturesParams, classes,
              progress: bool = True) -> tuple[dict, dict]:
    """Extract the train and eval subsets' features into ``out_dir``.

    Returns (the meta written to ``meta.json``, this run's stats)."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise PipelineError(f"{images_dir}: image folder not found; run the download stage "
                            f"(dvc repro download) or fix --images")
    train_ids, train_paths, train_frame = subset_image_paths(images_dir, Path(train_csv))
    eval_ids, eval_paths, _ = subset_image_paths(images_dir, Path(eval_csv))
    train_labels = None
    if params.image_size == "auto":  # only the training labels, and only to choose the views
        missing = [c for c in classes if c not in train_frame.columns]
        if missing:
            raise PipelineError(f"{train_csv}: lacks the label column(s) {', '.join(missing)} that "
                                f"features.image_size: auto needs; rerun the subset stage")
        train_labels = train_frame[list(classes)].to_numpy(dtype=np.int8)
    result = featurize_subsets(train_paths, train_labels, eval_paths, params, classes, progress)
    write_features(out_dir / "train.npz", train_ids, result.train)
    write_features(out_dir / "eval.npz", eval_ids, result.eval)
    meta = build_meta(params, result.recipes, result.stats["dims"], result.stats["runtime"])
    write_json(out_dir / "meta.json", meta)
    return meta, build_run_stats(params, result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of the image files")
    parser.add_argument("--train", required=True, help="train subset CSV (image_id and label columns)")
    parser.add_argument("--eval", required=True, help="eval subset CSV (image_id column)")
    parser.add_argument("--out-dir", required=True, help="where train.npz, eval.npz, meta.json go")
    parser.add_argument("--stats-out", required=True, help="this run's speed, cache use and view choice (JSON)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    meta, run = featurize(args.images, args.train, args.eval, args.out_dir, params.features, params.data.classes)
    write_json(args.stats_out, run)
    speed = f"{run['images_per_second']:.1f} images/s" if run["images_per_second"] else "all cached"
    chosen = " (chosen by cross-validation)" if "view_selection" in run else ""
    runtime = run["runtime"] if run["runtime"] == "keras" else f"{run['runtime']} {run['precision']}"
    print(f"featurize: {run['n_train']} train + {run['n_eval']} eval images -> {args.out_dir} "
          f"({run['views']}{chosen}; {meta['total_dim']} dims; {run['n_extracted']} extracted, "
          f"{run['n_cached']} from cache; {speed}; {run['device']}, {runtime}, {run['engine']})")


if __name__ == "__main__":
    run_main(main)

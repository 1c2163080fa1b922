"""featurize: frozen CNN features of the train and eval images, with a per-image cache.

    python -m stages.featurize --images data/raw/voc/JPEGImages \
        --train data/subset/train.csv --eval data/subset/eval.csv --out-dir data/features \
        --stats-out reports/featurize.json

Writes ``<out-dir>/train.npz`` and ``eval.npz`` (``ids`` in the CSV's order, ``features``
float32 n x d) and ``meta.json`` (what the features are: backbones, sizes, views, weights).

The views are chosen and the images featurized by :mod:`fewlabel.featurize`
(``image_size: auto`` chooses among ``features.select_scales`` by cross-validated mAP on the
training images only), through the per-image cache of :mod:`fewlabel.features.cache`.
"""
from __future__ import annotations

import argparse

from fewlabel.errors import run_main
from fewlabel.featurize import featurize
from fewlabel.io import write_json
from fewlabel.params import load_params


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

"""featurize_pool: features of the pool of unlabelled images (``data.pool_split`` or ``data.pool_images``).

    python -m stages.featurize_pool --voc data/raw/voc --train data/subset/train.csv \
        --eval data/subset/eval.csv --meta data/features/meta.json --out data/features/pool.npz

The same features as the training images (the backbones, views and weights of ``meta.json``),
through featurize's per-image cache and ``features.engine``. Images already in the training or
evaluation set are left out; a file that is not a readable image is reported and skipped. With
no pool configured, the output holds no image (the suggest stage then ranks nothing). Only
this stage extracts pool features, so an SVM change (``dvc exp run -S svm.C=10``) reruns
neither it nor featurize.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from fewlabel.artifacts import write_pool
from fewlabel.data.pool import pool_images
from fewlabel.errors import PipelineError, run_main
from fewlabel.features.engine import resolve_engine
from fewlabel.features.extract import extract_features, recipe_caches, resolve_runtime
from fewlabel.features.recipes import recipes_from_meta
from fewlabel.io import read_csv, read_json
from fewlabel.params import load_params
from fewlabel.predict import readable_images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag in ("--voc", "--train", "--eval", "--meta", "--out"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)

    params = load_params()
    known = set(read_csv(args.train, required=["image_id"])["image_id"]) | \
        set(read_csv(args.eval, required=["image_id"])["image_id"])
    ids, paths = pool_images(args.voc, params.data, exclude=known)
    meta = read_json(args.meta)
    features = np.zeros((0, int(meta.get("total_dim") or 0)), dtype=np.float32)
    if ids:
        features_params, recipes = recipes_from_meta(meta)
        runtime = resolve_runtime(features_params)
        readable, digests, problems = readable_images(paths, recipe_caches(features_params, recipes, runtime))
        for path, problem in problems:
            print(f"error: {path}: {problem}", file=sys.stderr)
        keep = set(readable)
        ids, paths = [i for i, p in zip(ids, paths) if p in keep], readable
        if not ids:
            raise PipelineError("the pool holds no readable image; fix data.pool_split or data.pool_images")
        engine = resolve_engine(params.features.engine, params.features.workers)
        features, stats = extract_features(paths, features_params, recipes=recipes, engine=engine,
                                           digests=digests, runtime=runtime)
        print(f"featurize_pool: {len(ids)} pool images ({stats['n_extracted']} extracted, {stats['n_cached']} "
              f"from cache; {len(problems)} skipped)")
    else:
        print("featurize_pool: no pool (set data.pool_split or data.pool_images to rank images for labelling)")
    write_pool(args.out, ids, paths, features)


if __name__ == "__main__":
    run_main(main)

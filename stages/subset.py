"""subset: draw the few labelled training images (750 by default) and the evaluation set.

The training subset is drawn from the train split by multilabel iterative stratification,
so each class keeps roughly its share of positives, with a floor (``subset.min_per_class``)
and exact targets for named classes (``subset.class_quota``: the seed article's way of
adding or removing images of one class to fix the class balance). When the draw misses a
floor or quota, an exact integer repair meets it if any subset can; when none can, the error
names the binding constraint and the values that would fit. Every class must end with a
positive and a negative training image, else subset fails here rather than train after
featurize.

``--include`` names a list of image ids (one per line) that join the training set on top of
the draw: the images you labelled from the suggest stage's ``suggestions/next.csv``. The draw
itself does not change, so each round's gain shows in ``dvc metrics diff``: the images of the
pool (``data.pool_split`` or ``data.pool_images``, read from ``--voc``) are never drawn, so labels
that arrive for them cannot change the draw; a pool holding the whole training split is an error.
"""
from __future__ import annotations

import argparse

from fewlabel.data.subset import (add_included, class_distribution, distribution_figure, pool_limited_classes,
                                  read_included, select_subsets)
from fewlabel.data.pool import pool_ids, pool_setting, require_images_left
from fewlabel.errors import run_main
from fewlabel.io import read_csv, write_csv
from fewlabel.params import load_params
from fewlabel.plots import write_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--train-out", required=True)
    parser.add_argument("--eval-out", required=True)
    parser.add_argument("--distribution-out", required=True)
    parser.add_argument("--distribution-png", required=True)
    parser.add_argument("--voc", help="the VOC folder whose ImageSets/Main holds data.pool_split (data/raw/voc)")
    parser.add_argument("--include", help="a list of image ids always in the training set (one per line)")
    args = parser.parse_args()

    params = load_params()
    classes = params.data.classes
    labels = read_csv(args.labels, required=["image_id", "split", *classes])
    data = params.data
    pool = pool_ids(args.voc, data) if args.voc else set()
    setting = pool_setting(data)
    train, eval_set = select_subsets(labels, classes, data.train_split, data.eval_split,
                                     params.subset, pool, setting)
    drawn = set(train["image_id"])
    listed = read_included(args.include) if args.include else []
    if listed:
        train = add_included(train, labels, listed, params.data.eval_split, args.include)
    if args.voc:  # a pool left empty fails now, not in featurize_pool after featurize
        require_images_left(data, pool, set(train["image_id"]) | set(eval_set["image_id"]))
    train_pool = labels[labels["split"] == params.data.train_split]
    distribution = class_distribution(train_pool, train, eval_set, classes)

    write_csv(args.train_out, train)
    write_csv(args.eval_out, eval_set)
    write_csv(args.distribution_out, distribution)
    write_figure(args.distribution_png, distribution_figure(distribution, len(train), len(eval_set)))
    also_drawn = len(set(listed) & drawn)
    added = (f" ({len(drawn)} drawn + {len(train) - len(drawn)} from {args.include}"
             + (f"; {also_drawn} listed there were drawn too" if also_drawn else "") + ")" if listed else "")
    print(f"subset: {len(train)} training images{added}, {len(eval_set)} evaluation images")
    short = [name for name in pool_limited_classes(distribution, params.subset.min_per_class)
             if name not in params.subset.class_quota]
    if short:
        counts = dict(zip(distribution["class"], distribution["pool"]))
        listed = ", ".join(f"{name} ({counts[name]})" for name in short)
        print(f"warning: the '{params.data.train_split}' split has fewer than subset.min_per_class="
              f"{params.subset.min_per_class} images of {listed}; all of them were taken")


if __name__ == "__main__":
    run_main(main)

"""Heatmaps' cost against predict's: the same photos labelled with and without their maps.

    python bench/heatmap_speed.py --images 1000          # Lite0 at 448 with the mirror, devdata photos

The model: the product's (params.yaml's ``svm``) fitted on 750 devdata photos' features (draw 0 of
bench/quality.py's protocol, from the per-image cache bench/pointing.py fills). Then, on the next
``--images`` photos of the pool, timed one after the other in this process: ``Classifier.predict``
with an empty feature cache (Keras, as the maps run), and ``Classifier.heatmaps`` plus an overlay
PNG per photo (the work of ``fewlabel predict --heatmaps``). Prints both times and their ratio.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DEVDATA_VOC, LITE0, REPO_ROOT, draw_split, load_pool  # noqa: E402



def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", default=str(DEVDATA_VOC))
    parser.add_argument("--backbone", default=str(LITE0))
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args(argv)

    from fewlabel.api import Classifier
    from fewlabel.features.extract import extract_features
    from fewlabel.features.recipes import fixed_recipes
    from fewlabel.artifacts import training_targets
    from fewlabel.model.rules import DecisionRule
    from fewlabel.model.svm import build_model, for_training_set
    from fewlabel.overlays import shown_classes, write_overlay
    from fewlabel.model.rules import apply_rule
    from fewlabel.params import load_params

    params = load_params(REPO_ROOT / "params.yaml")
    classes = params.data.classes
    ids, labels, paths = load_pool(Path(args.voc), "train", classes)
    features_params = dataclasses.replace(params.features, backbones=(args.backbone,), weights=None,
                                          image_size=args.size, flip_tta=True, runtime="keras", native_sizes=None)
    recipes = fixed_recipes(features_params)
    train_rows, eval_rows = draw_split(labels, params, 0)
    features, _ = extract_features([paths[i] for i in train_rows], features_params, progress=False, recipes=recipes)
    model = build_model(for_training_set(params.svm, len(train_rows))).fit(features, training_targets(labels[train_rows]))
    classifier = Classifier(tuple(classes), model, DecisionRule.uniform(len(classes), 0.5, min_labels=1),
                            features_params, tuple(recipes), {})
    photos = [paths[i] for i in eval_rows[:args.images]]

    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        os.environ["FEWLABEL_FEATURE_CACHE"] = cache  # predict extracts every photo
        started = time.perf_counter()
        table = classifier.predict(photos)
        predict_seconds = time.perf_counter() - started
        started = time.perf_counter()
        count = 0
        for heatmap in classifier.heatmaps(photos):
            predicted = apply_rule(heatmap.probabilities[None], classifier.rule)[0]
            write_overlay(Path(out) / f"{count}.png", heatmap, shown_classes(predicted, heatmap.probabilities), classes)
            count += 1
        heatmap_seconds = time.perf_counter() - started
    assert count == len(table) == len(photos)
    print(f"{len(photos)} photos, {Path(args.backbone).stem} at {args.size} with the mirror (Keras): predict "
          f"{predict_seconds:.1f} s ({predict_seconds / len(photos):.3f} s/photo), heatmaps with an overlay PNG each "
          f"{heatmap_seconds:.1f} s ({heatmap_seconds / len(photos):.3f} s/photo): ratio "
          f"{heatmap_seconds / predict_seconds:.2f}")


if __name__ == "__main__":
    main()

"""The featurize stage's work: the train and eval subsets' features with the views chosen
(:mod:`fewlabel.model.selection`), written as ``train.npz``, ``eval.npz`` and ``meta.json``,
and the run's report (``reports/featurize.json``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fewlabel.artifacts import training_targets, write_features
from fewlabel.data.images import subset_image_paths
from fewlabel.errors import PipelineError
from fewlabel.features.engine import resolve_engine
from fewlabel.features.extract import extract_features, resolve_runtime, view_caches
from fewlabel.features.int8 import calibrate
from fewlabel.features.recipes import Recipe, build_meta, fixed_recipes
from fewlabel.features.runtimes import cpu_kind
from fewlabel.features.screening import screen_images
from fewlabel.model.selection import SELECTION_SVM, candidate_views, choose_recipes
from fewlabel.io import write_json
from fewlabel.params import FeaturesParams


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


@dataclass
class Featurized:
    train: np.ndarray
    eval: np.ndarray
    recipes: list[Recipe]
    selection: pd.DataFrame | None
    stats: dict


def featurize_subsets(train_paths: list[str], train_labels: np.ndarray, eval_paths: list[str],
                      params: FeaturesParams, classes, progress: bool = True) -> Featurized:
    """Features of the train and eval images, choosing the views first if ``image_size: auto``.

    ``train_labels`` (VOC codes) are read only to choose views; eval labels are never needed.
    The work runs on ``features.engine`` (see :mod:`fewlabel.features.engine`).
    """
    engine = resolve_engine(params.engine, params.workers)
    runtime = calibrate(resolve_runtime(params), train_paths)  # INT8: on training images only
    selection = None
    if params.image_size == "auto":
        # every image checked at once, before the views are chosen on the training images
        screen_images(list(train_paths) + list(eval_paths),
                      view_caches(candidate_views(params), params.weights, runtime))
        recipes, selection, _ = choose_recipes(train_paths, training_targets(train_labels), params, classes,
                                               progress, engine, runtime)
    else:
        recipes = fixed_recipes(params)
    features, stats = extract_features(list(train_paths) + list(eval_paths), params, progress, recipes, engine,
                                       runtime=runtime)
    n_train = len(train_paths)
    return Featurized(features[:n_train], features[n_train:], recipes, selection, stats)


def build_run_stats(params: FeaturesParams, result: Featurized) -> dict:
    """reports/featurize.json (not a DVC metric: it holds text): how this run went (device, speed, cache use, the view choice)."""
    stats = result.stats
    record = {
        "device": stats["device"],
        # what ran: features.runtime as resolved on this machine (auto: and why)
        "runtime": stats["runtime"].runtime,
        "precision": stats["runtime"].precision,
        "runtime_requested": stats["runtime"].requested,
        "runtime_note": stats["runtime"].note,
        "cpu_kind": cpu_kind(),  # what auto's rule saw (fewlabel.features.runtimes.AUTO_RULE)
        "engine": stats["engine"],
        "batch_size": params.batch_size,
        "n_train": len(result.train),
        "n_eval": len(result.eval),
        "n_extracted": stats["n_extracted"],
        "n_cached": stats["n_cached"],
        "images_per_second": _round(stats["images_per_second"]),
        "views": " | ".join(r.label for r in result.recipes),
        # strings, not lists: DVC's metrics show / exp show drop list values
        "per_backbone": {i["name"]: {"views": " ".join(i["views"]), "n_extracted": i["n_extracted"],
                                     "n_cached": i["n_cached"], "images_per_second": _round(i["images_per_second"])}
                         for i in stats["per_backbone"]},
    }
    if result.selection is not None:
        # keyed by candidate (not a list), so dvc metrics show / exp show list every score
        record["view_selection"] = {
            "folds": params.select_folds,
            "classifier": f"SVC(rbf, C={SELECTION_SVM.C:g}, gamma={SELECTION_SVM.gamma}, "
                          f"scaler={SELECTION_SVM.scaler})",
            "chosen": result.selection.loc[result.selection["chosen"], "candidate"].iloc[0],
            "candidates": {row.candidate: {"cv_map": round(row.cv_map, 6), "cv_map_std": round(row.cv_map_std, 6),
                                           "cost": row.cost, "chosen": bool(row.chosen)}
                           for row in result.selection.itertuples()}}
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)

"""The Python API: a trained run loaded once, to label photos from a notebook or a script.

    import fewlabel
    classifier = fewlabel.load(".")                 # the repository where `dvc repro` ran
    table = classifier.predict(["photos/cat.jpg", "photos/"])
    features = classifier.features(["photos/cat.jpg"])
    table = classifier.predict(features)            # the same labels, from features
    for heatmap in classifier.heatmaps(["photos/cat.jpg"]):
        maps = heatmap.maps()                       # classes x height x width, aligned to the photo

``predict`` applies the model and the calibrated decision rule exactly as the evaluate stage
and ``fewlabel predict`` do, through the same per-image feature cache.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from fewlabel.errors import PipelineError
from fewlabel.features import hub
from fewlabel.features.engine import Engine, map_chunks
from fewlabel.features.hub import is_hub_backbone, preset_of
from fewlabel.features.recipes import Recipe, recipes_from_meta
from fewlabel.artifacts import feature_signature
from fewlabel.data.images import expand_inputs
from fewlabel.heatmaps import DEFAULT_METHOD, FeatureMaps, Heatmap, heatmap_batches
from fewlabel.io import read_json
from fewlabel.model.rules import DecisionRule, load_rule
from fewlabel.model.svm import load_model, positive_probabilities
from fewlabel.params import FeaturesParams, load_params
from fewlabel.predict import CHUNK_IMAGES, ImageLabeller, label_images, label_stream, readable_images

#: Where a run keeps what ``load`` reads, relative to the run's folder (as dvc.yaml writes them).
MODEL_PATH = "models/model.joblib"
THRESHOLDS_PATH = "models/thresholds.json"
META_PATH = "data/features/meta.json"
PARAMS_PATH = "params.yaml"


@dataclass(frozen=True)
class Classifier:
    """A trained model with its decision rule and the recipe of the features it was trained on."""
    classes: tuple[str, ...]
    model: object  # the fitted scikit-learn pipeline (models/model.joblib)
    rule: DecisionRule
    features_params: FeaturesParams
    recipes: tuple[Recipe, ...]
    feature_signature: dict  # what the model was trained on (meta.json's signature)

    def features(self, images: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """The model's features of image files (n x d float32), through the per-image cache."""
        from fewlabel.features.extract import extract_features

        features, _ = extract_features([str(path) for path in images], self.features_params, progress=progress,
                                       recipes=list(self.recipes))
        return features

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Per-class probabilities (n x classes) of feature rows from :meth:`features`."""
        features = np.asarray(features, dtype=np.float32)
        expected = int(sum(self.feature_signature["dims"]))
        if features.ndim != 2 or features.shape[1] != expected:
            raise PipelineError(f"features of shape {features.shape}: the model takes n x {expected} rows "
                                f"(from Classifier.features)")
        return positive_probabilities(self.model, features)

    def predict(self, images, top_k: int = 3) -> pd.DataFrame:
        """Labels under the calibrated rule, the top-k classes and every class's probability.

        ``images``: image paths, folders or glob patterns (the table starts with ``path``; files
        that are not readable images are skipped with a warning), or a feature matrix from
        :meth:`features` (one row per feature row). Columns as ``fewlabel predict --out``.
        """
        if not 1 <= top_k <= len(self.classes):
            raise PipelineError(f"top_k must be between 1 and {len(self.classes)}, got {top_k}")
        if isinstance(images, np.ndarray):
            return label_images(self.probabilities(images), self.rule, self.classes, top_k)
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        paths, problems = expand_inputs([str(item) for item in images])
        tables = []
        for table, bad, _ in self.labelled_chunks(paths, top_k):
            tables.append(table)
            problems += bad
        for item, problem in problems:
            warnings.warn(f"{item}: {problem}", stacklevel=2)
        if not tables:
            empty = label_images(np.zeros((0, len(self.classes))), self.rule, self.classes, top_k)
            empty.insert(0, "path", pd.Series(dtype=str))  # the columns of a labelled table, path first
            return empty
        return pd.concat(tables, ignore_index=True)

    def heatmaps(self, images, method: str = DEFAULT_METHOD) -> Iterator[Heatmap]:
        """Per readable image (paths, folders or globs, as :meth:`predict`; others skipped with a
        warning), a :class:`fewlabel.heatmaps.Heatmap`: the image's class probabilities and one map
        per class (``heatmap.maps()``: classes x height x width, aligned to the original image,
        probabilities comparable across images). One CNN pass per image (Keras) gives both; a
        batch's feature maps are freed before the next batch."""
        for batch, problems in self.heatmap_chunks(images, method):
            for item, problem in problems:
                warnings.warn(f"{item}: {problem}", stacklevel=2)
            yield from batch

    def heatmap_chunks(self, images, method: str, chunk_size: int = CHUNK_IMAGES
                       ) -> Iterator[tuple[list, list[tuple[str, str]]]]:
        """Per chunk of ``images`` (paths, folders, globs): (its heatmaps, [(input, problem)] of the
        inputs skipped); as :meth:`labelled_chunks` does, bad inputs are named, not fatal."""
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        paths, problems = expand_inputs([str(item) for item in images])
        if problems:
            yield [], problems
        if not paths:
            return
        maps = FeatureMaps(self.recipes, self.features_params.weights, self.features_params.batch_size)
        for start in range(0, len(paths), chunk_size):
            good, _, bad = readable_images(paths[start:start + chunk_size])
            heatmaps = [h for batch in heatmap_batches(self.model, self.recipes, maps, good, method) for h in batch] \
                if good else []
            yield heatmaps, bad

    def labelled_chunks(self, paths: list[str], top_k: int, chunk_size: int = CHUNK_IMAGES,
                        engine: Engine = Engine(), on_batch: Callable[[float], None] | None = None
                        ) -> Iterator[tuple[pd.DataFrame, list, int]]:
        """Label ``paths`` chunk by chunk on ``engine``: per chunk (the table of its readable images,
        [(path, problem)] of the others, images served from the feature cache). ``on_batch(n)``:
        n more images of the current chunk extracted (the single-process engine only)."""
        labeller = functools.partial(ImageLabeller, self.model, len(self.classes), self.features_params,
                                     list(self.recipes), on_batch if engine.name == "single" else None)
        columns = {"position": np.arange(len(paths)), "path": np.asarray(paths, dtype=object)}
        return label_stream(map_chunks(labeller, columns, chunk_size, engine), paths, self.rule, self.classes, top_k)


def load(run_dir: str | os.PathLike = ".", *, model: str | None = None, thresholds: str | None = None,
         meta: str | None = None, params: str | None = None) -> Classifier:
    """Load the trained run in ``run_dir`` (the repository where ``dvc repro`` ran).

    The files default to where the pipeline writes them (models/model.joblib,
    models/thresholds.json, data/features/meta.json, params.yaml), relative to ``run_dir``.
    The model must match the features meta.json describes and the classes of params.yaml,
    and the rule must have been calibrated for this model, as for ``fewlabel predict``.
    """
    run_dir = Path(run_dir)
    model_path, thresholds_path, meta_path, params_path = (
        Path(given) if given is not None else run_dir / default
        for given, default in ((model, MODEL_PATH), (thresholds, THRESHOLDS_PATH), (meta, META_PATH),
                               (params, PARAMS_PATH)))
    classes = load_params(params_path).data.classes
    meta_record = read_json(meta_path)
    signature = feature_signature(meta_record)
    bundle = load_model(model_path, classes, signature)
    rule = load_rule(thresholds_path, classes, model_path=model_path)
    features_params, recipes = recipes_from_meta(meta_record)
    features_params, recipes = _rooted(features_params, recipes, run_dir)
    return Classifier(tuple(classes), bundle["model"], rule, features_params, tuple(recipes), signature)


def _rooted(params: FeaturesParams, recipes: list[Recipe], run_dir: Path) -> tuple[FeaturesParams, list[Recipe]]:
    """Model and weights files named relative to the run's folder, made absolute, so the
    classifier works from any working directory (the cache keys hash file contents, not paths)."""
    def rooted(name):
        if name is None or name == "imagenet":
            return name
        if is_hub_backbone(name):  # keras_hub:<local preset folder>
            return hub.PREFIX + rooted(preset_of(name))
        candidate = run_dir / name
        return str(candidate.resolve()) if not os.path.isabs(name) and candidate.exists() else name

    recipes = [dataclasses.replace(recipe, backbone=rooted(recipe.backbone)) for recipe in recipes]
    params = dataclasses.replace(params, backbones=tuple(r.backbone for r in recipes), weights=rooted(params.weights))
    return params, recipes

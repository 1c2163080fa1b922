"""featurize: frozen CNN features of the train and eval images, with a per-image cache.

    python -m stages.featurize --images data/raw/voc/JPEGImages \
        --train data/subset/train.csv --eval data/subset/eval.csv --out-dir data/features \
        --stats-out metrics/featurize.json

Writes ``<out-dir>/train.npz`` and ``eval.npz`` (``ids`` in the CSV's order, ``features``
float32 n x d) and ``meta.json`` (what the features are: backbones, sizes, views, weights).

A backbone's feature vector is built from **views** of the image (:mod:`stages.views`): one
or more input sizes (``features.image_size``; several are joined by ``features.combine``),
a resize method, and optionally the mirror image averaged in (``features.flip_tta``). With
``image_size: auto`` the sizes are chosen among ``features.select_scales`` (multiples of
each backbone's native size) by cross-validated mAP on the **training** images only; only
the chosen views are then extracted for the eval images. Every (backbone, view) has its own
per-image cache (:mod:`stages.feature_cache`), so candidates, reruns and ``predict`` never
extract a vector twice, and an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import inspect
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages import views as views_module
from stages.backbones import (build_extractor, check_backbone_name, fixed_input_size, is_model_file,
                              native_input_size)
from stages.common import (PipelineError, ProgressBar, atomic_path, feature_signature, file_md5, read_csv,
                           run_main, training_targets, write_json)
from stages.engine import Engine, map_chunks, resolve_engine
from stages.feature_cache import FeatureCache, cache_folder, hash_images
from stages.params import FeaturesParams, SvmParams, TuneParams, load_params
from stages.runtimes import RuntimeChoice, choose_runtime, load_extractor
from stages.views import View, ViewRunner

import keras  # noqa: E402  (after stages.backbones, which quiets TensorFlow's logging)
import tensorflow as tf  # noqa: E402

CACHE_FORMAT = 2
IMAGE_EXTENSION = ".jpg"
# The most images the engine hands one worker at a time (fewer when there are few images, so
# that every worker gets some): enough to amortise tracing the model graph for each chunk.
ENGINE_CHUNK_IMAGES = 256
# The classifier that scores candidate views: the default svm.* settings, fixed here (not read
# from svm.*) so that changing an SVM setting never reruns featurize; 'median' gamma adapts
# to each view's feature scale.
SELECTION_SVM = SvmParams(C=1.0, gamma="median", scaler="sqrt", approximation="auto")


# ----------------------------------------------------------------------------- recipes

@dataclass(frozen=True)
class Recipe:
    """How one backbone turns an image into its feature vector: which views, and how joined."""
    backbone: str
    sizes: tuple
    resize: str = "bilinear"
    flip: bool = False
    combine: str = "mean"

    def views(self) -> list[View]:
        mirrors = (False, True) if self.flip else (False,)
        return [View(size, self.resize, mirrored) for size in self.sizes for mirrored in mirrors]

    @property
    def cost(self) -> float:
        """Pixels pushed through the backbone per image, relative to one 224 x 224 view."""
        return sum(view.size ** 2 for view in self.views()) / 224 ** 2

    @property
    def label(self) -> str:
        join = "+" if self.combine == "concat" else "&"
        return (f"{Path(self.backbone).stem}@{join.join(str(s) for s in self.sizes)} {self.resize}"
                + (" flip" if self.flip else ""))


def scaled_size(native: int, scale: float) -> int:
    """``native * scale`` rounded (half up) to a multiple of 32, at least 32; scale 1 is ``native``.

    EfficientNets halve their feature map five times: at a multiple of 32 no stride-2 layer
    pads unevenly (on devdata, Lite0 at 336 scored 0.4 mAP below 352).
    """
    if scale == 1:
        return int(native)
    return max(32, int(native * scale / 32 + 0.5) * 32)


def _recipe(params: FeaturesParams, backbone: str, sizes) -> Recipe:
    fixed = fixed_input_size(backbone)
    sizes = (fixed,) if fixed else tuple(dict.fromkeys(int(s) for s in sizes))
    return Recipe(backbone, sizes, params.resize, bool(params.flip_tta), params.combine)


def fixed_recipes(params: FeaturesParams) -> list[Recipe]:
    """The recipes of ``features.*`` when ``image_size`` is not ``auto`` (null: native size)."""
    if params.image_size == "auto":
        raise ValueError("image_size 'auto' is resolved by choose_recipes")
    recipes = []
    for backbone in _backbones(params):
        size = params.image_size
        sizes = (native_input_size(backbone),) if size is None else (size if isinstance(size, tuple) else (size,))
        recipes.append(_recipe(params, backbone, sizes))
    return recipes


def candidate_recipes(params: FeaturesParams) -> list[list[Recipe]]:
    """For ``image_size: auto``: one list of recipes (one per backbone) per distinct candidate."""
    candidates = []
    for scales in params.select_scales:
        candidate = [_recipe(params, b, [scaled_size(native_input_size(b), s) for s in scales])
                     for b in _backbones(params)]
        if candidate not in candidates:  # e.g. a fixed-size model makes every scale the same
            candidates.append(candidate)
    return candidates


def _backbones(params: FeaturesParams) -> tuple:
    if not params.backbones:
        raise PipelineError("features.backbones: is empty; list at least one backbone")
    for name in params.backbones:
        check_backbone_name(name)
    return params.backbones


def combine_views(recipe: Recipe, view_features: dict[View, np.ndarray]) -> np.ndarray:
    """One backbone's features from its views' features: the mirror pair averaged per size,
    then the sizes averaged (``mean``) or concatenated in size order (``concat``)."""
    per_size = []
    for size in recipe.sizes:
        pair = [view_features[View(size, recipe.resize, mirrored)] for mirrored in
                ((False, True) if recipe.flip else (False,))]
        per_size.append(_mean(pair))
    if recipe.combine == "concat":
        return np.concatenate(per_size, axis=1)
    return _mean(per_size)


def _mean(arrays: list[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    return np.mean(np.stack(arrays), axis=0, dtype=np.float64).astype(np.float32)


def assemble(recipes: list[Recipe], view_features: dict[str, dict[View, np.ndarray]]) -> np.ndarray:
    """The feature matrix of ``recipes``: each backbone's combined views, concatenated in order."""
    blocks = [combine_views(recipe, view_features[recipe.backbone]) for recipe in recipes]
    return np.ascontiguousarray(np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0])


# ----------------------------------------------------------------------------- extraction

def _feature_code_hash() -> str:
    """Hash of the code that turns an image file into features (decode, resize, views, model).

    Part of the cache key, so editing that code cannot silently serve features of the old code.
    """
    from stages import backbones
    parts = (views_module.decode_image, views_module.resize_image, views_module._all_resizes,
             views_module.ViewRunner, backbones.build_extractor, backbones._Preprocess, backbones._pool)
    source = "".join(inspect.getsource(part) for part in parts) + repr(views_module.RESIZE_METHODS)
    return hashlib.sha1(source.encode()).hexdigest()[:16]


def extractor_key(backbone: str, weights: str | None) -> dict:
    """What makes a backbone's extractor, at any size: the backbone (a model file by content),
    its weights, the library versions and the code that feeds it."""
    if weights is None or weights == "imagenet":
        weights_key = weights or "none"
    else:
        if not Path(weights).is_file():
            raise PipelineError(f"features.weights: '{weights}' is not 'imagenet', null or an "
                                f"existing weights file; fix the path (relative to the repository root)")
        weights_key = {"file_md5": file_md5(weights)}
    if is_model_file(backbone):
        backbone_key = {"keras_file_md5": file_md5(backbone)}
        weights_key = weights_key if isinstance(weights_key, dict) else "stored"
    else:
        backbone_key = backbone
    return {"cache_format": CACHE_FORMAT, "backbone": backbone_key, "weights": weights_key,
            "keras": keras.__version__, "tensorflow": tf.__version__, "code": _feature_code_hash()}


def _backbone_label(backbone: str) -> str:
    return Path(backbone).stem if is_model_file(backbone) else backbone


def view_cache(backbone: str, view: View, weights: str | None,
               runtime: RuntimeChoice = RuntimeChoice()) -> FeatureCache:
    """The cache of one backbone seen through one view and run by ``runtime``, keyed by
    everything that makes its vectors."""
    key = {**extractor_key(backbone, weights), "size": view.size, "resize": view.resize,
           "mirrored": view.mirrored, **runtime.cache_key}
    suffix = "" if runtime.runtime == "keras" else f"-{runtime.label}"
    return FeatureCache(cache_folder(f"{_backbone_label(backbone)}-{view.label}{suffix}", key), key)


def build_size_extractor(backbone: str, weights: str | None, size: int, runtime: RuntimeChoice,
                         batch_size: int = 8):
    """The extractor of ``backbone`` at input ``size`` that ``runtime`` runs on batches of
    ``batch_size`` (the Keras model is built only when the runtime's converted model is not
    cached yet)."""
    def build_keras():
        model, built = build_extractor(backbone, weights, size)
        if built != size:
            raise PipelineError(f"{backbone}: built at input size {built}, expected {size}")
        return model

    return load_extractor(runtime, build_keras, {**extractor_key(backbone, weights), "size": size},
                          f"{_backbone_label(backbone)}-{size}", batch_size)


def resolve_runtime(params: FeaturesParams) -> RuntimeChoice:
    """``features.runtime`` and ``precision`` as this machine runs them (see stages/runtimes.py)."""
    return choose_runtime(params.runtime, params.precision, gpu=bool(tf.config.list_physical_devices("GPU")))


def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised
            pass
    return f"GPU x{len(gpus)}" if gpus else "CPU"


def _extract_backbone(backbone: str, views: list[View], paths: list[str], digests: list[str],
                      weights: str | None, batch_size: int, progress: bool, runtime: RuntimeChoice,
                      engine: Engine, extractors: Extractors | None = None) -> tuple[dict, dict, set]:
    """Features of the unique images ``paths`` for each of ``views`` of one backbone.

    Cached vectors are read; the rest are extracted in one pass per group of images that miss
    the same views (each image decoded once for all of them): here, or on the workers of a
    ``ray`` engine, which write the cache themselves. ``extractors`` keeps the built models and
    traced steps for the next call (predict's chunks); without it they are freed.
    Returns ({view: (n, d) array}, info, rows extracted).
    """
    caches = {view: view_cache(backbone, view, weights, runtime) for view in views}
    vectors = {view: [cache.get(d) for d in digests] for view, cache in caches.items()}
    for view in views:
        if len({v.size for v in vectors[view] if v is not None}) > 1:  # a damaged cache: trust nothing
            vectors[view] = [None] * len(paths)
    missing_by_image = [tuple(v for v in views if vectors[v][i] is None) for i in range(len(paths))]
    groups: dict[tuple, list[int]] = {}
    for i, missing in enumerate(missing_by_image):
        if missing:
            groups.setdefault(missing, []).append(i)
    extracted = {i for rows in groups.values() for i in rows}
    label = f"{Path(backbone).name} [{', '.join(v.label for v in views)}] {runtime.label}"
    info = {"name": backbone, "views": [v.label for v in views], "n_extracted": len(extracted),
            "n_cached": len(paths) - len(extracted), "extract_seconds": 0.0, "images_per_second": None,
            "steady_images_per_second": None, "build_seconds": 0.0}
    steady_images, steady_seconds = 0, 0.0  # after each pass's first batch (one-time graph set-up)
    if progress:
        print(f"featurize: {label}: {len(extracted)} to extract, {info['n_cached']} from cache",
              file=sys.stderr, flush=True)

    keep_extractors = extractors is not None
    extractors = extractors if keep_extractors else Extractors(backbone, weights, batch_size, runtime)
    for missing, rows in groups.items():
        building = time.perf_counter()
        if engine.name == "single":
            batches = extractors.runner(missing).batches([paths[i] for i in rows])  # traced on first use
        else:
            batches = _engine_batches(backbone, missing, weights, batch_size, runtime, [caches[v] for v in missing],
                                      [paths[i] for i in rows], [digests[i] for i in rows], engine)
        info["build_seconds"] += time.perf_counter() - building
        start, done, first_batch = time.perf_counter(), 0, None
        with ProgressBar(len(rows), label, progress) as bar:
            for features in batches:
                n = len(features[0])
                for view, block in zip(missing, features):
                    for row, i in enumerate(rows[done:done + n]):
                        vector = np.array(block[row])
                        if engine.name == "single":  # the engine's workers wrote it already
                            caches[view].put(digests[i], vector)
                        vectors[view][i] = vector
                done += n
                bar.update(n)
                first_batch = first_batch or (time.perf_counter(), done)
        end = time.perf_counter()
        info["extract_seconds"] += end - start
        if done > first_batch[1]:
            steady_images, steady_seconds = steady_images + done - first_batch[1], steady_seconds + end - first_batch[0]
    if extracted and info["extract_seconds"] > 0:
        info["images_per_second"] = len(extracted) / info["extract_seconds"]
        info["steady_images_per_second"] = steady_images / steady_seconds if steady_seconds > 0 \
            else info["images_per_second"]
    if not keep_extractors:
        del extractors
        gc.collect()  # let the next backbone have the memory

    result = {}
    for view in views:
        dims = {v.size for v in vectors[view]}
        if len(dims) != 1:  # cached vectors of another model shape: redo this view from scratch
            for i, digest in enumerate(digests):
                caches[view].remove(digest)
            return _extract_backbone(backbone, views, paths, digests, weights, batch_size, progress, runtime,
                                     engine)
        result[view] = np.stack(vectors[view]).astype(np.float32, copy=False)
        vectors[view] = None  # one copy of the features at a time: peak memory stays flat
    return result, info, extracted


class Extractors:
    """One backbone's built models (by input size) and traced view steps (by views), built on
    first use and kept for later calls: predict's chunks, an engine worker's chunks."""

    def __init__(self, backbone: str, weights: str | None, batch_size: int,
                 runtime: RuntimeChoice = RuntimeChoice()):
        self.backbone, self.weights, self.batch_size, self.runtime = backbone, weights, batch_size, runtime
        self.models: dict[int, object] = {}
        self.runners: dict[tuple, ViewRunner] = {}

    def runner(self, views) -> ViewRunner:
        """The traced step of ``views`` (see :class:`stages.views.ViewRunner`)."""
        views = tuple(views)
        if views not in self.runners:
            for size in sorted({v.size for v in views} - set(self.models)):
                self.models[size] = build_size_extractor(self.backbone, self.weights, size, self.runtime,
                                                         self.batch_size)
            self.runners[views] = ViewRunner(self.models, views, self.batch_size)
        return self.runners[views]


class ViewWorker:
    """A worker of :func:`stages.engine.map_chunks`: one backbone's ``views`` of chunks of images.

    Each call takes a chunk (``position``, ``path``, ``digest``), reads what the per-image
    cache already holds (a chunk run again after a worker died finds its finished images
    there), extracts the rest, writes them to the cache, and returns ``position`` and one
    (n, d) array per view (``view0``, ``view1``, ...). The extractors are built on first use.
    """

    def __init__(self, backbone: str, views: list[View], weights: str | None, batch_size: int,
                 runtime: RuntimeChoice, cache_folders: list[tuple[str, dict]]):
        self.views = list(views)
        self.caches = [FeatureCache(location, key) for location, key in cache_folders]
        self.extractors = Extractors(backbone, weights, batch_size, runtime)

    def __call__(self, chunk: dict) -> dict:
        paths, digests = [str(p) for p in chunk["path"]], [str(d) for d in chunk["digest"]]
        vectors = [[cache.get(d) for d in digests] for cache in self.caches]
        todo = [i for i in range(len(paths)) if any(per_view[i] is None for per_view in vectors)]
        if todo:
            done = 0
            for features in self.extractors.runner(self.views).batches([paths[i] for i in todo]):
                for block, cache, per_view in zip(features, self.caches, vectors):
                    for row, i in enumerate(todo[done:done + len(block)]):
                        per_view[i] = np.array(block[row])
                        cache.put(digests[i], per_view[i])
                done += len(features[0])
        return {"position": np.asarray(chunk["position"]),
                **{f"view{j}": np.stack(per_view) for j, per_view in enumerate(vectors)}}


def _engine_batches(backbone: str, views: list[View], weights: str | None, batch_size: int,
                    runtime: RuntimeChoice, caches: list[FeatureCache], paths: list[str], digests: list[str], engine: Engine):
    """Like :meth:`stages.views.ViewRunner.batches`, on the engine's workers: one list of arrays
    (one per view) per chunk, in the order of ``paths``."""
    worker = functools.partial(ViewWorker, backbone, views, weights, batch_size, runtime,
                               [(cache.location, cache.key) for cache in caches])
    columns = {"position": np.arange(len(paths)), "path": np.asarray(paths), "digest": np.asarray(digests)}
    done = 0
    for result in map_chunks(worker, columns, ENGINE_CHUNK_IMAGES, engine):
        if len(result["position"]) == 0:
            continue
        if result["position"][0] != done:  # map_chunks keeps the order; never mix up rows
            raise RuntimeError(f"engine returned rows from {result['position'][0]}, expected {done}")
        done += len(result["position"])
        yield [result[f"view{j}"] for j in range(len(views))]


def extract_views(image_paths, backbone_views: dict[str, list[View]], weights: str | None,
                  batch_size: int = 8, progress: bool = True, runtime: RuntimeChoice = RuntimeChoice(),
                  engine: Engine = Engine(), extractors: dict | None = None,
                  digests: list[str] | None = None) -> tuple[dict, dict]:
    """Per backbone and view, the features of ``image_paths`` (one row per path, in order),
    run by ``runtime``.

    Images already in the per-image cache are not decoded; identical files are extracted once,
    here or on the ``engine``'s workers. ``extractors`` (backbone -> :class:`Extractors`) keeps
    the built models and traced steps across calls; ``digests`` are the files' content hashes,
    if already known.
    Returns ({backbone: {view: array}}, stats) with ``n_images``, ``n_unique``, ``n_extracted``
    (unique images that some view had to extract), ``n_cached``, ``images_per_second``,
    ``device``, ``runtime`` (the :class:`RuntimeChoice`), ``engine``, ``seconds``, ``per_backbone``
    and ``from_cache`` (per path: no view had to be extracted).
    """
    began = time.perf_counter()
    paths = [str(p) for p in image_paths]
    if not paths:
        raise PipelineError("no images to extract features from")
    device = _device()
    digests = hash_images(paths) if digests is None else list(digests)
    unique: dict[str, int] = {}
    first_path: dict[str, str] = {}
    for path, digest in zip(paths, digests):
        unique.setdefault(digest, len(unique))
        first_path.setdefault(digest, path)
    unique_digests = list(unique)
    order = np.array([unique[d] for d in digests])

    features, per_backbone, extracted = {}, [], set()
    for backbone, views in backbone_views.items():
        by_view, info, rows = _extract_backbone(backbone, sorted(set(views)), [first_path[d] for d in unique_digests],
                                                unique_digests, weights, batch_size, progress, runtime, engine,
                                                None if extractors is None else extractors.setdefault(
                                                    backbone, Extractors(backbone, weights, batch_size, runtime)))
        in_order = len(order) == len(unique_digests)  # no duplicate files: rows are already in order
        features[backbone] = by_view if in_order else {view: block[order] for view, block in by_view.items()}
        per_backbone.append(info)
        extracted.update(rows)
    seconds = sum(info["extract_seconds"] for info in per_backbone)
    stats = {"n_images": len(paths), "n_unique": len(unique_digests), "n_extracted": len(extracted),
             "n_cached": len(unique_digests) - len(extracted),
             "images_per_second": len(extracted) / seconds if extracted and seconds else None,
             "device": device, "runtime": runtime, "engine": engine.label,
             "seconds": time.perf_counter() - began, "per_backbone": per_backbone,
             "from_cache": np.array([unique[d] not in extracted for d in digests])}
    return features, stats


def extract_features(image_paths, params: FeaturesParams, progress: bool = True,
                     recipes: list[Recipe] | None = None, engine: Engine = Engine(),
                     extractors: dict | None = None, digests: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Features of ``image_paths`` (float32, one row per path, backbones concatenated in order).

    ``recipes`` default to :func:`fixed_recipes` of ``params`` (predict passes the ones a
    meta.json records); ``engine``, ``extractors`` and ``digests`` as :func:`extract_views`.
    Stats as :func:`extract_views`, plus ``dims`` and ``input_sizes`` (one list of sizes per
    backbone).
    """
    recipes = recipes if recipes is not None else fixed_recipes(params)
    view_features, stats = extract_views(image_paths, {r.backbone: r.views() for r in recipes},
                                         params.weights, params.batch_size, progress, resolve_runtime(params),
                                         engine, extractors, digests)
    blocks = [combine_views(recipe, view_features[recipe.backbone]) for recipe in recipes]
    stats.update(dims=[int(b.shape[1]) for b in blocks], input_sizes=[list(r.sizes) for r in recipes])
    features = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    return np.ascontiguousarray(features, dtype=np.float32), stats


# ----------------------------------------------------------------------------- view selection

def score_candidates(candidates: list[list[Recipe]], view_features: dict, targets: np.ndarray, classes,
                     folds: int) -> pd.DataFrame:
    """Cross-validated mAP of each candidate on the training images (``targets`` 0/1).

    Uses :data:`SELECTION_SVM` and the same folds for every candidate.
    """
    from stages.model import tune_grid
    grid = TuneParams(enabled=True, C=(SELECTION_SVM.C,), gamma=(SELECTION_SVM.gamma,), folds=folds)
    rows = []
    for candidate in candidates:
        scores = tune_grid(assemble(candidate, view_features), targets, SELECTION_SVM, grid, classes)
        rows.append({"candidate": " | ".join(r.label for r in candidate),
                     "input_sizes": [list(r.sizes) for r in candidate],
                     "cost": round(sum(r.cost for r in candidate), 3),
                     "cv_map": float(scores["map_mean"].iloc[0]), "cv_map_std": float(scores["map_std"].iloc[0])})
    return pd.DataFrame(rows)


def choose_recipes(train_paths: list[str], train_targets: np.ndarray, params: FeaturesParams, classes,
                   progress: bool = True, engine: Engine = Engine()) -> tuple[list[Recipe], pd.DataFrame, dict]:
    """``image_size: auto``: the candidate with the best cross-validated mAP on the training
    images (the cheaper one on a tie). Only training images and their labels are read.
    Returns (chosen recipes, the scored candidates, extraction stats)."""
    candidates = candidate_recipes(params)
    backbone_views: dict[str, set] = {}
    for candidate in candidates:
        for recipe in candidate:
            backbone_views.setdefault(recipe.backbone, set()).update(recipe.views())
    view_features, stats = extract_views(train_paths, {b: sorted(v) for b, v in backbone_views.items()},
                                         params.weights, params.batch_size, progress, resolve_runtime(params),
                                         engine)
    table = score_candidates(candidates, view_features, train_targets, classes, params.select_folds)
    best = max(range(len(candidates)), key=lambda i: (round(table["cv_map"][i], 6), -table["cost"][i]))
    table["chosen"] = [i == best for i in range(len(candidates))]
    return candidates[best], table, stats


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
    The work runs on ``features.engine`` (see :mod:`stages.engine`).
    """
    engine = resolve_engine(params.engine, params.workers)
    selection = None
    if params.image_size == "auto":
        recipes, selection, _ = choose_recipes(train_paths, training_targets(train_labels), params, classes,
                                               progress, engine)
    else:
        recipes = fixed_recipes(params)
    features, stats = extract_features(list(train_paths) + list(eval_paths), params, progress, recipes, engine)
    n_train = len(train_paths)
    return Featurized(features[:n_train], features[n_train:], recipes, selection, stats)


# ----------------------------------------------------------------------------- the stage

def recipes_from_meta(meta: dict) -> tuple[FeaturesParams, list[Recipe]]:
    """The params and recipes that reproduce a meta.json's features:
    ``params, recipes = recipes_from_meta(meta); extract_features(paths, params, recipes=recipes)``.
    """
    signature = feature_signature(meta)
    backbones, sizes = signature["backbones"], signature["input_sizes"]
    if not backbones or "weights" not in meta or len(backbones) != len(sizes or ()):
        raise PipelineError("meta.json: lacks backbones, input_sizes or weights, or they disagree; "
                            "rerun the featurize stage (dvc repro featurize)")
    params = FeaturesParams(backbones=tuple(backbones), weights=signature["weights"],
                            resize=signature.get("resize") or "bilinear",
                            combine=signature.get("combine") or "mean",
                            flip_tta=bool(signature["flip_tta"]),
                            # the runtime that computed the features (Keras before runtimes existed)
                            runtime=meta.get("runtime") or "keras", precision=meta.get("precision") or "auto")
    recipes = [Recipe(b, tuple(int(x) for x in (s if isinstance(s, list) else [s])), params.resize,
                      params.flip_tta, params.combine) for b, s in zip(backbones, sizes)]
    return params, recipes


def build_meta(params: FeaturesParams, recipes: list[Recipe], dims: list[int], runtime: RuntimeChoice) -> dict:
    """meta.json: what the features are (the signature of :func:`stages.common.feature_signature`
    plus the runtime and precision that computed them, and versions), and nothing about this
    run, so an identical rerun leaves it byte-identical and DVC does not retrain for nothing."""
    return {
        "backbones": [r.backbone for r in recipes],
        "dims": [int(d) for d in dims],
        "total_dim": int(sum(dims)),
        "input_sizes": [list(r.sizes) for r in recipes],
        "resize": params.resize,
        "combine": params.combine,
        "flip_tta": bool(params.flip_tta),
        "weights": params.weights,
        "runtime": runtime.runtime,
        "precision": runtime.precision,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }


def build_run_stats(params: FeaturesParams, result: Featurized) -> dict:
    """metrics/featurize.json: how this run went (device, speed, cache use, the view choice)."""
    stats = result.stats
    record = {
        "device": stats["device"],
        # what ran: features.runtime as resolved on this machine (auto: and why)
        "runtime": stats["runtime"].runtime,
        "precision": stats["runtime"].precision,
        "runtime_requested": stats["runtime"].requested,
        "runtime_note": stats["runtime"].note,
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


def subset_image_paths(images_dir: Path, csv_path: Path) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """(image ids in CSV order, their image paths, the CSV), checking the images exist.

    The path is ``<images>/<image_file>`` when the CSV has prepare's ``image_file`` column
    (PNG or ``.JPG`` exports of labelling tools), else ``<images>/<id>.jpg``.
    """
    frame = read_csv(csv_path, required=["image_id"])
    if frame["image_id"].isna().any():
        raise PipelineError(f"{csv_path}: has rows without an image_id; rerun the subset stage")
    ids = frame["image_id"].astype(str).to_numpy(dtype=str)
    if len(ids) == 0:
        raise PipelineError(f"{csv_path}: lists no images; rerun the subset stage")
    if "image_file" in frame.columns and frame["image_file"].notna().all():
        paths = [str(images_dir / name) for name in frame["image_file"].astype(str)]
    else:
        paths = [str(images_dir / f"{image_id}{IMAGE_EXTENSION}") for image_id in ids]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" ({len(missing)} of its {len(paths)} images are missing)" if len(missing) > 1 else ""
        raise PipelineError(f"{missing[0]}: image not found, listed in {csv_path}{more}; check --images "
                            f"or restore the dataset (dvc repro download)")
    return ids, paths, frame


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

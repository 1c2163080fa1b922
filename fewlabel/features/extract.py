"""Extraction: the per-image features of each (backbone, view), through the per-image cache.

A backbone's feature vector is built from **views** of the image (:mod:`fewlabel.features.views`): one
or more input sizes (``features.image_size``; several are joined by ``features.combine``),
a resize method, and optionally the mirror image averaged in (``features.flip_tta``); see
:mod:`fewlabel.features.recipes`. Every (backbone, view) has its own per-image cache
(:mod:`fewlabel.features.cache`), so candidates, reruns and ``predict`` never extract a
vector twice, and an interrupted run resumes. The work runs in this process or on the
workers of :mod:`fewlabel.features.engine`.
"""
from __future__ import annotations

import ast
import functools
import gc
import glob
import hashlib
import importlib.util
import inspect
import re
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fewlabel.features.backbones import _weights_file, is_model_file
from fewlabel.features.hub import cache_key as hub_cache_key, is_hub_backbone, preset_of
from fewlabel.errors import PipelineError
from fewlabel.progress import ProgressBar
from fewlabel.io import file_md5
from fewlabel.features.engine import Engine, map_chunks
from fewlabel.features.recipes import Recipe, View, combine_views, fixed_recipes, installed_version
from fewlabel.features.cache import FeatureCache, cache_folder
from fewlabel.features.screening import screen_images
from fewlabel.params import FeaturesParams
from fewlabel.features.runtimes import RuntimeChoice, choose_runtime, load_extractor

# Keras and TensorFlow (seconds of start-up) are imported only where a model is built or run,
# so a run whose every vector is cached never starts them.

CACHE_FORMAT = 2
# The most images the engine hands one worker at a time (fewer when there are few images, so
# that every worker gets some): enough to amortise tracing the model graph for each chunk.
ENGINE_CHUNK_IMAGES = 256


#: The code that turns an image file into features, (module, top-level names) whose source the
#: cache key hashes: decode, resize, views, model (plus, for a keras-hub backbone, its builder and
#: whole modules: None). Read from the files, so a cached run imports none of it (TensorFlow).
FEATURE_CODE = (("fewlabel.features.views", ("decode_image", "resize_image", "_all_resizes", "ViewRunner")),
                ("fewlabel.features.keras_models", ("build_extractor", "_Preprocess", "_pool")))
HUB_FEATURE_CODE = (("fewlabel.features.keras_models", None), ("fewlabel.features.hub", None))
#: The constant whose repr the key also hashes (``features.resize`` -> TensorFlow's method).
RESIZE_TABLE = ("fewlabel.features.views", "RESIZE_METHODS")


@functools.lru_cache(maxsize=2)
def _feature_code_hash(hub_backbone: bool = False) -> str:
    """Hash of the code that turns an image file into features (:data:`FEATURE_CODE`).

    Part of the cache key, so editing that code cannot silently serve features of the old code.
    Each part is the text ``inspect.getsource`` gives (a test checks that they are equal), read
    from the source file without importing the module.
    """
    parts = FEATURE_CODE + (HUB_FEATURE_CODE if hub_backbone else ())
    source = "".join(source_text(module, name) for module, names in parts for name in (names or (None,)))
    module, constant = RESIZE_TABLE
    source += repr(ast.literal_eval(_top_level(module, constant).value))
    return hashlib.sha1(source.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _module_source(module: str) -> tuple[list[str], ast.Module]:
    """``module``'s source file, as lines and parsed (read once per process, as the hash is)."""
    with open(importlib.util.find_spec(module).origin, encoding="utf-8") as handle:
        lines = handle.readlines()
    return lines, ast.parse("".join(lines))


def _top_level(module: str, name: str) -> ast.AST:
    """The top-level definition or assignment of ``name`` in ``module``'s source file."""
    for node in _module_source(module)[1].body:
        targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if getattr(node, "name", None) == name or name in targets:
            return node
    raise LookupError(f"{module} defines no {name} at its top level")


def source_text(module: str, name: str | None = None) -> str:
    """What ``inspect.getsource`` returns for ``module.name`` (the whole module for None),
    read from the source file, without importing ``module``."""
    lines = _module_source(module)[0]
    if name is None:
        return "".join(lines)
    node = _top_level(module, name)
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "".join(inspect.getblock(lines[start - 1:]))


def extractor_key(backbone: str, weights: str | None) -> dict:
    """What makes a backbone's extractor, at any size: the backbone (a model file by content),
    its weights, the library versions and the code that feeds it."""
    weights_file = _weights_file(weights)  # None for imagenet or null; a missing file: a clear error
    weights_key = {"file_md5": file_md5(weights_file)} if weights_file else (weights or "none")
    if is_model_file(backbone):
        backbone_key = {"keras_file_md5": file_md5(backbone)}
        weights_key = weights_key if isinstance(weights_key, dict) else "stored"
    elif is_hub_backbone(backbone):
        backbone_key = hub_cache_key(backbone)
    else:
        backbone_key = backbone
    return {"cache_format": CACHE_FORMAT, "backbone": backbone_key, "weights": weights_key,
            "keras": installed_version("keras"), "tensorflow": installed_version("tensorflow"),
            "code": _feature_code_hash(is_hub_backbone(backbone))}


def _backbone_label(backbone: str) -> str:
    if is_hub_backbone(backbone):
        return "hub-" + re.sub(r"[^\w.-]", "_", Path(preset_of(backbone)).name)
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
        from fewlabel.features.keras_models import build_extractor, build_hub_extractor

        model, built = (build_hub_extractor if is_hub_backbone(backbone) else build_extractor)(backbone, weights, size)
        if built != size:
            raise PipelineError(f"{backbone}: built at input size {built}, expected {size}")
        return model

    return load_extractor(runtime, build_keras, {**extractor_key(backbone, weights), "size": size},
                          f"{_backbone_label(backbone)}-{size}", batch_size)


def resolve_runtime(params: FeaturesParams) -> RuntimeChoice:
    """``features.runtime`` and ``precision`` as this machine runs them (see fewlabel/features/runtimes.py)."""
    return choose_runtime(params.runtime, params.precision, gpu=bool(_gpus()))


#: Files one of which a GPU TensorFlow can use makes on Linux: NVIDIA's device files (or its
#: loaded driver, before the first CUDA program makes them), AMD ROCm's, WSL's.
GPU_DEVICE_FILES = ("/dev/nvidia*", "/proc/driver/nvidia/gpus/*", "/dev/kfd", "/dev/dxg")


def _gpus() -> list:
    """The GPUs TensorFlow sees; on Linux without any of :data:`GPU_DEVICE_FILES`, none, without
    starting TensorFlow."""
    if sys.platform.startswith("linux") and not any(glob.glob(pattern) for pattern in GPU_DEVICE_FILES):
        return []
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def _device() -> str:
    gpus = _gpus()
    if not gpus:
        return "CPU"
    import tensorflow as tf

    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised
            pass
    return f"GPU x{len(gpus)}"


def _extract_backbone(backbone: str, views: list[View], paths: list[str], digests: list[str],
                      weights: str | None, batch_size: int, progress: bool, runtime: RuntimeChoice,
                      engine: Engine, extractors: Extractors | None = None,
                      on_batch: Callable[[int], None] | None = None) -> tuple[dict, dict, set]:
    """Features of the unique images ``paths`` for each of ``views`` of one backbone.

    Cached vectors are read; the rest are extracted in one pass per group of images that miss
    the same views (each image decoded once for all of them): here, or on the workers of a
    ``ray`` engine, which write the cache themselves. ``extractors`` keeps the built models and
    traced steps for the next call (predict's chunks); without it they are freed. ``on_batch(n)``
    is called after each batch of ``n`` images extracted (predict's progress bar).
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
                        vector = finite_vector(block[row], paths[i], backbone, view)
                        if engine.name == "single":  # the engine's workers wrote it already
                            caches[view].put(digests[i], vector)
                        vectors[view][i] = vector
                done += n
                bar.update(n)
                if on_batch is not None:
                    on_batch(n)
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
                                     engine, on_batch=on_batch)
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
        self.runners: dict[tuple, object] = {}

    def runner(self, views):
        """The traced step of ``views`` (a :class:`fewlabel.features.views.ViewRunner`)."""
        from fewlabel.features.views import ViewRunner

        views = tuple(views)
        if views not in self.runners:
            for size in sorted({v.size for v in views} - set(self.models)):
                self.models[size] = build_size_extractor(self.backbone, self.weights, size, self.runtime,
                                                         self.batch_size)
            self.runners[views] = ViewRunner(self.models, views, self.batch_size)
        return self.runners[views]


class ViewWorker:
    """A worker of :func:`fewlabel.features.engine.map_chunks`: one backbone's ``views`` of chunks of images.

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
        backbone = self.extractors.backbone
        todo = [i for i in range(len(paths)) if any(per_view[i] is None for per_view in vectors)]
        if todo:
            done = 0
            for features in self.extractors.runner(self.views).batches([paths[i] for i in todo]):
                for block, cache, per_view, view in zip(features, self.caches, vectors, self.views):
                    for row, i in enumerate(todo[done:done + len(block)]):
                        per_view[i] = finite_vector(block[row], paths[i], backbone, view)
                        cache.put(digests[i], per_view[i])
                done += len(features[0])
        return {"position": np.asarray(chunk["position"]),
                **{f"view{j}": np.stack(per_view) for j, per_view in enumerate(vectors)}}


def _engine_batches(backbone: str, views: list[View], weights: str | None, batch_size: int,
                    runtime: RuntimeChoice, caches: list[FeatureCache], paths: list[str], digests: list[str], engine: Engine):
    """Like :meth:`fewlabel.features.views.ViewRunner.batches`, on the engine's workers: one list of arrays
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


def view_caches(backbone_views: dict[str, list[View]], weights: str | None,
                runtime: RuntimeChoice) -> list[FeatureCache]:
    """The caches of every (backbone, view) of ``backbone_views``."""
    return [view_cache(backbone, view, weights, runtime) for backbone, views in backbone_views.items()
            for view in views]


def recipe_caches(params: FeaturesParams, recipes: list[Recipe],
                  runtime: RuntimeChoice | None = None) -> list[FeatureCache]:
    """The caches of every (backbone, view) of ``recipes`` run by ``runtime`` (default:
    ``params``' as resolved here): what :func:`extract_features` reads."""
    return view_caches(_backbone_views(recipes), params.weights, runtime or resolve_runtime(params))


def _backbone_views(recipes: list[Recipe]) -> dict[str, list[View]]:
    return {recipe.backbone: recipe.views() for recipe in recipes}


def finite_vector(row, path: str, backbone: str, view: View) -> np.ndarray:
    """One image's feature vector (a copy), or a PipelineError naming the image, backbone and
    view when it holds NaN or inf (a vector like that is never cached nor trained on)."""
    vector = np.array(row)
    if not np.isfinite(vector).all():
        raise PipelineError(f"{path}: its features from backbone {_backbone_label(backbone)}, view {view.label} "
                            f"hold NaN or inf; the model gives non-finite outputs for this image: check that "
                            f"features.weights is an undamaged weights file for this backbone, or try "
                            f"features.runtime: keras (or features.precision: f32), and rerun (nothing of this "
                            f"image was cached)")
    return vector


def extract_views(image_paths, backbone_views: dict[str, list[View]], weights: str | None,
                  batch_size: int = 8, progress: bool = True, runtime: RuntimeChoice = RuntimeChoice(),
                  engine: Engine = Engine(), extractors: dict | None = None,
                  digests: list[str] | None = None, on_batch: Callable[[int], None] | None = None) -> tuple[dict, dict]:
    """Per backbone and view, the features of ``image_paths`` (one row per path, in order),
    run by ``runtime``.

    Images already in the per-image cache are not decoded; identical files are extracted once,
    here or on the ``engine``'s workers. ``extractors`` (backbone -> :class:`Extractors`) keeps
    the built models and traced steps across calls; ``digests`` are the files' content hashes,
    if already known (else the images are checked first: :func:`screen_images`); ``on_batch``
    as :func:`_extract_backbone`, for each backbone.
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
    if digests is None:
        digests = screen_images(paths, view_caches(backbone_views, weights, runtime))
    digests = list(digests)
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
                                                    backbone, Extractors(backbone, weights, batch_size, runtime)),
                                                on_batch)
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
                     extractors: dict | None = None, digests: list[str] | None = None,
                     on_batch: Callable[[int], None] | None = None,
                     runtime: RuntimeChoice | None = None) -> tuple[np.ndarray, dict]:
    """Features of ``image_paths`` (float32, one row per path, backbones concatenated in order).

    ``recipes`` default to :func:`fixed_recipes` of ``params`` (predict passes the ones a
    meta.json records); ``runtime`` to ``params``' as resolved here (featurize passes it
    calibrated for INT8); ``engine``, ``extractors``, ``digests`` and ``on_batch`` as :func:`extract_views`.
    Stats as :func:`extract_views`, plus ``dims`` and ``input_sizes`` (one list of sizes per
    backbone).
    """
    recipes = recipes if recipes is not None else fixed_recipes(params)
    view_features, stats = extract_views(image_paths, _backbone_views(recipes),
                                         params.weights, params.batch_size, progress,
                                         runtime or resolve_runtime(params), engine, extractors, digests, on_batch)
    blocks = [combine_views(recipe, view_features[recipe.backbone]) for recipe in recipes]
    stats.update(dims=[int(b.shape[1]) for b in blocks], input_sizes=[list(r.sizes) for r in recipes])
    features = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    return np.ascontiguousarray(features, dtype=np.float32), stats



"""featurize: frozen CNN features of the train and eval images, with a per-image cache.

    python -m stages.featurize --images data/raw/voc/JPEGImages \
        --train data/subset/train.csv --eval data/subset/eval.csv --out-dir data/features

Writes ``<out-dir>/train.npz`` and ``eval.npz`` (``ids`` in the CSV's order, ``features``
float32 n x d) and ``meta.json`` (backbones, dims, input sizes, weights, speed).

The core, :func:`extract_features`, is shared with the ``predict`` command. Images are read
from their paths by a tf.data pipeline (decode + bilinear resize to float RGB 0..255 in
parallel, batched; prefetched while a GPU computes, decoded in the model's graph between
forward passes on a CPU, see :func:`feature_batches`) and fed to the extractors of
:mod:`stages.backbones`; a tqdm bar on stderr shows images/s and the ETA. Each image's feature
vector is cached per backbone under ``user_cache_dir("features", ...)``, keyed by the
image file's content hash, and written right after its batch: an interrupted run resumes,
and a changed subset only extracts the images not seen before.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import gc
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from stages.backbones import (build_extractor, check_backbone_name, is_model_file,
                              resolve_input_size)
from stages.common import (PipelineError, atomic_path, feature_signature, file_md5,
                           read_csv, run_main, user_cache_dir, write_json)
from stages.params import FeaturesParams, load_params

import keras  # noqa: E402  (after stages.backbones, which quiets TensorFlow's logging)
import tensorflow as tf  # noqa: E402

CACHE_FORMAT = 1
# How pixels reach the model; part of the cache key, so changing it invalidates old features.
PIXELS = "tf.io.decode_image(channels=3) -> tf.image.resize(bilinear) -> float32 RGB 0..255"
IMAGE_EXTENSION = ".jpg"

# Leading bytes of the formats tf.io.decode_image reads (a cheap check before any extraction).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"\xff\x0a",
          b"\x00\x00\x00\x0cJXL \r\n\x87\n")


# ----------------------------------------------------------------------------- input pipeline

def load_image(path, size: int) -> tf.Tensor:
    """One image as the extractors see it: float32 RGB 0..255, bilinear-resized to (size, size)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, (size, size), method="bilinear")
    return tf.cast(image, tf.float32)


def decode_batch(paths: tf.Tensor, size: int) -> tf.Tensor:
    """:func:`load_image` over a 1-D string tensor of paths, in parallel, as one float32 batch."""
    return tf.map_fn(lambda p: load_image(p, size), paths, fn_output_signature=tf.float32,
                     parallel_iterations=64)


def image_dataset(paths: list[str], size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of :func:`load_image`, decoded in parallel and prefetched, in the order of ``paths``."""
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant([str(p) for p in paths], tf.string))
    dataset = dataset.map(lambda p: load_image(p, size), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def feature_batches(model, paths: list[str], size: int, batch_size: int,
                    prefetch: bool | None = None) -> Iterator[np.ndarray]:
    """Yield the features (numpy float32, one row per image) of ``paths``, batch by batch, in order.

    On a GPU, a tf.data pipeline decodes and resizes the next batches on the CPU in parallel
    (prefetch) while the GPU runs the model (XLA-compiled when Keras would compile it, with the
    last batch padded so only one shape is compiled). On a CPU-only machine the model already
    uses every core, and decoding ahead on other threads slows every forward pass (measured
    for EfficientNetB0 on 2 cores: about 0.65x the bare model's speed); there, a tf.data
    pipeline of path batches feeds one graph that decodes the batch in parallel and then runs
    the model (about 0.93x).
    ``prefetch`` forces one or the other (None: by device). The model is traced before this
    returns. A corrupt image raises a PipelineError naming the file.
    """
    paths = [str(p) for p in paths]
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    prefetch = on_gpu if prefetch is None else prefetch
    jit = on_gpu and prefetch and bool(model.jit_compile)
    if prefetch:
        batches = image_dataset(paths, size, batch_size)
        step = tf.function(lambda x: model(x, training=False), jit_compile=jit,
                           input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    else:
        batches = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).batch(batch_size)
        batches = batches.prefetch(1)
        step = tf.function(lambda p: model(decode_batch(p, size), training=False),
                           input_signature=[tf.TensorSpec([None], tf.string)])
    step.get_concrete_function()  # trace now (this function returns once ready), not in batch 1

    def generate():
        iterator, done = iter(batches), 0
        while done < len(paths):
            try:
                batch = next(iterator)
                n = int(batch.shape[0])
                if jit and n < batch_size:  # pad the last batch: one compiled shape only
                    batch = tf.concat([batch, tf.zeros([batch_size - n, size, size, 3])], axis=0)
                features = step(batch).numpy()[:n]
            except tf.errors.OpError as error:
                raise _find_bad_image(paths[done:], size, error) from error
            done += n
            yield np.asarray(features, dtype=np.float32)

    return generate()


def _hash_image(path: str) -> tuple[str | None, str | None]:
    """(sha1 of the file's bytes, problem) for one image; reads it once."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            digest = hashlib.sha1(head)
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None, "image not found"
    except OSError as error:
        return None, f"cannot read the image ({error.strerror or error})"
    if not head:
        return None, "the image file is empty"
    if not (head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        return None, ("not an image (JPEG, PNG, GIF, BMP, WebP or JPEG XL): the file is corrupt or "
                      "was saved wrongly")
    return digest.hexdigest(), None


def hash_images(paths: list[str]) -> list[str]:
    """Content hashes of the images; a PipelineError names the first missing or unreadable one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(_hash_image, paths))
    bad = [(path, problem) for path, (_, problem) in zip(paths, results) if problem]
    if bad:
        more = f" ({len(bad)} images have problems, e.g. {', '.join(p for p, _ in bad[1:4])})" \
            if len(bad) > 1 else ""
        raise PipelineError(f"{bad[0][0]}: {bad[0][1]}{more}; replace or restore the image files "
                            f"(for VOC: dvc repro download), or drop them from the image list")
    return [digest for digest, _ in results]


def _tf_reason(error: Exception) -> str:
    """'Invalid JPEG data or crop window.' out of TensorFlow's '{{function_node ..}} ... [Op:..]'."""
    lines = (getattr(error, "message", None) or str(error)).strip().splitlines()
    text = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", lines[-1] if lines else "").strip()
    return text or type(error).__name__


def _find_bad_image(paths: list[str], size: int, error: Exception) -> PipelineError:
    """The tf.data pipeline failed somewhere in ``paths``: decode them one by one to name the file."""
    for path in paths:
        try:
            load_image(path, size)
        except tf.errors.OpError as cause:
            reason = _tf_reason(cause)
            return PipelineError(f"{path}: cannot decode the image ({reason}); the file is corrupt or "
                                 f"truncated: replace it (for VOC: dvc repro download) and rerun "
                                 f"(features extracted so far are cached)")
    return PipelineError(f"reading the images failed: {error}")


# ----------------------------------------------------------------------------- feature cache

@dataclass(frozen=True)
class BackboneSpec:
    """One backbone as it will run: what it is, at which size, and where its features are cached."""
    name: str
    input_size: int
    key: dict

    @property
    def cache_dir(self) -> Path:
        digest = hashlib.sha1(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        label = Path(self.name).stem if is_model_file(self.name) else self.name
        label = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
        flip = "-flip" if self.key["flip_tta"] else ""
        return user_cache_dir("features", f"{label}-{self.input_size}{flip}-{digest}")


def _feature_code_hash() -> str:
    """Hash of the code that turns an image file into features (decode, resize, model wrapping).

    Part of the cache key, so editing that code cannot silently serve features of the old code.
    """
    import inspect
    from stages import backbones
    parts = (load_image, decode_batch, backbones.build_extractor, backbones._Preprocess, backbones._Flip,
             backbones._pool)
    return hashlib.sha1("".join(inspect.getsource(part) for part in parts).encode()).hexdigest()[:16]


def backbone_specs(params: FeaturesParams, input_sizes: list[int] | None = None) -> list[BackboneSpec]:
    """Resolve each backbone's input size and cache key (cheap: nothing is built)."""
    if not params.backbones:
        raise PipelineError("features.backbones: is empty; list at least one backbone")
    if input_sizes is not None and len(input_sizes) != len(params.backbones):
        raise ValueError("input_sizes must give one size per backbone")
    if params.weights is None:
        weights_key = "none"
    elif params.weights == "imagenet":
        weights_key = "imagenet"
    else:
        if not Path(params.weights).is_file():
            raise PipelineError(f"features.weights: '{params.weights}' is not 'imagenet', null or an "
                                f"existing weights file; fix the path (relative to the repository root)")
        weights_key = {"file_md5": file_md5(params.weights)}
    specs = []
    for i, name in enumerate(params.backbones):
        check_backbone_name(name)
        size = input_sizes[i] if input_sizes is not None else params.image_size
        size = resolve_input_size(name, size)
        if input_sizes is not None and size != input_sizes[i]:
            raise PipelineError(f"{name}: runs at input size {size}, not {input_sizes[i]}")
        if is_model_file(name):
            backbone_key = {"keras_file_md5": file_md5(name)}
            this_weights = weights_key if isinstance(weights_key, dict) else "stored"
        else:
            backbone_key, this_weights = name, weights_key
        key = {"cache_format": CACHE_FORMAT, "backbone": backbone_key, "weights": this_weights,
               "input_size": size, "flip_tta": bool(params.flip_tta), "keras": keras.__version__,
               "tensorflow": tf.__version__, "pixels": PIXELS, "code": _feature_code_hash()}
        specs.append(BackboneSpec(name=name, input_size=size, key=key))
    return specs


class FeatureCache:
    """One ``.npy`` feature vector per image content hash: ``<dir>/<sha1[:2]>/<sha1>.npy``."""

    def __init__(self, directory: Path, key: dict):
        self.directory = Path(directory)
        key_file = self.directory / "key.json"
        if not key_file.exists():
            write_json(key_file, key)

    def path(self, digest: str) -> Path:
        return self.directory / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        path = self.path(digest)
        if not path.exists():
            return None
        try:
            vector = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # damaged entry: extract again
        if vector.ndim != 1 or vector.dtype != np.float32 or vector.size == 0:
            return None
        return vector

    def put(self, digest: str, vector: np.ndarray) -> None:
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.ascontiguousarray(vector, dtype=np.float32))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


# ----------------------------------------------------------------------------- extraction

def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised
            pass
    return f"GPU x{len(gpus)}" if gpus else "CPU"


def _run_backbone(spec: BackboneSpec, paths: list[str], digests: list[str], params: FeaturesParams,
                  progress: bool) -> tuple[np.ndarray, dict, list[int]]:
    """Features of the unique images ``paths`` for one backbone: from the cache, else extracted.

    Returns (features, info, the rows that were extracted rather than read from the cache).
    """
    cache = FeatureCache(spec.cache_dir, spec.key)
    vectors: list[np.ndarray | None] = [cache.get(d) for d in digests]
    dims = {v.size for v in vectors if v is not None}
    if len(dims) > 1:  # a damaged cache: trust nothing in it
        vectors = [None] * len(vectors)
    todo = [i for i, v in enumerate(vectors) if v is None]
    info = {"name": spec.name, "input_size": spec.input_size, "dim": dims.pop() if len(dims) == 1 else None,
            "n_extracted": len(todo), "n_cached": len(paths) - len(todo), "build_seconds": 0.0,
            "extract_seconds": 0.0, "images_per_second": None, "steady_images_per_second": None,
            "cache_dir": str(cache.directory)}
    label = f"{Path(spec.name).name}@{spec.input_size}"
    if progress:
        print(f"featurize: {label}: {len(todo)} to extract, {info['n_cached']} from cache "
              f"({cache.directory})", file=sys.stderr, flush=True)
    if not todo:
        return np.stack(vectors).astype(np.float32, copy=False), info, []

    start = time.perf_counter()
    model, size = build_extractor(spec.name, params.weights, spec.input_size, flip_tta=params.flip_tta)
    if size != spec.input_size:
        raise PipelineError(f"{spec.name}: built at input size {size}, expected {spec.input_size}")
    dim = int(model.output_shape[-1])
    if info["dim"] is not None and info["dim"] != dim:  # cached vectors from another model: redo all
        vectors, todo = [None] * len(paths), list(range(len(paths)))
        info.update(n_extracted=len(todo), n_cached=0)
    info["dim"] = dim
    batches = feature_batches(model, [paths[i] for i in todo], size, params.batch_size)
    info["build_seconds"] = time.perf_counter() - start
    done, first_batch_at = 0, None
    start = time.perf_counter()
    with _ProgressBar(len(todo), label, progress) as bar:
        for features in batches:
            n = len(features)
            for row, i in enumerate(todo[done:done + n]):
                vector = np.array(features[row])
                cache.put(digests[i], vector)
                vectors[i] = vector
            done += n
            bar.update(n)
            if first_batch_at is None:
                first_batch_at = (time.perf_counter(), done)
    elapsed = time.perf_counter() - start
    info["extract_seconds"] = elapsed
    info["images_per_second"] = len(todo) / elapsed if elapsed > 0 else None
    steady_time, steady_n = time.perf_counter() - first_batch_at[0], len(todo) - first_batch_at[1]
    info["steady_images_per_second"] = steady_n / steady_time if steady_n and steady_time > 0 \
        else info["images_per_second"]
    del model, batches
    gc.collect()  # let the next backbone have the memory
    return np.stack(vectors).astype(np.float32, copy=False), info, todo


class _ProgressBar:
    """tqdm on stderr with images/s and ETA (or nothing)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr, smoothing=0.1,
                            dynamic_ncols=True)

    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def extract_features(image_paths, features_params: FeaturesParams, progress: bool = True,
                     input_sizes: list[int] | None = None) -> tuple[np.ndarray, dict]:
    """Features of ``image_paths`` (float32, one row per path, backbones concatenated in order).

    Images already in the per-image cache are not decoded; identical files are extracted once.
    ``input_sizes`` (one per backbone) overrides ``features_params.image_size``, e.g. to
    reproduce a meta.json's sizes. Returns ``(features, stats)``; stats has ``n_images``,
    ``n_unique``, ``n_extracted`` (unique images that some backbone had to extract),
    ``n_cached`` (unique images served entirely from the cache), ``images_per_second`` (of the
    extraction, None if nothing was extracted), ``dims``, ``input_sizes``, ``device``,
    ``seconds`` and ``per_backbone`` (the same per backbone, plus its cache directory).
    """
    began = time.perf_counter()
    paths = [str(p) for p in image_paths]
    if not paths:
        raise PipelineError("no images to extract features from")
    specs = backbone_specs(features_params, input_sizes)
    device = _device()

    digests = hash_images(paths)
    unique: dict[str, int] = {}
    for digest in digests:
        unique.setdefault(digest, len(unique))
    unique_digests = list(unique)
    first_path = {}
    for path, digest in zip(paths, digests):
        first_path.setdefault(digest, path)
    unique_paths = [first_path[d] for d in unique_digests]
    hash_seconds = time.perf_counter() - began

    blocks, per_backbone, extracted = [], [], set()
    for spec in specs:
        block, info, rows = _run_backbone(spec, unique_paths, unique_digests, features_params, progress)
        blocks.append(block)
        per_backbone.append(info)
        extracted.update(rows)
    features = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    features = features[np.array([unique[d] for d in digests])]

    extract_seconds = sum(info["extract_seconds"] for info in per_backbone)
    n_extracted = len(extracted)
    stats = {
        "n_images": len(paths), "n_unique": len(unique_paths),
        "n_extracted": n_extracted, "n_cached": len(unique_paths) - n_extracted,
        "images_per_second": n_extracted / extract_seconds if n_extracted and extract_seconds else None,
        "dims": [info["dim"] for info in per_backbone],
        "input_sizes": [info["input_size"] for info in per_backbone],
        "device": device, "hash_seconds": hash_seconds,
        "seconds": time.perf_counter() - began, "per_backbone": per_backbone,
    }
    return np.ascontiguousarray(features, dtype=np.float32), stats


# ----------------------------------------------------------------------------- the stage

def features_params_from_meta(meta: dict) -> tuple[FeaturesParams, list[int]]:
    """The FeaturesParams and per-backbone input sizes that reproduce a meta.json's features:
    ``params, sizes = features_params_from_meta(meta); extract_features(paths, params, input_sizes=sizes)``.
    """
    signature = feature_signature(meta)
    if not signature["backbones"] or "weights" not in meta or \
            len(signature["backbones"]) != len(signature["input_sizes"] or ()):
        raise PipelineError("meta.json: lacks backbones, input_sizes or weights, or they disagree; "
                            "rerun the featurize stage (dvc repro featurize)")
    sizes = [int(s) for s in signature["input_sizes"]]
    params = FeaturesParams(backbones=tuple(signature["backbones"]), weights=signature["weights"],
                            image_size=sizes[0] if len(set(sizes)) == 1 else None,
                            flip_tta=bool(signature["flip_tta"]))
    return params, sizes


def build_meta(params: FeaturesParams, stats: dict) -> dict:
    """meta.json: what the features are (the signature of :func:`stages.common.feature_signature`
    plus versions), and nothing about this run, so an identical rerun leaves it byte-identical
    and DVC does not retrain for nothing."""
    return {
        "backbones": list(params.backbones),
        "dims": stats["dims"],
        "total_dim": int(sum(stats["dims"])),
        "input_sizes": stats["input_sizes"],
        "weights": params.weights,
        "flip_tta": bool(params.flip_tta),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "pixels": PIXELS,
    }


def build_run_stats(params: FeaturesParams, stats: dict, n_train: int, n_eval: int) -> dict:
    """metrics/featurize.json: how this run went (device, speed, cache use), for dvc metrics show."""
    return {
        "device": stats["device"],
        "batch_size": params.batch_size,
        "n_train": n_train,
        "n_eval": n_eval,
        "n_extracted": stats["n_extracted"],
        "n_cached": stats["n_cached"],
        "images_per_second": _round(stats["images_per_second"]),
        "per_backbone": {i["name"]: {"input_size": i["input_size"], "dim": i["dim"],
                                     "n_extracted": i["n_extracted"], "n_cached": i["n_cached"],
                                     "images_per_second": _round(i["images_per_second"])}
                         for i in stats["per_backbone"]},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def subset_image_paths(images_dir: Path, csv_path: Path) -> tuple[np.ndarray, list[str]]:
    """(image ids in CSV order, their JPEG paths ``<images>/<id>.jpg``), checking they exist."""
    frame = read_csv(csv_path, required=["image_id"])
    if frame["image_id"].isna().any():
        raise PipelineError(f"{csv_path}: has rows without an image_id; rerun the subset stage")
    ids = frame["image_id"].astype(str).to_numpy(dtype=str)
    if len(ids) == 0:
        raise PipelineError(f"{csv_path}: lists no images; rerun the subset stage")
    paths = [str(images_dir / f"{image_id}{IMAGE_EXTENSION}") for image_id in ids]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" ({len(missing)} of its {len(paths)} images are missing)" if len(missing) > 1 else ""
        raise PipelineError(f"{missing[0]}: image not found, listed in {csv_path}{more}; check --images "
                            f"or restore the dataset (dvc repro download)")
    return ids, paths


def write_features(path: Path, ids: np.ndarray, features: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, ids=np.asarray(ids, dtype=str), features=np.asarray(features, dtype=np.float32))


def featurize(images_dir, train_csv, eval_csv, out_dir, params: FeaturesParams,
              progress: bool = True) -> tuple[dict, dict]:
    """Extract the train and eval subsets' features into ``out_dir``.

    Returns (the meta written to ``meta.json``, this run's stats)."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise PipelineError(f"{images_dir}: image folder not found; run the download stage "
                            f"(dvc repro download) or fix --images")
    train_ids, train_paths = subset_image_paths(images_dir, Path(train_csv))
    eval_ids, eval_paths = subset_image_paths(images_dir, Path(eval_csv))
    features, stats = extract_features(train_paths + eval_paths, params, progress=progress)
    n_train = len(train_paths)
    write_features(out_dir / "train.npz", train_ids, features[:n_train])
    write_features(out_dir / "eval.npz", eval_ids, features[n_train:])
    meta = build_meta(params, stats)
    write_json(out_dir / "meta.json", meta)
    return meta, build_run_stats(params, stats, n_train=n_train, n_eval=len(eval_paths))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of <image_id>.jpg files")
    parser.add_argument("--train", required=True, help="train subset CSV (image_id column)")
    parser.add_argument("--eval", required=True, help="eval subset CSV (image_id column)")
    parser.add_argument("--out-dir", required=True, help="where train.npz, eval.npz, meta.json go")
    parser.add_argument("--stats-out", required=True, help="this run's speed and cache use (JSON)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params).features
    meta, run = featurize(args.images, args.train, args.eval, args.out_dir, params)
    write_json(args.stats_out, run)
    speed = f"{run['images_per_second']:.1f} images/s" if run["images_per_second"] else "all cached"
    print(f"featurize: {run['n_train']} train + {run['n_eval']} eval images -> {args.out_dir} "
          f"({' + '.join(meta['backbones'])}, {meta['total_dim']} dims; {run['n_extracted']} extracted, "
          f"{run['n_cached']} from cache; {speed}; {run['device']})")


if __name__ == "__main__":
    run_main(main)

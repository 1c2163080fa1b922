"""Benchmark the featurize stage's extraction against raw Keras float32 ``model.predict``.

    python bench/featurize.py --json                                   # B0 at 224, runtime auto
    python bench/featurize.py --backbone EfficientNetB6 --n-images 16 --batch-size 4 --json
    python bench/featurize.py --image-size 224 352 --flip --json       # flip + two sizes
    python bench/featurize.py --runtime keras --naive                  # also a naive PIL loop
    python bench/featurize.py --image-size 64 --n-images 5000 --repeats 1 --json   # peak RSS

Generates VOC-like JPEGs (about 500x375, smooth random content plus noise), then measures,
in one run on the same images and views (input sizes, mirror):

- the stage: ``fewlabel.features.extract.extract_features`` on the JPEG files with an empty feature
  cache and ``features.runtime`` = ``--runtime``; images/s after its first batch (one-time
  graph set-up; the converted model is built once, outside the timing);
- raw Keras float32: ``model.predict`` on each view's pixels, decoded and resized beforehand
  (outside the timing), in chunks so memory does not grow with ``--n-images``;
- how close the stage's features are to Keras float32's (views combined as the stage does);
- optionally (``--naive``) a naive loop: PIL open, resize, ``predict`` one image at a time.

Each of ``--repeats`` repeats times the stage, then the raw model (so each pair sees about
the same load on a shared machine); speeds are the medians, ``ratio`` the median of the
repeats' stage/raw ratios. ``--json`` prints one JSON object on stdout
(``stage_images_per_second``, ``raw_keras_fp32_images_per_second``, ``ratio``, ``runtime``,
``precision``, ``min_cosine_to_keras_fp32``, ``peak_rss_gb``, ...) and the progress on stderr. Weights are random (null) by default, since ImageNet weights
need a download; speed does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

RAW_CHUNK = 64  # images decoded at once for the raw Keras run


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n JPEGs of about 500x375 with photo-like statistics (smooth blobs, edges, noise)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        width, height = (500, 375) if i % 4 else (375, 500)
        coarse = rng.uniform(0, 255, (height // 25 + 2, width // 25 + 2, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
        image += rng.normal(0, 12, image.shape)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def min_cosine(a: np.ndarray, b: np.ndarray, rows: int = 256) -> float:
    """The smallest cosine similarity between matching rows of ``a`` and ``b`` (in float64,
    a few rows at a time so that the check does not add to the peak memory it reports)."""
    lowest = 1.0
    for start in range(0, len(a), rows):
        x, y = np.asarray(a[start:start + rows], np.float64), np.asarray(b[start:start + rows], np.float64)
        cosines = np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        lowest = min(lowest, float(cosines.min()))
    return lowest


def time_stage(paths: list[str], params, cache: Path):
    """(features, steady images/s, stats) of the stage with an empty feature cache; converted
    models stay cached in ``cache`` across calls, as they do across runs."""
    from fewlabel.features.extract import extract_features
    os.environ["FEWLABEL_CACHE_DIR"] = str(cache)
    shutil.rmtree(cache / "features", ignore_errors=True)
    features, stats = extract_features(paths, params, progress=False)
    return features, stats["per_backbone"][0]["steady_images_per_second"], stats


def keras_models(recipe, weights, batch_size: int) -> dict:
    """One float32 Keras extractor per input size of ``recipe``, warmed up (graph built)."""
    from fewlabel.features.keras_models import build_extractor
    models = {size: build_extractor(recipe.backbone, weights, size)[0] for size in recipe.sizes}
    for size, model in models.items():
        model.predict(np.zeros((batch_size, size, size, 3), np.float32), batch_size=batch_size, verbose=0)
    return models


def time_raw_keras(paths: list[str], recipe, models: dict, batch_size: int):
    """(features combined as the stage combines its views, images/s) of Keras float32
    ``model.predict`` on the recipe's views; decoding and resizing are not timed."""
    from fewlabel.features.recipes import combine_views
    from fewlabel.features.views import load_image
    seconds, blocks = 0.0, {}
    for start in range(0, len(paths), RAW_CHUNK):
        chunk = paths[start:start + RAW_CHUNK]
        pixels = {size: np.stack([load_image(p, size, recipe.resize).numpy() for p in chunk])
                  for size in recipe.sizes}
        for view in recipe.views():
            batch = np.ascontiguousarray(pixels[view.size][:, :, ::-1]) if view.mirrored else pixels[view.size]
            began = time.perf_counter()
            output = models[view.size].predict(batch, batch_size=batch_size, verbose=0)
            seconds += time.perf_counter() - began
            block = blocks.setdefault(view, np.empty((len(paths), output.shape[1]), np.float32))
            block[start:start + len(chunk)] = output
    return combine_views(recipe, blocks), len(paths) / seconds


def time_naive(paths: list[str], model, size: int) -> float:
    """Images/s of PIL open + resize + ``predict`` one image at a time (one view)."""
    def naive_one(path):
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        return model.predict(np.asarray(image, np.float32)[None], verbose=0)

    naive_one(paths[0])
    began = time.perf_counter()
    for path in paths:
        naive_one(path)
    return len(paths) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="EfficientNetB0")
    parser.add_argument("--image-size", type=int, nargs="+", default=None,
                        help="one or more input sizes (default: the backbone's own)")
    parser.add_argument("--flip", action="store_true", help="add each size's mirror view (features.flip_tta)")
    parser.add_argument("--runtime", default="auto", help="features.runtime of the stage (default auto)")
    parser.add_argument("--precision", default="auto", help="features.precision of the stage")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--weights", default=None, help="default null (random init: no internet needed)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed (stage, raw) pairs; medians are reported")
    parser.add_argument("--naive", action="store_true", help="also time a naive PIL loop (first size)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print

    work = Path(tempfile.mkdtemp(prefix="bench-featurize-"))
    try:
        paths = make_jpegs(work, args.n_images)
        import keras
        import tensorflow as tf
        from fewlabel.features.backbones import default_input_size
        from fewlabel.features.recipes import fixed_recipes
        from fewlabel.params import parse_params

        sizes = args.image_size or [default_input_size(args.backbone)]
        features_section = {"backbones": [args.backbone], "weights": args.weights, "batch_size": args.batch_size,
                            "image_size": sizes if len(sizes) > 1 else sizes[0], "flip_tta": args.flip,
                            "runtime": args.runtime, "precision": args.precision}
        params = parse_params({"features": features_section}, source="bench/featurize.py").features
        recipe = fixed_recipes(params)[0]
        say(f"{recipe.label}, batch {args.batch_size}, {args.n_images} JPEGs (~500x375); runtime {args.runtime}; "
            f"keras {keras.__version__}, tensorflow {tf.__version__}, {os.cpu_count()} CPUs, "
            f"GPUs: {len(tf.config.list_physical_devices('GPU'))}; weights {args.weights or 'null (random init)'}")

        models = keras_models(recipe, args.weights, args.batch_size)
        stage, raw = [], []
        for repeat in range(args.repeats):  # alternated: each pair sees about the same load
            stage_features = raw_features = None  # the previous repeat's: not held during this one
            stage_features, speed, stats = time_stage(paths, params, work / "cache")
            stage.append(speed)
            runtime = stats["runtime"]
            say(f"stage ({runtime.label}{'; ' + runtime.note if runtime.note else ''}): {speed:.2f} img/s "
                f"after its first batch; peak RSS {peak_rss_gb():.2f} GB")
            raw_features, speed = time_raw_keras(paths, recipe, models, args.batch_size)
            raw.append(speed)
            say(f"raw Keras float32 model.predict on the same views (decode not timed): {speed:.2f} img/s")
        ratios = [s / r for s, r in zip(stage, raw)]
        result = {"stage_images_per_second": round(float(np.median(stage)), 3),
                  "raw_keras_fp32_images_per_second": round(float(np.median(raw)), 3),
                  "ratio": round(float(np.median(ratios)), 3), "ratio_per_repeat": [round(r, 3) for r in ratios],
                  "runtime": runtime.runtime, "precision": runtime.precision,
                  "runtime_requested": args.runtime, "runtime_note": runtime.note,
                  "min_cosine_to_keras_fp32": round(min_cosine(stage_features, raw_features), 6),
                  "peak_rss_gb": round(peak_rss_gb(), 3), "backbone": args.backbone, "sizes": sizes,
                  "flip": args.flip, "n_images": args.n_images, "batch_size": args.batch_size,
                  "repeats": args.repeats, "cpus": os.cpu_count()}
        if args.naive:
            result["naive_images_per_second"] = round(time_naive(paths, models[sizes[0]], sizes[0]), 3)
            say(f"naive loop (PIL, one image per predict, {sizes[0]} px): {result['naive_images_per_second']:.2f} img/s")
        result["peak_rss_gb"] = round(peak_rss_gb(), 3)
        if args.json:
            print(json.dumps(result))
        else:
            say(f"ratio stage/raw = {result['ratio']:.2f}; min cosine to Keras float32 "
                f"{result['min_cosine_to_keras_fp32']:.6f}; peak RSS {result['peak_rss_gb']:.2f} GB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark the featurize stage's extraction against the raw model and a naive loop.

    python bench/featurize.py --backbone EfficientNetB0 --image-size 224 --n-images 64
    python bench/featurize.py --backbone EfficientNetB6 --image-size 528 --n-images 16 --batch-size 8

Generates VOC-like JPEGs (about 500x375, smooth random content plus noise), then measures
images/s of (a) ``stages.featurize.extract_features`` on the JPEG files with an empty cache,
(b) ``model.predict`` on random tensors already at the model's input size (no decoding),
(b') the bare compiled forward pass over ready tensor batches (the ceiling), (c) a naive loop
(PIL open, resize, ``predict`` one image at a time). (a) and (b) are best of ``--repeats``
(shared machines are noisy); the stage's figure excludes its first batch (one-time graph
optimisation), as (b) is measured after a warm-up call. Peak RSS is the process's so far.
Weights are random (null) by default, since ImageNet weights need a download; speed does not
depend on the weights' values.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="EfficientNetB0")
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's own")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--weights", default=None, help="default null (random init: no internet needed)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed repeats of (a) and (b); the best is kept (shared machines are noisy)")
    parser.add_argument("--naive-images", type=int, default=None,
                        help="images for the naive loop (default: all)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-featurize-"))
    paths = make_jpegs(work, args.n_images)
    mean_kib = np.mean([os.path.getsize(p) for p in paths]) / 1024

    import keras
    import tensorflow as tf
    from stages.backbones import build_extractor, default_input_size
    from stages.featurize import extract_features
    from stages.params import FeaturesParams

    size = args.image_size or default_input_size(args.backbone)
    print(f"backbone {args.backbone} at {size}x{size}, batch {args.batch_size}, {args.n_images} JPEGs "
          f"(~500x375, {mean_kib:.0f} KiB each); weights: {args.weights or 'null (random init: ImageNet weights cannot be downloaded here; speed is the same)'}")
    print(f"keras {keras.__version__}, tensorflow {tf.__version__}, "
          f"{os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    print(f"peak RSS before any model: {peak_rss_mib():.0f} MiB")

    # (a) the stage's extraction function, empty cache
    params = FeaturesParams(backbones=(args.backbone,), weights=args.weights, image_size=size,
                            batch_size=args.batch_size, flip_tta=False)
    best = None
    for repeat in range(args.repeats):
        os.environ["FEWLABEL_CACHE_DIR"] = str(work / f"cache{repeat}")  # empty: all extracted
        began = time.perf_counter()
        features, stats = extract_features(paths, params, progress=False)
        wall = time.perf_counter() - began
        if best is None or stats["per_backbone"][0]["steady_images_per_second"] > \
                best[1]["per_backbone"][0]["steady_images_per_second"]:
            best = (features, stats, wall)
    features, stats, wall = best
    info = stats["per_backbone"][0]
    stage = info["steady_images_per_second"]
    print(f"(a) stage extract_features (best of {args.repeats}, fresh cache each): {stage:.2f} img/s "
          f"after the first batch, {stats['images_per_second']:.2f} img/s over the whole extraction "
          f"loop (incl. first batch); end to end (hash + build + extract) {args.n_images / wall:.2f} "
          f"img/s in {wall:.1f}s (build {info['build_seconds']:.1f}s); features {features.shape}, "
          f"n_extracted {stats['n_extracted']}")
    print(f"    peak RSS after (a): {peak_rss_mib():.0f} MiB")

    # (b) raw model.predict on random tensors of the same shape (warm: one call first)
    model, _ = build_extractor(args.backbone, args.weights, size)
    x = np.random.default_rng(1).uniform(0, 255, (args.n_images, size, size, 3)).astype(np.float32)
    model.predict(x[:args.batch_size], batch_size=args.batch_size, verbose=0)
    raw = 0.0
    for _ in range(args.repeats):
        began = time.perf_counter()
        model.predict(x, batch_size=args.batch_size, verbose=0)
        raw = max(raw, args.n_images / (time.perf_counter() - began))
    print(f"(b) raw model.predict on tensors (best of {args.repeats}): {raw:.2f} img/s")
    # (b') the bare compiled forward pass on ready tensors: the ceiling, no input pipeline at all
    forward = tf.function(lambda t: model(t, training=False),
                          input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    batches = [tf.constant(x[i:i + args.batch_size]) for i in range(0, args.n_images, args.batch_size)]
    forward(batches[0]).numpy()
    bare = 0.0
    for _ in range(args.repeats):
        began = time.perf_counter()
        for batch in batches:
            forward(batch).numpy()
        bare = max(bare, args.n_images / (time.perf_counter() - began))
    del x, batches
    print(f"(b') bare compiled forward pass on tensors (best of {args.repeats}): {bare:.2f} img/s")
    print(f"    peak RSS after (b): {peak_rss_mib():.0f} MiB")

    # (c) naive: PIL open + resize + predict one image at a time (warm: one call first)
    naive_paths = paths[:args.naive_images] if args.naive_images else paths

    def naive_one(path):
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        return model.predict(np.asarray(image, np.float32)[None], verbose=0)

    naive_one(naive_paths[0])
    began = time.perf_counter()
    for path in naive_paths:
        naive_one(path)
    naive = len(naive_paths) / (time.perf_counter() - began)
    print(f"(c) naive loop (PIL, one image per predict): {naive:.2f} img/s")
    print(f"    peak RSS after (c): {peak_rss_mib():.0f} MiB")

    print(f"ratios: stage/raw = {stage / raw:.2f} (whole loop incl. first batch: "
          f"{stats['images_per_second'] / raw:.2f}), stage/bare forward = {stage / bare:.2f}, "
          f"stage/naive = {stage / naive:.2f}")


if __name__ == "__main__":
    main()

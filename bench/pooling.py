"""Issue 22 phase 1: what makes the frozen features stronger (pooling, sizes, backbone ensembles).

    python bench/pooling.py extract --jobs lite0@352 lite2@384 ...   # feature maps -> pooled npz cache
    python bench/pooling.py check --job lite0@352                       # bench avg == product feature
    python bench/pooling.py speed --jobs lite0@352 lite2@384 --images 48   # product's extraction img/s
    python bench/pooling.py evaluate --draws 5                          # table + bench/results/pooling.json

Extraction. Per (backbone, size) each image's 1280-channel feature map is computed ONCE for the
image and once for its mirror, through the product's own pixel path (``fewlabel.features.views.ViewRunner``:
``decode_image`` + ``resize_image``, bilinear, the mirror reversed along the width), with the
devdata ``.keras`` model's feature-map output (the product global-average-pools that same
output). Every pooling is computed from that map; the image's and the mirror's pooled vectors
are averaged (as the product's flip does). Cached per job in
``bench/results/pooling_cache/<backbone>@<size>.npz`` (git-ignored).

Poolings (F: the h x w x c map; regions: the 2x2 grid of overlapping halves
``[0, ceil(h/2))`` and ``[floor(h/2), h)``, so that the grid is mirror-symmetric):
- ``avg``: mean_hw F (the product today)
- ``max``: max_hw F
- ``gem3`` (also gem05 (p = 0.5), gem2, gem4): (mean_hw max(F, 1e-6)^p)^(1/p)
- ``avgmax_cat``: [avg, max]; ``avgmax_sum``: avg + max
- ``reg_mean``: (avg + sum of the 4 region averages) / 5; ``reg_cat``: [avg, r1, r2, r3, r4]

Evaluation follows bench/quality.py: the pool is devdata's train.txt (2,334 photos); draw d
(0..k-1) takes 750 training images with the product's stratified draw (subset.seed = d) and
scores the other 1,584 with the default classifier of params.yaml built by
``fewlabel.model.svm.build_model`` (signed sqrt, RBF with median gamma, C 1, libsvm probabilities);
mAP / VOC07 mAP / P@1 by ``fewlabel.metrics``.
Ensembles of backbones: ``concat`` (plain concatenation, one model), ``l2cat`` (per block
signed sqrt then L2 normalised, concatenated; then the model as usual, whose sqrt scaler is
then applied a second time -- see ``--help``), ``kmean`` (the mean of the per-block RBF kernels, each
block with the product's scaler and its own median gamma, then the product's per-class
``SVC(kernel='precomputed')``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DEVDATA = REPO_ROOT.parent / "shared" / "devdata"
VOC = DEVDATA / "VOCdevkit" / "VOC2007"
WEIGHTS = {f"lite{i}": DEVDATA / "weights" / f"efficientnet_lite{i}_imagenet.keras" for i in range(3)}
RESULTS = REPO_ROOT / "bench" / "results"
CACHE = RESULTS / "pooling_cache"
GEM_EPS = 1e-6
POOLINGS = ("avg", "max", "gem05", "gem2", "gem3", "gem4", "avgmax_cat", "avgmax_sum", "reg_mean", "reg_cat")


# --------------------------------------------------------------------------- pooling

def halves(n: int) -> list[slice]:
    """Two overlapping halves of n cells: [0, ceil(n/2)) and [floor(n/2), n)."""
    return [slice(0, (n + 1) // 2), slice(n // 2, n)]


def pool_maps(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Stored poolings of a batch of maps (b, h, w, c), float32: avg, max, gem2/3/4, regions (b, 4, c)."""
    maps = np.asarray(maps, dtype=np.float32)
    b, h, w, c = maps.shape
    clamped = np.maximum(maps, GEM_EPS).astype(np.float64)
    out = {"avg": maps.mean(axis=(1, 2)), "max": maps.max(axis=(1, 2))}
    for p in (0.5, 2, 3, 4):
        name = "gem05" if p == 0.5 else f"gem{p}"
        out[name] = (np.mean(clamped ** p, axis=(1, 2)) ** (1.0 / p)).astype(np.float32)
    out["regions"] = np.stack([maps[:, rows, cols].mean(axis=(1, 2)) for rows in halves(h) for cols in halves(w)],
                              axis=1)
    return out


def pooled(stored: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A pooling's (n, d) features from the stored (flip-averaged) poolings."""
    if name in ("avg", "max", "gem05", "gem2", "gem3", "gem4"):
        if name not in stored:
            raise SystemExit(f"pooling {name}: not in this cache (extracted before it was added); extract again")
        return stored[name]
    if name == "avgmax_cat":
        return np.concatenate([stored["avg"], stored["max"]], axis=1)
    if name == "avgmax_sum":
        return stored["avg"] + stored["max"]
    regions = stored["regions"]
    if name == "reg_mean":
        return (stored["avg"] + regions.sum(axis=1)) / 5.0
    if name == "reg_cat":
        return np.concatenate([stored["avg"], regions.reshape(len(regions), -1)], axis=1)
    raise KeyError(name)


# --------------------------------------------------------------------------- extraction

def load_devdata_pool():
    from quality import load_pool
    classes = default_params().data.classes
    return load_pool(VOC, "train", classes)


def default_params():
    from fewlabel.params import load_params
    return load_params(REPO_ROOT / "params.yaml")


def feature_map_model(backbone: str, size: int):
    """The devdata model's feature-map output at input ``size`` (what the product GAP-pools)."""
    import keras
    from fewlabel.features.backbones import _load_model_file
    base = _load_model_file(str(WEIGHTS[backbone]))
    inputs = keras.Input((size, size, 3), name="rgb_0_255")
    model = keras.Model(inputs, base(inputs), name=f"fmap_{backbone}_{size}")
    model.trainable = False
    return model


def job_path(job: str) -> Path:
    return CACHE / f"{job}.npz"


def extract(job: str, paths: list[str], ids: np.ndarray, batch_size: int = 8) -> dict:
    """Pooled, flip-averaged vectors of ``paths`` for ``job`` ('lite1@384'), written to the cache."""
    from fewlabel.features.views import View, ViewRunner
    backbone, size = job.split("@")
    size = int(size)
    model = feature_map_model(backbone, size)
    views = [View(size, "bilinear", False), View(size, "bilinear", True)]
    runner = ViewRunner({size: model}, views, batch_size)
    stored: dict[str, list] = {}
    started, done, first = time.perf_counter(), 0, None
    for features in runner.batches(paths):
        plain, mirror = pool_maps(features[0]), pool_maps(features[1])
        for key in plain:
            stored.setdefault(key, []).append(((plain[key].astype(np.float64) + mirror[key]) / 2).astype(np.float32))
        done += len(features[0])
        if first is None:
            first = (time.perf_counter(), done)
        if done % 400 < batch_size:
            print(f"  {job}: {done}/{len(paths)} ({done / (time.perf_counter() - started):.1f} img/s)",
                  file=sys.stderr, flush=True)
    end = time.perf_counter()
    arrays = {key: np.concatenate(value) for key, value in stored.items()}
    info = {"job": job, "n": len(paths), "seconds": end - started, "images_per_second": len(paths) / (end - started),
            "steady_images_per_second": (done - first[1]) / (end - first[0]), "map_shape": list(features[0].shape[1:]),
            "load_average": os.getloadavg()[0], "batch_size": batch_size}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = job_path(job).with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.asarray(ids, dtype=str), info=json.dumps(info), **arrays)
    os.replace(tmp, job_path(job))
    print(f"{job}: {info['images_per_second']:.2f} img/s (load {info['load_average']:.1f}), map {info['map_shape']}",
          file=sys.stderr, flush=True)
    return info


def speed(jobs: list[str], n_images: int, batch_size: int = 8) -> dict:
    """Images/s of the product's own extraction (``extract_features``: decode, the view and its
    mirror, global average pooling; empty feature cache) per job, on ``n_images`` photos spread
    over the pool, after an 8-image warm-up; the jobs run back to back, so they share the
    machine's load. Merged into bench/results/pooling_speed.json."""
    import tempfile
    from fewlabel.io import CACHE_ENV
    from fewlabel.features.extract import extract_features
    ids, _, paths = load_devdata_pool()
    step = max(1, len(paths) // (n_images + 8))
    sample = paths[::step][:n_images + 8]
    out_path = RESULTS / "pooling_speed.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for job in jobs:
        backbone, size = job.split("@")
        features = replace(default_params().features, backbones=(str(WEIGHTS[backbone]),), image_size=int(size),
                           flip_tta=True, runtime="keras", batch_size=batch_size, engine="single")
        extractors: dict = {}  # the model built and traced once, by the warm-up (as predict's chunks)
        with tempfile.TemporaryDirectory() as empty:
            os.environ[CACHE_ENV] = empty
            extract_features(sample[:8], features, progress=False, extractors=extractors)
            started = time.perf_counter()
            extract_features(sample[8:], features, progress=False, extractors=extractors)
            seconds = time.perf_counter() - started
        results[job] = {"images_per_second": len(sample[8:]) / seconds, "n_images": len(sample[8:]),
                        "load_average": os.getloadavg()[0], "flip": True, "cpu_count": os.cpu_count()}
        print(f"{job}: {results[job]['images_per_second']:.2f} img/s (load {results[job]['load_average']:.1f})",
              file=sys.stderr, flush=True)
        out_path.write_text(json.dumps(results, indent=1))
    return results


def load_job(job: str, ids: np.ndarray) -> tuple[dict, dict]:
    with np.load(job_path(job), allow_pickle=False) as archive:
        if not np.array_equal(archive["ids"].astype(str), np.asarray(ids, dtype=str)):
            raise SystemExit(f"{job_path(job)}: other images; delete it and extract again")
        return {k: archive[k] for k in archive.files if k not in ("ids", "info")}, json.loads(str(archive["info"]))


def check(job: str, n_images: int = 3) -> float:
    """Max abs difference between this bench's avg pooling and the product's feature (flip on,
    the same size) for the first ``n_images`` photos of the pool (empty product cache)."""
    import tempfile
    from fewlabel.io import CACHE_ENV
    from fewlabel.features.extract import extract_features
    ids, _, paths = load_devdata_pool()
    stored, _ = load_job(job, ids)
    backbone, size = job.split("@")
    features = replace(default_params().features, backbones=(str(WEIGHTS[backbone]),), image_size=int(size),
                       flip_tta=True, runtime="keras")
    with tempfile.TemporaryDirectory() as empty:
        os.environ[CACHE_ENV] = empty
        product, _ = extract_features(paths[:n_images], features, progress=False)
    diff = float(np.abs(product - stored["avg"][:n_images]).max())
    print(f"{job}: max |bench avg - product feature| over {n_images} images = {diff:.2e} "
          f"(feature scale: max {float(np.abs(product).max()):.3f})")
    return diff


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["evaluate"]:
        from pooling_eval import main as evaluate_main
        return evaluate_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_extract = sub.add_parser("extract", help="feature maps -> pooled vectors, cached per job")
    p_extract.add_argument("--jobs", nargs="+", required=True, help="backbone@size, e.g. lite0@352")
    p_extract.add_argument("--batch-size", type=int, default=8)
    p_extract.add_argument("--force", action="store_true", help="extract again even when cached")
    p_extract.add_argument("--limit", type=int, help="first N images only (smoke test; not cached)")
    p_check = sub.add_parser("check", help="bench avg pooling == the product's feature")
    p_check.add_argument("--job", default="lite0@352")
    p_check.add_argument("--images", type=int, default=3)
    p_speed = sub.add_parser("speed", help="images/s of the product's extraction per job")
    p_speed.add_argument("--jobs", nargs="+", required=True)
    p_speed.add_argument("--images", type=int, default=48)
    sub.add_parser("evaluate", help="the tables (options: bench/pooling_eval.py)")
    args = parser.parse_args(argv)
    global CACHE
    if args.command == "extract":
        ids, _, paths = load_devdata_pool()
        for job in args.jobs:
            if args.limit:
                CACHE = RESULTS / "pooling_cache_smoke"
                extract(job, paths[:args.limit], ids[:args.limit], args.batch_size)
            elif job_path(job).exists() and not args.force:
                print(f"{job}: cached", file=sys.stderr)
            else:
                extract(job, paths, ids, args.batch_size)
    elif args.command == "speed":
        speed(args.jobs, args.images)
    elif args.command == "check":
        check(args.job, args.images)


if __name__ == "__main__":
    main()

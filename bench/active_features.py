"""Features of every devdata photo for bench/active.py, with the product's featurize code.

    python bench/active_features.py --backbone lite0 --size 352 --runtime auto

Runs ``fewlabel.features.extract.extract_features`` (the per-image, per-view feature cache included) on
all images of ``ImageSets/Main/<split>.txt`` and writes ``bench/results/active_<name>.npz``
(``ids``, VOC-coded ``labels``, ``features``) so the benchmark's many models reuse one array.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DEVDATA = REPO_ROOT.parent / "shared" / "devdata"
WEIGHTS = {name: DEVDATA / "weights" / f"efficientnet_{name}_imagenet.keras" for name in ("lite0", "lite1", "lite2")}


def features_file(backbone: str, size: int, flip: bool, runtime: str) -> Path:
    return REPO_ROOT / "bench" / "results" / f"active_{backbone}_{size}{'_flip' if flip else ''}_{runtime}.npz"


def build(voc: Path, split: str, backbone: str, size: int, flip: bool, runtime: str) -> Path:
    from bench.quality import load_pool
    from fewlabel.features.extract import extract_features
    from fewlabel.params import FeaturesParams, VOC_CLASSES
    ids, labels, paths = load_pool(voc, split, list(VOC_CLASSES))
    params = FeaturesParams(backbones=(str(WEIGHTS[backbone]),), weights="imagenet", image_size=size, flip_tta=flip,
                            runtime=runtime, engine="single")
    started = time.perf_counter()
    features, stats = extract_features(paths, params, progress=False)
    print(f"{len(paths)} images, {features.shape[1]} dims, {stats['n_extracted']} extracted, "
          f"{stats['n_cached']} cached, runtime {stats['runtime']}, {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    out = features_file(backbone, size, flip, runtime)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, ids=ids, labels=labels, features=features)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc", default=str(DEVDATA / "VOCdevkit" / "VOC2007"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--backbone", default="lite0", choices=sorted(WEIGHTS))
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--runtime", default="auto", help="keras | openvino | auto")
    args = parser.parse_args(argv)
    print(build(Path(args.voc), args.split, args.backbone, args.size, not args.no_flip, args.runtime))


if __name__ == "__main__":
    main()

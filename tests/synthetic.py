"""Synthetic features, labels and images shaped like the real pipeline's (for tests and benchmarks).

Writes what subset + featurize would: ``data/subset/{train,eval}.csv``,
``data/features/{train,eval}.npz`` and ``meta.json``, so that train, calibrate and evaluate
can run without images or a CNN; or small generated images and what ``stages.predict``
reads (:func:`write_predict_project`). :func:`tiny_features`: the small feature params tests
extract with. The tests own this module; bench/ imports it too (tests never import bench).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fewlabel.params import VOC_CLASSES, FeaturesParams

# Positives per class in VOC2007 trainval (5,011 images): the real class imbalance.
VOC07_TRAINVAL_POSITIVES = (238, 243, 330, 181, 244, 186, 713, 337, 445, 141, 200, 421, 245, 234,
                            2008, 245, 96, 229, 261, 256)


def tiny_features(**changes) -> FeaturesParams:
    """Feature params small and fast enough for a test: EfficientNetB0 with random weights (no
    download) at 32 pixels, one view, no mirror, batches of 8, the Keras runtime; ``changes``
    override them (a str backbone becomes a one-backbone tuple). Every field a test relies on is
    stated here, so a change of the library's defaults leaves the tests' recipe as it was."""
    values = dict(backbones=("EfficientNetB0",), weights=None, image_size=32, select_scales=((1.0,),),
                  select_max_size=None, flip_tta=False, batch_size=8, runtime="keras")
    values.update(changes)
    if isinstance(values["backbones"], str):
        values["backbones"] = (values["backbones"],)
    return FeaturesParams(**values)


def synthetic_split(n_images: int, dim: int, rng: np.random.Generator, centers: np.ndarray,
                    difficult_rate: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """VOC-coded labels with VOC07 class frequencies and features that carry the labels weakly."""
    frequencies = np.array(VOC07_TRAINVAL_POSITIVES) / 5011
    present = rng.random((n_images, len(frequencies))) < frequencies
    empty = ~present.any(axis=1)
    present[empty, rng.integers(0, len(frequencies), empty.sum())] = True
    labels = np.where(present, 1, -1).astype(np.int8)
    labels[present & (rng.random(present.shape) < difficult_rate)] = 0
    signal = present.astype(np.float32) @ centers
    features = np.maximum(signal + rng.normal(scale=2.0, size=(n_images, dim)), 0).astype(np.float32)
    return labels, features * 0.1


def write_synthetic_inputs(root: Path, n_train: int = 750, n_eval: int = 5000, dim: int = 2304,
                           seed: int = 0, classes=VOC_CLASSES) -> None:
    """Write subset CSVs, feature files and meta.json under ``root/data``."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=0.2, size=(len(classes), dim)).astype(np.float32)
    meta = {"backbones": ["synthetic"], "dims": [dim], "input_sizes": [0], "weights": None,
            "flip_tta": False}
    (root / "data" / "subset").mkdir(parents=True, exist_ok=True)
    (root / "data" / "features").mkdir(parents=True, exist_ok=True)
    for split, n_images, offset in (("train", n_train, 0), ("eval", n_eval, 100000)):
        labels, features = synthetic_split(n_images, dim, rng, centers)
        ids = np.array([f"{offset + i:06d}" for i in range(n_images)])
        table = pd.DataFrame(labels, columns=list(classes))
        table.insert(0, "split", "trainval" if split == "train" else "test")
        table.insert(0, "image_id", ids)
        table.to_csv(root / "data" / "subset" / f"{split}.csv", index=False)
        np.savez(root / "data" / "features" / f"{split}.npz", ids=ids, features=features)
    (root / "data" / "features" / "meta.json").write_text(json.dumps(meta))


def write_images(folder: Path, count: int, seed: int = 0, max_side: int = 48) -> list[str]:
    """``count`` small JPEGs of random pixels and varied shapes (16 to ``max_side`` pixels a side)."""
    from PIL import Image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        height, width = rng.integers(16, max_side, size=2)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=85)
        paths.append(str(path))
    return paths


def write_predict_project(root: Path, backbone: str = "EfficientNetB0", image_size: int = 32,
                          classes=VOC_CLASSES) -> Path:
    """What ``python -m stages.predict`` reads, in ``root``: ``params.yaml`` (engine single),
    ``meta.json`` (``backbone`` with random weights at ``image_size``), ``models/model.joblib``
    (an SVM fitted to random labels of 30 generated images: for plumbing, not for labels) and
    ``models/thresholds.json`` (0.5 and at least one label). Uses the feature cache."""
    from fewlabel.model.rules import DecisionRule
    from fewlabel.artifacts import feature_signature
    from fewlabel.io import file_md5, write_json
    from fewlabel.features.recipes import Recipe, build_meta
    from fewlabel.features.extract import extract_features
    from fewlabel.model.svm import build_model, save_model
    from fewlabel.params import SvmParams

    root = Path(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(json.dumps({"data": {"classes": list(classes)},
                                                  "features": {"engine": "single"}}))
    params = tiny_features(backbones=(backbone,), image_size=image_size, batch_size=16)
    recipes = [Recipe(backbone, (image_size,))]
    features, stats = extract_features(write_images(root / "train-images", 30, seed=12345), params,
                                       progress=False, recipes=recipes)
    meta = build_meta(params, recipes, stats["dims"], stats["runtime"])
    write_json(root / "meta.json", meta)
    targets = (np.random.default_rng(0).random((30, len(classes))) < 0.5).astype(int)
    targets[0], targets[1] = 1, 0
    svm = SvmParams(gamma="scale", scaler="none", approximation="exact", n_jobs=1)
    model = build_model(svm).fit(features, targets)
    save_model(root / "models/model.joblib", model, classes, svm, feature_signature(meta), 30)
    rule = DecisionRule.uniform(len(classes), 0.5, min_labels=1).to_record(classes)
    write_json(root / "models/thresholds.json", {**rule, "model_md5": file_md5(root / "models/model.joblib")})
    return root

"""Recipes: how each backbone turns an image into its feature vector (which views, how they are
joined), the candidates ``image_size: auto`` chooses among, and meta.json, which records them."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.features.backbones import check_backbone_name, fixed_input_size, native_input_size, size_multiple
from fewlabel.features.runtimes import RuntimeChoice
from fewlabel.artifacts import feature_signature
from fewlabel.params import FeaturesParams

#: The distributions that install each package meta.json records the version of (first found wins).
_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly"),
                  "keras": ("keras", "keras-nightly")}


@dataclass(frozen=True, order=True)
class View:
    """One view of an image: ``size`` x ``size`` pixels, resized with ``resize``, maybe mirrored."""
    size: int
    resize: str = "bilinear"
    mirrored: bool = False

    @property
    def label(self) -> str:
        return f"{self.size}-{self.resize}" + ("-mirror" if self.mirrored else "")


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


def scaled_size(native: int, scale: float, multiple: int = 32) -> int:
    """``native * scale`` rounded (half up) to a multiple of ``multiple``, at least one; scale 1
    is ``native``.

    EfficientNets halve their feature map five times: at a multiple of 32 no stride-2 layer
    pads unevenly (on devdata, Lite0 at 336 scored 0.4 mAP below 352). A patch encoder
    (keras-hub) rounds to its patch size instead.
    """
    if scale == 1:
        return int(native)
    return max(multiple, int(native * scale / multiple + 0.5) * multiple)


def _recipe(params: FeaturesParams, backbone: str, sizes) -> Recipe:
    fixed = fixed_input_size(backbone)
    sizes = (fixed,) if fixed else tuple(dict.fromkeys(int(s) for s in sizes))
    return Recipe(backbone, sizes, params.resize, bool(params.flip_tta), params.combine)


def fixed_recipes(params: FeaturesParams) -> list[Recipe]:
    """The recipes of ``features.*`` when ``image_size`` is not ``auto`` (null: native size)."""
    if params.image_size == "auto":
        raise ValueError("image_size 'auto' is resolved by choose_recipes")
    recipes = []
    for backbone, native in zip(_backbones(params), native_sizes(params)):
        size = params.image_size
        sizes = (native,) if size is None else (size if isinstance(size, tuple) else (size,))
        recipes.append(_recipe(params, backbone, sizes))
    return recipes


def candidate_recipes(params: FeaturesParams) -> list[list[Recipe]]:
    """For ``image_size: auto``: one list of recipes (one per backbone) per distinct candidate."""
    candidates = []
    natives = native_sizes(params)
    for scales in params.select_scales:
        candidate = [_recipe(params, b, [scaled_size(native, s, size_multiple(b)) for s in scales])
                     for b, native in zip(_backbones(params), natives)]
        if candidate not in candidates:  # e.g. a fixed-size model makes every scale the same
            candidates.append(candidate)
    return _affordable(candidates, params.select_max_size)


def _affordable(candidates: list[list[Recipe]], max_size: int | None) -> list[list[Recipe]]:
    """The candidates whose views are all at most ``max_size`` pixels a side (None: all); if
    none is, the one with the smallest views. A view's cost grows faster than its pixels
    (EfficientNetB6 at 800 costs 4.7x its 528 view on a 2-core CPU: README, "Measured speed")."""
    def largest(candidate):
        return max(size for recipe in candidate for size in recipe.sizes)

    if max_size is None:
        return candidates
    kept = [c for c in candidates if largest(c) <= max_size]
    return kept or [min(candidates, key=largest)]


def native_sizes(params: FeaturesParams) -> list[int]:
    """Each backbone's native size: ``features.native_sizes`` where it states one, else the
    backbone's known default (a fixed-input model file's own size always wins). Not part of any
    cache key or meta.json: the features depend on it only through the sizes it gives."""
    stated = params.native_sizes or (None,) * len(params.backbones)
    if len(stated) != len(params.backbones):
        raise PipelineError(f"features.native_sizes: {len(stated)} size(s) for {len(params.backbones)} "
                            f"backbone(s); give one per features.backbones entry (null: its default)")
    return [native_input_size(b, n) for b, n in zip(_backbones(params), stated)]


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
    """meta.json: what the features are (the signature of :func:`fewlabel.artifacts.feature_signature`
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
        **({"int8_calibration": runtime.calibration} if runtime.calibration else {}),
        "keras_version": installed_version("keras"),
        "tensorflow_version": installed_version("tensorflow"),
    }


def installed_version(package: str) -> str:
    """``package.__version__`` read from the installed distribution's metadata, so that writing
    meta.json or a cache key does not import TensorFlow (seconds, and its start-up output) for a
    string. A release's metadata version is the same string as its ``__version__``."""
    found = []
    for distribution in _DISTRIBUTIONS[package]:
        try:
            found.append(importlib.metadata.version(distribution))
        except importlib.metadata.PackageNotFoundError:
            continue
    if len(found) == 1:
        return found[0]
    # none (a source build) or several (tensorflow and tensorflow-cpu: which one is imported is
    # not known): ask the package itself
    return importlib.import_module(package).__version__

"""params.yaml, read and validated once into typed objects.

Every error names the key (``svm.C``) and says what is allowed, so a typo in a
``dvc exp run -S`` override fails before any work is done.
"""
from __future__ import annotations

import difflib
import numbers
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from fewlabel.errors import PipelineError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
SCALERS = ("none", "standard", "l2", "sqrt")
# How each class's SVM scores become probabilities (stages/model.py::build_model).
PROBABILITY_METHODS = ("libsvm", "sigmoid", "isotonic")
KERNELS = ("rbf", "linear", "poly", "sigmoid")
GAMMA_WORDS = ("scale", "auto", "median")
# svm.approximation: exact (the n x n kernel), nystroem (m landmarks, memory O(n m)), or auto
# (exact up to svm.max_exact_kernel training images, nystroem past it)
KERNEL_APPROXIMATIONS = ("auto", "exact", "nystroem")
CALIBRATION_METRICS = ("f1", "f2", "f0.5", "mcc", "dice", "jaccard")
CALIBRATION_STRATEGIES = ("per_class", "global", "none", "auto")
COMBINE_METHODS = ("mean", "concat")
RESIZE_METHODS = ("bilinear", "bilinear_antialias", "area", "bicubic")
RUNTIME_CHOICES = ("auto", "keras", "openvino")  # stages/runtimes.py
PRECISION_CHOICES = ("auto", "f32", "bf16", "int8")
# features.engine: where per-image work runs (stages.engine): ray when $RAY_ADDRESS is set, else
# this process (auto); this process only (single); Ray Data, local or a cluster (ray)
ENGINES = ("auto", "single", "ray")


class _Reader:
    """Pulls typed values out of one params section, naming the full key on error."""

    def __init__(self, section: dict, prefix: str, known: tuple[str, ...], source: str):
        if not isinstance(section, dict):
            raise PipelineError(f"{source}: '{prefix}' must be a mapping of keys, got {section!r}")
        unknown = sorted(set(section) - set(known))
        if unknown:
            hints = []
            for key in unknown:
                close = [k for k in known if k.lower() == str(key).lower()] or \
                    difflib.get_close_matches(str(key), known, n=1)
                hints.append(f"{prefix}.{key}" + (f" (did you mean {prefix}.{close[0]}?)" if close else ""))
            raise PipelineError(
                f"{source}: unknown key(s) {', '.join(hints)}; "
                f"'{prefix}' accepts: {', '.join(known)}")
        self.section, self.prefix, self.source = section, prefix, source

    def fail(self, key: str, expected: str, value) -> PipelineError:
        return PipelineError(f"{self.source}: {self.prefix}.{key} must be {expected}, got {value!r}")

    def get(self, key, default):
        return self.section.get(key, default)

    def integer(self, key, default, minimum=None, allow_none=False):
        value = self.get(key, default)
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.fail(key, "an integer" + (" or null" if allow_none else ""), value)
        if minimum is not None and value < minimum:
            raise self.fail(key, f"an integer >= {minimum}", value)
        return int(value)

    def number(self, key, default, positive=False):
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.fail(key, "a number", value)
        if positive and not value > 0:
            raise self.fail(key, "a number > 0", value)
        return float(value)

    def boolean(self, key, default):
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def choice(self, key, default, choices):
        value = self.get(key, default)
        if value is None and None in choices:
            return None
        if not isinstance(value, str) or value not in choices:
            raise self.fail(key, "one of " + ", ".join(str(c) for c in choices), value)
        return value

    def string_list(self, key, default, non_empty=True):
        value = self.get(key, default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "a list of names", value)
        if non_empty and not value:
            raise self.fail(key, "a non-empty list", value)
        if len(set(value)) != len(value):
            raise self.fail(key, "a list without repeats", value)
        return list(value)


def parse_gamma(value, key: str, source: str):
    """A gamma is a positive number or one of 'scale', 'auto', 'median'."""
    if isinstance(value, str) and value in GAMMA_WORDS:
        return value
    if not isinstance(value, bool) and isinstance(value, numbers.Real) and value > 0:
        return float(value)
    raise PipelineError(
        f"{source}: {key} must be a number > 0 or one of {', '.join(GAMMA_WORDS)}, got {value!r}")


@dataclass(frozen=True)
class DataParams:
    year: int = 2007
    source: str | None = None
    md5: dict = field(default_factory=dict)
    classes: tuple = VOC_CLASSES
    train_split: str = "trainval"
    eval_split: str = "test"
    skip_no_objects: bool = False  # leave out images whose annotation has no <object>
    pool_split: str | None = None  # unlabelled images to rank for labelling: an ImageSets/Main list
    pool_images: str | None = None  # ... or a folder or list file of images without annotations


@dataclass(frozen=True)
class SubsetParams:
    n_images: int = 750
    seed: int = 42
    min_per_class: int = 10
    class_quota: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSetParams:
    max_images: int | None = None


@dataclass(frozen=True)
class FeaturesParams:
    """How images become feature vectors (see stages/featurize.py).

    ``image_size``: None (each backbone's native size), ``"auto"`` (chosen among
    ``select_scales`` by cross-validated mAP on the training images), a size in pixels, or
    a tuple of sizes (multi-scale, joined by ``combine``). ``select_scales``: the candidates
    for ``auto``, each a tuple of multiples of the native size. ``native_sizes``: None, or one
    native size (or None: the backbone's default) per backbone; what the features are depends
    on it only through the sizes it gives. ``runtime`` and ``precision``:
    what runs the extractors (see stages/runtimes.py).
    """
    backbones: tuple = ("EfficientNetB6",)
    weights: str | None = "imagenet"
    # each backbone's native input size, parallel to backbones; None (all, or one) = its known
    # default (keras.applications: the family's listed size; a .keras file: its fixed size, or 224)
    native_sizes: tuple | None = None
    image_size: object = None
    select_scales: tuple = ((1.0,),)
    select_max_size: int | None = None  # auto: candidates with a view above this size are not tried
    select_folds: int = 3
    combine: str = "mean"
    resize: str = "bilinear"
    flip_tta: bool = False
    batch_size: int = 8
    runtime: str = "keras"
    precision: str = "auto"
    engine: str = "auto"           # how, not what: auto | single | ray (see stages.engine)
    workers: int | None = None     # ray: workers in the pool (None: one per GPU, else per 4 CPUs)


@dataclass(frozen=True)
class SvmParams:
    kernel: str = "rbf"
    C: float = 1.0
    gamma: object = 0.002
    class_weight: str | None = None
    scaler: str = "none"
    probability: str = "libsvm"
    n_jobs: int = -1
    approximation: str = "exact"   # auto | exact | nystroem (see fewlabel.model.svm.kernel_method)
    max_exact_kernel: int = 5000   # auto: the most training images trained with the exact kernel
    n_components: int = 1500       # nystroem: landmarks m (memory and time O(n m))


@dataclass(frozen=True)
class CalibrateParams:
    folds: int = 5
    metric: str = "f1"
    strategy: str = "auto"
    min_positives: int = 3
    shrinkage: float = 10.0
    min_labels: int = 1
    max_labels: int | None = None


@dataclass(frozen=True)
class TuneParams:
    enabled: bool = False
    C: tuple = (0.1, 1.0, 10.0, 100.0)
    gamma: tuple = ("scale", 0.0005, 0.002, 0.008)
    scaler: tuple = ()
    folds: int = 3


@dataclass(frozen=True)
class EvaluateParams:
    top_k: tuple = (1, 3)
    bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class SuggestParams:
    """Which pool images to label next, and which training labels to check (stages/suggest.py)."""
    strategy: str = "margin_diverse"  # see fewlabel/active/strategies.py (measured: README)
    n: int = 100                    # images suggested per round
    seed: int = 0
    check_score: str = "self_confidence"  # labels to check: see fewlabel/active/label_check.py
    thumbnails: int = 24            # suggestions shown in plots/suggestions.png
    curve_folds: int = 5            # learning curve: cross-validation folds


@dataclass(frozen=True)
class Params:
    data: DataParams
    subset: SubsetParams
    eval: EvalSetParams
    features: FeaturesParams
    svm: SvmParams
    calibrate: CalibrateParams
    tune: TuneParams
    evaluate: EvaluateParams
    suggest: SuggestParams = SuggestParams()


def _section(raw: dict, name: str, cls, source: str) -> _Reader:
    known = tuple(f.name for f in fields(cls))
    return _Reader(raw.get(name) or {}, name, known, source)


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as loaded from YAML) into a :class:`Params`."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: must be a YAML mapping of sections, got {type(raw).__name__}")
    sections = ("data", "subset", "eval", "features", "svm", "calibrate", "tune", "evaluate", "suggest")
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        hints = [f"{name}" + (f" (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
            str(name), sections, n=1)) else "") for name in unknown]
        raise PipelineError(f"{source}: unknown section(s) {', '.join(hints)}; "
                            f"expected: {', '.join(sections)}")

    r = _section(raw, "data", DataParams, source)
    year = r.integer("year", 2007)
    src = r.get("source", None)
    if src is not None and (not isinstance(src, str) or not src.strip()):
        raise r.fail("source", "null, a local folder or a base URL", src)
    md5 = r.get("md5", {}) or {}
    if not isinstance(md5, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 32 for k, v in md5.items()):
        raise r.fail("md5", "a mapping of tarball name to 32-hex-digit md5", md5)
    classes = r.string_list("classes", list(VOC_CLASSES))
    data = DataParams(year=year, source=src, md5=dict(md5), classes=tuple(classes),
                      train_split=r.choice("train_split", "trainval", _any_name(r, "train_split", "trainval")),
                      eval_split=r.choice("eval_split", "test", _any_name(r, "eval_split", "test")),
                      skip_no_objects=r.boolean("skip_no_objects", False),
                      pool_split=_optional_name(r, "pool_split"),
                      pool_images=_optional_name(r, "pool_images"))
    if data.pool_split is not None and data.pool_split == data.eval_split:
        raise r.fail("pool_split", f"null or a list other than data.eval_split ('{data.eval_split}'): images "
                                   f"suggested for labelling join the training set", data.pool_split)
    if data.pool_split is not None and data.pool_images is not None:
        raise r.fail("pool_images", "null when data.pool_split is set (one pool: a split list or a folder)",
                     data.pool_images)
    if data.train_split == data.eval_split:
        raise PipelineError(f"{source}: data.train_split and data.eval_split are both "
                            f"'{data.train_split}'; evaluation must use images not trained on")

    r = _section(raw, "subset", SubsetParams, source)
    quota = r.get("class_quota", {}) or {}
    if not isinstance(quota, dict):
        raise r.fail("class_quota", "a mapping like {person: 150}", quota)
    for name, target in quota.items():
        if name not in classes:
            raise PipelineError(f"{source}: subset.class_quota names '{name}', which is not in "
                                f"data.classes ({', '.join(classes)})")
        if isinstance(target, bool) or not isinstance(target, numbers.Integral) or target < 0:
            raise PipelineError(f"{source}: subset.class_quota.{name} must be an integer >= 0, got {target!r}")
    subset = SubsetParams(n_images=r.integer("n_images", 750, minimum=1),
                          seed=r.integer("seed", 42, minimum=0),
                          min_per_class=r.integer("min_per_class", 10, minimum=0),
                          class_quota={k: int(v) for k, v in quota.items()})

    r = _section(raw, "eval", EvalSetParams, source)
    eval_set = EvalSetParams(max_images=r.integer("max_images", None, minimum=1, allow_none=True))

    r = _section(raw, "features", FeaturesParams, source)
    weights = r.get("weights", "imagenet")
    if weights is not None and (not isinstance(weights, str) or not weights):
        raise r.fail("weights", "imagenet, null or a path to a weights file", weights)
    backbones = tuple(r.string_list("backbones", ["EfficientNetB6"]))
    features = FeaturesParams(backbones=backbones,
                              weights=weights,
                              native_sizes=_native_sizes(r, backbones),
                              image_size=_image_size(r),
                              select_scales=_select_scales(r),
                              select_max_size=r.integer("select_max_size", None, minimum=32, allow_none=True),
                              select_folds=r.integer("select_folds", 3, minimum=2),
                              combine=r.choice("combine", "mean", COMBINE_METHODS),
                              resize=r.choice("resize", "bilinear", RESIZE_METHODS),
                              flip_tta=r.boolean("flip_tta", False),
                              batch_size=r.integer("batch_size", 8, minimum=1),
                              runtime=r.choice("runtime", "keras", RUNTIME_CHOICES),
                              precision=r.choice("precision", "auto", PRECISION_CHOICES),
                              engine=r.choice("engine", "auto", ENGINES),
                              workers=r.integer("workers", None, minimum=1, allow_none=True))
    if features.precision in ("bf16", "int8") and features.runtime == "keras":
        raise r.fail("precision", "auto or f32 with features.runtime keras (Keras runs float32; "
                                  f"{features.precision} needs runtime openvino or auto)", features.precision)

    r = _section(raw, "svm", SvmParams, source)
    svm = SvmParams(kernel=r.choice("kernel", "rbf", KERNELS),
                    C=r.number("C", 1.0, positive=True),
                    gamma=parse_gamma(r.get("gamma", 0.002), "svm.gamma", source),
                    class_weight=r.choice("class_weight", None, (None, "balanced")),
                    scaler=r.choice("scaler", "none", SCALERS),
                    probability=r.choice("probability", "libsvm", PROBABILITY_METHODS),
                    n_jobs=_n_jobs(r),
                    approximation=r.choice("approximation", "exact", KERNEL_APPROXIMATIONS),
                    max_exact_kernel=r.integer("max_exact_kernel", 5000, minimum=1),
                    n_components=r.integer("n_components", 1500, minimum=1))

    r = _section(raw, "calibrate", CalibrateParams, source)
    calibrate = CalibrateParams(folds=r.integer("folds", 5, minimum=2),
                                metric=r.choice("metric", "f1", CALIBRATION_METRICS),
                                strategy=r.choice("strategy", "auto", CALIBRATION_STRATEGIES),
                                min_positives=r.integer("min_positives", 3, minimum=0),
                                shrinkage=r.number("shrinkage", 10.0),
                                min_labels=r.integer("min_labels", 1, minimum=0),
                                max_labels=r.integer("max_labels", None, minimum=1, allow_none=True))
    if calibrate.shrinkage < 0:
        raise r.fail("shrinkage", "a number >= 0", calibrate.shrinkage)
    if calibrate.min_labels > len(classes):
        raise r.fail("min_labels", f"an integer between 0 and {len(classes)} (the number of classes)",
                     calibrate.min_labels)
    if calibrate.max_labels is not None and calibrate.max_labels < calibrate.min_labels:
        raise r.fail("max_labels", f"null or an integer >= calibrate.min_labels ({calibrate.min_labels})",
                     calibrate.max_labels)

    r = _section(raw, "tune", TuneParams, source)
    c_grid = r.get("C", [0.1, 1, 10, 100])
    c_grid = c_grid if isinstance(c_grid, list) else [c_grid]
    if not c_grid or not all(not isinstance(c, bool) and isinstance(c, numbers.Real) and c > 0 for c in c_grid):
        raise r.fail("C", "a non-empty list of numbers > 0", c_grid)
    if len({float(c) for c in c_grid}) != len(c_grid):
        raise r.fail("C", "a list without repeats", c_grid)
    gamma_grid = r.get("gamma", ["scale", 0.0005, 0.002, 0.008])
    gamma_grid = gamma_grid if isinstance(gamma_grid, list) else [gamma_grid]
    if not gamma_grid:
        raise r.fail("gamma", "a non-empty list", gamma_grid)
    if len({str(parse_gamma(g, "tune.gamma", source)) for g in gamma_grid}) != len(gamma_grid):
        raise r.fail("gamma", "a list without repeats", gamma_grid)
    scaler_grid = r.string_list("scaler", [], non_empty=False)
    for scaler in scaler_grid:
        if scaler not in SCALERS:
            raise r.fail("scaler", "a list drawn from " + ", ".join(SCALERS), scaler_grid)
    tune = TuneParams(enabled=r.boolean("enabled", False),
                      C=tuple(float(c) for c in c_grid),
                      gamma=tuple(parse_gamma(g, "tune.gamma", source) for g in gamma_grid),
                      scaler=tuple(scaler_grid),
                      folds=r.integer("folds", 3, minimum=2))

    r = _section(raw, "evaluate", EvaluateParams, source)
    top_k = r.get("top_k", [1, 3])
    top_k = top_k if isinstance(top_k, list) else [top_k]
    if not top_k or not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= len(classes)
                            for k in top_k):
        raise r.fail("top_k", f"a list of integers between 1 and {len(classes)} (the number of classes)", top_k)
    evaluate = EvaluateParams(top_k=tuple(sorted(set(top_k))),
                              bootstrap=r.integer("bootstrap", 1000, minimum=0),
                              seed=r.integer("seed", 0, minimum=0))

    from fewlabel.active.label_check import SCORES
    from fewlabel.active.strategies import STRATEGIES
    r = _section(raw, "suggest", SuggestParams, source)
    suggest = SuggestParams(strategy=r.choice("strategy", SuggestParams.strategy, STRATEGIES),
                            n=r.integer("n", 100, minimum=1),
                            seed=r.integer("seed", 0, minimum=0),
                            check_score=r.choice("check_score", SuggestParams.check_score, SCORES),
                            thumbnails=r.integer("thumbnails", 24, minimum=0),
                            curve_folds=r.integer("curve_folds", 5, minimum=2))

    return Params(data=data, subset=subset, eval=eval_set, features=features, svm=svm,
                  calibrate=calibrate, tune=tune, evaluate=evaluate, suggest=suggest)


def _image_size(reader: _Reader):
    """features.image_size: null, 'auto', a size >= 32, or a list of sizes (multi-scale)."""
    value = reader.get("image_size", None)
    if value is None or value == "auto":
        return value
    sizes = value if isinstance(value, list) else [value]
    if not sizes or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 32
                            for v in sizes) or len(set(sizes)) != len(sizes):
        raise reader.fail("image_size", "null (native size), auto, a size in pixels >= 32, or a list of "
                                        "different sizes (multi-scale)", value)
    return int(sizes[0]) if not isinstance(value, list) else tuple(int(v) for v in sizes)


def _native_sizes(reader: _Reader, backbones: tuple) -> tuple | None:
    """features.native_sizes: null, or a list parallel to features.backbones of sizes >= 32 or
    nulls (null: that backbone's known default)."""
    value = reader.get("native_sizes", None)
    if value is None:
        return None
    expected = (f"null or a list of {len(backbones)} native size(s) in pixels >= 32 or null, one per "
                f"features.backbones entry ({', '.join(backbones)})")
    if not isinstance(value, list) or len(value) != len(backbones) or not all(
            v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 32) for v in value):
        raise reader.fail("native_sizes", expected, value)
    return tuple(None if v is None else int(v) for v in value)


def _select_scales(reader: _Reader) -> tuple:
    """features.select_scales: candidates for image_size: auto, each a scale or a list of scales."""
    value = reader.get("select_scales", [1.0])
    candidates = value if isinstance(value, list) else [value]
    parsed = []
    for candidate in candidates:
        scales = candidate if isinstance(candidate, list) else [candidate]
        if not scales or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.1 <= v <= 4
                                 for v in scales):
            raise reader.fail("select_scales", "a list of candidates, each a multiple of the native size "
                                               "(0.1 to 4) or a list of them (multi-scale), e.g. "
                                               "[1.0, 1.5, [1.0, 1.5]]", value)
        parsed.append(tuple(float(v) for v in scales))
    if not parsed or len(set(parsed)) != len(parsed):
        raise reader.fail("select_scales", "a non-empty list without repeats", value)
    return tuple(parsed)


def _n_jobs(reader: _Reader) -> int:
    """joblib's n_jobs: a positive count, or negative for 'all cores but |n|-1'; never 0."""
    value = reader.integer("n_jobs", -1)
    if value == 0:
        raise reader.fail("n_jobs", "a non-zero integer (-1: all cores)", value)
    return value


def _optional_name(reader: _Reader, key: str) -> str | None:
    """null, or a non-empty string (a list name or a path)."""
    value = reader.get(key, None)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise reader.fail(key, "null or a non-empty name or path", value)
    return value


def _any_name(reader: _Reader, key: str, default: str) -> tuple:
    """Split names are free-form (any ImageSets/Main/<name>.txt): accept any non-empty string."""
    value = reader.get(key, default)
    return (value,) if isinstance(value, str) and value.strip() else (default,)


class _Yaml12FloatLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float, as YAML 1.2 (and DVC's parser) do."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml`` (DVC runs every stage from the repo root)."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: not found; run stages from the repository root")
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12FloatLoader) or {}
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: is not valid YAML: {error}") from error
    return parse_params(raw, source=str(path))

"""params.yaml, read and validated once into typed objects.

The schema is the dataclasses below: each key's default, and in its field's metadata the check
(type, bounds, choices) a value must pass, stated once; params.yaml holds exactly these defaults
(tests/test_params.py compares them key by key). Every error names the key (``svm.C``) and says
what is allowed, so a typo in a ``dvc exp run -S`` override fails before any work is done.
"""
from __future__ import annotations

import difflib
import numbers
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from fewlabel.errors import PipelineError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
SCALERS = ("none", "standard", "l2", "sqrt")
# How each class's SVM scores become probabilities (fewlabel/model/svm.py::build_model).
PROBABILITY_METHODS = ("libsvm", "sigmoid", "isotonic")
KERNELS = ("rbf", "linear", "poly", "sigmoid")
GAMMA_WORDS = ("scale", "auto", "median")
# svm.approximation: exact (the n x n kernel), nystroem (m landmarks, memory O(n m)), or auto
# (exact up to svm.max_exact_kernel training images, nystroem past it)
KERNEL_APPROXIMATIONS = ("auto", "exact", "nystroem")
CALIBRATION_METRICS = ("f1", "f2", "f0.5", "mcc", "dice", "jaccard")
CALIBRATION_STRATEGIES = ("per_class", "global", "none", "auto")
COMBINE_METHODS = ("mean", "concat")
RESIZE_METHODS = ("bilinear", "bilinear_antialias", "area", "bicubic")  # fewlabel/features/views.py
RUNTIME_CHOICES = ("auto", "keras", "openvino")  # fewlabel/features/runtimes.py
PRECISION_CHOICES = ("auto", "f32", "bf16", "int8")
# features.engine: where per-image work runs (fewlabel/features/engine.py): ray when $RAY_ADDRESS
# is set, else this process (auto); this process only (single); Ray Data, local or a cluster (ray)
ENGINES = ("auto", "single", "ray")
# The names fewlabel/active/strategies.py and label_check.py implement (the schema owns the
# lists so that params needs no active code; tests/test_params.py checks that they agree).
SUGGEST_STRATEGIES = ("random", "uncertainty", "weighted_uncertainty", "rare_margin", "margin_diverse",
                      "diverse_uncertainty", "badge", "coreset")
CHECK_SCORES = ("max_abs", "sum_abs", "normalised", "cross_rank", "self_confidence")
# Keys moved to the section of the stage that reads them: an old params.yaml gets "renamed to".
RENAMED = {"calibrate.folds": "train.oof_folds", "eval.max_images": "subset.eval_max_images"}


class Invalid(ValueError):
    """Raised by a key's check; the message says what the key allows ("an integer >= 1")."""


# A key's check: (value from YAML or the default, the keys parsed so far by full name) -> typed value.
Check = Callable[[Any, dict], Any]


def key(default, check: Check):
    """A params key: its default (what params.yaml holds) and its check."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


# --------------------------------------------------------------------------- checks

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_list(value) -> list:
    """YAML lists (or a tuple default) as a list; a single value as a list of one."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _unique(values, expected: str, normal=lambda v: v) -> None:
    if len({normal(v) for v in values}) != len(values):
        raise Invalid(expected + " without repeats")


def integer(minimum: int | None = None, null: bool = False) -> Check:
    expected = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if null else "")

    def check(value, _):
        if value is None and null:
            return None
        if not _is_int(value) or (minimum is not None and value < minimum):
            raise Invalid(expected)
        return int(value)
    return check


def number(above: float | None = None, minimum: float | None = None) -> Check:
    expected = "a number" + (f" > {above:g}" if above is not None else f" >= {minimum:g}" if minimum is not None else "")

    def check(value, _):
        if not _is_number(value) or (above is not None and not value > above) or \
                (minimum is not None and not value >= minimum):
            raise Invalid(expected)
        return float(value)
    return check


def boolean() -> Check:
    def check(value, _):
        if not isinstance(value, bool):
            raise Invalid("true or false")
        return value
    return check


def choice(choices: tuple[str, ...], null: bool = False) -> Check:
    expected = ("null or " if null else "") + "one of " + ", ".join(choices)

    def check(value, _):
        if value is None and null:
            return None
        if not isinstance(value, str) or value not in choices:
            raise Invalid(expected)
        return value
    return check


def text(expected: str = "a non-empty name", null: bool = False) -> Check:
    """A free-form name or path (any ImageSets/Main/<name>.txt, a folder, a URL)."""
    def check(value, _):
        if value is None and null:
            return None
        if not isinstance(value, str) or not value.strip():
            raise Invalid(("null or " if null else "") + expected)
        return value
    return check


def names() -> Check:
    """A non-empty list of names without repeats (one name alone is a list of one)."""
    def check(value, _):
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) and v for v in values):
            raise Invalid("a non-empty list of names")
        _unique(values, "a list of names")
        return tuple(values)
    return check


def after(check: Check, rule: Callable[[Any, dict], str | None]) -> Check:
    """``check``, then ``rule(value, parsed)``: a message when the value conflicts with a key
    parsed before it (keys are checked in the order the schema declares them)."""
    def both(value, parsed):
        value = check(value, parsed)
        problem = rule(value, parsed)
        if problem:
            raise Invalid(problem)
        return value
    return both


def gamma_value(value, _=None):
    """A gamma is a positive number or one of 'scale', 'auto', 'median'."""
    if isinstance(value, str) and value in GAMMA_WORDS:
        return value
    if _is_number(value) and value > 0:
        return float(value)
    raise Invalid(f"a number > 0 or one of {', '.join(GAMMA_WORDS)}")


def _md5(value, _):
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 32 for k, v in value.items()):
        raise Invalid("a mapping of tarball name to 32-hex-digit md5")
    return dict(value)


def _class_quota(value, parsed):
    classes = parsed["data.classes"]
    if not isinstance(value, dict):
        raise Invalid("a mapping like {person: 150}")
    for name, target in value.items():
        if name not in classes:
            raise Invalid(f"a mapping of data.classes names to positives; '{name}' is not in data.classes "
                          f"({', '.join(classes)})")
        if not _is_int(target) or target < 0:
            raise Invalid(f"a mapping of class names to integers >= 0 ({name}: {target!r})")
    return {k: int(v) for k, v in value.items()}


def _image_size(value, _):
    """null (native size), 'auto', a size >= 32, or a list of sizes (multi-scale)."""
    if value is None or value == "auto":
        return value
    sizes = _as_list(value)
    if not sizes or not all(_is_int(v) and v >= 32 for v in sizes) or len(set(sizes)) != len(sizes):
        raise Invalid("null (native size), auto, a size in pixels >= 32, or a list of different sizes "
                      "(multi-scale)")
    return tuple(int(v) for v in sizes) if isinstance(value, (list, tuple)) else int(value)


def _native_sizes(value, parsed):
    """null, or a list parallel to features.backbones of sizes >= 32 or nulls (that backbone's
    known default)."""
    if value is None:
        return None
    backbones = parsed["features.backbones"]
    if not isinstance(value, (list, tuple)) or len(value) != len(backbones) or not all(
            v is None or (_is_int(v) and v >= 32) for v in value):
        raise Invalid(f"null or a list of {len(backbones)} native size(s) in pixels >= 32 or null, one per "
                      f"features.backbones entry ({', '.join(backbones)})")
    return tuple(None if v is None else int(v) for v in value)


def _select_scales(value, _):
    """Candidates for image_size: auto, each a scale or a list of scales (multi-scale)."""
    candidates = [tuple(_as_list(c)) for c in _as_list(value)]
    if not candidates or not all(c and all(_is_number(v) and 0.1 <= v <= 4 for v in c) for c in candidates):
        raise Invalid("a list of candidates, each a multiple of the native size (0.1 to 4) or a list of them "
                      "(multi-scale), e.g. [1.0, 1.5, [1.0, 1.5]]")
    candidates = [tuple(float(v) for v in c) for c in candidates]
    _unique(candidates, "a non-empty list")
    return tuple(candidates)


def _n_jobs(value, _):
    """joblib's n_jobs: a positive count, or negative for 'all cores but |n|-1'; never 0."""
    if not _is_int(value) or value == 0:
        raise Invalid("a non-zero integer (-1: all cores)")
    return int(value)


def _c_grid(value, _):
    values = _as_list(value)
    if not values or not all(_is_number(c) and c > 0 for c in values):
        raise Invalid("a non-empty list of numbers > 0")
    _unique(values, "a list", float)
    return tuple(float(c) for c in values)


def _gamma_grid(value, _):
    values = _as_list(value)
    if not values:
        raise Invalid("a non-empty list")
    values = [gamma_value(g) for g in values]
    _unique(values, "a list", str)
    return tuple(values)


def _scaler_grid(value, _):
    values = _as_list(value)
    if not all(isinstance(s, str) and s in SCALERS for s in values):
        raise Invalid("a list drawn from " + ", ".join(SCALERS))
    _unique(values, "a list")
    return tuple(values)


def _top_k(value, parsed):
    n_classes = len(parsed["data.classes"])
    values = _as_list(value)
    if not values or not all(_is_int(k) and 1 <= k <= n_classes for k in values):
        raise Invalid(f"a list of integers between 1 and {n_classes} (the number of classes)")
    return tuple(sorted(set(values)))


# --------------------------------------------------------------------------- the schema

@dataclass(frozen=True)
class DataParams:
    year: int = key(2007, integer())
    source: str | None = key(None, text("a local folder or a base URL", null=True))
    md5: dict = key({}, _md5)
    classes: tuple = key(VOC_CLASSES, names())
    train_split: str = key("trainval", text("a non-empty split name"))
    eval_split: str = key("test", after(text("a non-empty split name"), lambda split, parsed: (
        f"a split other than data.train_split ('{split}'): evaluation must use images not trained on"
        if split == parsed["data.train_split"] else None)))
    # leave out images whose annotation has no <object>
    skip_no_objects: bool = key(False, boolean())
    # unlabelled images to rank for labelling: an ImageSets/Main list ...
    pool_split: str | None = key(None, after(text("a non-empty name or path", null=True), lambda split, parsed: (
        f"null or a list other than data.eval_split ('{split}'): images suggested for labelling join "
        f"the training set" if split is not None and split == parsed["data.eval_split"] else None)))
    # ... or a folder or list file of images without annotations
    pool_images: str | None = key(None, after(text("a non-empty name or path", null=True), lambda images, parsed: (
        "null when data.pool_split is set (one pool: a split list or a folder)"
        if images is not None and parsed["data.pool_split"] is not None else None)))


@dataclass(frozen=True)
class SubsetParams:
    n_images: int = key(750, integer(minimum=1))
    seed: int = key(42, integer(minimum=0))
    min_per_class: int = key(10, integer(minimum=0))
    class_quota: dict = key({}, _class_quota)
    # a stratified cap on the eval set (null: all of it); subset draws the eval set too
    eval_max_images: int | None = key(None, integer(minimum=1, null=True))


@dataclass(frozen=True)
class FeaturesParams:
    """How images become feature vectors (see fewlabel/model/selection.py).

    ``image_size``: None (each backbone's native size), ``"auto"`` (chosen among
    ``select_scales`` by cross-validated mAP on the training images), a size in pixels, or
    a tuple of sizes (multi-scale, joined by ``combine``). ``select_scales``: the candidates
    for ``auto``, each a tuple of multiples of the native size. ``native_sizes``: None, or one
    native size (or None: the backbone's default) per backbone; what the features are depends
    on it only through the sizes it gives. ``runtime`` and ``precision``:
    what runs the extractors (see fewlabel/features/runtimes.py).
    """
    backbones: tuple = key(("EfficientNetB6",), names())
    weights: str | None = key("imagenet", text("imagenet, null or a path to a weights file", null=True))
    # each backbone's native input size, parallel to backbones; None (all, or one) = its known
    # default (keras.applications: the family's listed size; a .keras file: its fixed size, or 224)
    native_sizes: tuple | None = key(None, _native_sizes)
    image_size: object = key("auto", _image_size)
    select_scales: tuple = key(((1.0,), (1.5,)), _select_scales)
    # auto: candidates with a view above this size are not tried
    select_max_size: int | None = key(640, integer(minimum=32, null=True))
    select_folds: int = key(3, integer(minimum=2))
    combine: str = key("mean", choice(COMBINE_METHODS))
    resize: str = key("bilinear", choice(RESIZE_METHODS))
    flip_tta: bool = key(True, boolean())
    batch_size: int = key(8, integer(minimum=1))
    runtime: str = key("auto", choice(RUNTIME_CHOICES))
    precision: str = key("auto", after(choice(PRECISION_CHOICES), lambda precision, parsed: (
        f"auto or f32 with features.runtime keras (Keras runs float32; {precision} needs runtime openvino or auto)"
        if precision in ("bf16", "int8") and parsed["features.runtime"] == "keras" else None)))
    # how, not what: auto | single | ray (see fewlabel/features/engine.py)
    engine: str = key("auto", choice(ENGINES))
    # ray: workers in the pool (None: one per GPU, else per 4 CPUs)
    workers: int | None = key(None, integer(minimum=1, null=True))


@dataclass(frozen=True)
class SvmParams:
    kernel: str = key("rbf", choice(KERNELS))
    C: float = key(1.0, number(above=0))
    gamma: object = key("median", gamma_value)
    class_weight: str | None = key(None, choice(("balanced",), null=True))
    scaler: str = key("sqrt", choice(SCALERS))
    probability: str = key("libsvm", choice(PROBABILITY_METHODS))
    n_jobs: int = key(-1, _n_jobs)
    # auto | exact | nystroem (see fewlabel.model.svm.kernel_method)
    approximation: str = key("auto", choice(KERNEL_APPROXIMATIONS))
    # auto: the most training images trained with the exact kernel
    max_exact_kernel: int = key(5000, integer(minimum=1))
    # nystroem: landmarks m (memory and time O(n m))
    n_components: int = key(1500, integer(minimum=1))


@dataclass(frozen=True)
class TrainParams:
    # folds of the out-of-fold probabilities on the training set (calibrate fits the rule on them)
    oof_folds: int = key(5, integer(minimum=2))


@dataclass(frozen=True)
class CalibrateParams:
    metric: str = key("jaccard", choice(CALIBRATION_METRICS))
    strategy: str = key("auto", choice(CALIBRATION_STRATEGIES))
    min_positives: int = key(3, integer(minimum=0))
    shrinkage: float = key(10.0, number(minimum=0))
    min_labels: int = key(1, after(integer(minimum=0), lambda n, parsed: (
        f"an integer between 0 and {len(parsed['data.classes'])} (the number of classes)"
        if n > len(parsed["data.classes"]) else None)))
    max_labels: int | None = key(None, after(integer(minimum=1, null=True), lambda n, parsed: (
        f"null or an integer >= calibrate.min_labels ({parsed['calibrate.min_labels']})"
        if n is not None and n < parsed["calibrate.min_labels"] else None)))


@dataclass(frozen=True)
class TuneParams:
    enabled: bool = key(False, boolean())
    C: tuple = key((0.1, 1.0, 10.0, 100.0), _c_grid)
    gamma: tuple = key(("scale", 0.0005, 0.002, 0.008), _gamma_grid)
    scaler: tuple = key((), _scaler_grid)
    folds: int = key(3, integer(minimum=2))


@dataclass(frozen=True)
class EvaluateParams:
    top_k: tuple = key((1, 3), _top_k)
    bootstrap: int = key(1000, integer(minimum=0))
    seed: int = key(0, integer(minimum=0))
    # eval photos mapped (plots/heatmaps.png, the pointing game in metrics/scores.json); 0: none
    heatmap_photos: int = key(60, integer(minimum=0))


@dataclass(frozen=True)
class SuggestParams:
    """Which pool images to label next, and which training labels to check (stages/suggest.py)."""
    strategy: str = key("margin_diverse", choice(SUGGEST_STRATEGIES))  # fewlabel/active/strategies.py
    n: int = key(100, integer(minimum=1))               # images suggested per round
    seed: int = key(0, integer(minimum=0))
    check_score: str = key("max_abs", choice(CHECK_SCORES))  # fewlabel/active/label_check.py
    thumbnails: int = key(24, integer(minimum=0))       # suggestions shown in plots/suggestions.png
    curve_folds: int = key(5, integer(minimum=2))       # learning curve: cross-validation folds


@dataclass(frozen=True)
class Params:
    """params.yaml by section; checked in this order (a key's check may read earlier keys)."""
    data: DataParams = field(default_factory=DataParams)
    subset: SubsetParams = field(default_factory=SubsetParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    svm: SvmParams = field(default_factory=SvmParams)
    train: TrainParams = field(default_factory=TrainParams)
    calibrate: CalibrateParams = field(default_factory=CalibrateParams)
    tune: TuneParams = field(default_factory=TuneParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    suggest: SuggestParams = field(default_factory=SuggestParams)


SECTIONS = {f.name: f.default_factory for f in fields(Params)}


def _default(schema_field):
    return schema_field.default_factory() if schema_field.default is MISSING else schema_field.default


def _check_names(given, known: tuple[str, ...], prefix: str, source: str) -> None:
    """Unknown names fail with a did-you-mean; a moved key with where it went."""
    dotted = (lambda name: f"{prefix}.{name}") if prefix else str
    unknown = sorted((str(name) for name in set(given) - set(known)))
    for name in unknown:
        moved = [f"{old} was renamed to {new}" for old, new in RENAMED.items()
                 if old == dotted(name) or (not prefix and old.startswith(f"{name}."))]
        if moved:
            raise PipelineError(f"{source}: {'; '.join(moved)}: move the value there")
    if unknown:
        hints = []
        for name in unknown:
            close = [k for k in known if k.lower() == name.lower()] or difflib.get_close_matches(name, known, n=1)
            hints.append(dotted(name) + (f" (did you mean {dotted(close[0])}?)" if close else ""))
        what = f"unknown key(s) {', '.join(hints)}; '{prefix}' accepts" if prefix else \
            f"unknown section(s) {', '.join(hints)}; expected"
        raise PipelineError(f"{source}: {what}: {', '.join(known)}")


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as loaded from YAML) into a :class:`Params`; a missing key
    takes the schema's default."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: must be a YAML mapping of sections, got {type(raw).__name__}")
    _check_names(raw, tuple(SECTIONS), "", source)
    parsed: dict = {}  # every key checked so far, by full name
    sections = {}
    for name, schema in SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise PipelineError(f"{source}: '{name}' must be a mapping of keys, got {section!r}")
        keys = fields(schema)
        _check_names(section, tuple(f.name for f in keys), name, source)
        values = {}
        for schema_field in keys:
            full = f"{name}.{schema_field.name}"
            value = section[schema_field.name] if schema_field.name in section else _default(schema_field)
            try:
                values[schema_field.name] = parsed[full] = schema_field.metadata["check"](value, parsed)
            except Invalid as error:
                raise PipelineError(f"{source}: {full} must be {error}, got {value!r}") from None
        sections[name] = schema(**values)
    return Params(**sections)


def read_params_file(path: str | Path) -> dict:
    """A params file's mapping as DVC reads it (ruamel.yaml's safe loader, YAML 1.2, as in
    dvc.utils.serialize.parse_yaml): ``1e-3`` is a float; ``yes``, ``on`` are strings."""
    from ruamel.yaml import YAML, YAMLError

    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: not found; run stages from the repository root")
    try:
        return YAML(typ="safe").load(path.read_text()) or {}
    except YAMLError as error:
        raise PipelineError(f"{path}: is not valid YAML: {error}") from error


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml`` (DVC runs every stage from the repo root)."""
    return parse_params(read_params_file(path), source=str(path))

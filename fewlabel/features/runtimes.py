"""Inference runtimes: what runs a frozen extractor's forward pass on the CPU.

``features.runtime`` picks one:

- ``keras``: the Keras model itself, run by TensorFlow in float32 (the reference).
- ``openvino``: the Keras model converted once to an OpenVINO model, cached on disk under
  ``<user cache>/runtimes/`` (per backbone, weights, size, runtime and precision) and compiled
  for this CPU at ``features.precision``: ``bf16`` where the CPU has bfloat16 instructions
  (AVX512-BF16 or AMX), ``f32``, or ``int8`` (NNCF post-training quantization calibrated on
  the training images, :mod:`fewlabel.features.int8`; opt-in).
- ``auto``: by the rule :data:`AUTO_RULE`, measured per CPU kind (docs/speed.md): OpenVINO
  bf16 where the CPU has bfloat16, OpenVINO f32 on AVX2-only CPUs, else Keras; Keras where
  OpenVINO is not installed or a GPU is visible.

Measured (bench/runtimes.py, docs/speed.md): OpenVINO f32 ran EfficientNetB6 at 528 at 1.77x
Keras on an AVX2-only 2-core EPYC but 0.9-1.3x on the AVX-512 development CPU, where
OpenVINO bf16 ran at 1.5-3.8x; both keep Keras's features (min cosine >= 0.9999). INT8 is faster (Lite0: 1.9x
bf16) and kept Lite0's devdata mAP within 0.02, but ``auto`` does not pick it: predict and
featurize_pool cannot run it yet, and B6 was not measured on devdata (docs/speed.md, "INT8"). ONNX Runtime (0.26x Keras for B6) is not offered.

Every runtime's extractor is a callable ``batch -> features`` on float32 NHWC arrays of RGB
0..255 (Keras models are also called inside TensorFlow graphs, see :mod:`fewlabel.features.views`).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.io import replace_dir, user_cache_dir, write_json

# The pinned optional dependency (requirements-fast.txt) that each runtime needs.
PACKAGES = {"openvino": "openvino"}
INT8_PACKAGE = "nncf"  # features.precision: int8
INSTALL_HINT = "pip install -r requirements-fast.txt"
MODEL_FILE = "model.xml"

# features.runtime: auto, per CPU kind (cpu_kind): the runtime and precision it runs and why,
# each measured with bench/runtimes.py on EfficientNetB6 at 528 against Keras float32
# (docs/speed.md). Only runtimes that keep Keras's features (min cosine >= 0.9999); INT8 is in
# no kind's rule (docs/speed.md, "INT8": the featurize stage only, B6 not measured on devdata).
AUTO_RULE = {
    "bf16": ("openvino", "bf16", "OpenVINO bf16: measured fastest on a CPU with bfloat16 (B6 at 528: 1.5-3.8x "
                                 "Keras, min cosine 0.99995)"),
    "avx2": ("openvino", "f32", "OpenVINO f32: measured 1.77x Keras for B6 on an AVX2-only CPU, Keras's "
                                "features to rounding"),
    "avx512": ("keras", "f32", "Keras: on AVX-512 without bfloat16, OpenVINO f32 measured 0.9-1.3x Keras for "
                               "B6 (no gain)"),
    "other": ("keras", "f32", "Keras: OpenVINO was not measured on this CPU kind"),
}


@dataclass(frozen=True)
class RuntimeChoice:
    """What runs the extractors: ``runtime`` at ``precision``, and why (``note``)."""
    runtime: str = "keras"
    precision: str = "f32"
    requested: str = "keras"
    note: str = ""
    # int8: the content digest of the training images the quantization is calibrated on (part
    # of the cache keys) and their paths (only needed to calibrate; not part of the choice)
    calibration: str = ""
    calibration_paths: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def cache_key(self) -> dict:
        """What the runtime adds to the key of the features it computes: nothing for Keras (the
        reference, keyed as before runtimes existed), else the runtime, its version, the
        precision and the conversion code."""
        if self.runtime == "keras":
            return {}
        key = {"runtime": self.runtime, "precision": self.precision,
               "runtime_version": _module(PACKAGES[self.runtime]).__version__,
               "conversion": _conversion_code_hash()}
        if self.precision == "int8":
            from fewlabel.features import int8
            key.update(int8.cache_key(self.calibration))
        return key

    @property
    def label(self) -> str:
        return self.runtime if self.runtime == "keras" else f"{self.runtime}-{self.precision}"


def _module(name: str):
    """The runtime package ``name``, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@functools.lru_cache(maxsize=1)
def openvino_bf16_supported() -> bool:
    """True where OpenVINO's CPU plugin runs bfloat16 natively (it reports the AVX512-BF16 or
    AMX instructions as the ``BF16`` capability); elsewhere a bf16 hint would silently run f32."""
    openvino = _module("openvino")
    return bool(openvino) and "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as Linux lists them (empty where /proc/cpuinfo is not there)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return next((frozenset(line.split(":", 1)[1].split()) for line in text.splitlines()
                 if line.startswith("flags")), frozenset())


def cpu_kind() -> str:
    """This CPU's kind for :data:`AUTO_RULE`: ``bf16`` (OpenVINO runs bfloat16 here), ``avx512``,
    ``avx2`` or ``other``."""
    flags = cpu_flags()
    # OpenVINO's own capability where it is installed (a bf16 hint it cannot run would run f32)
    if openvino_bf16_supported() if _module("openvino") else {"avx512_bf16", "amx_bf16"} & flags:
        return "bf16"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"


def choose_runtime(requested: str = "keras", precision: str = "auto", gpu: bool = False) -> RuntimeChoice:
    """Resolve ``features.runtime`` and ``features.precision`` on this machine (``gpu``: one is
    visible to TensorFlow, where ``auto`` leaves the work to Keras on the GPU).

    ``auto`` is what :data:`AUTO_RULE` gives this CPU's kind where OpenVINO is installed
    (OpenVINO at an explicit ``precision`` other than the rule's), with ``note`` saying why;
    else Keras.
    An explicit runtime whose package is missing, ``bf16`` on a CPU without it, or ``int8``
    without NNCF is a PipelineError naming the key and the fix. The values are validated by
    fewlabel/params.py.
    """
    if requested == "auto":
        if gpu:
            return RuntimeChoice("keras", "f32", "auto", "a GPU is visible: Keras runs on it")
        if _module("openvino") is None:
            return RuntimeChoice("keras", "f32", "auto", f"openvino is not installed ({INSTALL_HINT})")
        kind = cpu_kind()
        runtime, chosen, why = AUTO_RULE[kind]
        if precision in ("auto", chosen):
            return RuntimeChoice(runtime, chosen, "auto", f"CPU kind {kind}: {why}")
        if precision == "f32":  # the bf16 kind: there OpenVINO f32 measured no faster than Keras
            return RuntimeChoice("keras", "f32", "auto", f"CPU kind {kind}: features.precision: f32: OpenVINO f32 "
                                                         f"measured no faster than Keras on AVX-512")
        _check_precision(precision)
        return RuntimeChoice("openvino", precision, "auto", f"CPU kind {kind}: features.precision: {precision}")
    if requested == "keras":  # (params.py refuses precision bf16 and int8 with keras)
        return RuntimeChoice("keras", "f32", "keras")
    if _module(PACKAGES[requested]) is None:
        raise PipelineError(f"features.runtime: {requested} needs the {PACKAGES[requested]} package, which "
                            f"is not installed: {INSTALL_HINT} (or set features.runtime to keras or auto)")
    _check_precision(precision)
    if precision == "auto":
        precision = "bf16" if openvino_bf16_supported() else "f32"
    return RuntimeChoice(requested, precision, requested)


def _check_precision(precision: str) -> None:
    """An explicit precision this machine cannot run is a PipelineError naming the fix."""
    if precision == "bf16" and not openvino_bf16_supported():
        raise PipelineError("features.precision: bf16: this CPU has no bfloat16 instructions "
                            "(AVX512-BF16 or AMX); set precision to auto or f32")
    if precision == "int8" and _module(INT8_PACKAGE) is None:
        raise PipelineError(f"features.precision: int8 needs the {INT8_PACKAGE} package, which is not "
                            f"installed: {INSTALL_HINT} (or set features.precision to auto or f32)")


# ----------------------------------------------------------------------------- extractors

class OpenVinoExtractor:
    """A converted extractor compiled for the CPU: ``extractor(batch) -> features`` (float32)
    for batches of any length."""

    def __init__(self, model_file: Path, precision: str, batch_size: int):
        import openvino
        core = openvino.Core()
        model = core.read_model(str(model_file))
        # A fixed batch shape ran 15-40% faster than a dynamic one (Lite0 at 352, B0 at 64);
        # shorter batches are padded.
        self.batch_size = int(batch_size)
        model.reshape([self.batch_size] + [dim.get_length() for dim in list(model.input(0).get_partial_shape())[1:]])
        # LATENCY: one stream using every core for each batch; decoding runs between batches
        self.compiled = core.compile_model(model, "CPU",
                                           {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        return np.concatenate([self._run(pixels[start:start + self.batch_size])
                               for start in range(0, len(pixels), self.batch_size)])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < self.batch_size:
            batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), np.float32)])
        outputs = self.request.infer([np.ascontiguousarray(batch)])
        return np.array(outputs[0][:n], dtype=np.float32)  # a copy: the request reuses its buffer


def load_extractor(choice: RuntimeChoice, build_keras: Callable[[], object], key: dict, label: str,
                   batch_size: int = 8):
    """The extractor that ``choice`` runs: ``build_keras()``'s model for Keras; else the model
    converted for the runtime, from the cache folder of ``key`` (what makes the model: backbone,
    weights, size, library versions) when it is there, converted and cached when not (so
    ``build_keras`` is only called to convert), compiled for batches of ``batch_size``. INT8:
    the float32 conversion quantized on ``choice``'s calibration images, cached beside it."""
    if choice.runtime == "keras":
        return build_keras()
    if choice.precision == "int8":
        from fewlabel.features import int8
        model_file = _cached_model(replace(choice, precision="f32", calibration=""), build_keras, key,
                                   label)
        folder = converted_model_folder(choice, key, label)
        if not (folder / MODEL_FILE).is_file():
            if not choice.calibration_paths:
                raise PipelineError(f"features.precision: int8: the INT8 model of {label} needs training images "
                                    f"to calibrate on, and only the featurize stage has them (predict and "
                                    f"featurize_pool cannot run INT8 features yet): featurize with "
                                    f"features.precision auto or f32 to use them")
            replace_dir(folder, {MODEL_FILE: lambda target: int8.quantize(model_file, choice.calibration_paths, target),
                                 "key.json": lambda target: write_json(target, converted_model_key(choice, key))})
        # the layers INT8 leaves in floating point run at bf16 where the CPU has it
        return OpenVinoExtractor(folder / MODEL_FILE, "bf16" if openvino_bf16_supported() else "f32", batch_size)
    return OpenVinoExtractor(_cached_model(choice, build_keras, key, label), choice.precision, batch_size)


def _cached_model(choice: RuntimeChoice, build_keras: Callable[[], object], key: dict, label: str) -> Path:
    """The converted model file of ``choice`` and ``key``, converted and cached when not there yet."""
    folder = converted_model_folder(choice, key, label)
    if not (folder / MODEL_FILE).is_file():
        replace_dir(folder, {MODEL_FILE: lambda target: _convert_to_openvino(build_keras(), target),
                             "key.json": lambda target: write_json(target, converted_model_key(choice, key))})
    return folder / MODEL_FILE


def converted_model_key(choice: RuntimeChoice, key: dict) -> dict:
    """Everything that makes a converted model: the Keras model's key, the runtime, its
    version and precision, and the conversion code."""
    return {**key, **choice.cache_key}


@functools.lru_cache(maxsize=1)
def _conversion_code_hash() -> str:
    """Hash of the conversion code, read once per process (a file edited during a run
    cannot change it halfway)."""
    return hashlib.sha1(inspect.getsource(_convert_to_openvino).encode()).hexdigest()[:16]


def converted_model_folder(choice: RuntimeChoice, key: dict, label: str) -> Path:
    """``<user cache>/runtimes/<label>-<runtime>-<precision>-<hash of the key>``."""
    digest = hashlib.sha1(json.dumps(converted_model_key(choice, key), sort_keys=True).encode()).hexdigest()[:16]
    label = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{label}-{choice.label}")
    return user_cache_dir("runtimes") / f"{label}-{digest}"


def _convert_to_openvino(model, target: Path) -> None:
    """Convert a Keras extractor (input: batch x size x size x 3, any batch) to OpenVINO IR
    files ``target`` (.xml) and its .bin, weights kept float32 (the compile hint sets the
    precision that runs)."""
    import openvino
    with warnings.catch_warnings():  # OpenVINO calls the model with a tuple: Keras warns, harmlessly
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
        converted = openvino.convert_model(model)
    openvino.save_model(converted, str(target), compress_to_fp16=False)

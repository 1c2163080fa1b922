"""Inference runtimes: what runs a frozen extractor's forward pass on the CPU.

``features.runtime`` picks one:

- ``keras``: the Keras model itself, run by TensorFlow in float32 (the reference).
- ``openvino``: the Keras model converted once to an OpenVINO model, cached on disk under
  ``<user cache>/runtimes/`` (per backbone, weights, size, runtime and precision) and compiled
  for this CPU at ``features.precision``: ``bf16`` where the CPU has bfloat16 instructions
  (AVX512-BF16 or AMX; the ``auto`` choice there), else ``f32``.
- ``auto``: OpenVINO bf16 where the package is installed and the CPU has bfloat16, else Keras
  (and Keras on a GPU).

Measured on the 2-core development CPU (bench/runtimes.py, README "Measured speed"): OpenVINO
bf16 ran EfficientNetB6 at 1.5x and B0 at 1.9x Keras's speed (random weights; min cosine to
Keras float32 0.99994), EfficientNet-Lite0 with ImageNet weights at 3.3x (min cosine 0.992 on
real photos); OpenVINO f32 ran B6 at 1.0x Keras, so without bfloat16 ``auto`` stays with Keras.
ONNX Runtime (0.26x Keras for B6) and NNCF INT8 (min cosine 0.93 for Lite0) are not offered.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.io import replace_dir, user_cache_dir, write_json

# The pinned optional dependency (requirements-fast.txt) that each runtime needs.
PACKAGES = {"openvino": "openvino"}
INSTALL_HINT = "pip install -r requirements-fast.txt"
MODEL_FILE = "model.xml"


@dataclass(frozen=True)
class RuntimeChoice:
    """What runs the extractors: ``runtime`` at ``precision``, and why (``note``)."""
    runtime: str = "keras"
    precision: str = "f32"
    requested: str = "keras"
    note: str = ""

    @property
    def cache_key(self) -> dict:
        """What the runtime adds to the key of the features it computes: nothing for Keras (the
        reference, keyed as before runtimes existed), else the runtime, its version, the
        precision and the conversion code."""
        if self.runtime == "keras":
            return {}
        return {"runtime": self.runtime, "precision": self.precision,
                "runtime_version": _module(PACKAGES[self.runtime]).__version__,
                "conversion": _conversion_code_hash()}

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


def choose_runtime(requested: str = "keras", precision: str = "auto", gpu: bool = False) -> RuntimeChoice:
    """Resolve ``features.runtime`` and ``features.precision`` on this machine (``gpu``: one is
    visible to TensorFlow, where ``auto`` leaves the work to Keras on the GPU).

    ``auto`` is OpenVINO at bf16 where both the package and the CPU's bfloat16 are there (the
    combination measured faster than Keras for EfficientNetB6), else Keras, with ``note``
    saying why.
    An explicit runtime whose package is missing, or ``bf16`` on a CPU without it, is a
    PipelineError naming the key and the fix. The values are validated by stages/params.py.
    """
    if requested == "auto":
        if gpu:
            return RuntimeChoice("keras", "f32", "auto", "a GPU is visible: Keras runs on it")
        if _module("openvino") is None:
            return RuntimeChoice("keras", "f32", "auto", f"openvino is not installed ({INSTALL_HINT})")
        if precision == "f32" or not openvino_bf16_supported():
            why = "features.precision: f32" if precision == "f32" else "this CPU has no bfloat16"
            return RuntimeChoice("keras", "f32", "auto", f"{why}: OpenVINO f32 measured no faster than Keras")
        return RuntimeChoice("openvino", "bf16", "auto", "OpenVINO bf16: measured fastest")
    if requested == "keras":  # (params.py refuses precision bf16 with keras)
        return RuntimeChoice("keras", "f32", "keras")
    if _module(PACKAGES[requested]) is None:
        raise PipelineError(f"features.runtime: {requested} needs the {PACKAGES[requested]} package, which "
                            f"is not installed: {INSTALL_HINT} (or set features.runtime to keras or auto)")
    if precision == "bf16" and not openvino_bf16_supported():
        raise PipelineError("features.precision: bf16: this CPU has no bfloat16 instructions "
                            "(AVX512-BF16 or AMX); set precision to auto or f32")
    if precision == "auto":
        precision = "bf16" if openvino_bf16_supported() else "f32"
    return RuntimeChoice(requested, precision, requested)


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
    ``build_keras`` is only called to convert), compiled for batches of ``batch_size``."""
    if choice.runtime == "keras":
        return build_keras()
    folder = converted_model_folder(choice, key, label)
    if not (folder / MODEL_FILE).is_file():
        replace_dir(folder, {MODEL_FILE: lambda target: _convert_to_openvino(build_keras(), target),
                             "key.json": lambda target: write_json(target, converted_model_key(choice, key))})
    return OpenVinoExtractor(folder / MODEL_FILE, choice.precision, batch_size)


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

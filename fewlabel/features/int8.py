"""``features.precision: int8``: NNCF post-training quantization of the converted OpenVINO
model, calibrated on training images only and cached next to the converted model.

Opt-in: ``features.runtime: auto`` never picks it (docs/speed.md, "INT8": it kept Lite0's
devdata mAP, but predict and featurize_pool cannot run it yet, lacking the training images to
calibrate on, and B6 was not measured on devdata). The calibration set is
:data:`CALIBRATION_IMAGES` of the featurize stage's training images, evenly spaced over their
sorted paths; its content digest is part of both the quantized model's and the features' cache keys.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
from pathlib import Path

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.io import file_md5

# NNCF's default subset is 300 samples; 128 costs under half the calibration time (B6 at 528:
# 128 forward passes) and is what docs/speed.md measured.
CALIBRATION_IMAGES = 128


def calibration_subset(train_paths, n: int = CALIBRATION_IMAGES) -> list[str]:
    """``n`` of ``train_paths`` (all when fewer), evenly spaced over their sorted order."""
    paths = sorted({str(p) for p in train_paths})
    if len(paths) <= n:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]


def calibrate(choice, train_paths):
    """``choice`` (a RuntimeChoice) with its INT8 calibration set taken from ``train_paths``
    (the training images only); other precisions are returned unchanged."""
    if choice.precision != "int8":
        return choice
    paths = calibration_subset(train_paths)
    if not paths:
        raise PipelineError("features.precision: int8 needs training images to calibrate on; the train subset is empty")
    digest = hashlib.sha1(" ".join(sorted(file_md5(p) for p in paths)).encode()).hexdigest()[:16]
    return dataclasses.replace(choice, calibration=digest, calibration_paths=tuple(paths))


def cache_key(calibration: str) -> dict:
    """What the quantization adds to a converted model's and its features' keys."""
    import nncf
    return {"nncf": nncf.__version__, "calibration": calibration, "quantize": _quantize_code_hash()}


@functools.lru_cache(maxsize=1)
def _quantize_code_hash() -> str:
    return hashlib.sha1(inspect.getsource(quantize).encode()).hexdigest()[:16]


def quantize(model_file: Path, calibration_paths, target: Path) -> None:
    """Quantize the OpenVINO model ``model_file`` to INT8 with NNCF's default post-training
    quantization, calibrated on ``calibration_paths`` as the extractor sees them (decoded,
    resized to the model's input size; one image per sample: NNCF's subset counts samples),
    and save it as ``target`` (.xml and its .bin)."""
    import nncf
    import openvino
    from fewlabel.features.views import load_image
    model = openvino.Core().read_model(str(model_file))
    size = model.input(0).get_partial_shape()[1].get_length()
    samples = [load_image(path, size).numpy()[None] for path in calibration_paths]
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    openvino.save_model(quantized, str(target), compress_to_fp16=False)

"""Backbones by name: ``keras.applications`` models, your own ``.keras`` file or a keras-hub
preset; which names exist, and the input sizes each runs at.

Nothing here imports Keras (and so TensorFlow, seconds of start-up) until a name has to be
checked against ``keras.applications`` or a ``.keras`` file opened: a stage whose every
vector is cached never needs them. The models themselves are built by
:mod:`fewlabel.features.keras_models`.
"""
from __future__ import annotations

import difflib
import functools
import json
import os
import re
import zipfile
from pathlib import Path

from fewlabel.errors import PipelineError
from fewlabel.features import hub

KERAS_SUFFIX = ".keras"

# Each family's native resolution (what its ImageNet weights were trained at).
_EFFICIENTNET_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300,
                       "B4": 380, "B5": 456, "B6": 528, "B7": 600}
# A model file that accepts any input size is taken to be trained at this size.
DEFAULT_NATIVE_SIZE = 224
_EFFICIENTNET_V2_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300, "S": 384, "M": 480, "L": 480}
# keras.applications constructors known without importing Keras (a test checks they are there)
_LISTED_APPLICATIONS = frozenset([f"EfficientNet{k}" for k in _EFFICIENTNET_SIZES] +
                                 [f"EfficientNetV2{k}" for k in _EFFICIENTNET_V2_SIZES])


def application_names() -> list[str]:
    """Every model constructor ``keras.applications`` offers (EfficientNetB0, ResNet50, ...)."""
    import keras

    names = []
    for name in dir(keras.applications):
        obj = getattr(keras.applications, name)
        if name[:1].isupper() and callable(obj) and \
                getattr(obj, "__module__", "").startswith("keras.src.applications."):
            names.append(name)
    return sorted(names)


def is_model_file(name_or_path: str) -> bool:
    """True for a backbone given as a path to a saved ``.keras`` model."""
    return str(name_or_path).endswith(KERAS_SUFFIX)


def default_input_size(name: str) -> int:
    """The input size a ``keras.applications`` model was trained at (224 unless listed)."""
    match = re.fullmatch(r"EfficientNet(V2)?(B\d|S|M|L)", name)
    if match:
        table = _EFFICIENTNET_V2_SIZES if match.group(1) else _EFFICIENTNET_SIZES
        if match.group(2) in table:
            return table[match.group(2)]
    if name.startswith(("Inception", "Xception")):
        return 299
    if name == "NASNetLarge":
        return 331
    return 224


def check_backbone_name(name: str) -> None:
    """Raise a PipelineError listing close matches when ``name`` is no keras.applications model."""
    if is_model_file(name):
        return
    if hub.is_hub_backbone(name):
        hub.preset_of(name)
        return
    if name in _LISTED_APPLICATIONS:
        return
    known = application_names()
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    if not close:  # 'efficientnetb6' -> EfficientNetB6
        close = [k for k in known if k.lower() == name.lower()]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise PipelineError(
        f"features.backbones: unknown backbone '{name}'; {hint}"
        f"use a keras.applications model name ({', '.join(known)}) "
        f"or a path to a saved model ending in {KERAS_SUFFIX}, or {hub.PREFIX}<preset> (keras-hub)")


def native_input_size(name_or_path: str, stated: int | None = None) -> int:
    """The size a backbone was trained at: a fixed-input ``.keras`` model's own size; else
    ``stated`` (``features.native_sizes``) when given; else a ``keras.applications`` family's
    listed size, or 224 for a model file that takes any size (a ``.keras`` file records no
    native size: its input shape is all it keeps)."""
    if is_model_file(name_or_path):
        return _file_fixed_size(name_or_path) or stated or DEFAULT_NATIVE_SIZE
    if hub.is_hub_backbone(name_or_path):
        return hub.fixed_size(name_or_path) or stated or hub.native_size(name_or_path)
    check_backbone_name(name_or_path)
    return stated or default_input_size(name_or_path)


def size_multiple(name_or_path: str) -> int:
    """What ``select_scales`` rounds a scaled size to: 32 (a CNN's five stride-2 halvings),
    or a keras-hub patch encoder's patch size."""
    return hub.size_multiple(name_or_path) if hub.is_hub_backbone(name_or_path) else 32


def fixed_input_size(name_or_path: str) -> int | None:
    """The only size a backbone can run at (a ``.keras`` model with a fixed input), else None."""
    if is_model_file(name_or_path):
        return _file_fixed_size(name_or_path)
    if hub.is_hub_backbone(name_or_path):
        return hub.fixed_size(name_or_path)
    check_backbone_name(name_or_path)
    return None


def _load_model_file(path: str):
    if not Path(path).is_file():
        raise PipelineError(f"{path}: backbone model file not found (features.backbones); "
                            f"give a path to a saved .keras model relative to the repository root")
    stat = os.stat(path)
    return _load_model_file_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_model_file_cached(path: str, mtime_ns: int, size: int):
    """Load a ``.keras`` file once per process (sizes and views share it)."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds here
        raise PipelineError(f"{path}: cannot load it as a Keras model ({type(error).__name__}: {error}); "
                            f"save it with model.save('{Path(path).name}') (custom layers must be "
                            f"registered with keras.saving.register_keras_serializable)") from error


def _file_fixed_size(path: str) -> int | None:
    """:func:`_model_file_fixed_size` of a ``.keras`` file, read from the input shape its
    config.json states where it states one (no Keras needed: a run whose every vector is cached
    starts no TensorFlow), else from the loaded model."""
    shape = _stated_input_shape(path)
    if shape is None:
        return _model_file_fixed_size(_load_model_file(path), path)
    return _fixed_size([shape], path)


def _stated_input_shape(path: str) -> tuple | None:
    """The input shape of a saved functional or sequential model with one input layer, as its
    config.json states it; None for any other file (the model is then loaded to find out)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        if config["class_name"] not in ("Functional", "Sequential"):
            return None
        inputs = [layer for layer in config["config"]["layers"] if layer["class_name"] == "InputLayer"]
        return tuple(inputs[0]["config"]["batch_shape"]) if len(inputs) == 1 else None
    except (OSError, KeyError, TypeError, IndexError, ValueError, zipfile.BadZipFile):
        return None


def _model_file_fixed_size(model, path: str) -> int | None:
    """A model file's fixed square input size, or None when it accepts any size."""
    return _fixed_size([tuple(i.shape) for i in model.inputs], path)


def _fixed_size(input_shapes: list[tuple], path: str) -> int | None:
    shape = input_shapes[0] if len(input_shapes) == 1 else None
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise PipelineError(f"{path}: the model must have one input of shape (batch, size, size, 3) "
                            f"taking RGB 0..255, got {input_shapes}")
    height, width = shape[1], shape[2]
    if height is None and width is None:
        return None
    if height != width or height is None:
        raise PipelineError(f"{path}: the model's input must be square (size, size, 3), got {tuple(shape)}")
    return int(height)


def _weights_file(weights: str | None) -> str | None:
    if weights is None or weights == "imagenet":
        return None
    if not Path(weights).is_file():
        raise PipelineError(f"features.weights: '{weights}' is not 'imagenet', null or an existing "
                            f"weights file; fix the path (relative to the repository root)")
    return str(weights)

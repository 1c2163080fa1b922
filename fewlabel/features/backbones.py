"""Frozen CNN feature extractors: ``keras.applications`` models or your own ``.keras`` file.

Every extractor built here takes float RGB in 0..255 at ``(size, size, 3)`` and returns one
feature vector per image: the family's own ``preprocess_input`` and the global average
pooling are part of the model, so the featurize stage and the ``predict`` command feed every
backbone the same decoded pixels (see :mod:`fewlabel.features.views`).
"""
from __future__ import annotations

import difflib
import functools
import importlib
import os
import re
from pathlib import Path

import keras

from fewlabel.errors import PipelineError
from fewlabel.features import hub

KERAS_SUFFIX = ".keras"

# Each family's native resolution (what its ImageNet weights were trained at).
_EFFICIENTNET_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300,
                       "B4": 380, "B5": 456, "B6": 528, "B7": 600}
# A model file that accepts any input size is taken to be trained at this size.
DEFAULT_NATIVE_SIZE = 224
_EFFICIENTNET_V2_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300, "S": 384, "M": 480, "L": 480}


def application_names() -> list[str]:
    """Every model constructor ``keras.applications`` offers (EfficientNetB0, ResNet50, ...)."""
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
        fixed = _model_file_fixed_size(_load_model_file(name_or_path), name_or_path)
        return fixed or stated or DEFAULT_NATIVE_SIZE
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
        return _model_file_fixed_size(_load_model_file(name_or_path), name_or_path)
    if hub.is_hub_backbone(name_or_path):
        return hub.fixed_size(name_or_path)
    check_backbone_name(name_or_path)
    return None


def build_extractor(name_or_path: str, weights: str | None, image_size: int | None) -> tuple[keras.Model, int]:
    """Build a frozen feature extractor and return ``(model, input_size)``.

    ``name_or_path``: a ``keras.applications`` constructor name (built with
    ``include_top=False, pooling='avg'`` and its family's ``preprocess_input`` fused in front),
    or a path to a ``.keras`` model that takes RGB 0..255 (a feature-map output is
    global-average-pooled; a fixed input size wins over ``image_size``).
    ``weights``: ``'imagenet'``, ``None`` (random init, seeded so it is reproducible) or a path
    to a weights file for ``load_weights``. A ``.keras`` model keeps its stored weights unless
    ``weights`` is a path.
    ``image_size``: None for the model's native size.
    The model's input is float32 ``(batch, size, size, 3)`` RGB in 0..255. Views (mirror,
    several sizes) are applied to the pixels by :mod:`fewlabel.features.views`, not here.
    """
    name_or_path = str(name_or_path)
    weights_file = _weights_file(weights)
    size = int(image_size) if image_size else native_input_size(name_or_path)
    if is_model_file(name_or_path):
        base = _load_model_file(name_or_path)
        size = _model_file_fixed_size(base, name_or_path) or size
        if weights_file is not None:
            _load_weights(base, weights_file, name_or_path)
        inputs = keras.Input((size, size, 3), name="rgb_0_255")
        features = _pool(base(inputs), name_or_path)
        label = Path(name_or_path).stem
    else:
        check_backbone_name(name_or_path)
        constructor = getattr(keras.applications, name_or_path)
        keras.utils.set_random_seed(0)  # a random-init model is the same in every run
        base = _construct(constructor, name_or_path, size, weights)
        if weights_file is not None:
            _load_weights(base, weights_file, name_or_path)
        inputs = keras.Input((size, size, 3), name="rgb_0_255")
        features = base(_Preprocess(constructor.__module__, name="preprocess_input")(inputs))
        label = name_or_path
    base.trainable = False
    model = keras.Model(inputs, features, name=re.sub(r"\W", "_", f"features_{label}_{size}"))
    model.trainable = False
    return model, size


def build_hub_extractor(name: str, weights: str | None, image_size: int | None) -> tuple[keras.Model, int]:
    """:func:`build_extractor` for a ``keras_hub:<preset>`` backbone (see
    :mod:`fewlabel.features.hub`): the same input (RGB 0..255 at ``(size, size, 3)``) and output
    (one vector per image). Kept apart so that the feature cache keys of the other backbones,
    which hash :func:`build_extractor`'s code, did not change when keras-hub came."""
    weights_file = _weights_file(weights)
    size = int(image_size) if image_size else native_input_size(name)
    encoder, base = hub.build_hub_extractor(name, weights, size)
    if weights_file is not None:
        _load_weights(base, weights_file, name)
    inputs = keras.Input((size, size, 3), name="rgb_0_255")
    model = keras.Model(inputs, _pool(encoder(inputs), name),
                        name=re.sub(r"\W", "_", f"features_{Path(hub.preset_of(name)).name}_{size}"))
    base.trainable = False
    model.trainable = False
    return model, size


class _Preprocess(keras.layers.Layer):
    """A keras.applications family's ``preprocess_input`` as a layer (e.g. caffe BGR means)."""

    def __init__(self, module: str, **kwargs):
        super().__init__(**kwargs)
        self.module = module
        self._function = importlib.import_module(module).preprocess_input

    def call(self, inputs):
        return self._function(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "module": self.module}


def _pool(outputs, source: str):
    """Feature map (b, h, w, c) or tokens (b, n, c) -> (b, c); vectors pass through."""
    if isinstance(outputs, (list, tuple, dict)):
        raise PipelineError(f"{source}: the model has several outputs; a backbone must have one")
    rank = len(outputs.shape)
    if rank == 4:
        return keras.layers.GlobalAveragePooling2D()(outputs)
    if rank == 3:
        return keras.layers.GlobalAveragePooling1D()(outputs)
    if rank == 2:
        return outputs
    raise PipelineError(f"{source}: the model's output has shape {tuple(outputs.shape)}; expected a "
                        f"feature vector (batch, d) or a feature map (batch, h, w, c)")


def _load_model_file(path: str) -> keras.Model:
    if not Path(path).is_file():
        raise PipelineError(f"{path}: backbone model file not found (features.backbones); "
                            f"give a path to a saved .keras model relative to the repository root")
    stat = os.stat(path)
    return _load_model_file_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_model_file_cached(path: str, mtime_ns: int, size: int) -> keras.Model:
    """Load a ``.keras`` file once per process (sizes and views share it)."""
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds here
        raise PipelineError(f"{path}: cannot load it as a Keras model ({type(error).__name__}: {error}); "
                            f"save it with model.save('{Path(path).name}') (custom layers must be "
                            f"registered with keras.saving.register_keras_serializable)") from error


def _model_file_fixed_size(model: keras.Model, path: str) -> int | None:
    """A model file's fixed square input size, or None when it accepts any size."""
    shape = model.inputs[0].shape if len(model.inputs) == 1 else None
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise PipelineError(f"{path}: the model must have one input of shape (batch, size, size, 3) "
                            f"taking RGB 0..255, got {[tuple(i.shape) for i in model.inputs]}")
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


def _load_weights(model: keras.Model, weights_file: str, backbone: str) -> None:
    try:
        model.load_weights(weights_file)
    except Exception as error:
        raise PipelineError(f"{weights_file}: cannot load these weights into {backbone} "
                            f"(features.weights; {type(error).__name__}: {error}); they must come "
                            f"from the same architecture built with include_top=False") from error


def _construct(constructor, name: str, size: int, weights: str | None) -> keras.Model:
    """Call a keras.applications constructor; explain a failed ImageNet weights download."""
    from keras.src.utils import file_utils

    original, failed = file_utils.get_file, []

    def recording_get_file(fname=None, origin=None, *args, **kwargs):
        try:
            return original(fname, origin, *args, **kwargs)
        except BaseException as error:
            failed.append((fname or os.path.basename(origin or ""), origin, error))
            raise

    file_utils.get_file = recording_get_file
    try:
        return constructor(include_top=False, pooling="avg", input_shape=(size, size, 3),
                           weights="imagenet" if weights == "imagenet" else None)
    except Exception as error:
        if failed:
            fname, origin, cause = failed[-1]
            from keras.src.backend import config
            folder = Path(os.path.expanduser(config.keras_home()), "models")
            raise PipelineError(
                f"features.weights: imagenet: cannot download the ImageNet weights of {name} "
                f"({type(cause).__name__}: {cause}). Download {fname} from {origin} on a machine "
                f"with internet access and put it at {folder / fname} (~/.keras/models/, or "
                f"$KERAS_HOME/models/), then rerun; or set features.weights to the path of a "
                f"weights file (null gives random features, for tests only)") from error
        if isinstance(error, ValueError):
            raise PipelineError(f"features: cannot build {name} at input size {size} "
                                f"(features.image_size) with weights {weights!r}: {error}") from error
        raise
    finally:
        file_utils.get_file = original

"""The Keras models behind the backbones: frozen feature extractors.

Every extractor built here takes float RGB in 0..255 at ``(size, size, 3)`` and returns one
feature vector per image: the family's own ``preprocess_input`` and the global average
pooling are part of the model, so the featurize stage and the ``predict`` command feed every
backbone the same decoded pixels (see :mod:`fewlabel.features.views`). Which backbones exist
and their sizes: :mod:`fewlabel.features.backbones`. The feature cache key hashes the source
of the code here (``fewlabel.features.extract.FEATURE_CODE``): editing it re-extracts.
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import keras

from fewlabel.errors import PipelineError
from fewlabel.features import hub
from fewlabel.features.backbones import (_load_model_file, _model_file_fixed_size, _weights_file,
                                         check_backbone_name, is_model_file, native_input_size)

# a keras-hub config.json's class names whose features are [class token, mean of the patch tokens]
_CLS_AND_MEAN = ("DINOV2Backbone", "DINOV3Backbone")


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
    encoder, base = hub_encoder(name, weights, size)
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


def hub_encoder(name: str, weights: str | None, size: int) -> tuple[keras.Model, keras.Model]:
    """(the extractor: RGB 0..255 at ``size`` -> pooled features, the backbone it wraps).

    ``weights``: ``'imagenet'`` (read: the preset's own weights), None (random init, seeded;
    for tests) or a weights file for ``load_weights``."""
    keras_hub = hub.keras_hub_module(name)
    config, converter = hub.preset_config(name)
    fixed = hub.fixed_size(name)
    if fixed and size != fixed:
        raise PipelineError(f"features.image_size: {name} runs only at {fixed} x {fixed} (its position "
                            f"embeddings are not interpolated), got {size}; use image_size null")
    kwargs = {"image_shape": (size, size, 3)} if hub.image_shape(config) else {}
    keras.utils.set_random_seed(0)  # a random-init model is the same in every run
    try:
        base = keras_hub.models.Backbone.from_preset(hub.preset_of(name), load_weights=weights is not None,
                                                     dtype="float32", **kwargs)
    except Exception as error:
        raise PipelineError(f"features.backbones: {name}: cannot build the preset at input size {size} "
                            f"({type(error).__name__}: {error}); on a machine without internet access, "
                            f"download the preset first and give its local folder") from error
    inputs = keras.Input((size, size, 3), name="rgb_0_255")
    scale, offset = _converter_scale_offset(converter)
    pixels = _Rescale(scale, offset, name="preset_rescale")(inputs)
    names = list(base.input) if isinstance(base.input, dict) else []  # DINOv2: {'images': ...}
    outputs = base({names[0]: pixels} if len(names) == 1 else pixels)
    class_name = config.get("class_name", "")
    if class_name in _CLS_AND_MEAN:
        prefix = 1 + int(config["config"].get("num_register_tokens", 0))
        features = _TokenPool("cls_and_mean", prefix, name="cls_and_mean_pool")(outputs)
    elif len(outputs.shape) == 3 and config["config"].get("use_class_token"):
        features = _TokenPool("cls", 1, name="cls_pool")(outputs)
    elif len(outputs.shape) == 3:
        features = _TokenPool("mean", 0, name="mean_pool")(outputs)
    else:
        features = outputs  # a feature map: global average pooled by the caller
    return keras.Model(inputs, features), base


def _converter_scale_offset(converter: dict | None) -> tuple:
    config = (converter or {}).get("config", {})
    if not converter:
        return 1 / 255, None
    return config.get("scale"), config.get("offset")


class _Rescale(keras.layers.Layer):
    """``x * scale + offset``, each None, a number or one per channel (an ImageConverter's)."""

    def __init__(self, scale=None, offset=None, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = scale, offset

    def call(self, inputs):
        x = inputs
        if self.scale is not None:
            x = x * keras.ops.convert_to_tensor(self.scale, dtype=x.dtype)
        if self.offset is not None:
            x = x + keras.ops.convert_to_tensor(self.offset, dtype=x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


class _TokenPool(keras.layers.Layer):
    """Tokens (b, n, d) -> (b, d) or (b, 2d): ``cls`` the first token; ``mean`` the mean of all;
    ``cls_and_mean`` the first token joined to the mean of the tokens after the first ``prefix``."""

    def __init__(self, mode: str, prefix: int, **kwargs):
        super().__init__(**kwargs)
        self.mode, self.prefix = mode, int(prefix)

    def call(self, tokens):
        if self.mode == "cls":
            return tokens[:, 0]
        if self.mode == "mean":
            return keras.ops.mean(tokens, axis=1)
        return keras.ops.concatenate([tokens[:, 0], keras.ops.mean(tokens[:, self.prefix:], axis=1)], axis=-1)

    def compute_output_shape(self, input_shape):
        width = input_shape[-1] * (2 if self.mode == "cls_and_mean" else 1)
        return (input_shape[0], width)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "prefix": self.prefix}

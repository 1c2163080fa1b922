"""keras-hub image encoders as backbones: ``features.backbones: [keras_hub:<preset>]``.

``<preset>`` is anything ``keras_hub.models.Backbone.from_preset`` takes: a preset name
(``dinov2_small``), a ``kaggle://`` or ``hf://`` handle, or a local preset folder (what
``backbone.save_to_preset(folder)`` writes). The extractor takes float RGB 0..255 at
``(size, size, 3)``, like every other backbone (:mod:`fewlabel.features.backbones`):

* pixels: the preset's own ``ImageConverter`` scale and offset (its resizing is not used: the
  views have resized the image already); a preset without one gets ``x / 255``;
* size: a backbone whose position embeddings are interpolated (DINOv2, DINOv3) is rebuilt at
  each view's size; any other with a fixed ``image_shape`` runs only at that size;
* pooling, as each model is meant to be read: DINOv2 / DINOv3, the class token joined to the
  mean of the patch tokens (register tokens left out), as their linear probes do; a ViT with a
  class token, the class token (``ViTImageClassifier``'s ``pooling='token'``); other token
  outputs, their mean; a feature map (CNN backbones), global average pooling.

keras-hub is optional (``pip install -r requirements-hub.txt``); nothing here imports it until
a ``keras_hub:`` backbone is used. Their quality on these photos was not measured here.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import keras

from fewlabel.errors import PipelineError

PREFIX = "keras_hub:"
INSTALL = "pip install -r requirements-hub.txt"
# config.json's class names whose features are [class token, mean of the patch tokens]
_CLS_AND_MEAN = ("DINOV2Backbone", "DINOV3Backbone")


def is_hub_backbone(name: str) -> bool:
    return str(name).startswith(PREFIX)


def preset_of(name: str) -> str:
    preset = str(name)[len(PREFIX):]
    if not preset.strip():
        raise PipelineError(f"features.backbones: '{name}' names no preset; write keras_hub:<preset>, "
                            f"e.g. keras_hub:dinov2_small or keras_hub:path/to/preset_folder")
    return preset


def keras_hub_module(name: str):
    """``import keras_hub``, or a PipelineError saying how to install it."""
    try:
        import keras_hub
    except ImportError as error:
        raise PipelineError(f"features.backbones: {name} needs keras-hub, which is not installed here "
                            f"({type(error).__name__}: {error}); run `{INSTALL}` in this environment, "
                            f"or use a keras.applications name or a .keras file") from error
    return keras_hub


@functools.lru_cache(maxsize=8)
def preset_config(name: str) -> tuple[dict, dict | None]:
    """(config.json of the backbone, the image converter's config or None) of ``name``'s preset."""
    keras_hub_module(name)
    from keras_hub.src.utils import preset_utils

    preset = preset_of(name)
    try:
        backbone = preset_utils.load_json(preset, preset_utils.CONFIG_FILE)
    except Exception as error:  # keras-hub raises many kinds (not found, no network, ...)
        raise PipelineError(f"features.backbones: {name}: cannot read the preset's config.json "
                            f"({type(error).__name__}: {error}); give a keras-hub preset name or handle "
                            f"(the weights are downloaded once) or a local preset folder") from error
    try:
        converter = preset_utils.load_json(preset, preset_utils.IMAGE_CONVERTER_CONFIG_FILE)
    except Exception:  # a preset without an image converter
        converter = None
    return backbone, converter


def _interpolates(config: dict) -> bool:
    """Runs at any size: interpolated position embeddings (DINOv2) or rotary ones (DINOv3)."""
    return bool({"position_embedding_shape", "rope_theta"} & set(config.get("config", {})))


def _image_shape(config: dict) -> tuple | None:
    shape = config.get("config", {}).get("image_shape")
    return tuple(shape) if shape else None


def native_size(name: str) -> int:
    """The preset's own size: its image converter's ``image_size``, else its ``image_shape``, else 224."""
    config, converter = preset_config(name)
    size = (converter or {}).get("config", {}).get("image_size")
    if size and size[0]:
        return int(size[0])
    shape = _image_shape(config)
    return int(shape[0]) if shape and shape[0] else 224


def size_multiple(name: str) -> int:
    """What view sizes are rounded to: the patch size of a patch encoder, else 32."""
    config, _ = preset_config(name)
    patch = config.get("config", {}).get("patch_size") or 32
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)  # ViT: (8, 8)


def fixed_size(name: str) -> int | None:
    """The only size the encoder runs at (a fixed ``image_shape`` it cannot interpolate), else None."""
    config, _ = preset_config(name)
    shape = _image_shape(config)
    if _interpolates(config) or not shape or shape[0] is None:
        return None
    return int(shape[0])


def cache_key(name: str) -> dict:
    """The backbone part of the feature cache key: the preset (a local folder by its files'
    content) and the keras-hub version."""
    keras_hub = keras_hub_module(name)
    preset = preset_of(name)
    folder = Path(preset)
    if folder.is_dir():
        files = tuple((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size)
                      for p in sorted(folder.rglob("*")) if p.is_file())
        preset = {"preset_folder_sha1": _folder_sha1(str(folder.resolve()), files)}
    return {"keras_hub": preset, "keras_hub_version": keras_hub.__version__}


@functools.lru_cache(maxsize=8)
def _folder_sha1(folder: str, files: tuple) -> str:
    """The content hash of a preset folder's files, once per process while they are unchanged."""
    digest = hashlib.sha1()
    for relative, _, _ in files:
        digest.update(relative.encode())
        with open(Path(folder, relative), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def build_hub_extractor(name: str, weights: str | None, size: int) -> tuple[keras.Model, keras.Model]:
    """(the extractor: RGB 0..255 at ``size`` -> pooled features, the backbone it wraps).

    ``weights``: ``'imagenet'`` (read: the preset's own weights), None (random init, seeded;
    for tests) or a weights file for ``load_weights``."""
    keras_hub = keras_hub_module(name)
    config, converter = preset_config(name)
    fixed = fixed_size(name)
    if fixed and size != fixed:
        raise PipelineError(f"features.image_size: {name} runs only at {fixed} x {fixed} (its position "
                            f"embeddings are not interpolated), got {size}; use image_size null")
    kwargs = {"image_shape": (size, size, 3)} if _image_shape(config) else {}
    keras.utils.set_random_seed(0)  # a random-init model is the same in every run
    try:
        base = keras_hub.models.Backbone.from_preset(preset_of(name), load_weights=weights is not None,
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

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
a ``keras_hub:`` backbone is used. The encoder model is built by
:func:`fewlabel.features.keras_models.hub_encoder`. Their quality on these photos was not measured here.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from fewlabel.errors import PipelineError

PREFIX = "keras_hub:"
INSTALL = "pip install -r requirements-hub.txt"


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


def image_shape(config: dict) -> tuple | None:
    """The ``image_shape`` a preset's config.json states, or None."""
    shape = config.get("config", {}).get("image_shape")
    return tuple(shape) if shape else None


def native_size(name: str) -> int:
    """The preset's own size: its image converter's ``image_size``, else its ``image_shape``, else 224."""
    config, converter = preset_config(name)
    size = (converter or {}).get("config", {}).get("image_size")
    if size and size[0]:
        return int(size[0])
    shape = image_shape(config)
    return int(shape[0]) if shape and shape[0] else 224


def size_multiple(name: str) -> int:
    """What view sizes are rounded to: the patch size of a patch encoder, else 32."""
    config, _ = preset_config(name)
    patch = config.get("config", {}).get("patch_size") or 32
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)  # ViT: (8, 8)


def fixed_size(name: str) -> int | None:
    """The only size the encoder runs at (a fixed ``image_shape`` it cannot interpolate), else None."""
    config, _ = preset_config(name)
    shape = image_shape(config)
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

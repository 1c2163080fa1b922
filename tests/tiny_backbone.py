"""The backbone of the generated DVC pipelines (``FAST_PARAMS``): a three-layer random CNN saved as
``tests/data/tiny_backbone.keras``, which ``features.backbones`` takes as a path like any ``.keras``
model. The pipeline tests are about DVC, not the network: with it each featurize or predict
process builds and traces its model in a fraction of EfficientNetB0's time (about 9 s instead
of 17 s for the generated pipeline's featurize). EfficientNetB0 itself is covered by the
featurize, runtime and heatmap tests.

The file is committed, not made per run: a saved ``.keras`` records its date, and the feature
cache keys a model file by its bytes. To make it again::

    python -m tests.tiny_backbone
"""
from __future__ import annotations

from pathlib import Path

PATH = Path(__file__).resolve().parent / "data" / "tiny_backbone.keras"
#: As features.backbones gives it, relative to the repository (or a generated project's) root.
RELATIVE_PATH = PATH.relative_to(PATH.parents[2]).as_posix()


def build():
    """RGB 0..255 at any size -> a (h/8, w/8, 64) feature map (the stage pools it), seeded."""
    import keras

    keras.utils.set_random_seed(0)
    pixels = keras.Input((None, None, 3), name="rgb_0_255")
    x = keras.layers.Rescaling(1 / 255)(pixels)
    for filters in (8, 16, 64):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(pixels, x, name="tiny_backbone")


if __name__ == "__main__":
    PATH.parent.mkdir(parents=True, exist_ok=True)
    build().save(PATH)
    print(f"wrote {PATH}")

"""Image input and test-time views: how pixels reach a backbone.

A :class:`~fewlabel.features.recipes.View` is one way of showing an image to a backbone: an input size, a resize
method and whether it is mirrored. Each image is decoded **once** for all of its views;
each distinct (size, resize) pair is resized once, and mirrored views reuse that resize.
Views are combined into one feature vector in :mod:`fewlabel.features.extract` (flip: the mean of an
image and its mirror; several sizes: their mean or concatenation).
"""
from __future__ import annotations

import re
from typing import Iterator, Sequence

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.features.recipes import View

import keras
import tensorflow as tf  # noqa: E402

# features.resize -> (tf.image.resize method, antialias)
RESIZE_METHODS = {
    "bilinear": ("bilinear", False),
    "bilinear_antialias": ("bilinear", True),
    "area": ("area", False),
    "bicubic": ("bicubic", False),
}


def decode_image(path) -> tf.Tensor:
    """An image file as uint8 RGB (h, w, 3); JPEG, PNG, GIF (first frame), BMP, WebP."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def resize_image(image: tf.Tensor, size: int, resize: str = "bilinear") -> tf.Tensor:
    """``image`` as float32 RGB 0..255 at (size, size) (the aspect ratio is not kept, as in the seed)."""
    method, antialias = RESIZE_METHODS[resize]
    resized = tf.image.resize(image, (size, size), method=method, antialias=antialias)
    if method == "bicubic":  # bicubic overshoots: keep the 0..255 range the backbones expect
        resized = tf.clip_by_value(resized, 0.0, 255.0)
    return tf.cast(resized, tf.float32)


def load_image(path, size: int, resize: str = "bilinear") -> tf.Tensor:
    """One image as the extractors see it: float32 RGB 0..255 at (size, size)."""
    return resize_image(decode_image(path), size, resize)


def _resize_keys(views: Sequence[View]) -> list[tuple[int, str]]:
    """The distinct (size, resize) pairs of ``views``: each is resized once per image."""
    return sorted({(view.size, view.resize) for view in views})


def _all_resizes(path, keys: list[tuple[int, str]]) -> tuple[tf.Tensor, ...]:
    image = decode_image(path)  # once for every view
    return tuple(resize_image(image, size, resize) for size, resize in keys)


def view_batches(models: dict[int, object], paths: list[str], views: Sequence[View], batch_size: int,
                 prefetch: bool | None = None) -> Iterator[list[np.ndarray]]:
    """Yield, batch by batch in the order of ``paths``, one float32 feature array per view
    (:class:`ViewRunner`, traced for this one call)."""
    return ViewRunner(models, views, batch_size, prefetch).batches(paths)


class ViewRunner:
    """``models`` seen through ``views`` as one traced step: ``batches(paths)`` yields, batch by
    batch in the order of ``paths``, one float32 feature array per view.

    The step is traced once, when the runner is built, and reused by every ``batches`` call
    (predict's and the engine workers' chunks: tracing again for each chunk would cost time
    and keep each chunk's graph in memory).

    ``models[size]`` is the extractor for input size ``size`` (one model may serve several
    sizes): a Keras model, run inside the TensorFlow graph that decodes the batch, or a
    runtime's callable ``float32 NHWC array -> features`` (:mod:`fewlabel.features.runtimes`), run on
    the pixels that graph returns. Either way each image is decoded once for all its views.
    On a GPU (Keras models only), a tf.data pipeline decodes and resizes the next batches on
    the CPU in parallel (prefetch) while the GPU runs the models (XLA-compiled when Keras would
    compile them, with the last batch padded so only one shape is compiled). On a CPU-only
    machine the models already use every core, and decoding ahead on other threads slows every
    forward pass (measured for EfficientNetB0 on 2 cores: about 0.65x the bare model's speed);
    there, one graph decodes a batch of paths in parallel and then runs the models (about
    0.93x). ``prefetch`` forces one or the other (None: by device). A corrupt image raises a
    PipelineError naming the file.
    """

    def __init__(self, models: dict[int, object], views: Sequence[View], batch_size: int,
                 prefetch: bool | None = None):
        self.views, self.batch_size = list(views), batch_size
        self.keys = _resize_keys(self.views)
        key_index = {key: i for i, key in enumerate(self.keys)}
        pixel_specs = tuple(tf.TensorSpec([size, size, 3], tf.float32) for size, _ in self.keys)
        in_graph = all(isinstance(model, keras.Model) for model in models.values())
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
        self.prefetch = in_graph and (on_gpu if prefetch is None else prefetch)
        self.jit = on_gpu and self.prefetch and all(bool(getattr(m, "jit_compile", False)) for m in models.values())

        def view_pixels(resized) -> list[tf.Tensor]:
            """One batch of pixels per view (mirrored ones reversed along the width)."""
            pixels = [resized[key_index[(view.size, view.resize)]] for view in self.views]
            return [tf.reverse(p, axis=[2]) if view.mirrored else p for view, p in zip(self.views, pixels)]

        def run_models(resized):
            """Each size's model called once, on its views' batches stacked (an image and its
            mirror: one call, not two), so the graph traced holds one model per size, which
            halves the tracing with flip_tta; every layer works image by image, so the features
            are the same (a test checks them against the model called on each view)."""
            pixels, features = view_pixels(resized), [None] * len(self.views)
            for size in dict.fromkeys(view.size for view in self.views):
                members = [i for i, view in enumerate(self.views) if view.size == size]
                stacked = models[size](tf.concat([pixels[i] for i in members], axis=0), training=False)
                for i, part in zip(members, tf.split(stacked, len(members), axis=0)):
                    features[i] = part
            return tuple(features)

        keys = self.keys

        def decode(batch_paths):
            return tf.map_fn(lambda p: _all_resizes(p, keys), batch_paths,
                             fn_output_signature=pixel_specs, parallel_iterations=64)

        signature = [tf.TensorSpec([None], tf.string)]
        if self.prefetch:
            self.step = trace = tf.function(lambda *resized: run_models(resized), jit_compile=self.jit,
                                            input_signature=[tf.TensorSpec([None, s, s, 3], tf.float32)
                                                             for s, _ in self.keys])
        elif in_graph:
            self.step = trace = tf.function(lambda batch_paths: run_models(decode(batch_paths)),
                                            input_signature=signature)
        else:
            trace = tf.function(lambda batch_paths: view_pixels(decode(batch_paths)), input_signature=signature)

            def step(batch_paths):
                return [models[view.size](pixels.numpy()) for view, pixels in zip(self.views, trace(batch_paths))]
            self.step = step
        trace.get_concrete_function()  # trace now, not in the first batch

    def batches(self, paths: list[str]) -> Iterator[list[np.ndarray]]:
        """The features of ``paths``, one list of arrays (one per view) per batch."""
        paths = [str(p) for p in paths]
        keys, batch_size = self.keys, self.batch_size
        if self.prefetch:
            dataset = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
            dataset = dataset.map(lambda p: _all_resizes(p, keys), num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True)
            batches = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        else:
            batches = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).batch(batch_size).prefetch(1)

        def generate():
            iterator, done = iter(batches), 0
            while done < len(paths):
                try:
                    batch = next(iterator)
                    if self.prefetch:
                        n = int(batch[0].shape[0])
                        if self.jit and n < batch_size:  # pad the last batch: one compiled shape only
                            batch = tuple(tf.concat([b, tf.zeros([batch_size - n, *b.shape[1:]])], axis=0)
                                          for b in batch)
                        outputs = self.step(*batch)
                    else:
                        n = int(batch.shape[0])
                        outputs = self.step(batch)
                    features = [np.asarray(output, dtype=np.float32)[:n] for output in outputs]
                except tf.errors.OpError as error:
                    raise find_bad_image(paths[done:], error) from error
                done += n
                yield features

        return generate()


def tf_reason(error: Exception) -> str:
    """'Invalid JPEG data or crop window.' out of TensorFlow's '{{function_node ..}} ... [Op:..]'."""
    lines = (getattr(error, "message", None) or str(error)).strip().splitlines()
    text = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", lines[-1] if lines else "").strip()
    return text or type(error).__name__


def find_bad_image(paths: list[str], error: Exception) -> PipelineError:
    """A batch failed somewhere in ``paths``: decode them one by one to name every bad file."""
    from fewlabel.features.screening import undecodable, unreadable_images_error

    bad = undecodable(paths)
    return unreadable_images_error(bad) if bad else PipelineError(f"reading the images failed: {tf_reason(error)}")

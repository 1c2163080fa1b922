"""Where in the photo: one map per class, from the feature maps the backbone computes before pooling.

The model (scaler, kernel map, one Platt-scaled SVM per class) was trained on pooled vectors
``p`` (the mean of the feature map's locations, then of the views). Each location ``f`` of a
view's map becomes a vector the same fitted model scores:

- ``norm`` (the default: it pointed best in ``bench/pointing.py``, smoothed; docs/heatmaps.md): ``f``
  scaled to the mean norm of the pooled training vectors (of its backbone's block), then the
  model: a location scored as a photo of typical strength made of that location alone.
- ``linear``: the model's kernel values linearised at ``p`` (a Grad-CAM-like first-order weight
  of each channel) and extrapolated to the whole step ``p -> f``; then the model's own SVMs and
  calibration: the probability, to first order around this photo, of a photo that looked like
  that location everywhere.
- ``mix``: the model evaluated exactly at ``p + step (f - p)``.
- ``raw``: the model at ``f`` itself (``step`` 1).

Values are the model's class probabilities, so they compare across photos. Views (sizes, the
mirror, flipped back) are averaged on the finest grid, then smoothed (:func:`smooth`, a Gaussian
of ``SMOOTHING`` cells: a class's maximum then falls where several neighbouring locations agree,
not on one stray location); :func:`upsample` aligns a grid to the original photo (the views
stretch the photo to a square, so a cell covers the same fraction of height and width of the
photo). Maps are computed batch by batch: no feature map outlives its batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.model.svm import positive_probabilities

if TYPE_CHECKING:  # the feature modules load TensorFlow: imported where used, so the CLI starts fast
    from fewlabel.features.recipes import Recipe
    from fewlabel.features.recipes import View

METHODS = ("norm", "linear", "mix", "raw")
DEFAULT_METHOD = "norm"  # the best pointing of bench/pointing.py on devdata, with SMOOTHING (docs/heatmaps.md)
#: The step of ``linear`` (a finite difference of the kernel values, in float64) and of ``mix``.
LINEAR_STEP = 1e-3
MIX_STEP = 0.25
#: The Gaussian's sigma, in cells of the finest grid, that smooths the averaged maps: chosen among
#: 0, 0.5, 1 and 2 on bench/pointing.py's selection half (Lite0, 1,500 photos: pointing 87.3
#: unsmoothed, 88.9 at 1; docs/heatmaps.md has the report half).
SMOOTHING = 1.0


@dataclass(frozen=True)
class Heatmap:
    """One photo's maps: ``grid`` (classes x h x w, probabilities) at the feature maps' resolution,
    ``probabilities`` the photo's own (classes,), ``height`` x ``width`` the photo's pixels."""
    path: str
    probabilities: np.ndarray
    grid: np.ndarray
    height: int
    width: int

    def maps(self, classes: Sequence[int] | None = None) -> np.ndarray:
        """The maps of ``classes`` (indices; all by default) aligned to the photo: k x height x width."""
        grid = self.grid if classes is None else self.grid[list(classes)]
        return upsample(grid, self.height, self.width)


def interpolation_matrix(target: int, source: int) -> np.ndarray:
    """(target x source) bilinear weights with half-pixel centres: cell ``j`` of ``source``
    cells spanning the same extent as ``target`` pixels has its centre at pixel (j + 0.5) *
    target / source - 0.5 (edges held)."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = position - low
    matrix = np.zeros((target, source))
    matrix[np.arange(target), low] += 1 - weight
    matrix[np.arange(target), high] += weight
    return matrix


def upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """(k, h, w) -> (k, height, width), bilinear, each cell over its share of the photo."""
    rows, columns = interpolation_matrix(height, grid.shape[-2]), interpolation_matrix(width, grid.shape[-1])
    return np.einsum("Hh,khw,Ww->kHW", rows, grid, columns, optimize=True).astype(np.float32)


def training_vectors(model) -> np.ndarray:
    """The model's pooled training vectors before its scaler (exact kernel), or its Nystroem
    landmarks (a random subset of them): what ``norm`` takes its reference norm from."""
    kernel = model[-2]
    scaled = kernel.train_features_ if hasattr(kernel, "train_features_") else kernel.nystroem_.components_
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    scaler = model[0]
    if isinstance(scaler, StandardScaler):
        return scaler.inverse_transform(scaled)
    if isinstance(scaler, FunctionTransformer):  # the signed square root (svm.scaler: sqrt), squared back
        return np.sign(scaled) * scaled ** 2
    return scaled  # none; or l2, where every row has norm 1 after the scaler: the scale does not matter


def _scaled_rows(pooled: np.ndarray, locations: np.ndarray, offset: int, method: str, step: float,
                 reference_norm) -> np.ndarray:
    """(n, L, d) feature rows: each image's pooled vector with its block at ``offset`` moved to
    (or towards) each location (n, L, c)."""
    rows = np.repeat(pooled[:, None, :].astype(np.float64), locations.shape[1], axis=1)
    block = slice(offset, offset + locations.shape[2])
    if method == "norm":
        if np.ndim(reference_norm):  # training vectors: the mean norm of this block
            reference_norm = float(np.linalg.norm(reference_norm[:, block], axis=1).mean())
        norms = np.linalg.norm(locations, axis=2, keepdims=True)
        rows[:, :, block] = locations * (reference_norm / np.maximum(norms, 1e-12))
    elif method == "raw":
        rows[:, :, block] = locations
    else:
        rows[:, :, block] += step * (locations - rows[:, :, block])
    return rows


def class_grids(model, recipes: Sequence[Recipe], pooled: np.ndarray,
                view_maps: Sequence[dict[View, np.ndarray]], method: str = DEFAULT_METHOD,
                step: float | None = None, reference_norm: float | None = None,
                smoothing: float = SMOOTHING) -> np.ndarray:
    """Per image and class, the probability map (n x classes x h x w) on the finest views' grid,
    the views averaged then smoothed (:func:`smooth`, sigma ``smoothing`` cells; 0: none).

    ``model``: the fitted pipeline (scaler, kernel map, per-class SVMs); ``pooled``: the images'
    feature rows (n x d, as the model takes them); ``view_maps``: per recipe (in the order of the
    features' blocks), each view's feature maps (n x h x w x c, mirrored views as the backbone
    saw them: they are flipped back here). ``method`` and ``step``: see the module's docstring;
    ``reference_norm`` (``norm`` only): a number, or training vectors (n x d) whose mean norm per
    backbone block is taken; None: :func:`training_vectors` of the model.
    """
    grids = view_grids(model, recipes, pooled, view_maps, method, step, reference_norm)
    return smooth(combine_grids(list(grids.values())), smoothing)


def view_grids(model, recipes: Sequence[Recipe], pooled: np.ndarray, view_maps: Sequence[dict[View, np.ndarray]],
               method: str = DEFAULT_METHOD, step: float | None = None,
               reference_norm: float | None = None) -> dict[tuple[int, View], np.ndarray]:
    """:func:`class_grids` per (recipe index, view), before the views are averaged."""
    if method not in METHODS:
        raise PipelineError(f"heatmap method '{method}': use one of {', '.join(METHODS)}")
    if method == "norm" and reference_norm is None:
        reference_norm = training_vectors(model)
    step = step if step is not None else (LINEAR_STEP if method == "linear" else MIX_STEP)
    pooled = np.asarray(pooled, dtype=np.float64)
    n = len(pooled)
    kernel_map, classifier = model[:-1], model[-1]
    base = kernel_map.transform(pooled) if method == "linear" else None
    grids, offset = {}, 0
    for index, (recipe, maps) in enumerate(zip(recipes, view_maps)):
        channels = None
        for view in recipe.views():
            block = np.asarray(maps[view])
            if view.mirrored:
                block = block[:, :, ::-1]
            _, h, w, channels = block.shape
            at = offset + (recipe.sizes.index(view.size) * channels if recipe.combine == "concat" else 0)
            rows = _scaled_rows(pooled, block.reshape(n, h * w, channels), at, method, step, reference_norm)
            mapped = kernel_map.transform(rows.reshape(n * h * w, -1))
            if method == "linear":  # kernel values at p + step (f - p), extrapolated to f
                mapped = mapped.reshape(n, h * w, -1)
                mapped = (base[:, None, :] + (mapped - base[:, None, :]) / step).reshape(n * h * w, -1)
            probability = positive_probabilities(classifier, mapped)
            grids[(index, view)] = probability.reshape(n, h, w, -1).transpose(0, 3, 1, 2)
        offset += channels * (len(recipe.sizes) if recipe.combine == "concat" else 1)
    if offset != pooled.shape[1]:
        raise PipelineError(f"the feature maps have {offset} channels in all, the features {pooled.shape[1]}: "
                            f"the maps do not come from the backbones the model was trained on")
    return grids


def combine_grids(grids: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of views' grids (n x classes x h x w each) on the finest of them."""
    height, width = max(g.shape[2] for g in grids), max(g.shape[3] for g in grids)
    total = np.zeros((len(grids[0]), grids[0].shape[1], height, width))
    for grid in grids:
        if grid.shape[2:] == (height, width):
            total += grid
        else:  # a smaller view's grid, resampled onto the finest one
            total += np.einsum("Hh,nkhw,Ww->nkHW", interpolation_matrix(height, grid.shape[2]), grid,
                               interpolation_matrix(width, grid.shape[3]), optimize=True)
    return (total / len(grids)).astype(np.float32)


def smooth(grids: np.ndarray, sigma: float) -> np.ndarray:
    """Each map of ``grids`` (... x h x w) blurred by a Gaussian of ``sigma`` cells (scipy's, cut
    at 4 sigma; the edge cells repeated outwards, so a flat map stays flat); 0: unchanged."""
    if not sigma:
        return grids
    from scipy.ndimage import gaussian_filter

    sigmas = (0,) * (grids.ndim - 2) + (sigma, sigma)
    return gaussian_filter(np.asarray(grids, dtype=np.float64), sigmas, mode="nearest").astype(np.float32)


def pooled_features(recipes: Sequence[Recipe], view_maps: Sequence[dict[View, np.ndarray]]) -> np.ndarray:
    """The feature rows of these maps, as the extractors pool and join them (global average
    pooling of each view, then the recipes' way of joining views and backbones)."""
    from fewlabel.features.recipes import assemble

    pooled = {recipe.backbone: {view: maps[view].mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
                                for view in recipe.views()} for recipe, maps in zip(recipes, view_maps)}
    return assemble(list(recipes), pooled)


def map_model(pooled_model):
    """The Keras model that outputs ``pooled_model``'s feature map before its global average pooling."""
    import keras

    last = pooled_model.layers[-1]
    if isinstance(last, keras.layers.GlobalAveragePooling2D):  # a .keras file's map, pooled by us
        return keras.Model(pooled_model.inputs, last.input)
    if isinstance(last, keras.Model) and isinstance(last.layers[-1], keras.layers.GlobalAveragePooling2D):
        inner = keras.Model(last.inputs, last.layers[-1].input)  # keras.applications with pooling='avg'
        return keras.Model(pooled_model.inputs, inner(pooled_model.layers[-2].output))
    raise PipelineError(f"{pooled_model.name}: the backbone has no feature map before its pooling (a vector or "
                        f"token model); heatmaps need a convolutional backbone (an EfficientNet, a .keras "
                        f"model whose output is a feature map)")


class FeatureMaps:
    """The recipes' backbones as feature-map models (Keras), run batch by batch through the
    same decoding and views as the extractors (:class:`fewlabel.features.views.ViewRunner`)."""

    def __init__(self, recipes: Sequence[Recipe], weights: str | None, batch_size: int = 8):
        from fewlabel.features.keras_models import build_extractor
        from fewlabel.features.hub import is_hub_backbone
        from fewlabel.features.views import ViewRunner

        self.recipes, self.batch_size, self.runners = list(recipes), batch_size, []
        for recipe in self.recipes:
            if is_hub_backbone(recipe.backbone):
                raise PipelineError(f"{recipe.backbone}: heatmaps need a convolutional backbone (EfficientNet or a "
                                    f".keras feature-map model), not a keras-hub patch encoder")
            models = {size: map_model(build_extractor(recipe.backbone, weights, size)[0]) for size in recipe.sizes}
            self.runners.append(ViewRunner(models, recipe.views(), batch_size))

    def batches(self, paths: Sequence[str]) -> Iterator[tuple[list[str], list[dict[View, np.ndarray]]]]:
        """(the batch's paths, per recipe {view: maps n x h x w x c}), batch by batch."""
        paths = [str(p) for p in paths]
        done = 0
        for per_recipe in zip(*(runner.batches(paths) for runner in self.runners)):
            n = len(per_recipe[0][0])
            yield paths[done:done + n], [dict(zip(recipe.views(), arrays))
                                         for recipe, arrays in zip(self.recipes, per_recipe)]
            done += n


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    from PIL import Image
    with Image.open(path) as image:
        return image.height, image.width


def heatmap_batches(model, recipes: Sequence[Recipe], maps: FeatureMaps, paths: Sequence[str],
                    method: str = DEFAULT_METHOD) -> Iterator[list[Heatmap]]:
    """Per batch of readable ``paths``, their :class:`Heatmap`: one CNN pass gives both the photo's
    probabilities (from the pooled maps) and its maps."""
    for batch_paths, view_maps in maps.batches(paths):
        pooled = pooled_features(recipes, view_maps)
        probabilities = positive_probabilities(model, pooled)
        grids = class_grids(model, recipes, pooled, view_maps, method)
        del view_maps  # the batch's feature maps end here
        yield [Heatmap(path, probabilities[i], grids[i], *image_size(path)) for i, path in enumerate(batch_paths)]

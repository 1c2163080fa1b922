"""featurize: the feature extractors, the input pipeline, the per-image cache and the CLI.

Models use random weights (``weights: None``; no download) at 64x64, so they are small and
fast. Random-init features are tiny (EfficientNetB0: ~1e-5), so closeness is checked
relative to the features' scale. Tests whose point holds for any backbone (the cache, how
views combine, the view choice) run the tests' tiny CNN (:func:`tiny`, tests/tiny_backbone.py).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewlabel.features.backbones import default_input_size
from fewlabel.features.keras_models import build_extractor
from fewlabel.errors import PipelineError
from fewlabel.artifacts import feature_signature, read_features as load_features
from fewlabel.features.recipes import Recipe, candidate_recipes, recipes_from_meta
from fewlabel.model.selection import choose_recipes
from fewlabel.features.extract import extract_features, extractor_key
from fewlabel.io import file_md5
from fewlabel.params import FeaturesParams
from fewlabel.features.views import View, load_image, view_batches
from tests.conftest import REPORT_TENSORFLOW
from tests.tiny_backbone import PATH as TINY_BACKBONE_PATH
from tests.synthetic import tiny_features

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
TINY, TINY_DIM = str(TINY_BACKBONE_PATH), 64  # tests/tiny_backbone.py: its feature map has 64 channels


def params(**changes) -> FeaturesParams:
    return tiny_features(**{"image_size": SIZE, "batch_size": 4, **changes})


def tiny(**changes) -> FeaturesParams:
    """:func:`params` on the tests' tiny random CNN, for what holds for any backbone (the cache,
    how views combine): it builds and traces in a fraction of EfficientNetB0's time."""
    return params(**{"backbones": TINY, **changes})


def write_jpeg(path: Path, seed: int, size=(56, 40)) -> Path:
    """A small JPEG with structure (a gradient, a box, noise) that differs with the seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    image = 255 * (x * rng.uniform(size=3) + y * rng.uniform(size=3)) / 2
    x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
    image[y0:y0 + height // 3, x0:x0 + width // 3] = rng.uniform(0, 255, 3)
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=90)
    return path


@pytest.fixture
def images(tmp_path) -> list[str]:
    """Eight JPEGs of varied sizes named like VOC ids."""
    sizes = [(56, 40), (40, 56), (64, 64), (100, 75), (33, 47), (56, 40), (80, 30), (48, 48)]
    return [str(write_jpeg(tmp_path / "img" / f"{i:06d}.jpg", seed=i, size=s)) for i, s in enumerate(sizes)]


def direct(model, paths: list[str], size: int = SIZE, mirror: bool = False) -> np.ndarray:
    """The Keras model called directly on the decoded + resized images."""
    batch = np.stack([load_image(p, size).numpy() for p in paths])
    if mirror:
        batch = batch[:, :, ::-1]
    return np.asarray(model(batch, training=False))


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: float = 1e-4) -> None:
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    error = float(np.abs(actual - expected).max())
    assert error <= tol * scale, f"max difference {error:.3g} exceeds {tol} x feature scale {scale:.3g}"


# --------------------------------------------------------------------------- backbones

def test_default_input_sizes():
    assert [default_input_size(f"EfficientNetB{i}") for i in range(8)] == [224, 240, 260, 300, 380, 456, 528, 600]
    assert [default_input_size(n) for n in ("EfficientNetV2B3", "EfficientNetV2S", "EfficientNetV2M",
                                            "EfficientNetV2L", "InceptionV3", "Xception", "NASNetLarge",
                                            "ResNet50")] == [300, 384, 480, 480, 299, 299, 331, 224]


def test_unknown_backbone_names_close_matches(images):
    with pytest.raises(PipelineError) as error:
        extract_features(images, params(backbones="EfficientNetB9"), progress=False)
    message = str(error.value)
    assert "features.backbones" in message and "'EfficientNetB9'" in message
    assert "did you mean EfficientNetB7" in message and ".keras" in message
    with pytest.raises(PipelineError, match="did you mean ResNet50"):
        build_extractor("resnet50", None, SIZE)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
@pytest.mark.slow
def test_imagenet_download_failure_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path / "keras-home"))
    with pytest.raises(PipelineError) as error:
        build_extractor("MobileNetV3Small", "imagenet", SIZE)
    message = str(error.value)
    fname = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    assert f"Download {fname} from https://storage.googleapis.com/" in message
    assert str(tmp_path / "keras-home" / "models" / fname) in message
    assert "~/.keras/models/" in message and "features.weights" in message


# --------------------------------------------------------------------------- extraction

@pytest.mark.slow
def test_features_match_the_model_called_directly_in_order(images, isolated_cache, monkeypatch):
    features, stats = extract_features(images, params(), progress=False)
    assert features.dtype == np.float32 and features.shape == (len(images), 1280)
    assert stats["n_extracted"] == len(images) and stats["n_cached"] == 0
    assert stats["dims"] == [1280] and stats["input_sizes"] == [[SIZE]] and stats["images_per_second"] > 0

    model, size = build_extractor("EfficientNetB0", None, SIZE)
    assert size == SIZE
    expected = direct(model, images)
    assert_close(features, expected)
    assert np.abs(expected[0] - expected[1]).max() > 0.1 * np.abs(expected).max()  # images differ

    # both input pipelines (the GPU one prefetches with tf.data) give the same rows in order
    for prefetch in (True, False):
        batches = list(view_batches({SIZE: model}, images, [View(SIZE)], batch_size=3, prefetch=prefetch))
        assert [len(b[0]) for b in batches] == [3, 3, 2]
        assert_close(np.concatenate([b[0] for b in batches]), expected)

    # another order, extracted afresh (new cache): rows follow the input order
    monkeypatch.setenv("FEWLABEL_CACHE_DIR", str(isolated_cache / "other"))
    reordered, stats = extract_features(images[::-1], params(batch_size=3), progress=False)
    assert stats["n_extracted"] == len(images)
    assert_close(reordered, expected[::-1])


@pytest.mark.slow
def test_flip_tta_is_the_mean_of_image_and_mirror(images):
    features, _ = extract_features(images[:4], params(flip_tta=True), progress=False)
    model, _ = build_extractor("EfficientNetB0", None, SIZE)
    expected = (direct(model, images[:4]) + direct(model, images[:4], mirror=True)) / 2
    assert_close(features, expected)
    assert not np.allclose(features, direct(model, images[:4]), rtol=1e-3, atol=0)


@pytest.mark.slow
def test_two_backbones_concatenate_in_order(images):
    first, _ = extract_features(images, params(), progress=False)
    both, stats = extract_features(images, params(backbones=("EfficientNetB0", "MobileNetV3Small")),
                                   progress=False)
    assert stats["dims"] == [1280, 576] and both.shape == (len(images), 1280 + 576)
    per_backbone = {b["name"]: b for b in stats["per_backbone"]}
    assert per_backbone["EfficientNetB0"]["n_cached"] == len(images)  # its own cache, reused
    assert per_backbone["MobileNetV3Small"]["n_extracted"] == len(images)
    np.testing.assert_array_equal(both[:, :1280], first)
    small, _ = build_extractor("MobileNetV3Small", None, SIZE)
    assert_close(both[:, 1280:], direct(small, images))

    swapped, stats = extract_features(images, params(backbones=("MobileNetV3Small", "EfficientNetB0")),
                                      progress=False)
    assert stats["n_extracted"] == 0 and stats["dims"] == [576, 1280]
    np.testing.assert_array_equal(swapped, np.concatenate([both[:, 1280:], both[:, :1280]], axis=1))


@pytest.mark.slow
def test_second_run_is_served_from_the_cache(images, isolated_cache):
    """The cache's layout and keys, on the tests' tiny CNN (a .keras file: keyed by its bytes)."""
    first, _ = extract_features(images, tiny(), progress=False)
    second, stats = extract_features(images, tiny(batch_size=2), progress=False)  # batch size: same key
    assert stats["n_extracted"] == 0 and stats["n_cached"] == len(images)
    assert stats["images_per_second"] is None and stats["per_backbone"][0]["extract_seconds"] == 0
    np.testing.assert_array_equal(first, second)

    # cache layout: <cache>/features/<backbone>-<view>-<key hash>/{key.json, <sha1[:2]>/<sha1>.npy}
    (folder,) = (isolated_cache / "features").iterdir()
    assert folder.name.startswith(f"tiny_backbone-{SIZE}-bilinear-")
    key = json.loads((folder / "key.json").read_text())
    assert key["backbone"] == {"keras_file_md5": file_md5(TINY)} and key["weights"] == "stored" and key["size"] == SIZE
    # a keras.applications backbone is keyed by its name and weights
    assert {k: extractor_key("EfficientNetB0", None)[k] for k in ("backbone", "weights")} == \
        {"backbone": "EfficientNetB0", "weights": "none"}
    assert key["resize"] == "bilinear" and key["mirrored"] is False
    assert len(list(folder.glob("*/*.npy"))) == len(images)

    # each view has its own cache entry: another size, the mirror, another resize method
    _, stats = extract_features(images[:2], tiny(image_size=48), progress=False)
    assert stats["n_extracted"] == 2 and stats["input_sizes"] == [[48]]
    _, stats = extract_features(images[:2], tiny(flip_tta=True), progress=False)
    assert stats["n_extracted"] == 2 and stats["per_backbone"][0]["views"] == [f"{SIZE}-bilinear",
                                                                              f"{SIZE}-bilinear-mirror"]
    _, stats = extract_features(images[:2], tiny(resize="area"), progress=False)
    assert stats["n_extracted"] == 2
    folders = sorted(f.name.rsplit("-", 1)[0] for f in (isolated_cache / "features").iterdir())
    assert folders == ["tiny_backbone-48-bilinear", f"tiny_backbone-{SIZE}-area", f"tiny_backbone-{SIZE}-bilinear",
                       f"tiny_backbone-{SIZE}-bilinear-mirror"]
    # a view combination made of cached views extracts nothing
    _, stats = extract_features(images[:2], tiny(image_size=(SIZE, 48), flip_tta=False), progress=False)
    assert stats["n_extracted"] == 0


@pytest.mark.slow
def test_changed_subset_extracts_only_new_images(images, tmp_path):
    _, stats = extract_features(images[:5], tiny(), progress=False)
    assert stats["n_extracted"] == 5
    copy = tmp_path / "copy-of-000001.jpg"  # same bytes under another name: same cache entry
    copy.write_bytes(Path(images[1]).read_bytes())
    subset = images[2:4] + [images[6], str(copy), images[7], images[0]]
    features, stats = extract_features(subset, tiny(), progress=False)
    assert stats["n_extracted"] == 2 and stats["n_cached"] == 4 and stats["n_images"] == 6
    full, _ = extract_features(images, tiny(), progress=False)
    np.testing.assert_array_equal(features, full[[2, 3, 6, 1, 7, 0]])


@pytest.mark.slow
def test_corrupt_images_are_named(images, tmp_path):
    garbage = tmp_path / "img" / "garbage.jpg"
    garbage.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(PipelineError, match=f"{garbage}: not an image"):
        extract_features(images + [str(garbage)], params(), progress=False)

    truncated = tmp_path / "img" / "truncated.jpg"
    truncated.write_bytes(Path(images[3]).read_bytes()[:300])
    with pytest.raises(PipelineError) as error:
        extract_features(images[:4] + [str(truncated)] + images[4:], params(batch_size=2), progress=False)
    assert str(error.value).startswith("1 image(s) cannot be read")
    assert f"\n  {truncated}: a damaged or truncated JPEG file that cannot be decoded" in str(error.value)
    # found before any extraction; fixing the file, the run goes through
    write_jpeg(truncated, seed=99)
    _, stats = extract_features(images[:4] + [str(truncated)] + images[4:], params(batch_size=2),
                                progress=False)
    assert stats["n_extracted"] == len(images) + 1

    with pytest.raises(PipelineError, match="missing.jpg: image not found"):
        extract_features([str(tmp_path / "missing.jpg")], params(), progress=False)


@pytest.mark.slow
def test_keras_file_backbone_and_weights_file(images, tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3))
    feature_map = keras.layers.Conv2D(6, 3, strides=2, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    custom = keras.Model(inputs, feature_map)
    path = tmp_path / "tiny.keras"
    custom.save(path)
    features, stats = extract_features(images, params(backbones=str(path)), progress=False)
    assert stats["dims"] == [6] and stats["input_sizes"] == [[32]]  # its input shape wins over image_size
    batch = np.stack([load_image(p, 32).numpy() for p in images])
    assert_close(features, np.asarray(custom(batch)).mean(axis=(1, 2)))

    # a weights file for a keras.applications model; its md5 is part of the cache key
    keras.utils.set_random_seed(7)
    other = keras.applications.MobileNetV3Small(include_top=False, pooling="avg", weights=None,
                                                input_shape=(SIZE, SIZE, 3))
    weights = tmp_path / "small.weights.h5"
    other.save_weights(weights)
    loaded, _ = extract_features(images[:3], params(backbones="MobileNetV3Small", weights=str(weights)),
                                 progress=False)
    model, _ = build_extractor("MobileNetV3Small", str(weights), SIZE)
    assert_close(loaded, direct(model, images[:3]))
    random, _ = extract_features(images[:3], params(backbones="MobileNetV3Small"), progress=False)
    assert not np.allclose(loaded, random, rtol=1e-2, atol=0)
    with pytest.raises(PipelineError, match="features.weights: 'nope.h5'"):
        extract_features(images[:3], params(weights="nope.h5"), progress=False)


# --------------------------------------------------------------------------- views

@pytest.mark.slow
def test_multi_scale_features_are_the_mean_or_concatenation_of_single_sizes(images):
    small, _ = extract_features(images, tiny(image_size=48), progress=False)
    large, _ = extract_features(images, tiny(image_size=SIZE), progress=False)
    mean, stats = extract_features(images, tiny(image_size=(48, SIZE)), progress=False)
    assert stats["n_extracted"] == 0 and stats["input_sizes"] == [[48, SIZE]] and stats["dims"] == [TINY_DIM]
    np.testing.assert_allclose(mean, (small.astype(np.float64) + large) / 2, rtol=1e-6, atol=0)
    concat, stats = extract_features(images, tiny(image_size=(48, SIZE), combine="concat"), progress=False)
    assert stats["dims"] == [2 * TINY_DIM]
    np.testing.assert_array_equal(concat, np.concatenate([small, large], axis=1))

    # with flip: each size's features are the mean of the image and its mirror, then combined
    flipped, _ = extract_features(images, tiny(image_size=(48, SIZE), flip_tta=True), progress=False)
    flip_small, _ = extract_features(images, tiny(image_size=48, flip_tta=True), progress=False)
    flip_large, _ = extract_features(images, tiny(image_size=SIZE, flip_tta=True), progress=False)
    np.testing.assert_allclose(flipped, (flip_small.astype(np.float64) + flip_large) / 2, rtol=1e-6, atol=0)


@pytest.mark.slow
def test_views_in_one_pass_equal_the_model_on_each_resized_image(images):
    """One decode feeds several sizes, resize methods and mirrors; each equals the direct call."""
    model, _ = build_extractor("EfficientNetB0", None, SIZE)
    small, _ = build_extractor("EfficientNetB0", None, 48)
    views = [View(SIZE, "area"), View(SIZE, "bicubic", True), View(48, "bilinear_antialias"), View(SIZE)]
    for prefetch in (False, True):
        batches = list(view_batches({SIZE: model, 48: small}, images, views, batch_size=3, prefetch=prefetch))
        outputs = [np.concatenate([b[i] for b in batches]) for i in range(len(views))]
        for view, output in zip(views, outputs):
            pixels = np.stack([load_image(p, view.size, view.resize).numpy() for p in images])
            if view.mirrored:
                pixels = pixels[:, :, ::-1]
            assert_close(output, np.asarray((small if view.size == 48 else model)(pixels, training=False)))
    # the resize methods give different pixels (so different views)
    area, bicubic = (load_image(images[3], SIZE, m).numpy() for m in ("area", "bicubic"))
    assert np.abs(area - bicubic).max() > 1 and bicubic.min() >= 0 and bicubic.max() <= 255


@pytest.mark.slow
def test_any_size_model_file_runs_at_native_224_and_auto_scales_from_it(images, tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    feature_map = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    path = tmp_path / "any_size.keras"
    keras.Model(inputs, feature_map).save(path)
    _, stats = extract_features(images[:2], params(backbones=str(path), image_size=None), progress=False)
    assert stats["input_sizes"] == [[224]]
    candidates = candidate_recipes(params(backbones=str(path), image_size="auto",
                                          select_scales=((1.0,), (1.5,), (1.0, 2.0))))
    assert [c[0].sizes for c in candidates] == [(224,), (352,), (224, 448)]


def any_size_model_file(path: Path) -> str:
    """A tiny .keras model that takes any input size (as the devdata EfficientNet-Lite files)."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    feature_map = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, feature_map).save(path)
    return str(path)


@pytest.mark.slow
def test_native_sizes_set_the_null_size_and_the_auto_candidates(images, tmp_path):
    path = any_size_model_file(tmp_path / "lite.keras")
    scales = ((1.0,), (1.5,), (1.0, 2.0))
    # a stated native size replaces the .keras file's 224 (Lite2: 260) and keeps B0's own 224
    stated = params(backbones=(path, "EfficientNetB0"), native_sizes=(260, None), image_size="auto",
                    select_scales=scales)
    assert [[r.sizes for r in c] for c in candidate_recipes(stated)] == \
        [[(260,), (224,)], [(384,), (352,)], [(260, 512), (224, 448)]]
    # a keras.applications name's stated size replaces its listed one too
    renamed = params(backbones="EfficientNetB0", native_sizes=(240,), image_size="auto", select_scales=scales)
    assert [c[0].sizes for c in candidate_recipes(renamed)] == [(240,), (352,), (240, 480)]
    _, stats = extract_features(images[:2], params(backbones=path, native_sizes=(96,), image_size=None),
                                progress=False)
    assert stats["input_sizes"] == [[96]]


def test_select_max_size_skips_candidates_with_larger_views():
    """B6 (native 528): the 1.5x candidate (800) is not tried under a 640 cap, nor a multi-scale one
    holding it; with no candidate under the cap, the smallest is kept; no cap tries them all."""
    scales = ((1.0,), (1.5,), (1.0, 1.5))
    capped = params(backbones="EfficientNetB6", image_size="auto", select_scales=scales, select_max_size=640)
    assert [[r.sizes for r in c] for c in candidate_recipes(capped)] == [[(528,)]]
    uncapped = params(backbones="EfficientNetB6", image_size="auto", select_scales=scales)
    assert [[r.sizes for r in c] for c in candidate_recipes(uncapped)] == [[(528,)], [(800,)], [(528, 800)]]
    tiny = params(backbones="EfficientNetB6", image_size="auto", select_scales=((1.5,), (1.0,)), select_max_size=64)
    assert [[r.sizes for r in c] for c in candidate_recipes(tiny)] == [[(528,)]]
    # two backbones: a candidate counts by its largest view (Lite0-like 224 -> 352 stays under 640)
    pair = params(backbones=("EfficientNetB0", "EfficientNetB6"), image_size="auto", select_scales=scales,
                  select_max_size=640)
    assert [[r.sizes for r in c] for c in candidate_recipes(pair)] == [[(224,), (528,)]]


@pytest.mark.slow
def test_a_native_size_enters_the_features_only_through_the_sizes_it_gives(images, tmp_path):
    from fewlabel.features.extract import resolve_runtime
    from fewlabel.features.recipes import build_meta, fixed_recipes

    path = any_size_model_file(tmp_path / "lite.keras")
    default, stated = (params(backbones=path, image_size="auto", select_scales=((1.0,), (1.5,)), native_sizes=n)
                       for n in (None, (224,)))
    assert candidate_recipes(default) == candidate_recipes(stated)
    default, stated = (params(backbones=path, image_size=None, native_sizes=n) for n in (None, (224,)))
    assert fixed_recipes(default) == fixed_recipes(stated)
    first, stats = extract_features(images[:3], default, progress=False)
    again, stats_again = extract_features(images[:3], stated, progress=False)
    assert stats["n_extracted"] == 3 and stats_again["n_extracted"] == 0  # the same per-image cache
    np.testing.assert_array_equal(first, again)
    runtime = resolve_runtime(default)
    assert build_meta(default, fixed_recipes(default), [4], runtime) == \
        build_meta(stated, fixed_recipes(stated), [4], runtime)
    # another native size gives other sizes, so other features
    _, other = extract_features(images[:3], params(backbones=path, image_size=None, native_sizes=(96,)),
                                progress=False)
    assert other["n_extracted"] == 3 and other["input_sizes"] == [[96]]


def labelled_images(folder: Path, n: int = 24) -> tuple[list[str], np.ndarray]:
    """``n`` small JPEGs and 0/1 targets of two classes (bright images, wide images)."""
    rng = np.random.default_rng(5)
    paths, targets = [], []
    for i in range(n):
        bright, wide = i % 2, (i // 2) % 2
        width, height = (60, 30) if wide else (36, 40)
        image = rng.uniform(0, 120, (height, width, 3)) + 120 * bright
        path = folder / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(path)
        paths.append(str(path))
        targets.append([bright, wide])
    return paths, np.array(targets)


@pytest.mark.slow
def test_view_choice_is_the_best_cross_validated_candidate(tmp_path):
    paths, targets = labelled_images(tmp_path / "img")
    auto = tiny(image_size="auto", select_scales=((0.5,), (1.0,), (0.5, 1.0)), select_folds=2)
    recipes, table, _ = choose_recipes(paths, targets, auto, ["bright", "wide"], progress=False)
    assert [sizes for (sizes,) in table["input_sizes"]] == [[128], [224], [128, 224]]
    best = int(table["cv_map"].idxmax())
    assert list(table["chosen"]) == [i == best for i in range(3)]
    assert [r.sizes for r in recipes] == [tuple(table["input_sizes"][best][0])]
    assert table["cost"].tolist() == [0.327, 1.0, 1.327]  # pixels relative to 224 x 224
    # the labels are what it scores against: other labels, other scores
    _, other, _ = choose_recipes(paths, targets[::-1].copy(), auto, ["bright", "wide"], progress=False)
    assert not np.allclose(other["cv_map"], table["cv_map"])


# --------------------------------------------------------------------------- the stage (CLI)

def run_stage(project: Path, env: dict, report_tensorflow: bool = False) -> subprocess.CompletedProcess:
    """The featurize stage in ``project``; with ``report_tensorflow``, its last line of output
    says whether it imported TensorFlow."""
    python = [sys.executable, "-c", REPORT_TENSORFLOW] if report_tensorflow else [sys.executable, "-m"]
    return subprocess.run(
        [*python, "stages.featurize", "--images", "data/raw/voc/JPEGImages",
         "--train", "data/subset/train.csv", "--eval", "data/subset/eval.csv", "--out-dir", "data/features",
         "--stats-out", "reports/featurize.json"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_stage_cli_writes_features_and_meta(tmp_path, isolated_cache):
    project = tmp_path / "project"
    jpegs = project / "data/raw/voc/JPEGImages"
    train_ids, eval_ids = ["000005", "000007", "000009", "000012"], ["000001", "000004", "000006"]
    for i, image_id in enumerate(train_ids + eval_ids):
        write_jpeg(jpegs / f"{image_id}.jpg", seed=i, size=(50 + 7 * i, 40))
    (project / "data/subset").mkdir(parents=True)
    (project / "data/subset/train.csv").write_text("image_id,split,cat\n" + "".join(f"{i},trainval,1\n" for i in train_ids))
    (project / "data/subset/eval.csv").write_text("image_id,split,cat\n" + "".join(f"{i},test,-1\n" for i in eval_ids))
    (project / "params.yaml").write_text(
        "features:\n  backbones: [EfficientNetB0]\n  weights: null\n  image_size: 64\n  batch_size: 4\n"
        "  flip_tta: false\n  runtime: keras\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FEWLABEL_CACHE_DIR": str(isolated_cache)}

    result = run_stage(project, env)
    assert result.returncode == 0, result.stderr
    ids, train = load_features(project / "data/features/train.npz", expected_ids=np.array(train_ids))
    assert train.shape == (4, 1280) and train.dtype == np.float32 and list(ids) == train_ids
    ids, evaluation = load_features(project / "data/features/eval.npz", expected_ids=np.array(eval_ids))
    assert evaluation.shape == (3, 1280)
    meta = json.loads((project / "data/features/meta.json").read_text())
    assert feature_signature(meta) == {"backbones": ["EfficientNetB0"], "dims": [1280], "input_sizes": [[64]],
                                       "resize": "bilinear", "combine": "mean", "weights": None,
                                       "flip_tta": False}
    assert meta["total_dim"] == 1280 and meta["keras_version"]
    run = json.loads((project / "reports/featurize.json").read_text())
    assert run["n_extracted"] == 7 and run["n_cached"] == 0 and run["images_per_second"] > 0
    assert "7 extracted" in result.stdout

    # what predict does: the meta's params reproduce the features, from the cache
    features_params, recipes = recipes_from_meta(meta)
    again, stats = extract_features([str(jpegs / f"{i}.jpg") for i in train_ids], features_params,
                                    progress=False, recipes=recipes)
    assert stats["n_extracted"] == 0
    np.testing.assert_array_equal(again, train)

    # the stage again, every vector cached: the same files, and no TensorFlow started (seconds)
    written = {name: (project / "data/features" / name).read_bytes() for name in ("train.npz", "eval.npz", "meta.json")}
    result = run_stage(project, env, report_tensorflow=True)
    assert result.returncode == 0, result.stderr
    assert "0 extracted, 7 from cache" in result.stdout
    assert result.stdout.rstrip().endswith("tensorflow imported: False"), result.stdout
    assert {name: (project / "data/features" / name).read_bytes() for name in written} == written

    (jpegs / "000004.jpg").unlink()
    result = run_stage(project, env)
    assert result.returncode == 1
    assert "data/raw/voc/JPEGImages/000004.jpg: image not found" in result.stderr
    assert "data/subset/eval.csv" in result.stderr


@pytest.mark.slow
def test_stage_chooses_views_from_training_labels_only(tmp_path, isolated_cache):
    """image_size: auto reads the train CSV's labels; shuffled eval labels change nothing (on the
    tests' tiny CNN: any backbone would do)."""
    project = tmp_path / "project"
    paths, targets = labelled_images(project / "data/raw/voc/JPEGImages", n=30)
    ids = [Path(p).stem for p in paths]
    rows = [f"{image_id},{'trainval' if i < 24 else 'test'},{2 * b - 1},{2 * w - 1}\n"
            for i, (image_id, (b, w)) in enumerate(zip(ids, targets))]
    (project / "data/subset").mkdir(parents=True)
    (project / "data/subset/train.csv").write_text("image_id,split,bright,wide\n" + "".join(rows[:24]))
    eval_csv = project / "data/subset/eval.csv"
    eval_csv.write_text("image_id,split,bright,wide\n" + "".join(rows[24:]))
    (project / "params.yaml").write_text(
        f"data:\n  classes: [bright, wide]\nfeatures:\n  backbones: ['{TINY}']\n  weights: null\n"
        "  image_size: auto\n  select_scales: [0.25, 0.5]\n  select_folds: 2\n  flip_tta: true\n  batch_size: 8\n"
        "  runtime: keras\n"
        "evaluate:\n  top_k: [1]\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FEWLABEL_CACHE_DIR": str(isolated_cache)}
    outputs = ("data/features/train.npz", "data/features/eval.npz", "data/features/meta.json")

    result = run_stage(project, env)
    assert result.returncode == 0, result.stderr
    assert "chosen by cross-validation" in result.stdout
    run = json.loads((project / "reports/featurize.json").read_text())
    candidates = run["view_selection"]["candidates"]
    assert list(candidates) == ["tiny_backbone@64 bilinear flip", "tiny_backbone@128 bilinear flip"]
    assert sum(c["chosen"] for c in candidates.values()) == 1
    best = max(candidates, key=lambda name: candidates[name]["cv_map"])
    assert candidates[best]["chosen"] and run["view_selection"]["chosen"] == best == run["views"]
    meta = json.loads((project / "data/features/meta.json").read_text())
    assert meta["input_sizes"] == [[64 if "@64" in best else 128]] and meta["flip_tta"] is True
    before = {name: (project / name).read_bytes() for name in outputs}

    eval_csv.write_text("image_id,split,bright,wide\n" + "".join(
        f"{line.split(',')[0]},test,{1 - 2 * (i % 2)},-1\n" for i, line in enumerate(rows[24:])))
    for name in outputs:
        (project / name).unlink()
    result = run_stage(project, env)
    assert result.returncode == 0, result.stderr
    for name in outputs:
        assert (project / name).read_bytes() == before[name], name
    assert json.loads((project / "reports/featurize.json").read_text())["view_selection"] == run["view_selection"]


def test_the_cache_key_reads_the_code_and_versions_as_the_imported_modules_give_them():
    """The feature cache key reads the extraction code from its source files and the versions
    from the installed packages' metadata (so a run whose every vector is cached starts no
    TensorFlow): the same text as inspect.getsource, the same versions as TensorFlow and Keras
    report, so the keys (and every cache made before) are unchanged."""
    import keras
    import tensorflow as tf
    from fewlabel.features import extract, views

    for module, names in extract.FEATURE_CODE + extract.HUB_FEATURE_CODE:
        imported = importlib.import_module(module)
        for name in names or (None,):
            expected = inspect.getsource(getattr(imported, name) if name else imported)
            assert extract.source_text(module, name) == expected, (module, name)
    parts = [getattr(importlib.import_module(module), name) for module, names in extract.FEATURE_CODE for name in names]
    source = "".join(inspect.getsource(part) for part in parts) + repr(views.RESIZE_METHODS)
    assert extract._feature_code_hash() == hashlib.sha1(source.encode()).hexdigest()[:16]
    key = extract.extractor_key("EfficientNetB0", None)
    assert (key["keras"], key["tensorflow"]) == (keras.__version__, tf.__version__)


def test_names_and_sizes_known_without_keras_are_keras_own(tmp_path):
    """The listed EfficientNets are accepted, and a .keras file's input size read from its
    config.json, without importing Keras (a run whose every vector is cached starts no
    TensorFlow): those answers, and the errors, are the ones Keras's own model gives."""
    import keras
    from fewlabel.features import backbones

    assert backbones._LISTED_APPLICATIONS <= set(backbones.application_names())
    keras.utils.set_random_seed(1)

    def functional(*shapes):
        inputs = [keras.Input(shape) for shape in shapes]
        merged = inputs[0] if len(inputs) == 1 else keras.layers.Add()(inputs)
        return keras.Model(inputs, keras.layers.Conv2D(2, 3)(merged) if len(shapes[0]) == 3 else merged)

    models = {"fixed": functional((48, 48, 3)), "any_size": functional((None, None, 3)),
              "sequential": keras.Sequential([keras.Input((40, 40, 3)), keras.layers.Conv2D(2, 3)]),
              "not_square": functional((32, 48, 3)), "grey": functional((32, 32, 1)),
              "two_inputs": functional((32, 32, 3), (32, 32, 3))}
    for name, model in models.items():
        path = tmp_path / f"{name}.keras"
        model.save(path)
        assert (backbones._stated_input_shape(str(path)) is None) == (name == "two_inputs"), name
        answers = []
        for answer in (lambda: backbones._model_file_fixed_size(model, str(path)),
                       lambda: backbones.fixed_input_size(str(path))):
            try:
                answers.append(answer())
            except PipelineError as error:
                answers.append(str(error))
        assert answers[0] == answers[1], name
    assert backbones.fixed_input_size(str(tmp_path / "fixed.keras")) == 48


def test_gpus_are_looked_for_only_where_a_gpu_device_file_exists(monkeypatch):
    """On Linux, no GPU device file (NVIDIA, ROCm, WSL): no GPU, and TensorFlow is not asked
    (not started, in a stage whose every vector is cached); with one, TensorFlow is asked."""
    import tensorflow as tf
    from fewlabel.features import extract

    asked = []
    monkeypatch.setattr(extract.sys, "platform", "linux")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: asked.append(kind) or ["a GPU"])
    monkeypatch.setattr(extract.glob, "glob", lambda pattern: [])
    assert extract._gpus() == [] and asked == []
    for present in extract.GPU_DEVICE_FILES:
        monkeypatch.setattr(extract.glob, "glob", lambda pattern: [pattern] if pattern == present else [])
        assert extract._gpus() == ["a GPU"] and asked.pop() == "GPU", present

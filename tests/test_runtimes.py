"""features.runtime: OpenVINO against Keras, the converted-model cache, cache keys, a missing package.

Models use random weights at 48-64 px as in test_featurize.py. The OpenVINO tests need the
optional ``openvino`` package (``make test`` installs requirements-fast.txt); they are skipped
without it, and the missing-package tests hide it.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from fewlabel.features import runtimes
from fewlabel.errors import PipelineError
from fewlabel.features.recipes import build_meta, fixed_recipes, recipes_from_meta
from fewlabel.features.extract import build_size_extractor, extract_features, view_cache
from fewlabel.params import parse_params
from fewlabel.features.runtimes import RuntimeChoice, choose_runtime, load_extractor
from fewlabel.features.views import View
from tests.test_featurize import SIZE, images, params  # noqa: F401  (images: a fixture)

requires_openvino = pytest.mark.skipif(runtimes._module("openvino") is None,
                                       reason="openvino is not installed (pip install -r requirements-fast.txt)")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest cosine similarity between matching rows of ``a`` and ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.fixture
def no_openvino(monkeypatch):
    """Make ``import openvino`` fail, as on a machine without the package."""
    monkeypatch.setitem(sys.modules, "openvino", None)


# --------------------------------------------------------------------------- features

@requires_openvino
@pytest.mark.slow
def test_openvino_features_match_keras_over_views(images):
    """Two sizes and flip (each image decoded once): f32 is Keras's float32 within rounding,
    bf16 (where the CPU has it) within cosine 0.999; the stats say what ran."""
    views = dict(image_size=(48, SIZE), flip_tta=True)
    reference, stats = extract_features(images, params(**views), progress=False)
    assert (stats["runtime"].runtime, stats["runtime"].precision) == ("keras", "f32")
    f32, stats = extract_features(images, params(runtime="openvino", precision="f32", **views), progress=False)
    assert (stats["runtime"].runtime, stats["runtime"].precision) == ("openvino", "f32")
    assert f32.shape == reference.shape
    assert min_cosine(f32, reference) >= 0.99999
    assert np.abs(f32 - reference).max() <= 1e-3 * np.abs(reference).max()
    if runtimes.openvino_bf16_supported():  # one size (one more conversion) is enough here
        reference, _ = extract_features(images, params(flip_tta=True), progress=False)
        bf16, stats = extract_features(images, params(runtime="openvino", flip_tta=True), progress=False)
        assert stats["runtime"].precision == "bf16"
        assert min_cosine(bf16, reference) >= 0.999


@requires_openvino
@pytest.mark.slow
def test_converted_model_is_cached_and_not_rebuilt(isolated_cache):
    """The second load reads the converted model from the cache: the Keras model is not
    built and the files are not rewritten; another precision is another cache entry."""
    choice = choose_runtime("openvino", "f32")
    built = []

    def build_keras():
        from fewlabel.features.backbones import build_extractor
        built.append(1)
        return build_extractor("EfficientNetB0", None, 32)[0]

    key = {"backbone": "EfficientNetB0", "weights": "none", "size": 32}
    first = load_extractor(choice, build_keras, key, "EfficientNetB0-32", batch_size=4)
    folder = runtimes.converted_model_folder(choice, key, "EfficientNetB0-32")
    model_file = folder / runtimes.MODEL_FILE
    stamp = model_file.stat().st_mtime_ns
    second = load_extractor(choice, build_keras, key, "EfficientNetB0-32", batch_size=4)
    assert built == [1]
    assert model_file.stat().st_mtime_ns == stamp
    assert folder.parent == isolated_cache / "runtimes"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    pixels = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    features = first(pixels)  # compiled for batches of 4: one full batch, one padded
    assert features.shape == (6, 1280)
    np.testing.assert_array_equal(features, second(pixels))
    np.testing.assert_allclose(features[5:], first(pixels[5:]), rtol=1e-5, atol=1e-6 * np.abs(features).max())
    other = RuntimeChoice("openvino", "bf16", "openvino")
    assert runtimes.converted_model_folder(other, key, "EfficientNetB0-32") != folder


@requires_openvino
@pytest.mark.slow
def test_runtime_is_part_of_the_feature_cache_key(images):
    """Keras and OpenVINO features never share cache entries; each is reused by its own runtime."""
    keras_cache = view_cache("EfficientNetB0", View(SIZE), None)
    openvino = choose_runtime("openvino", "f32")
    assert view_cache("EfficientNetB0", View(SIZE), None, openvino).location != keras_cache.location
    assert view_cache("EfficientNetB0", View(SIZE), None, openvino).location != \
        view_cache("EfficientNetB0", View(SIZE), None, RuntimeChoice("openvino", "bf16", "openvino")).location
    extract_features(images[:3], params(), progress=False)
    _, stats = extract_features(images[:3], params(runtime="openvino", precision="f32"), progress=False)
    assert stats["n_extracted"] == 3
    _, stats = extract_features(images[:3], params(runtime="openvino", precision="f32"), progress=False)
    assert stats["n_cached"] == 3


@requires_openvino
@pytest.mark.slow
def test_a_cached_conversion_serves_extraction_without_keras(images, monkeypatch):
    """Once converted, a size's extractor loads without building the Keras model."""
    openvino = choose_runtime("openvino", "f32")
    build_size_extractor("EfficientNetB0", None, SIZE, openvino)
    monkeypatch.setattr("fewlabel.features.extract.build_extractor", lambda *a: pytest.fail("Keras model built again"))
    extractor = build_size_extractor("EfficientNetB0", None, SIZE, openvino, batch_size=2)
    assert extractor(np.zeros((3, SIZE, SIZE, 3), np.float32)).shape == (3, 1280)


# --------------------------------------------------------------------------- choice and errors

@pytest.mark.slow
def test_missing_openvino_is_a_clear_error_and_auto_falls_back_to_keras(images, no_openvino):
    with pytest.raises(PipelineError, match=r"features\.runtime: openvino needs the openvino package.*pip install"):
        choose_runtime("openvino")
    with pytest.raises(PipelineError, match=r"features\.runtime"):
        extract_features(images[:2], params(runtime="openvino"), progress=False)
    choice = choose_runtime("auto")
    assert (choice.runtime, choice.precision, choice.requested) == ("keras", "f32", "auto")
    assert "openvino is not installed" in choice.note
    _, stats = extract_features(images[:2], params(runtime="auto"), progress=False)
    assert stats["runtime"] == choice


def test_auto_picks_openvino_bf16_only_where_the_cpu_has_bfloat16(monkeypatch):
    monkeypatch.setattr(runtimes, "_module", lambda name: object())  # 'installed'
    monkeypatch.setattr(runtimes, "openvino_bf16_supported", lambda: True)
    assert choose_runtime("auto") == RuntimeChoice("openvino", "bf16", "auto", "OpenVINO bf16: measured fastest")
    assert choose_runtime("openvino").precision == "bf16"
    assert choose_runtime("auto", "f32").runtime == "keras"  # OpenVINO f32: no faster than Keras for B6
    assert choose_runtime("auto", gpu=True).runtime == "keras"  # Keras runs on the GPU
    monkeypatch.setattr(runtimes, "openvino_bf16_supported", lambda: False)
    assert choose_runtime("auto").runtime == "keras"
    assert "no bfloat16" in choose_runtime("auto").note
    assert choose_runtime("openvino") == RuntimeChoice("openvino", "f32", "openvino")
    with pytest.raises(PipelineError, match=r"features\.precision: bf16: this CPU has no bfloat16"):
        choose_runtime("openvino", "bf16")


def test_runtime_and_precision_params_are_validated():
    assert parse_params({}).features.runtime == "auto"  # params.yaml's
    assert parse_params({"features": {"runtime": "auto"}}).features.precision == "auto"
    with pytest.raises(PipelineError, match=r"features\.runtime must be one of auto, keras, openvino, got 'onnx'"):
        parse_params({"features": {"runtime": "onnx"}})
    with pytest.raises(PipelineError, match=r"features\.precision must be one of auto, f32, bf16, got 'fp16'"):
        parse_params({"features": {"precision": "fp16"}})
    with pytest.raises(PipelineError, match=r"features\.precision must be auto or f32 with features\.runtime keras"):
        parse_params({"features": {"runtime": "keras", "precision": "bf16"}})


def test_meta_records_the_runtime_and_predict_reuses_it():
    features_params = params(runtime="openvino", precision="bf16")
    meta = build_meta(features_params, fixed_recipes(features_params), [1280],
                      RuntimeChoice("openvino", "bf16", "auto"))
    assert (meta["runtime"], meta["precision"]) == ("openvino", "bf16")
    again, _ = recipes_from_meta(meta)
    assert (again.runtime, again.precision) == ("openvino", "bf16")
    del meta["runtime"], meta["precision"]  # features from before runtimes existed: Keras
    again, _ = recipes_from_meta(meta)
    assert again.runtime == "keras"

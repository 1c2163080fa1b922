"""features.runtime: OpenVINO against Keras, the converted-model cache, cache keys, a missing package.

Models use random weights at 48-64 px as in test_featurize.py. The OpenVINO tests need the
optional ``openvino`` package (``make test`` installs requirements-fast.txt); they are skipped
without it, and the missing-package tests hide it.
"""
from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pytest

from fewlabel.features import int8, runtimes
from fewlabel.errors import PipelineError
from fewlabel.features.recipes import build_meta, fixed_recipes, recipes_from_meta
from fewlabel.features.extract import build_size_extractor, extract_features, view_cache
from fewlabel.featurize import build_run_stats, featurize_subsets
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
        from fewlabel.features.keras_models import build_extractor
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
    monkeypatch.setattr("fewlabel.features.keras_models.build_extractor", lambda *a: pytest.fail("Keras model built again"))
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


@pytest.fixture
def cpu(monkeypatch):
    """Pretend OpenVINO is installed and set this CPU's kind: ``cpu("avx2")`` etc."""
    monkeypatch.setattr(runtimes, "_module", lambda name: object())  # 'installed'

    def set_kind(flags: str, bf16: bool = False):
        monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset(flags.split()))
        monkeypatch.setattr(runtimes, "openvino_bf16_supported", lambda: bf16)
    return set_kind


@pytest.mark.parametrize("flags, bf16, kind, runtime, precision", [
    ("sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16", True, "bf16", "openvino", "bf16"),  # the development CPU
    ("sse4_2 avx avx2 fma avx512f avx512_vnni", False, "avx512", "keras", "f32"),
    ("sse4_2 avx avx2 fma", False, "avx2", "openvino", "f32"),  # the AVX2-only EPYC: OpenVINO f32 1.77x
    ("sse4_2 avx", False, "other", "keras", "f32"),
])
def test_auto_rule_per_cpu_kind(cpu, flags, bf16, kind, runtime, precision):
    """auto follows the measured rule per CPU kind (never INT8), the note saying the kind and
    why; Keras on a GPU; an explicit precision is OpenVINO at that precision."""
    cpu(flags, bf16)
    assert runtimes.cpu_kind() == kind
    choice = choose_runtime("auto")
    assert (choice.runtime, choice.precision, choice.requested) == (runtime, precision, "auto")
    assert choice.note.startswith(f"CPU kind {kind}: {'Keras' if runtime == 'keras' else 'OpenVINO ' + precision}")
    assert choose_runtime("auto", gpu=True).runtime == "keras"  # Keras runs on the GPU
    f32 = choose_runtime("auto", "f32")  # OpenVINO f32 only where it measured faster than Keras
    assert (f32.runtime, f32.precision) == ("openvino" if kind == "avx2" else "keras", "f32")
    assert (choose_runtime("auto", "int8").runtime, choose_runtime("auto", "int8").precision) == ("openvino", "int8")
    assert choose_runtime("openvino").precision == ("bf16" if bf16 else "f32")


def test_cpu_kind_without_openvino_reads_the_flags(monkeypatch):
    monkeypatch.setattr(runtimes, "_module", lambda name: None)
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset("avx2 avx512f avx512_bf16".split()))
    assert runtimes.cpu_kind() == "bf16"
    assert choose_runtime("auto").runtime == "keras"


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = runtimes.cpu_flags()
    with open("/proc/cpuinfo") as handle:
        line = next(line for line in handle if line.startswith("flags"))
    assert flags == frozenset(line.split(":", 1)[1].split())


def test_precisions_the_cpu_lacks_are_clear_errors(cpu, monkeypatch):
    cpu("avx2", bf16=False)
    with pytest.raises(PipelineError, match=r"features\.precision: bf16: this CPU has no bfloat16"):
        choose_runtime("openvino", "bf16")
    with pytest.raises(PipelineError, match=r"features\.precision: bf16: this CPU has no bfloat16"):
        choose_runtime("auto", "bf16")
    monkeypatch.setattr(runtimes, "_module", lambda name: None if name == "nncf" else object())
    with pytest.raises(PipelineError, match=r"features\.precision: int8 needs the nncf package.*pip install"):
        choose_runtime("openvino", "int8")


def test_runtime_and_precision_params_are_validated():
    assert parse_params({}).features.runtime == "auto"  # params.yaml's
    assert parse_params({"features": {"runtime": "auto"}}).features.precision == "auto"
    with pytest.raises(PipelineError, match=r"features\.runtime must be one of auto, keras, openvino, got 'onnx'"):
        parse_params({"features": {"runtime": "onnx"}})
    with pytest.raises(PipelineError, match=r"features\.precision must be one of auto, f32, bf16, int8, got 'fp16'"):
        parse_params({"features": {"precision": "fp16"}})
    assert parse_params({"features": {"runtime": "openvino", "precision": "int8"}}).features.precision == "int8"
    for precision in ("bf16", "int8"):
        with pytest.raises(PipelineError, match=r"features\.precision must be auto or f32 with features\.runtime "
                                                rf"keras \(Keras runs float32; {precision} needs"):
            parse_params({"features": {"runtime": "keras", "precision": precision}})


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


# --------------------------------------------------------------------------- the report and INT8

@requires_openvino
def test_the_report_records_autos_choice_and_why(images, monkeypatch):
    """On an AVX2-only CPU (flags mocked) auto runs OpenVINO f32, and reports/featurize.json's
    record says so, with the CPU kind and the reason."""
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset("avx avx2 fma".split()))
    monkeypatch.setattr(runtimes, "openvino_bf16_supported", lambda: False)
    features_params = params(runtime="auto")
    result = featurize_subsets(images[:4], None, images[4:], features_params, ["a"], progress=False)
    record = build_run_stats(features_params, result)
    assert (record["runtime"], record["precision"], record["runtime_requested"]) == ("openvino", "f32", "auto")
    assert record["cpu_kind"] == "avx2"
    assert record["runtime_note"].startswith("CPU kind avx2: OpenVINO f32")


def test_int8_calibration_set_and_cache_key(images, monkeypatch, tmp_path):
    """The calibration images are the training images given (evenly spaced, sorted); their
    contents (not paths) and NNCF's version key the INT8 model and its features."""
    monkeypatch.setitem(sys.modules, "nncf", types.SimpleNamespace(__version__="9.9"))
    monkeypatch.setattr(runtimes, "_module", lambda name: types.SimpleNamespace(__version__="1.0"))
    base = RuntimeChoice("openvino", "int8", "openvino")
    first, second = int8.calibrate(base, images[:4]), int8.calibrate(base, images[4:])
    assert first.calibration_paths == tuple(sorted(images[:4]))
    assert first.cache_key["calibration"] == first.calibration != second.calibration
    assert first.cache_key["nncf"] == "9.9"
    copies = [shutil.copy(path, tmp_path / f"copy{i}.jpg") for i, path in enumerate(images[:4])]
    assert int8.calibrate(base, copies).calibration == first.calibration
    f32 = RuntimeChoice("openvino", "f32", "openvino")
    assert int8.calibrate(f32, images) is f32 and "calibration" not in f32.cache_key
    key = {"backbone": "EfficientNetB0", "size": 32}
    folders = {runtimes.converted_model_folder(choice, key, "b0") for choice in (first, second, f32)}
    assert len(folders) == 3
    paths = [f"img/{i:04d}.jpg" for i in range(1000)]
    subset = int8.calibration_subset(reversed(paths), 128)
    assert len(subset) == 128 and subset[0] == paths[0] and subset[-1] == paths[-1] and subset == sorted(subset)
    assert int8.calibration_subset(paths[:5], 128) == paths[:5]


requires_nncf = pytest.mark.skipif(runtimes._module("openvino") is None or runtimes._module("nncf") is None,
                                   reason="openvino or nncf is not installed (pip install -r requirements-fast.txt)")


@requires_nncf
def test_int8_featurize_calibrates_on_training_images_and_caches_the_model(images, isolated_cache):
    """precision int8: quantized once on the training images only, cached beside the f32
    conversion, its features near Keras's (random weights) and keyed apart from f32's."""
    features_params = params(runtime="openvino", precision="int8")
    train, evals = images[:5], images[5:]
    result = featurize_subsets(train, None, evals, features_params, ["a"], progress=False)
    runtime = result.stats["runtime"]
    assert runtime.precision == "int8" and runtime.calibration_paths == tuple(sorted(train))
    folders = sorted(p.name for p in (isolated_cache / "runtimes").iterdir())
    assert sorted(f.split("-")[-2] for f in folders) == ["f32", "int8"]
    model = next((isolated_cache / "runtimes").glob("*int8*")) / runtimes.MODEL_FILE
    stamp = model.stat().st_mtime_ns
    reference, _ = extract_features(images, params(), progress=False)
    assert min_cosine(np.concatenate([result.train, result.eval]), reference) >= 0.9
    shutil.rmtree(isolated_cache / "features")
    again = featurize_subsets(train, None, evals, features_params, ["a"], progress=False)
    assert model.stat().st_mtime_ns == stamp  # not quantized again
    np.testing.assert_array_equal(again.eval, result.eval)
    assert build_run_stats(features_params, again)["precision"] == "int8"


def test_int8_without_its_calibration_images_is_a_clear_error(monkeypatch, tmp_path, isolated_cache):
    """predict and featurize_pool have no training images: an INT8 model is not quantized
    there on anything else."""
    monkeypatch.setitem(sys.modules, "nncf", types.SimpleNamespace(__version__="9.9"))
    monkeypatch.setattr(runtimes, "_module", lambda name: types.SimpleNamespace(__version__="1.0"))
    monkeypatch.setattr(runtimes, "_cached_model", lambda *args: tmp_path / "model.xml")
    with pytest.raises(PipelineError, match=r"features\.precision: int8: .* needs training images.*featurize_pool"):
        load_extractor(RuntimeChoice("openvino", "int8", "openvino"), lambda: None, {"size": 32}, "b0-32")
    assert not list(isolated_cache.glob("runtimes/*int8*"))  # nothing half-written

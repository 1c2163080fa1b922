"""keras-hub backbones (``features.backbones: [keras_hub:<preset>]``): random-init tiny models
saved as local presets (no download), through featurize and what predict does.

keras-hub is optional (requirements-hub.txt): these tests skip without it, except the one that
checks the error telling how to install it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fewlabel.errors import PipelineError
from fewlabel.features.extract import extract_features, view_cache
from fewlabel.features.recipes import candidate_recipes, fixed_recipes, recipes_from_meta
from fewlabel.features.views import View
from fewlabel.artifacts import read_features as load_features
from fewlabel.params import FeaturesParams
from tests.synthetic import tiny_features
from tests.test_featurize import write_jpeg

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install -r requirements-hub.txt"


def dinov2_preset(folder: Path, hidden_dim: int = 16, size: int = 32) -> str:
    """A tiny random DINOv2 (2 register tokens) with an ImageConverter at ``size``, as a preset."""
    keras_hub = pytest.importorskip("keras_hub", reason=f"optional: {INSTALL}")
    import keras

    keras.utils.set_random_seed(3)
    keras_hub.models.DINOV2Backbone(patch_size=8, num_layers=1, hidden_dim=hidden_dim, num_heads=2,
                                    intermediate_dim=32, num_register_tokens=2, image_shape=(size, size, 3),
                                    position_embedding_shape=(64, 64, 3)).save_to_preset(str(folder))
    keras_hub.layers.ImageConverter(image_size=(size, size), scale=1 / 255).save_to_preset(str(folder))
    return f"keras_hub:{folder}"


def vit_preset(folder: Path) -> str:
    """A tiny random ViT (fixed 32 x 32 input, class token), without an image converter."""
    keras_hub = pytest.importorskip("keras_hub", reason=f"optional: {INSTALL}")
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                 mlp_dim=16).save_to_preset(str(folder))
    return f"keras_hub:{folder}"


def params(backbones, **changes) -> FeaturesParams:
    return tiny_features(**{"backbones": tuple(backbones), "weights": "imagenet", "image_size": None, "batch_size": 4,
                            **changes})


@pytest.fixture
def images(tmp_path) -> list[str]:
    return [str(write_jpeg(tmp_path / "img" / f"{i:06d}.jpg", seed=i, size=(40 + 9 * i, 48))) for i in range(4)]


def test_missing_keras_hub_names_the_key_and_the_install_command(monkeypatch, tmp_path):
    from fewlabel.features import hub

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub raises ImportError
    hub.preset_config.cache_clear()
    with pytest.raises(PipelineError, match=r"features\.backbones: keras_hub:dinov2_small needs keras-hub.*"
                                            r"pip install -r requirements-hub\.txt"):
        fixed_recipes(params(["keras_hub:dinov2_small"]))
    with pytest.raises(PipelineError, match=r"features\.backbones: 'keras_hub:' names no preset"):
        fixed_recipes(params(["keras_hub:"]))


@pytest.mark.slow
def test_dinov2_features_are_class_token_and_patch_mean_at_each_size(images, tmp_path):
    import keras

    name = dinov2_preset(tmp_path / "dino")
    # native size: the preset's image converter (32); auto scales from it, rounding to the patch
    # size (8: 1.5 x 32 = 48, where 32 would round to 64); DINOv2 interpolates to any size
    assert [[r.sizes for r in c] for c in candidate_recipes(params([name], image_size="auto",
                                                                   select_scales=((1.0,), (1.5,))))] == [[(32,)], [(48,)]]
    features, stats = extract_features(images, params([name]), progress=False)
    assert features.shape == (4, 32) and stats["input_sizes"] == [[32]]  # [class token 16, patch mean 16]
    # the same numbers as the backbone called by hand: pixels / 255, tokens [cls, 2 registers, 16 patches]
    from fewlabel.features.views import load_image
    import keras_hub
    backbone = keras_hub.models.Backbone.from_preset(name.split(":", 1)[1], dtype="float32")
    pixels = np.stack([load_image(p, 32).numpy() for p in images]) / 255
    tokens = np.asarray(backbone({"images": keras.ops.convert_to_tensor(pixels)}))
    assert tokens.shape == (4, 1 + 2 + 16, 16)
    expected = np.concatenate([tokens[:, 0], tokens[:, 3:].mean(axis=1)], axis=1)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    at_48, stats = extract_features(images, params([name], image_size=48), progress=False)
    assert at_48.shape == (4, 32) and stats["n_extracted"] == 4 and not np.allclose(at_48, features)


@pytest.mark.slow
def test_vit_runs_at_its_fixed_size_with_its_class_token(images, tmp_path):
    name = vit_preset(tmp_path / "vit")
    assert [[r.sizes for r in c] for c in candidate_recipes(params([name], image_size="auto",
                                                                   select_scales=((1.0,), (1.5,))))] == [[(32,)]]
    features, stats = extract_features(images, params([name], image_size=96), progress=False)
    assert features.shape == (4, 8) and stats["input_sizes"] == [[32]]


@pytest.mark.slow
def test_caches_differ_per_backbone_and_view_and_random_init_is_another(images, tmp_path):
    first, second = dinov2_preset(tmp_path / "a"), dinov2_preset(tmp_path / "b", hidden_dim=24)
    locations = {view_cache(b, View(s), w).location for b in (first, second) for s in (32, 64)
                 for w in ("imagenet", None)}
    assert len(locations) == 8
    both, stats = extract_features(images, params([first, second]), progress=False)
    assert both.shape == (4, 32 + 48) and stats["dims"] == [32, 48]
    random_init, stats = extract_features(images, params([first], weights=None), progress=False)
    assert stats["n_extracted"] == 4 and not np.allclose(random_init, both[:, :32])


@pytest.mark.slow
def test_featurize_stage_and_predicts_reading_of_its_meta(tmp_path, isolated_cache):
    keras_hub = pytest.importorskip("keras_hub", reason=f"optional: {INSTALL}")
    project = tmp_path / "project"
    name = dinov2_preset(tmp_path / "dino")
    jpegs = project / "data/raw/voc/JPEGImages"
    train_ids, eval_ids = ["000005", "000007", "000009"], ["000001", "000004"]
    for i, image_id in enumerate(train_ids + eval_ids):
        write_jpeg(jpegs / f"{image_id}.jpg", seed=i, size=(50 + 7 * i, 40))
    (project / "data/subset").mkdir(parents=True)
    (project / "data/subset/train.csv").write_text("image_id,split,cat\n" + "".join(f"{i},trainval,1\n" for i in train_ids))
    (project / "data/subset/eval.csv").write_text("image_id,split,cat\n" + "".join(f"{i},test,-1\n" for i in eval_ids))
    (project / "params.yaml").write_text(f"features:\n  backbones: ['{name}']\n  image_size: null\n  batch_size: 4\n"
                                           "  runtime: keras\n")
    hub_site = str(Path(keras_hub.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), hub_site]),
           "FEWLABEL_CACHE_DIR": str(isolated_cache)}
    result = subprocess.run(
        [sys.executable, "-m", "stages.featurize", "--images", "data/raw/voc/JPEGImages", "--train",
         "data/subset/train.csv", "--eval", "data/subset/eval.csv", "--out-dir", "data/features",
         "--stats-out", "metrics/featurize.json"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    _, train = load_features(project / "data/features/train.npz", expected_ids=np.array(train_ids))
    assert train.shape == (3, 32)
    meta = json.loads((project / "data/features/meta.json").read_text())
    assert meta["backbones"] == [name] and meta["input_sizes"] == [[32]]
    # predict: the meta's recipes reproduce the features, from the cache
    features_params, recipes = recipes_from_meta(meta)
    again, stats = extract_features([str(jpegs / f"{i}.jpg") for i in train_ids], features_params,
                                    progress=False, recipes=recipes)
    assert stats["n_extracted"] == 0
    np.testing.assert_array_equal(again, train)


@pytest.mark.slow
def test_a_relative_local_preset_is_found_from_any_working_directory(tmp_path):
    from fewlabel.api import _rooted
    from fewlabel.features.recipes import Recipe

    (tmp_path / "presets/dino").mkdir(parents=True)
    names = ("keras_hub:presets/dino", "keras_hub:dinov2_small")
    features, recipes = _rooted(params(names), [Recipe(name, (32,)) for name in names], tmp_path)
    assert features.backbones == (f"keras_hub:{tmp_path / 'presets/dino'}", "keras_hub:dinov2_small")
    assert [r.backbone for r in recipes] == list(features.backbones)


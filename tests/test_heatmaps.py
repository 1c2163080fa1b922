"""Class heatmaps (issue 30): where the map peaks, alignment to the photo, the linearisation, the CLI.

The run is deterministic and tiny: a ``.keras`` "backbone" with fixed weights (8 x 8 average
pooling, then a 1 x 1 convolution whose channels are redness, blueness and brightness), and the
product's model fitted on its pooled features of generated photos where "cat" is a red patch
and "dog" a blue one, anywhere. No devdata, no ImageNet weights.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fewlabel.heatmaps import class_grids, interpolation_matrix, smooth, upsample
from fewlabel.pointing import hit, peak

CLASSES = ("cat", "dog")
SIZE = 64  # the model's view: an 8 x 8 map


def photo(path: Path, height: int, width: int, patches=(), seed: int = 0) -> str:
    """A grey noisy photo with coloured squares: ``patches`` = [(colour, top, left, side)]."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 140, (height, width, 3)).astype(np.uint8)
    for colour, top, left, side in patches:
        pixels[top:top + side, left:left + side] = {"red": (220, 30, 30), "blue": (30, 30, 220)}[colour]
    Image.fromarray(pixels).save(path, quality=95)
    return str(path)


def write_backbone(path: Path) -> str:
    import keras
    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.AveragePooling2D(8)(inputs)
    colour = keras.layers.Conv2D(3, 1, use_bias=False, activation="relu")
    outputs = colour(pooled)
    colour.set_weights([np.array([[1.0, -0.5, 0.0], [-0.5, -0.5, 0.0], [-0.5, 1.0, 1 / 255]],
                                 dtype=np.float32).reshape(1, 1, 3, 3)])
    keras.Model(inputs, outputs).save(path)
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trained run (params.yaml, meta.json, model, thresholds) on the colour backbone, flip_tta on."""
    from fewlabel.features.extract import extract_features
    from fewlabel.features.recipes import Recipe, build_meta
    from fewlabel.artifacts import feature_signature
    from fewlabel.io import file_md5, write_json
    from fewlabel.model.rules import DecisionRule
    from fewlabel.model.svm import build_model, save_model
    from fewlabel.params import FeaturesParams, SvmParams

    root = tmp_path_factory.mktemp("heatmap-run")
    saved = os.environ.get("FEWLABEL_CACHE_DIR")
    os.environ["FEWLABEL_CACHE_DIR"] = str(tmp_path_factory.mktemp("heatmap-cache"))
    try:
        backbone = write_backbone(root / "colours.keras")
        rng = np.random.default_rng(1)
        (root / "train").mkdir()
        paths, targets = [], []
        for i in range(48):
            present = [i % 2 == 0, (i // 2) % 2 == 0]
            side = int(rng.integers(12, 49))  # objects of many sizes: a kernel model scores what it has seen
            patches = [(colour, *rng.integers(0, 64 - side, 2), side) for colour, on in zip(("red", "blue"), present)
                       if on]
            paths.append(photo(root / "train" / f"{i:03d}.jpg", 64, 64, patches, seed=i))
            targets.append([int(on) for on in present])
        params = FeaturesParams(backbones=("colours.keras",), weights=None, image_size=SIZE, flip_tta=True, runtime="keras")
        recipes = [Recipe(backbone, (SIZE,), flip=True)]
        features, stats = extract_features(paths, params, progress=False, recipes=recipes)
        meta = build_meta(params, [Recipe("colours.keras", (SIZE,), flip=True)], stats["dims"], stats["runtime"])
        write_json(root / "data/features/meta.json", meta)
        svm = SvmParams(gamma="scale", n_jobs=1, scaler="sqrt", approximation="exact")
        model = build_model(svm).fit(features, np.array(targets))
        (root / "models").mkdir()
        save_model(root / "models/model.joblib", model, CLASSES, svm, feature_signature(meta), len(paths))
        rule = DecisionRule.uniform(len(CLASSES), 0.5, min_labels=1).to_record(CLASSES)
        write_json(root / "models/thresholds.json", {**rule, "model_md5": file_md5(root / "models/model.joblib")})
        (root / "params.yaml").write_text(json.dumps({"data": {"classes": list(CLASSES)},
                                                      "features": {"engine": "single"}, "evaluate": {"top_k": [1]}}))
        yield root
    finally:
        if saved is None:
            os.environ.pop("FEWLABEL_CACHE_DIR")
        else:
            os.environ["FEWLABEL_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def classifier(run_dir):
    import fewlabel
    return fewlabel.load(run_dir)


@pytest.mark.parametrize("corner", ["top_right", "bottom_left"])
def test_the_map_peaks_on_the_object_pasted_in_a_corner_of_a_non_square_photo(classifier, tmp_path, corner):
    """96 x 160 photo (stretched to the square view), a red square of 40 px in one corner: the cat
    map, aligned to the photo, peaks inside it. top_right also checks the mirror view's map is
    flipped back: unflipped, the averaged map would peak as high on the left."""
    top, left = (0, 120) if corner == "top_right" else (56, 0)
    path = photo(tmp_path / "corner.jpg", 96, 160, [("red", top, left, 40)], seed=99)
    [heatmap] = classifier.heatmaps([path])
    maps = heatmap.maps()
    assert maps.shape == (2, 96, 160)
    x, y = peak(maps[0])
    assert hit((x, y), [(left + 1, top + 1, left + 40, top + 40)]), (x, y)  # the pointing game's 15 px
    assert abs(x - (left + 20)) < 40 and abs(y - (top + 20)) < 30, (x, y)  # in that corner of the photo
    assert 0 <= maps.min() and maps.max() <= 1
    inside = np.zeros(maps[0].shape, dtype=bool)
    inside[top:top + 40, left:left + 40] = True
    assert maps[0][inside].mean() > maps[0][~inside].mean() + 0.2  # cat where the red is, not elsewhere
    # one CNN pass: the photo's probabilities are predict's (pooled map = pooled features)
    np.testing.assert_allclose(heatmap.probabilities, classifier.probabilities(classifier.features([path]))[0],
                               atol=1e-5)


def test_upsample_is_bilinear_with_half_pixel_centres_as_tensorflow():
    assert interpolation_matrix(4, 2).tolist() == [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    grid = np.random.default_rng(0).random((3, 5, 7))
    reference = tf.image.resize(grid.transpose(1, 2, 0)[None], (37, 22), method="bilinear").numpy()[0]
    np.testing.assert_allclose(upsample(grid, 37, 22), reference.transpose(2, 0, 1), atol=1e-5)


def test_smoothing_is_a_gaussian_of_sigma_cells_that_moves_the_peak_to_where_neighbours_agree():
    """sigma 1 cell, by hand: weights exp(-k^2 / 2) for |k| <= 4, normalised (sum S = 2.5066, so
    the centre of a lone spike keeps 1 / S^2 = 0.1592); a 3 x 3 plateau of 0.8 keeps
    0.8 ((1 + 2 exp(-1/2)) / S)^2 = 0.6236 at its centre: the smoothed maximum moves from a lone
    spike of 1.0 to the plateau."""
    grid = np.zeros((1, 1, 11, 11))
    grid[0, 0, 5, 5] = 1.0
    S = 1 + 2 * sum(np.exp(-k * k / 2) for k in range(1, 5))
    spread = smooth(grid, 1.0)[0, 0]
    assert spread[5, 5] == pytest.approx(1 / S ** 2, abs=1e-6)
    assert spread[5, 6] == pytest.approx(np.exp(-0.5) / S ** 2, abs=1e-6)
    assert spread.sum() == pytest.approx(1.0, abs=1e-5)
    assert smooth(np.full((2, 3, 4, 5), 0.3), 1.0) == pytest.approx(0.3)  # the edges: a flat map stays flat
    grid = np.zeros((1, 1, 14, 14))
    grid[0, 0, 1, 1] = 1.0  # a lone spike
    grid[0, 0, 8:11, 8:11] = 0.8  # an object
    assert peak(grid[0, 0]) == (1, 1)
    smoothed = smooth(grid, 1.0)[0, 0]
    assert peak(smoothed) == (9, 9)
    assert smoothed[9, 9] == pytest.approx(0.8 * ((1 + 2 * np.exp(-0.5)) / S) ** 2, abs=1e-3)
    assert smooth(grid, 0) is grid


def test_linear_is_the_first_order_kernel_at_the_pooled_vector():
    """By hand for an RBF model without scaler: k_i(p + d) ~ k_i(p) (1 - 2 gamma (p - x_i).d),
    with d = f - p; the SVMs and calibration then applied to those kernel values."""
    from fewlabel.features.recipes import Recipe
    from fewlabel.features.views import View
    from fewlabel.model.svm import build_model, positive_probabilities
    from fewlabel.params import SvmParams

    rng = np.random.default_rng(3)
    train = rng.random((60, 6))
    targets = np.column_stack([train[:, 0] > 0.5, train[:, 1] + train[:, 2] > 1]).astype(int)
    model = build_model(SvmParams(gamma=0.5, n_jobs=1, scaler="none", approximation="exact")).fit(train, targets)
    maps = rng.random((2, 3, 4, 6)) * 0.3 + 0.35
    pooled = maps.mean(axis=(1, 2))
    grids = class_grids(model, [Recipe("b", (32,))], pooled, [{View(32): maps}], "linear", smoothing=0)
    assert grids.shape == (2, 2, 3, 4)
    kernel = model[-2]
    gamma, x = kernel.gamma_, kernel.train_features_
    for n in range(2):
        at_p = np.exp(-gamma * ((pooled[n] - x) ** 2).sum(axis=1))
        steps = maps[n].reshape(-1, 6) - pooled[n]
        linear = at_p * (1 - 2 * gamma * steps @ (pooled[n] - x).T)
        expected = positive_probabilities(model[-1], linear).T.reshape(2, 3, 4)
        np.testing.assert_allclose(grids[n], expected, atol=2e-4)


def test_predict_writes_one_overlay_per_image_and_names_bad_inputs(run_dir, tmp_path, monkeypatch, capsys):
    from stages.predict import main as predict_main

    photos = tmp_path / "photos"
    photos.mkdir()
    good = [photo(photos / f"p{i}.jpg", 48 + 8 * i, 80, [("red", 0, 0, 24)], seed=i) for i in range(3)]
    (photos / "broken.jpg").write_bytes(Path(good[0]).read_bytes()[:200])
    monkeypatch.chdir(run_dir)
    with pytest.raises(SystemExit) as exit_:
        predict_main([str(photos), str(tmp_path / "missing.jpg"), "--heatmaps", str(tmp_path / "maps"),
                      "--heatmaps-raw", "--out", str(tmp_path / "p.csv"), "--no-progress", "--top-k", "1",
                      "--meta", "data/features/meta.json"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "missing.jpg: no such file or folder" in err and "broken.jpg: not a readable image" in err
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["p0.npz", "p0.png", "p1.npz", "p1.png",
                                                                     "p2.npz", "p2.png"]
    with Image.open(tmp_path / "maps" / "p1.png") as overlay:
        assert overlay.height > 56 and overlay.width >= 80
    raw = np.load(tmp_path / "maps" / "p1.npz")
    assert raw["maps"].shape == (2, 56, 80) and list(raw["classes"]) == list(CLASSES)
    import pandas as pd
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 3
    np.testing.assert_allclose(table["p_cat"].iloc[1], raw["probabilities"][0], atol=1e-5)


@pytest.mark.parametrize("args, message, code", [
    (["--heatmaps-raw"], "--heatmaps-raw writes beside the heatmap images: give --heatmaps DIR too", 2),  # usage
    (["--heatmaps", "a_file.txt"], "--heatmaps a_file.txt: is a file; give a folder for the heatmap images", 1),
    (["--heatmaps", "no/such/maps"], "--heatmaps no/such/maps: the folder no/such does not exist", 1),
])
def test_bad_heatmap_options_fail_before_any_work(run_dir, tmp_path, monkeypatch, capsys, args, message, code):
    from stages.predict import main as predict_main

    path = photo(tmp_path / "one.jpg", 40, 40)
    monkeypatch.chdir(run_dir)
    (run_dir / "a_file.txt").write_text("")
    before = sorted(run_dir.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        from fewlabel.errors import run_main
        run_main(lambda: predict_main([path, *args, "--top-k", "1", "--meta", "data/features/meta.json"]))
    assert exit_.value.code == code
    assert message in capsys.readouterr().err
    assert sorted(run_dir.rglob("*")) == before


def test_explain_writes_one_png_and_refuses_a_broken_photo(run_dir, tmp_path, capsys):
    from fewlabel.cli import main

    path = photo(tmp_path / "cat.jpg", 60, 90, [("red", 20, 50, 30)])
    main(["explain", path, "--run", str(run_dir), "--out", str(tmp_path / "cat.png")])
    assert "cat.jpg: cat" in capsys.readouterr().out
    with Image.open(tmp_path / "cat.png") as overlay:
        assert overlay.width == 90
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(path).read_bytes()[:100])
    with pytest.raises(SystemExit) as exit_:
        main(["explain", str(broken), "--run", str(run_dir), "--out", str(tmp_path / "broken.png")])
    assert exit_.value.code == 1
    assert "broken.jpg: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "broken.png").exists()


def test_the_evaluate_stage_maps_eval_photos_and_plays_the_pointing_game(run_dir, classifier, tmp_path):
    """Eight eval photos, the object in a corner (the centre misses every one), boxes in VOC XML:
    plots/heatmaps.png is written and scores.json holds the pointing game: 100 against 0."""
    import shutil
    import subprocess
    import sys

    import pandas as pd

    repo = Path(__file__).resolve().parents[1]
    for name in ("colours.keras", "models", "data"):
        (shutil.copytree if (run_dir / name).is_dir() else shutil.copy)(run_dir / name, tmp_path / name)
    params = json.loads((run_dir / "params.yaml").read_text())
    params["evaluate"].update(heatmap_photos=8, bootstrap=10)
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    ids, rows, paths = [], [], []
    for i in range(8):
        colour, (top, left) = ("red", "blue")[i % 2], [(0, 0), (0, 80), (50, 0), (50, 80)][i // 2]
        image_id = f"{i:06d}"
        paths.append(photo(tmp_path / "JPEGImages" / f"{image_id}.jpg", 90, 120, [(colour, top, left, 40)], seed=i))
        (tmp_path / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><object><name>{('cat', 'dog')[i % 2]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{left + 1}</xmin><ymin>{top + 1}</ymin><xmax>{left + 40}</xmax><ymax>{top + 40}</ymax>"
            f"</bndbox></object></annotation>")
        ids.append(image_id)
        rows.append({"image_id": image_id, "split": "test", "cat": 1 if i % 2 == 0 else -1,
                     "dog": 1 if i % 2 else -1})
    (tmp_path / "data/subset").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "data/subset/eval.csv", index=False)
    np.savez(tmp_path / "data/features/eval.npz", ids=np.array(ids), features=classifier.features(paths))
    completed = subprocess.run(
        [sys.executable, "-m", "stages.evaluate", "--model", "models/model.joblib",
         "--thresholds", "models/thresholds.json", "--features", "data/features/eval.npz",
         "--meta", "data/features/meta.json", "--labels", "data/subset/eval.csv",
         "--metrics-out", "metrics/metrics.json", "--scores-out", "metrics/scores.json",
         "--per-class-out", "metrics/per_class.csv", "--predictions-out", "predictions/eval.csv",
         "--confusion-dir", "plots/confusion", "--pr-dir", "plots/pr", "--confusion-png", "plots/confusion.png",
         "--label-counts-out", "plots/label_counts.csv", "--label-counts-png", "plots/label_counts.png",
         "--images", "JPEGImages", "--annotations", "Annotations", "--heatmaps-png", "plots/heatmaps.png"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    scores = json.loads((tmp_path / "metrics/scores.json").read_text())
    assert scores["pointing_game"] == {"accuracy": 100.0, "centre_baseline": 0.0, "n_photos": 8, "n_pairs": 8}
    with Image.open(tmp_path / "plots/heatmaps.png") as figure:
        assert figure.width > 300

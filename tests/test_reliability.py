"""Issue 23 (trust nothing read back), phase 2, and predict's rough edges (issue 21 item 7).

- every unreadable image of a featurize run is named in one error, before any extraction,
  without the native decoders' lines;
- a non-finite feature vector stops extraction naming the image, backbone and view; a
  features file with NaN rows is refused by train naming the file and the rerun;
- ``predict --out`` that cannot be written fails before any work; ``--list`` reads a BOM;
  the summary counts skipped files; the bar moves per extraction batch; ``--no-progress``.

Generated tiny images, EfficientNetB0 with random weights at 32 x 32.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fewlabel.errors import PipelineError
from tests.conftest import read_only_runner
from tests.synthetic import tiny_features, write_images, write_predict_project

REPO_ROOT = Path(__file__).resolve().parents[1]
FEATURES = dict(backbones=("EfficientNetB0",), weights=None, image_size=32, batch_size=4, flip_tta=False,
                runtime="keras")
NATIVE_NOISE = ("jpeg_mem", "Corrupt JPEG", "Premature end", "Improper call", "Invalid JPEG data", "local_rendezvous",
                "{{function_node", "Traceback")


def run_module(module: str, *args: str, cwd: Path = REPO_ROOT, runner=list) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "0"}
    return subprocess.run(runner([sys.executable, "-m", module, *args]), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def truncate(path: str, keep: int = 300) -> None:
    Path(path).write_bytes(Path(path).read_bytes()[:keep])


def cache_entries(isolated_cache: Path) -> list[Path]:
    return list(isolated_cache.rglob("*.npy"))


# --------------------------------------------------------------------------- unreadable images

@pytest.mark.slow
def test_featurize_names_every_unreadable_image_in_one_run(tmp_path, params_file, isolated_cache):
    images = write_images(tmp_path / "img", 12, seed=3, max_side=64)
    ids = [Path(p).stem for p in images]
    pd.DataFrame({"image_id": ids[:8]}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"image_id": ids[8:]}).to_csv(tmp_path / "eval.csv", index=False)
    bad = [images[1], images[5], images[10]]  # two training images, one eval image
    for path in bad:
        truncate(path)
    params = params_file({f"features.{key}": value for key, value in FEATURES.items()})

    result = run_module("stages.featurize", "--images", str(tmp_path / "img"), "--train", str(tmp_path / "train.csv"),
                        "--eval", str(tmp_path / "eval.csv"), "--out-dir", str(tmp_path / "features"),
                        "--stats-out", str(tmp_path / "featurize.json"), "--params", str(params))
    assert result.returncode == 1, result.stderr
    assert "error: 3 image(s) cannot be read" in result.stderr, result.stderr
    for path in bad:
        assert f"\n  {path}: a damaged or truncated JPEG file that cannot be decoded" in result.stderr
    for noise in NATIVE_NOISE:
        assert noise not in result.stderr, result.stderr
    assert not (tmp_path / "features").exists()
    assert cache_entries(isolated_cache) == []  # checked before any extraction


@pytest.mark.slow
def test_view_choice_checks_the_eval_images_before_extracting(tmp_path, isolated_cache):
    from fewlabel.featurize import featurize_subsets
    from fewlabel.params import VOC_CLASSES

    images = write_images(tmp_path / "img", 10, seed=4)
    truncate(images[9])
    Path(images[2]).write_bytes(b"<html>404</html>")
    labels = np.ones((6, len(VOC_CLASSES)), dtype=np.int8)
    params = tiny_features(batch_size=4, image_size="auto", select_scales=((0.125,), (0.25,)))
    with pytest.raises(PipelineError, match=rf"2 image\(s\) cannot be read(.|\n)*{images[2]}: not an image"
                                            rf"(.|\n)*{images[9]}: a damaged or truncated JPEG"):
        featurize_subsets(images[:6], labels, images[6:], params, VOC_CLASSES, progress=False)
    assert cache_entries(isolated_cache) == []  # not after choosing the views on the training images


def test_the_list_of_unreadable_images_is_capped():
    from fewlabel.errors import MAX_REPORTED
    from fewlabel.features.screening import unreadable_images_error

    message = str(unreadable_images_error([(f"img/{i}.jpg", "an empty file (0 bytes)") for i in range(25)]))
    assert message.startswith("25 image(s) cannot be read")
    assert message.count("an empty file") == MAX_REPORTED and message.endswith("... and 5 more")


def test_only_images_no_cache_holds_are_decoded_to_screen_them(tmp_path, monkeypatch):
    """An image with a vector in a cache decoded when the vector was made: screening decodes
    only the others (so a fully cached run starts no TensorFlow), and names each bad path once."""
    from fewlabel.features import screening
    from fewlabel.features.cache import FeatureCache, cache_folder, hash_image
    from fewlabel.predict import readable_images

    good, cached, broken = write_images(tmp_path / "img", 3, seed=9137)
    truncate(broken)
    missing = str(tmp_path / "missing.jpg")
    cache = FeatureCache(cache_folder("test", {"test": 1}), {"test": 1})
    cache.put(hash_image(cached)[0], np.ones(4, np.float32))
    decoded, undecodable = [], screening.undecodable
    monkeypatch.setattr(screening, "undecodable", lambda paths: decoded.extend(paths) or undecodable(paths))
    readable, digests, problems = readable_images([good, cached, broken, missing, broken], [cache])
    assert readable == [good, cached] and digests == [hash_image(good)[0], hash_image(cached)[0]]
    assert [path for path, _ in problems] == [broken, missing]  # the path given twice: one line
    assert broken in decoded and cached not in decoded


# --------------------------------------------------------------------------- non-finite features

@pytest.fixture
def nan_for(monkeypatch):
    """Make the extractors return NaN for the images whose name ends in ``name`` (no model built)."""
    from fewlabel.features import extract

    def set_bad(name: str):
        class Runner:
            def __init__(self, views):
                self.views = views

            def batches(self, paths):
                for start in range(0, len(paths), 4):
                    rows = np.ones((len(paths[start:start + 4]), 8), dtype=np.float32)
                    rows[[p.endswith(name) for p in paths[start:start + 4]]] = np.nan
                    yield [rows for _ in self.views]

        monkeypatch.setattr(extract.Extractors, "runner", lambda self, views: Runner(views))
    return set_bad


@pytest.mark.slow
def test_a_non_finite_vector_stops_extraction_naming_image_backbone_and_view(tmp_path, nan_for, isolated_cache):
    from fewlabel.features.extract import extract_features

    images = write_images(tmp_path / "img", 6, seed=5)
    nan_for("000004.jpg")
    with pytest.raises(PipelineError, match=rf"{images[4]}: its features from backbone EfficientNetB0, view "
                                            rf"32-bilinear hold NaN or inf"):
        extract_features(images, tiny_features(batch_size=4), progress=False)


@pytest.mark.slow
def test_an_engine_worker_refuses_a_non_finite_vector(tmp_path, nan_for):
    from fewlabel.features.cache import hash_image
    from fewlabel.features.extract import ViewWorker, view_cache
    from fewlabel.features.runtimes import RuntimeChoice
    from fewlabel.features.views import View

    images = write_images(tmp_path / "img", 5, seed=6)
    nan_for("000002.jpg")
    views = [View(32), View(32, mirrored=True)]
    caches = [view_cache("EfficientNetB0", view, None) for view in views]
    worker = ViewWorker("EfficientNetB0", views, None, 4, RuntimeChoice(), [(c.location, c.key) for c in caches])
    chunk = {"position": np.arange(5), "path": np.asarray(images), "digest": np.asarray([hash_image(p)[0]
                                                                                          for p in images])}
    with pytest.raises(PipelineError, match=rf"{images[2]}: its features from backbone EfficientNetB0, view "
                                            rf"32-bilinear hold NaN or inf"):
        worker(chunk)


@pytest.mark.slow
def test_train_refuses_a_features_file_with_nan_rows(tmp_path):
    from fewlabel.params import VOC_CLASSES

    ids = [f"{i:06d}" for i in range(6)]
    features = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    features[3, 1] = np.nan
    np.savez(tmp_path / "train.npz", ids=np.asarray(ids), features=features)
    labels = pd.DataFrame({"image_id": ids, **{c: [1, -1, 1, -1, 1, -1] for c in VOC_CLASSES}})
    labels.to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    result = run_module("stages.train", "--features", "train.npz", "--meta", "meta.json", "--labels", "train.csv",
                        "--model-out", "m.joblib", "--oof-out", "oof.csv", "--tune-out", "t.json",
                        "--tune-grid", "t.csv", cwd=tmp_path)
    assert result.returncode == 1
    assert ("error: train.npz: 1 feature row(s) hold NaN or inf (image(s) 000003); the file is damaged or was not "
            "written by this featurize: rerun it (dvc repro -f featurize)") in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Input contains NaN" not in result.stderr


# --------------------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def predict_root(tmp_path_factory):
    cache = tmp_path_factory.mktemp("predict-cache")
    saved = os.environ.get("FEWLABEL_CACHE_DIR")
    os.environ["FEWLABEL_CACHE_DIR"] = str(cache)
    try:
        return write_predict_project(tmp_path_factory.mktemp("predict") / "project", image_size=32)
    finally:
        if saved is None:
            os.environ.pop("FEWLABEL_CACHE_DIR")
        else:
            os.environ["FEWLABEL_CACHE_DIR"] = saved


def run_predict(root: Path, monkeypatch, *args: str) -> int:
    from stages.predict import main as predict_main

    monkeypatch.chdir(root)
    try:
        predict_main([*args, "--meta", "meta.json"])
    except SystemExit as exit_:
        return int(exit_.code)
    return 0


@pytest.mark.parametrize("out, message", [
    ("new_folder/p.csv", r"--out new_folder/p\.csv: the folder new_folder does not exist; create it first "
                         r"\(mkdir -p new_folder\)"),
    ("models", r"--out models: must end in \.csv or \.parquet"),
    ("a_folder.csv", r"--out a_folder\.csv: is a folder; give a file name, e.g\. --out a_folder\.csv/predictions\.csv"),
    ("params.yaml/p.csv", r"--out params\.yaml/p\.csv: the folder params\.yaml is not a folder"),
])
@pytest.mark.slow
def test_a_bad_out_fails_before_any_work(predict_root, tmp_path, monkeypatch, out, message):
    import fewlabel.api

    (predict_root / "a_folder.csv").mkdir(exist_ok=True)
    image = write_images(tmp_path / "img", 1)[0]
    monkeypatch.setattr(fewlabel.api, "load", lambda *a, **k: pytest.fail("work began before --out was checked"))
    before = sorted(predict_root.rglob("*"))
    with pytest.raises(PipelineError, match=message):
        run_predict(predict_root, monkeypatch, image, "--out", out)
    assert sorted(predict_root.rglob("*")) == before


@pytest.mark.slow
def test_out_in_a_read_only_folder_fails_with_exit_1_and_writes_nothing(predict_root, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    image = write_images(tmp_path / "img", 1)[0]
    runner = read_only_runner(folder)
    if runner is None:
        if os.geteuid() == 0:
            pytest.skip("needs a read-only mount (unshare -rm): chmod does not stop root from writing")
        folder.chmod(0o555)
        runner = list
    try:
        result = run_module("stages.predict", image, "--meta", "meta.json", "--out", str(folder / "p.csv"),
                            cwd=predict_root, runner=runner)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert f"error: --out {folder}/p.csv: cannot write in {folder} (" in result.stderr, result.stderr
    assert "choose a folder you can write to" in result.stderr and "Traceback" not in result.stderr
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_a_list_file_with_a_byte_order_mark(predict_root, tmp_path, monkeypatch):
    images = write_images(tmp_path / "img", 3, seed=8)
    listing = tmp_path / "list.txt"
    listing.write_bytes(("\ufeff" + "\r\n".join(images) + "\r\n").encode("utf-8"))
    assert run_predict(predict_root, monkeypatch, "--list", str(listing), "--out", str(tmp_path / "p.csv"),
                       "--quiet") == 0
    assert list(pd.read_csv(tmp_path / "p.csv")["path"]) == images


@pytest.mark.slow
def test_the_summary_counts_skipped_files_and_the_bar_moves_per_batch(predict_root, tmp_path, monkeypatch, capsys):
    from fewlabel.progress import ProgressBar

    images = write_images(tmp_path / "img", 40, seed=9)  # extracted in batches of 8 (meta.json)
    (tmp_path / "img" / "broken.jpg").write_bytes(Path(images[0]).read_bytes()[:200])
    positions, move = [], ProgressBar.to
    monkeypatch.setattr(ProgressBar, "to", lambda bar, n: (positions.append(n), move(bar, n)))
    assert run_predict(predict_root, monkeypatch, str(tmp_path / "img"), "--quiet") == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "predict: 40 images labelled, 1 skipped; 0 served from the feature cache"
    assert positions == [8, 16, 24, 32, 40, 41]  # per batch, in one 512-image chunk; then the skipped one
    assert "predict (single process)" in captured.err  # --quiet keeps the bar

    assert run_predict(predict_root, monkeypatch, str(tmp_path / "img"), "--quiet", "--no-progress",
                       "--out", str(tmp_path / "p.parquet")) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == (f"wrote {tmp_path}/p.parquet (40 images labelled, 1 skipped; 40 served from "
                                    f"the feature cache)")
    assert "predict (" not in captured.err and "broken.jpg: not a readable image" in captured.err
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 40

"""Issue 26: nothing outside the cache is ever deleted, and the bad-input trial's weak messages.

``fewlabel cache verify --drop`` pointed at the wrong folder (a VOCdevkit copy, the folder above
the feature cache, a model folder of one's own) deletes nothing that is not provably a cache
entry; a file or a shard folder as its location gets a message saying what to point at. The
other families of the trial: a bf16 request on a CPU without bf16 (check_params), a single image
as ``data.pool_images``, file names in ``suggestions/labelled.txt`` and the file deleted,
``predict --top-k 0`` (a usage error: exit 2), and progress output when stderr is not a TTY.
The pool folder as a DVC dependency is tested with the suggest project (tests/test_suggest.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fewlabel import cli
from fewlabel.errors import PipelineError
from fewlabel.features import cache as feature_cache
from fewlabel.features.cache import FeatureCache
from fewlabel.features.cache_verify import verify_cache
from tests.conftest import REPO_ROOT
from tests.vocgen import make_voc

KEY = {"cache_format": 2, "backbone": "EfficientNetB0", "weights": "none", "size": 32, "resize": "bilinear",
       "mirrored": False}
DIGESTS = [hashlib.sha1(bytes([i])).hexdigest() for i in range(6)]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(feature_cache, "_warned", set())
    monkeypatch.setattr(feature_cache, "_damaged", Counter())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder``: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sound_cache(root: Path, key: dict = KEY, n: int = 4) -> FeatureCache:
    """A cache folder in ``root`` as featurize makes it, with ``n`` sound entries."""
    cache = FeatureCache(root / f"EfficientNetB0-32-bilinear-{feature_cache.key_digest(key)[:16]}", key)
    for i, digest in enumerate(DIGESTS[:n]):
        cache.put(digest, np.full(8, i, dtype=np.float32))
    return cache


def entry(cache: FeatureCache, digest: str) -> Path:
    return Path(cache.location, cache._relative(digest))


def run_cli(*args: str) -> int:
    try:
        cli.main(list(args))
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def converted_runtime(root: Path) -> Path:
    """A converted OpenVINO model folder as fewlabel.features.runtimes writes it: a key.json whose
    hash names the folder, like a cache folder's, but a model, not vectors."""
    key = {**KEY, "runtime": "openvino", "precision": "bf16"}
    folder = root / f"EfficientNetB0-openvino-bf16-{feature_cache.key_digest(key)[:16]}"
    folder.mkdir(parents=True)
    (folder / "key.json").write_text(json.dumps(key, indent=2))
    (folder / "model.xml").write_text("<net/>")
    (folder / "model.bin").write_bytes(b"\0" * 64)
    return folder


# --------------------------------------------------------------------------- the three deletions

def test_verify_drop_on_a_vocdevkit_copy_deletes_nothing(tmp_path, capsys):
    devkit = make_voc(tmp_path / "copy", n_train=20, n_eval=20)
    before = snapshot(devkit)
    assert len(before) > 20

    with pytest.raises(PipelineError, match="no feature cache folder there") as error:
        verify_cache(devkit, drop=True)
    assert "nothing was checked or dropped" in str(error.value) and "VOC2007" in str(error.value)
    assert run_cli("cache", "verify", "--drop", str(devkit)) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and "recommend" not in err
    assert snapshot(devkit) == before


def test_verify_drop_on_the_folder_above_the_cache_checks_the_cache_below_and_nothing_else(tmp_path, capsys):
    """~/.cache/fewlabel: features/ (the cache), extracted/ (the data set), runtimes/, downloads/."""
    user_cache = tmp_path / "fewlabel"
    cache = sound_cache(user_cache / "features")
    entry(cache, DIGESTS[0]).write_bytes(b"damaged")  # one bad entry: the only file dropped
    make_voc(user_cache / "extracted" / "voc2007-abc", n_train=20, n_eval=20)
    runtime = converted_runtime(user_cache / "runtimes")
    (user_cache / "downloads").mkdir()
    (user_cache / "downloads" / "VOCtrainval_06-Nov-2007.tar").write_bytes(b"tar" * 100)
    before = snapshot(user_cache)

    found = verify_cache(user_cache)
    assert found.roots == [str(user_cache / "features")]
    assert (found.folders, found.entries, found.sound, len(found.problems)) == (1, 4, 3, 1)
    assert {p for p, _ in found.left_alone} == {str(user_cache / n) for n in ("downloads", "extracted", "runtimes")}
    assert run_cli("cache", "verify", str(user_cache)) == 1
    out = capsys.readouterr().out
    assert f"{user_cache / 'extracted'}: not a cache folder, left alone" in out and "--drop` drops them" in out

    dropped = verify_cache(user_cache, drop=True)
    assert dropped.dropped == 1
    after = snapshot(user_cache)
    gone = set(before) - set(after)
    assert gone == {str(entry(cache, DIGESTS[0]).relative_to(user_cache))}
    assert all(after[name] == content for name, content in before.items() if name not in gone)
    assert (runtime / "model.bin").read_bytes() == b"\0" * 64

    clean = verify_cache(user_cache)
    assert clean.clean and "--drop" not in clean.summary()  # the hint only where --drop would do something


def test_verify_drop_leaves_a_model_folder_and_foreign_files_alone(tmp_path, monkeypatch, capsys):
    """MyModel-abc/ (ab/important.npy, notes.md) beside a cache folder, as the location itself, and
    foreign files inside a cache folder: all survive; only the bad entry goes."""
    root = tmp_path / "features"
    monkeypatch.setenv(feature_cache.FEATURE_CACHE_ENV, str(root))
    cache = sound_cache(root)
    np.save(entry(cache, DIGESTS[1]), np.ones(8, dtype=np.float32))  # an entry of old fewlabel: dropped
    model = root / "MyModel-abc"
    (model / "ab").mkdir(parents=True)
    np.save(model / "ab" / "important.npy", np.arange(5.0))
    (model / "notes.md").write_text("my notes\n")
    (Path(cache.location) / "notes.md").write_text("about this cache\n")  # inside a cache folder
    (Path(cache.location) / "ab").mkdir(exist_ok=True)
    np.save(Path(cache.location) / "ab" / "important.npy", np.arange(3.0))
    before = snapshot(root)

    assert run_cli("cache", "verify", "--drop") == 0
    out = capsys.readouterr().out
    assert f"{model}: not a cache folder, left alone" in out
    assert f"{Path(cache.location) / 'notes.md'}: not a cache entry" in out
    after = snapshot(root)
    assert set(before) - set(after) == {str(entry(cache, DIGESTS[1]).relative_to(root))}
    assert all(after[name] == before[name] for name in after)

    with pytest.raises(PipelineError, match="no feature cache folder there"):
        verify_cache(model, drop=True)
    assert snapshot(model) == {name[len("MyModel-abc/"):]: content for name, content in before.items()
                               if name.startswith("MyModel-abc/")}


def test_a_damaged_cache_folder_loses_its_entries_and_key_but_keeps_foreign_files(tmp_path):
    root = tmp_path / "features"
    cache = sound_cache(root, n=2)
    (Path(cache.location) / "key.json").write_text("{ damaged")
    (Path(cache.location) / "notes.md").write_text("keep me\n")
    report = verify_cache(root, drop=True)
    assert report.dropped == 3  # two entries and key.json
    assert snapshot(Path(cache.location)) == {"notes.md": b"keep me\n"}  # the folder holds it: kept

    bare = sound_cache(root / "other", n=2)
    (Path(bare.location) / "key.json").write_text("{ damaged")
    verify_cache(root / "other", drop=True)
    assert not Path(bare.location).exists()  # nothing else in it: removed once empty


def test_verify_through_fsspec_leaves_foreign_files_alone(tmp_path):
    root = tmp_path / "url-cache"
    cache = sound_cache(root, n=2)
    entry(cache, DIGESTS[0]).write_bytes(b"damaged")
    (root / "README.md").write_text("shared cache\n")
    (Path(cache.location) / "notes.md").write_text("keep me\n")
    before = snapshot(root)
    report = verify_cache(f"file://{root}", drop=True)
    assert (report.sound, report.dropped) == (1, 1)
    assert {why for _, why in report.left_alone} == {"not a cache folder, left alone",
                                                     "not a cache entry (fewlabel never writes it), left alone"}
    after = snapshot(root)
    assert set(before) - set(after) == {str(entry(cache, DIGESTS[0]).relative_to(root))}


# --------------------------------------------------------------------------- wrong locations

def test_a_file_as_location_says_what_to_point_at(tmp_path, capsys):
    cache = sound_cache(tmp_path / "features")
    for file in (entry(cache, DIGESTS[0]), Path(cache.location) / "key.json"):
        with pytest.raises(PipelineError, match="a file, not a folder") as error:
            verify_cache(file)
        assert f"fewlabel cache verify {cache.location}" in str(error.value)
    assert run_cli("cache", "verify", str(entry(cache, DIGESTS[0]))) == 1
    err = capsys.readouterr().err
    assert "NotADirectoryError" not in err and f"{entry(cache, DIGESTS[0])}: a file, not a folder" in err


def test_a_shard_folder_as_location_is_no_false_all_clear(tmp_path):
    cache = sound_cache(tmp_path / "features")
    shard = entry(cache, DIGESTS[0]).parent
    with pytest.raises(PipelineError, match="a shard folder of the cache folder") as error:
        verify_cache(shard, drop=True)
    assert f"fewlabel cache verify {cache.location}" in str(error.value)
    assert entry(cache, DIGESTS[0]).exists()


def test_an_empty_cache_root_is_clean(tmp_path):
    (tmp_path / "features").mkdir()
    report = verify_cache(tmp_path / "features")
    assert report.clean and report.folders == 0


# --------------------------------------------------------------------------- features.runtime and precision

def test_featurize_depends_on_every_features_key_that_changes_the_features():
    """runtime and precision change the features' numerics; engine and workers only say where
    the work runs."""
    import yaml

    from fewlabel.params import FeaturesParams
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["featurize"]
    named = {p for p in stage["params"] if isinstance(p, str)}
    expected = {f"features.{f.name}" for f in dataclasses.fields(FeaturesParams)} - {"features.engine",
                                                                                      "features.workers"}
    assert expected <= named, expected - named


def test_check_params_refuses_bf16_on_a_cpu_without_it(params_file, tmp_path, monkeypatch):
    from fewlabel.features import runtimes
    from stages import check_params

    out = tmp_path / "params_valid.txt"
    monkeypatch.setattr(runtimes, "openvino_bf16_supported", lambda: False)
    monkeypatch.setattr(runtimes, "_module", lambda name: object())  # openvino "installed"
    for runtime in ("auto", "openvino"):
        with pytest.raises(PipelineError, match=r"features\.precision.*bf16.*auto.*f32"):
            check_params.main(["--params", str(params_file({"features.runtime": runtime,
                                                             "features.precision": "bf16"})), "--out", str(out)])
        assert not out.exists()
    check_params.main(["--params", str(params_file({"features.precision": "auto"})), "--out", str(out)])
    assert out.exists()

    monkeypatch.setattr(runtimes, "openvino_bf16_supported", lambda: True)
    check_params.main(["--params", str(params_file({"features.runtime": "openvino", "features.precision": "bf16"})),
                       "--out", str(out)])


# --------------------------------------------------------------------------- the pool

def test_one_image_as_the_pool_names_the_key_and_what_it_takes(tmp_path):
    from tests.synthetic import write_images
    from fewlabel.data.pool import link_pool, pool_images
    from fewlabel.params import DataParams

    image = write_images(tmp_path / "img", 1, seed=3)[0]
    renamed = tmp_path / "photo"  # no extension: found by its content
    shutil.copy(image, renamed)
    for location in (image, str(renamed)):
        for call in (lambda: pool_images(tmp_path, DataParams(pool_images=location), set()),
                     lambda: link_pool(location, tmp_path / "data" / "pool")):
            with pytest.raises(PipelineError, match=r"data\.pool_images '.*' is one image; it takes a folder of "
                                                    r"images or a text file listing image paths"):
                call()
    link_pool(str(tmp_path / "img"), tmp_path / "data" / "pool")
    assert (tmp_path / "data" / "pool").resolve() == (tmp_path / "img").resolve()
    link_pool(None, tmp_path / "data" / "pool")  # no pool: an empty folder
    assert not (tmp_path / "data" / "pool").is_symlink() and not list((tmp_path / "data" / "pool").iterdir())


# --------------------------------------------------------------------------- suggestions/labelled.txt

def test_labelled_ids_written_as_file_names_or_paths_are_read_as_ids():
    from fewlabel.data.subset import add_included

    labels = pd.DataFrame({"image_id": ["000005", "000006", "000007"], "split": ["trainval"] * 3, "dog": [1, 0, 1]})
    train = labels.iloc[:1]
    for line in ("000006.jpg", "JPEGImages/000006", "JPEGImages/000006.JPG", "000006"):
        combined = add_included(train, labels, [line], "test", "suggestions/labelled.txt")
        assert list(combined["image_id"]) == ["000005", "000006"], line
    with pytest.raises(PipelineError, match=r"000099\.jpg that have no annotation.*one bare id per line, like "
                                            r"000006"):
        add_included(train, labels, ["000099.jpg"], "test", "suggestions/labelled.txt")


def test_a_deleted_labelled_list_says_an_empty_file_is_fine(tmp_path):
    from fewlabel.data.subset import read_included

    missing = str(tmp_path / "labelled.txt")
    with pytest.raises(PipelineError, match=r"labelled\.txt: not found.*an empty file is fine.*git checkout .*"
                                            r"labelled\.txt.*touch .*labelled\.txt"):
        read_included(missing)
    Path(missing).write_text("")
    assert read_included(missing) == []


# --------------------------------------------------------------------------- predict and logs

@pytest.mark.parametrize("options", [["--top-k", "0"], ["--top-k", "21"], ["--chunk-size", "0"], []])
def test_predict_usage_errors_exit_2(params_file, tmp_path, capsys, options):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")
    inputs = [str(image)] if options else []
    assert run_cli("predict", *inputs, *options, "--params", str(params_file())) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_progress_into_a_log_never_shares_a_line(capsys, monkeypatch):
    """stderr not a terminal (capsys): whole lines, no carriage returns, the label and count kept."""
    from fewlabel import progress

    monkeypatch.setattr(progress, "PLAIN_SECONDS", 0.0, raising=False)
    with progress.ProgressBar(3, "predict (single process)", True) as bar:
        for n in range(3):
            bar.write(f"image{n}.jpg: dog")
            bar.update(1)
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    assert captured.out.splitlines() == ["image0.jpg: dog", "image1.jpg: dog", "image2.jpg: dog"]
    lines = captured.err.splitlines()
    assert lines[-1].startswith("predict (single process): 3/3 images (100%)") and len(lines) == 4

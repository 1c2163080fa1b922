"""The optional engine (Ray Data) for featurize and predict, and predict's streaming output.

Generated tiny images, EfficientNetB0 with random weights (``weights: None``) at 32 x 32.
The Ray tests share one local 2-worker instance (``ray_cluster``); they are skipped where
Ray is not installed, except under CI (``make test`` installs requirements-engine.txt),
where a missing Ray fails them.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
import tracemalloc
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from fewlabel.errors import PipelineError
from fewlabel.features.engine import Engine, resolve_engine
from fewlabel.features.extract import extract_features
from stages.predict import main as predict_main
from tests.conftest import require
from tests.synthetic import tiny_features, write_images, write_predict_project
from tests.tiny_backbone import PATH as TINY_BACKBONE

# Ray workers and TensorFlow extraction; one test process runs every Ray test (make test: -n 2
# --dist loadgroup), as two Ray instances at once on 2 cores are slow to start
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

FEATURES = tiny_features(flip_tta=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs (so 2 workers), shared by this module's Ray tests."""
    require("ray.data", "pip install -r requirements-engine.txt")
    from fewlabel.features.engine import connect_ray
    ray = connect_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def single_process_features(paths, cache_dir, monkeypatch, params=FEATURES) -> np.ndarray:
    monkeypatch.setenv("FEWLABEL_CACHE_DIR", str(cache_dir))
    features, _ = extract_features(paths, params, progress=False)
    return features


def assert_same_features(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-5  # the bound ...
    # ... and relative to these random-weight features' tiny scale (about 1e-6)
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_engine_features_equal_the_single_process_ones_in_order(ray_cluster, tmp_path, monkeypatch):
    paths = write_images(tmp_path / "img", 40)
    paths = [paths[i] for i in np.random.default_rng(1).permutation(40)] + [paths[3]]  # shuffled, a repeat
    params = replace(FEATURES, backbones=(str(TINY_BACKBONE),))  # each worker builds it in a blink
    expected = single_process_features(paths, tmp_path / "single-cache", monkeypatch, params)

    # the shared cache as an fsspec URL (s3://... on a cluster)
    monkeypatch.setenv("FEWLABEL_FEATURE_CACHE", f"file://{tmp_path}/shared-cache")
    features, stats = extract_features(paths, params, progress=False, engine=Engine("ray", workers=2))
    assert_same_features(features, expected)
    assert stats["engine"] == "ray (local, 2 workers)" and stats["n_extracted"] == 40
    cached = list((tmp_path / "shared-cache").rglob("*.npy"))
    assert len(cached) == 80  # the workers filled the shared cache: 40 images x 2 views (flip)

    again, stats = extract_features(paths, params, progress=False, engine=Engine("ray", workers=2))
    assert stats["n_cached"] == 40 and np.array_equal(again, features)  # a rerun extracts nothing


def ray_workers(started_after: float) -> list:
    """The processes of the engine's actor pools (children of this process's Ray instance)
    started after ``started_after`` (a time.time())."""
    import psutil
    workers = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "MapWorker" in " ".join(process.cmdline()) and process.create_time() >= started_after:
                workers.append(process)
        except psutil.Error:
            pass
    return workers


def test_a_worker_killed_mid_run_is_retried_and_nothing_is_lost(ray_cluster, tmp_path, monkeypatch):
    paths = write_images(tmp_path / "img", 200, seed=2)
    params = replace(FEATURES, flip_tta=False)
    expected = single_process_features(paths, tmp_path / "single-cache", monkeypatch, params)
    cache = tmp_path / "engine-cache"
    monkeypatch.setenv("FEWLABEL_CACHE_DIR", str(cache))
    result = {}

    def run():
        result["features"], result["stats"] = extract_features(paths, params, progress=False,
                                                               engine=Engine("ray", workers=2))

    thread = threading.Thread(target=run)
    started = time.time()
    thread.start()
    killed = None
    while thread.is_alive() and killed is None:
        if len(list(cache.rglob("*.npy"))) >= 10:  # under way: some vectors are in the cache
            workers = ray_workers(started)
            if workers:
                killed = workers[0].pid
                workers[0].kill()
        time.sleep(0.02)
    thread.join()
    assert killed is not None, "the run ended before a worker could be killed"
    assert_same_features(result["features"], expected)
    assert result["stats"]["n_extracted"] == 200
    assert len(list(cache.rglob("*.npy"))) == 200


# --------------------------------------------------------------------------- predict

@pytest.fixture
def predict_project(tmp_path, monkeypatch):
    """A folder holding what predict reads (:func:`tests.synthetic.write_predict_project`), made
    the working directory."""
    root = write_predict_project(tmp_path / "project", image_size=32)
    monkeypatch.chdir(root)
    return root


def run_predict(args: list[str]) -> int:
    try:
        predict_main([*args, "--meta", "meta.json", "--quiet"])
    except SystemExit as exit_:
        return int(exit_.code)
    return 0


def test_predict_streams_chunks_and_its_memory_stays_flat(predict_project, tmp_path, monkeypatch):
    """2,000 files in chunks of 200, each chunk's rows written as it is done: the Python heap
    held (after a garbage collection) does not grow from chunk to chunk (a run that kept every
    image's features would grow by a chunk's features at each). Held, not peak: a peak also counts
    passing allocations (another thread's, uncollected garbage), which a run does not keep; how
    much of those there is depends on what ran before in the process."""
    from fewlabel.tables import TableWriter
    paths = write_images(tmp_path / "many", 2000, seed=4)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths) + "\n")
    held, write = [], TableWriter.write

    def write_and_measure(writer, table):
        write(writer, table)
        gc.collect()  # what is still reachable, not garbage the collector has not reached yet
        held.append(tracemalloc.get_traced_memory()[0])

    monkeypatch.setattr(TableWriter, "write", write_and_measure)
    tracemalloc.start()
    try:
        assert run_predict(["--list", str(listing), "--out", "p.csv", "--chunk-size", "200"]) == 0
    finally:
        tracemalloc.stop()
    assert len(held) == 10  # ten chunks, each written on its own
    table = pd.read_csv("p.csv")
    assert list(table["path"]) == paths and table.filter(like="p_").notna().all().all()
    # a run keeping each chunk (its 1 MB of features) grows at every chunk; one step up once is a
    # cache of the process warming up (seen under pytest-xdist, after other tests), not a chunk kept
    growth = np.diff(held[1:])
    assert (growth > 500_000).sum() <= 1 and held[-1] - held[1] < 10_000_000, held


def test_predict_on_the_engine_equals_single_process_and_goes_past_a_bad_file(ray_cluster, predict_project,
                                                                             tmp_path, capsys):
    paths = write_images(tmp_path / "img", 60, seed=5)
    bad = tmp_path / "img" / "00007.jpg"
    bad.write_bytes(b"not a JPEG at all")
    assert run_predict([str(tmp_path / "img"), "--out", "single.csv", "--engine", "single"]) == 1
    assert run_predict([str(tmp_path / "img"), "--out", "engine.parquet", "--engine", "ray",
                        "--workers", "2", "--chunk-size", "16"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {bad}: not a readable image (not an image: its content is none of JPEG, PNG, "
                      f"GIF, BMP, WebP); skipped"] * 2
    single, engine = pd.read_csv("single.csv"), pd.read_parquet("engine.parquet")
    assert list(engine["path"]) == list(single["path"]) == [p for p in paths if p != str(bad)]
    assert (engine["labels"].fillna("") == single["labels"].fillna("")).all()
    probabilities = [c for c in single.columns if c.startswith("p_")]
    assert np.abs(engine[probabilities].to_numpy() - single[probabilities].to_numpy()).max() < 1e-5


# --------------------------------------------------------------------------- without Ray

@pytest.fixture
def without_ray(monkeypatch):
    """Make ``import ray`` fail, as where the optional dependency is not installed."""
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_without_ray_the_default_runs_and_asking_for_ray_says_how_to_install_it(without_ray, tmp_path,
                                                                              monkeypatch):
    assert resolve_engine("auto") == Engine("single")
    paths = write_images(tmp_path / "img", 3)
    features, stats = extract_features(paths, FEATURES, progress=False, engine=resolve_engine("auto"))
    assert features.shape == (3, 1280) and stats["engine"] == "single process"

    with pytest.raises(PipelineError, match=r"features\.engine is ray, but Ray Data, the optional distributed "
                                            r"engine, is not installed: install it with `pip install -r "
                                            r"requirements-engine.txt`"):
        resolve_engine("ray")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(PipelineError, match=r"\$RAY_ADDRESS is set \(ray://head:10001\), but Ray Data"):
        resolve_engine("auto")
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("features: {engine: single}\n")
    with pytest.raises(PipelineError, match=r"--engine is ray, but Ray Data.* or run in this process with "
                                            r"--engine single"):
        predict_main([paths[0], "--engine", "ray"])

"""A Ray cluster started apart from the pipeline (``ray start --head`` with token
authentication, as README's "Beyond one machine" says) and named by ``$RAY_ADDRESS``: predict
runs its work there with no other pipeline setting and labels as the single-process path does;
a driver without the cluster's token gets an error that says what to set.

Its own module, so that test_engine.py's in-process Ray instance is shut down before this
head starts (two Ray instances on a 2-core machine are slow to start).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fewlabel.io import CACHE_ENV
from tests.conftest import free_port, require
from tests.synthetic import write_images, write_predict_project
from tests.tiny_backbone import PATH as TINY_BACKBONE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # a Ray cluster and TensorFlow extraction; with test_engine (make test)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_head():
    """``ray start --head --block`` in its own process group, with a token of its own; yields
    the environment a driver needs (``RAY_ADDRESS``, ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``).
    Teardown kills that group only (``ray stop`` would stop every Ray instance of the machine)."""
    require("ray.data", "pip install -r requirements-engine.txt")
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert ray_cli, "the ray command is not installed with ray[data]"
    port = free_port()
    cluster = {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false",
                             "--disable-usage-stats"],
                            env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster["RAY_AUTH_TOKEN"]},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # up when its GCS port accepts connections
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited with {head.returncode}: {head.stderr.read().decode()[-2000:]}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("ray start --head did not open its port within 120 s")
        yield cluster
    finally:
        # a throwaway cluster: its whole group killed at once (on SIGTERM, ray start --block
        # stops its processes gracefully, which took 33 s here)
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def run_predict(project: Path, images: Path, out: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.predict", str(images), "--out", out, "--quiet",
                           "--meta", "meta.json", "--chunk-size", "8"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)


def test_RAY_ADDRESS_sends_predict_to_the_cluster_and_a_missing_token_is_explained(ray_head, tmp_path):
    # the tiny test CNN: each of the cluster's workers builds and traces it in a blink
    project = write_predict_project(tmp_path / "project", backbone=str(TINY_BACKBONE), image_size=32)
    (project / "params.yaml").write_text('{"features": {"engine": "auto"}}')  # the shipped default
    paths = write_images(tmp_path / "img", 24, seed=9)
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    env.update({"PYTHONPATH": str(REPO), CACHE_ENV: str(tmp_path / "cache")})

    single = run_predict(project, tmp_path / "img", "single.csv", env)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "predict (single process)" in single.stderr

    address = ray_head["RAY_ADDRESS"]
    # Ray retries a refused connection once a second, 20 times by default: 2 tries are enough here
    refused = run_predict(project, tmp_path / "img", "refused.csv",
                          {**env, "RAY_ADDRESS": address, "RAY_gcs_server_port_wait_time_s": "2"})
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert f"error: cannot connect to the Ray cluster at $RAY_ADDRESS ({address}): " in refused.stderr
    assert "export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in refused.stderr
    assert not list(project.glob("refused*"))  # no output, not even a partial one

    (tmp_path / "cache").rename(tmp_path / "cache-single")  # the cluster's workers compute every vector
    on_cluster = run_predict(project, tmp_path / "img", "cluster.csv", {**env, **ray_head})
    assert on_cluster.returncode == 0, on_cluster.stderr[-3000:]
    assert f"predict (ray ({address}, auto workers))" in on_cluster.stderr
    # the workers, started by the head, use the driver's cache: empty, so nothing is served from it ...
    assert ("wrote cluster.csv (24 images labelled, 0 skipped; 0 served from the feature cache)"
            in on_cluster.stdout)
    assert list((tmp_path / "cache").rglob("*.npy"))  # ... and they filled it

    expected, actual = pd.read_csv(project / "single.csv"), pd.read_csv(project / "cluster.csv")
    assert list(actual["path"]) == list(expected["path"]) == paths
    assert (actual["labels"].fillna("") == expected["labels"].fillna("")).all()
    probabilities = [column for column in expected.columns if column.startswith("p_")]
    assert np.abs(actual[probabilities].to_numpy() - expected[probabilities].to_numpy()).max() < 1e-5

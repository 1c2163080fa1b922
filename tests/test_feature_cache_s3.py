"""The per-image feature cache on an object store: ``$FEWLABEL_FEATURE_CACHE=s3://...`` through
s3fs, against moto's S3 server on 127.0.0.1 (no network). Runs where s3fs and moto are
installed (``make test`` installs requirements-engine.txt and requirements-test.txt); under CI
a missing one fails it.
"""
from __future__ import annotations

import numpy as np
import pytest

from fewlabel.features.extract import extract_features
from tests.conftest import free_port, require
from tests.synthetic import tiny_features, write_images
from tests.tiny_backbone import PATH as TINY_BACKBONE

pytestmark = pytest.mark.slow  # a local S3 server and TensorFlow extraction

FEATURES = tiny_features(backbones=str(TINY_BACKBONE), flip_tta=True)  # the cache's behaviour holds for any backbone
BUCKET = "fewlabel-test"


@pytest.fixture
def s3_bucket(monkeypatch):
    """An empty bucket on a moto S3 server on 127.0.0.1, with the AWS settings s3fs reads; yields
    an s3fs file system of its own (not the cache's instance) to look inside."""
    require("s3fs", "pip install -r requirements-engine.txt")
    server_module = require("moto.server", "pip install -r requirements-test.txt")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(name, value)
    import s3fs
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    filesystem.mkdir(BUCKET)
    try:
        yield filesystem
    finally:
        server.stop()


def test_the_feature_cache_on_s3_serves_what_it_stored(s3_bucket, tmp_path, monkeypatch, isolated_cache):
    monkeypatch.setenv("FEWLABEL_FEATURE_CACHE", f"s3://{BUCKET}/features")
    paths = write_images(tmp_path / "img", 12, seed=6)
    first, first_stats = extract_features(paths, FEATURES, progress=False)
    assert first_stats["n_extracted"] == 12
    stored = sorted(key for key in s3_bucket.find(f"{BUCKET}/features") if key.endswith(".npy"))
    assert len(stored) == 24  # one vector per image and view (the image and its mirror)
    assert not list(isolated_cache.rglob("*.npy"))  # none in the local cache folder

    again, again_stats = extract_features(paths, FEATURES, progress=False)
    assert again_stats["n_extracted"] == 0
    np.testing.assert_array_equal(again, first)

    # Another process (a Ray worker) stores a vector after this process listed the cache through
    # fsspec's shared s3fs instance (user code may): the cache must not trust that old listing.
    content = s3_bucket.cat_file(stored[0])
    s3_bucket.rm_file(stored[0])
    s3_bucket.pipe_file(stored[0].rsplit("/", 1)[0] + "/sibling", b"")  # so the listing holds its folder
    import fsspec
    shared, root = fsspec.core.url_to_fs(f"s3://{BUCKET}/features")
    shared.find(root)
    s3_bucket.pipe_file(stored[0], content)
    served, served_stats = extract_features(paths, FEATURES, progress=False)
    assert served_stats["n_extracted"] == 0
    np.testing.assert_array_equal(served, first)

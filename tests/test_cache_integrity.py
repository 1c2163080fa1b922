"""Issue 23: the per-image feature cache trusts nothing it reads back.

Each entry carries a checksum of its payload, its image and its cache key, checked on every
read; a damaged, foreign, unchecksummed or non-finite entry is reported and extracted again,
never used. A read-only cache is read and not written; a new cache root is announced; files
get the umask's mode; ``verify_cache`` / ``fewlabel cache verify`` check a
whole cache. Most tests use :class:`FeatureCache` directly (no TensorFlow); the ``extract``
tests run the product's ``extract_features`` (the tests' tiny random CNN, 32 px).
"""
from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fewlabel.errors import PipelineError
from fewlabel.features import cache as feature_cache
from fewlabel.features.cache import CHECKSUM_MARKER, TRAILER_SIZE, FeatureCache, cache_folder
from fewlabel.features.cache_verify import verify_cache
from tests.conftest import read_only_runner
from tests.tiny_backbone import PATH as TINY_BACKBONE

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = {"cache_format": 2, "backbone": "EfficientNetB0", "weights": "none", "size": 32, "resize": "bilinear",
       "mirrored": False}
DIGESTS = [f"{i:02x}" + f"{i:x}" * 38 for i in range(1, 7)]  # sha1-like names


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-process warnings afresh."""
    monkeypatch.setattr(feature_cache, "_warned", set())
    monkeypatch.setattr(feature_cache, "_damaged", Counter())


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "feature-cache"
    root.mkdir()
    monkeypatch.setenv(feature_cache.FEATURE_CACHE_ENV, str(root))
    return root


def make_cache(key=KEY, label="EfficientNetB0-32-bilinear") -> FeatureCache:
    return FeatureCache(cache_folder(label, key), key)


def vector(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size).astype(np.float32)


def entry_path(cache: FeatureCache, digest: str) -> Path:
    return Path(cache.location, cache._relative(digest))


def overwrite_payload(path: Path, seed: int = 99) -> None:
    """The issue's corruption: the vector's values replaced by finite garbage, the .npy header
    and the file's size kept (so it still loads as a float32 vector of the right size)."""
    raw = bytearray(path.read_bytes())
    vector_end = len(raw) - TRAILER_SIZE if raw[-TRAILER_SIZE:-32] == CHECKSUM_MARKER else len(raw)
    stored = np.load(io.BytesIO(bytes(raw[:vector_end])), allow_pickle=False)
    start = vector_end - stored.nbytes
    raw[start:vector_end] = np.random.default_rng(seed).uniform(-1, 1, stored.size).astype(np.float32).tobytes()
    path.write_bytes(bytes(raw))


def random_bytes(path: Path, seed: int = 7) -> None:
    """Random bytes of the file's size (NaN and 1e38 among them once read as float32)."""
    path.write_bytes(np.random.default_rng(seed).bytes(path.stat().st_size))


# --------------------------------------------------------------------------- reads are checked

def test_a_payload_overwritten_with_finite_garbage_is_reported_and_not_used(cache_root, capsys):
    cache = make_cache()
    cache.put(DIGESTS[0], vector(0))
    np.testing.assert_array_equal(cache.get(DIGESTS[0]), vector(0))
    overwrite_payload(entry_path(cache, DIGESTS[0]))
    assert np.isfinite(np.load(entry_path(cache, DIGESTS[0]))).all()  # still a plausible vector

    assert cache.get(DIGESTS[0]) is None  # a miss: extracted again
    err = capsys.readouterr().err
    assert f"warning: feature cache entry {entry_path(cache, DIGESTS[0])}" in err
    assert "backbone EfficientNetB0, view 32-bilinear" in err and "checksum mismatch" in err
    cache.put(DIGESTS[0], vector(0))  # what the extraction stores replaces it
    np.testing.assert_array_equal(cache.get(DIGESTS[0]), vector(0))


def test_messages_name_a_model_file_backbone_by_its_file(cache_root):
    """A .keras backbone is keyed by its bytes: messages name it by its cache folder's label,
    without the view and runtime the folder name adds (a name may itself hold a view's words)."""
    key = {**KEY, "backbone": {"keras_file_md5": "0" * 32}, "weights": "stored", "runtime": "openvino"}
    cache = make_cache(key, "net-32-bilinear-v2-32-bilinear-openvino-bf16")
    assert cache.describe() == "backbone net-32-bilinear-v2, view 32-bilinear, runtime openvino"
    assert make_cache({**KEY, "backbone": "EfficientNetB0"}).describe() == "backbone EfficientNetB0, view 32-bilinear"


def test_random_bytes_are_reported_and_not_used(cache_root, capsys):
    cache = make_cache()
    cache.put(DIGESTS[0], vector(0))
    random_bytes(entry_path(cache, DIGESTS[0]))
    assert cache.get(DIGESTS[0]) is None
    assert "damaged" in capsys.readouterr().err
    assert sum(cache.problems.values()) == 1


def test_an_entry_of_another_image_or_cache_folder_is_not_used(cache_root):
    cache = make_cache()
    other = make_cache({**KEY, "mirrored": True}, "EfficientNetB0-32-bilinear-mirror")
    cache.put(DIGESTS[0], vector(0))
    for target, digest in ((cache, DIGESTS[1]), (other, DIGESTS[0])):  # copied under another name / folder
        entry_path(target, digest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(entry_path(cache, DIGESTS[0]), entry_path(target, digest))
        assert target.get(digest) is None
    assert cache.get(DIGESTS[0]) is not None


def test_non_finite_vectors_are_neither_stored_nor_used(cache_root, capsys):
    cache = make_cache()
    bad = vector(0)
    bad[3] = np.nan
    cache.put(DIGESTS[0], bad)
    assert not entry_path(cache, DIGESTS[0]).exists()
    assert "non-finite" in capsys.readouterr().err
    # an entry with a valid checksum over a NaN payload (another writer's bug): still a miss
    buffer = io.BytesIO()
    np.save(buffer, bad)
    payload = buffer.getvalue()
    cache.put_bytes(cache._relative(DIGESTS[0]), payload + CHECKSUM_MARKER + cache._checksum(DIGESTS[0], payload))
    assert cache.get(DIGESTS[0]) is None
    assert "non-finite values" in capsys.readouterr().err


def test_entries_without_a_checksum_are_replaced_with_one_notice(cache_root, capsys):
    """Entries of fewlabel before checksums: not trusted (a miss), announced once, not per entry."""
    cache = make_cache()
    for digest in DIGESTS[:3]:
        path = entry_path(cache, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vector(1))  # the old format: a bare .npy
    assert all(cache.get(digest) is None for digest in DIGESTS[:3])
    err = capsys.readouterr().err
    assert err.count("without a checksum") == 1 and "verify --drop" in err
    cache.put(DIGESTS[0], vector(1))
    np.testing.assert_array_equal(cache.get(DIGESTS[0]), vector(1))
    np.testing.assert_array_equal(np.load(entry_path(cache, DIGESTS[0])), vector(1))  # old readers still read it


def test_many_damaged_entries_are_listed_up_to_a_limit(cache_root, capsys):
    cache = make_cache()
    for digest in DIGESTS:
        cache.put(digest, vector(2))
        random_bytes(entry_path(cache, digest))
    assert all(cache.get(digest) is None for digest in DIGESTS)
    err = capsys.readouterr().err
    assert err.count("warning: feature cache entry") == feature_cache.MAX_WARNINGS < len(DIGESTS)
    assert "more damaged entries" in err


# --------------------------------------------------------------------------- writes

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_cache_files_get_the_umask_mode(cache_root, umask, mode):
    old = os.umask(umask)
    try:
        cache = make_cache()
        cache.put(DIGESTS[0], vector(0))
    finally:
        os.umask(old)
    for path in (entry_path(cache, DIGESTS[0]), Path(cache.location, "key.json")):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert not list(Path(cache.location).rglob("*.tmp"))


def test_a_failing_store_warns_once_and_carries_on(cache_root, monkeypatch, capsys):
    """Any user, root included: the file system refuses every write (EROFS)."""
    cache = make_cache()
    cache.put(DIGESTS[0], vector(0))

    def refuse(self, relative, content):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(FeatureCache, "put_bytes", refuse)
    fresh = make_cache({**KEY, "size": 48}, "EfficientNetB0-48-bilinear")  # its key.json cannot be written
    for digest in DIGESTS:
        cache.put(digest, vector(1))
        fresh.put(digest, vector(1))
    np.testing.assert_array_equal(cache.get(DIGESTS[0]), vector(0))  # still read
    err = capsys.readouterr().err
    assert err.count("cannot be written") == 1 and "Read-only file system" in err
    assert f"${feature_cache.FEATURE_CACHE_ENV}" in err


def test_creating_the_cache_root_is_announced(tmp_path, monkeypatch, capsys):
    typo = tmp_path / "shared" / "feature-cahce"
    monkeypatch.setenv(feature_cache.FEATURE_CACHE_ENV, str(typo))
    make_cache()
    err = capsys.readouterr().err
    assert f"notice: feature cache: created {typo}" in err and "typo" in err
    make_cache({**KEY, "size": 48}, "EfficientNetB0-48-bilinear")  # the root exists now: no notice
    assert "created" not in capsys.readouterr().err

    monkeypatch.setenv(feature_cache.FEATURE_CACHE_ENV, str(tmp_path))  # an existing root: no notice
    make_cache()
    assert "created" not in capsys.readouterr().err


# --------------------------------------------------------------------------- verify

def test_verify_cache_lists_and_drops_what_is_not_sound(cache_root):
    cache = make_cache()
    for digest in DIGESTS:
        cache.put(digest, vector(3))
    overwrite_payload(entry_path(cache, DIGESTS[0]))
    random_bytes(entry_path(cache, DIGESTS[1]))
    np.save(entry_path(cache, DIGESTS[2]), vector(3))  # no checksum
    misplaced = Path(cache.location, "zz", DIGESTS[3] + ".npy")
    misplaced.parent.mkdir()
    shutil.copy(entry_path(cache, DIGESTS[3]), misplaced)
    leftover = entry_path(cache, DIGESTS[4]).parent / f".{DIGESTS[4]}.npy.abc.tmp"
    leftover.write_bytes(b"half")
    os.utime(leftover, (1, 1))
    other = make_cache({**KEY, "size": 48}, "EfficientNetB0-48-bilinear")
    other.put(DIGESTS[0], vector(4))
    Path(other.location, "key.json").write_text("{ damaged")

    report = verify_cache(cache_root)
    assert (report.folders, report.entries, report.sound) == (2, 8, 3)
    problems = dict(report.problems)
    assert set(problems) == {str(entry_path(cache, d)) for d in DIGESTS[:3]} | {
        str(misplaced), str(leftover), str(Path(other.location, "key.json")), str(entry_path(other, DIGESTS[0]))}
    assert "checksum mismatch" in problems[str(entry_path(cache, DIGESTS[0]))]
    assert "no checksum" in problems[str(entry_path(cache, DIGESTS[2]))]
    assert "cannot be checked" in problems[str(Path(other.location, "key.json"))]
    assert report.dropped == 0 and entry_path(cache, DIGESTS[0]).exists()  # not dropped unless asked

    one_folder = verify_cache(cache.location)  # one cache folder
    assert (one_folder.folders, one_folder.entries, len(one_folder.problems)) == (1, 7, 5)

    dropped = verify_cache(cache_root, drop=True)
    assert len(dropped.problems) == dropped.dropped == 7  # the bad folder: its entry and key.json
    assert not Path(other.location).exists() and not misplaced.exists() and not leftover.exists()
    assert [entry_path(cache, d).exists() for d in DIGESTS] == [False] * 3 + [True] * 3
    again = verify_cache(cache_root)
    assert again.clean and (again.entries, again.sound) == (3, 3)

    with pytest.raises(PipelineError, match="no feature cache there"):
        verify_cache(cache_root / "nowhere")


@pytest.mark.slow
def test_verify_command_line(cache_root):
    cache = make_cache()
    cache.put(DIGESTS[0], vector(0))
    cache.put(DIGESTS[1], vector(0))
    random_bytes(entry_path(cache, DIGESTS[1]))
    command = [sys.executable, "-m", "fewlabel", "cache", "verify"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    found = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 1, found.stderr
    assert f"{entry_path(cache, DIGESTS[1])}: damaged" in found.stdout and "1 problems" in found.stdout
    dropped = subprocess.run([*command, "--drop", str(cache_root)], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert dropped.returncode == 0, dropped.stderr
    assert "(dropped)" in dropped.stdout and not entry_path(cache, DIGESTS[1]).exists()
    assert entry_path(cache, DIGESTS[0]).exists()


# --------------------------------------------------------------------------- through featurize



def assert_same_features(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float noise of another batch composition (random-init features are ~1e-6)."""
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert float(np.abs(actual - expected).max()) <= 1e-5 * scale


@pytest.mark.slow
def test_featurize_reextracts_damaged_entries_and_matches_an_uncorrupted_run(cache_root, tmp_path, capsys):
    from fewlabel.features.extract import extract_features
    from tests.synthetic import tiny_features, write_images

    params = tiny_features(backbones=str(TINY_BACKBONE))  # the cache's behaviour holds for any backbone
    paths = write_images(tmp_path / "img", 6, seed=23)
    clean, stats = extract_features(paths, params, progress=False)
    assert stats["n_extracted"] == 6
    (folder,) = [p for p in cache_root.iterdir() if p.is_dir()]
    entries = sorted(folder.glob("*/*.npy"))
    assert len(entries) == 6

    for damage in (overwrite_payload, random_bytes):
        capsys.readouterr()
        damage(entries[0])
        features, stats = extract_features(paths, params, progress=False)
        err = capsys.readouterr().err
        assert stats["n_extracted"] == 1 and stats["n_cached"] == 5
        assert f"warning: feature cache entry {entries[0]} (backbone tiny_backbone, view 32-bilinear)" in err
        assert_same_features(features, clean)
        assert np.isfinite(features).all()
        _, stats = extract_features(paths, params, progress=False)  # the entry was replaced
        assert stats["n_extracted"] == 0
    assert verify_cache(cache_root).clean


@pytest.mark.slow
def test_featurize_reads_a_read_only_cache_and_warns_once(cache_root, tmp_path):
    from fewlabel.features.extract import extract_features
    from tests.synthetic import tiny_features, write_images

    paths = write_images(tmp_path / "img", 6, seed=29)
    backbone = str(TINY_BACKBONE)  # the cache's behaviour holds for any backbone
    cached, _ = extract_features(paths[:4], tiny_features(backbones=backbone), progress=False)
    runner = read_only_runner(cache_root)
    if runner is None:
        if os.geteuid() == 0:
            pytest.skip("needs a read-only mount (unshare -rm): chmod does not stop root from writing")
        for path in [cache_root, *cache_root.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        runner = list
    script = textwrap.dedent(f"""
        import numpy as np
        from fewlabel.features.extract import extract_features
        from tests.synthetic import tiny_features
        # 4 of the 6 images are cached: read; the other 2 are extracted and cannot be stored
        features, stats = extract_features({paths!r}, tiny_features(backbones={backbone!r}), progress=False)
        np.save({str(tmp_path / "out.npy")!r}, features)
        print("plain", stats["n_extracted"], stats["n_cached"])
        # the mirrored view's cache folder does not exist and cannot be created
        _, stats = extract_features({paths!r}, tiny_features(backbones={backbone!r}, flip_tta=True),
                                    progress=False)
        print("mirrored", stats["n_extracted"])
    """)
    before = sorted(str(p) for p in cache_root.rglob("*"))
    try:
        result = subprocess.run(runner([sys.executable, "-c", script]), cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=600, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    finally:
        for path in [cache_root, *cache_root.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert result.returncode == 0, result.stderr
    assert "plain 2 4" in result.stdout and "mirrored 6" in result.stdout
    assert result.stderr.count("cannot be written") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(str(p) for p in cache_root.rglob("*")) == before  # nothing stored
    features = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(features[:4], cached)  # read from the cache
    assert features.shape[0] == 6 and np.isfinite(features).all()


def test_an_fsspec_cache_is_checked_and_verified_the_same_way(tmp_path, monkeypatch, capsys):
    """The fsspec path (s3:// on a cluster; file:// here): checksums, the root notice, verify."""
    monkeypatch.setenv(feature_cache.FEATURE_CACHE_ENV, f"file://{tmp_path}/url-cache")
    cache = make_cache()
    assert cache.fs is not None
    assert f"created {tmp_path}/url-cache" in capsys.readouterr().err
    cache.put(DIGESTS[0], vector(5))
    cache.put(DIGESTS[1], vector(6))
    np.testing.assert_array_equal(cache.get(DIGESTS[0]), vector(5))
    overwrite_payload(tmp_path / "url-cache" / Path(cache.location).name / cache._relative(DIGESTS[1]))
    assert cache.get(DIGESTS[1]) is None
    assert f"{cache.location}/{cache._relative(DIGESTS[1])}" in capsys.readouterr().err

    report = verify_cache(f"file://{tmp_path}/url-cache", drop=True)
    assert (report.entries, report.sound, report.dropped) == (2, 1, 1)
    assert report.problems[0][1].startswith("checksum mismatch")
    assert verify_cache(f"file://{tmp_path}/url-cache").clean

"""The per-image feature cache: one ``.npy`` vector per (image content, backbone, view).

Images are keyed by the sha1 of their file's bytes, so a renamed or copied file is not
extracted again and an edited one is. Each cache folder holds the vectors of one backbone
seen through one :class:`stages.views.View`, and its name carries a hash of everything that
makes those vectors (weights, view, library versions, the code that feeds the model), so a
change to any of them can never serve stale features.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from stages.common import PipelineError, user_cache_dir, write_json

# Leading bytes of the formats tf.io.decode_image reads (a cheap check before any extraction).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"\xff\x0a",
          b"\x00\x00\x00\x0cJXL \r\n\x87\n")


def hash_image(path: str) -> tuple[str | None, str | None]:
    """(sha1 of the file's bytes, None), or (None, the problem) for a missing or non-image file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            digest = hashlib.sha1(head)
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None, "image not found"
    except OSError as error:
        return None, f"cannot read the image ({error.strerror or error})"
    if not head:
        return None, "the image file is empty"
    if not (head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        return None, ("not an image (JPEG, PNG, GIF, BMP, WebP or JPEG XL): the file is corrupt or "
                      "was saved wrongly")
    return digest.hexdigest(), None


def hash_images(paths: list[str]) -> list[str]:
    """Content hashes of the images; a PipelineError names the first missing or unreadable one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(hash_image, paths))
    bad = [(path, problem) for path, (_, problem) in zip(paths, results) if problem]
    if bad:
        more = f" ({len(bad)} images have problems, e.g. {', '.join(p for p, _ in bad[1:4])})" \
            if len(bad) > 1 else ""
        raise PipelineError(f"{bad[0][0]}: {bad[0][1]}{more}; replace or restore the image files "
                            f"(for VOC: dvc repro download), or drop them from the image list")
    return [digest for digest, _ in results]


def cache_folder(label: str, key: dict) -> Path:
    """``<user cache>/features/<label>-<hash of key>``: one folder per distinct ``key``."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    label = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
    return user_cache_dir("features", f"{label}-{digest}")


class FeatureCache:
    """One ``.npy`` feature vector per image content hash: ``<dir>/<sha1[:2]>/<sha1>.npy``;
    ``key.json`` records what the vectors are."""

    def __init__(self, directory: Path, key: dict):
        self.directory = Path(directory)
        self.key = key
        key_file = self.directory / "key.json"
        if not key_file.exists():
            write_json(key_file, key)

    def path(self, digest: str) -> Path:
        return self.directory / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        path = self.path(digest)
        if not path.exists():
            return None
        try:
            vector = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # damaged entry: extract again
        if vector.ndim != 1 or vector.dtype != np.float32 or vector.size == 0:
            return None
        return vector

    def put(self, digest: str, vector: np.ndarray) -> None:
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.ascontiguousarray(vector, dtype=np.float32))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

"""The per-image feature cache: one ``.npy`` vector per (image content, backbone, view).

Images are keyed by the sha1 of their file's bytes, so a renamed or copied file is not
extracted again and an edited one is. Each cache folder holds the vectors of one backbone
seen through one :class:`fewlabel.features.views.View`, and its name carries a hash of everything that
makes those vectors (weights, view, library versions, the code that feeds the model), so a
change to any of them can never serve stale features.

The folders live in ``$FEWLABEL_FEATURE_CACHE``: a folder (a shared file system for a
cluster) or any fsspec URL (``s3://bucket/fewlabel-features`` with s3fs installed, ...);
by default ``<user cache>/features``. Every process that reads or writes it (featurize,
predict, the engine's workers) shares what any of them extracted.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.io import user_cache_dir

FEATURE_CACHE_ENV = "FEWLABEL_FEATURE_CACHE"

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


def cache_folder(label: str, key: dict) -> str:
    """``<feature cache>/<label>-<hash of key>``: one folder (or URL) per distinct ``key``."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    label = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
    root = os.environ.get(FEATURE_CACHE_ENV) or str(user_cache_dir("features"))
    return f"{root.rstrip('/')}/{label}-{digest}"


def is_url(location: str) -> bool:
    """True for an fsspec URL (``s3://...``, ``file://...``), False for a plain path."""
    return "://" in str(location)


class FeatureCache:
    """One ``.npy`` feature vector per image content hash: ``<location>/<sha1[:2]>/<sha1>.npy``;
    ``key.json`` records what the vectors are. ``location`` is a folder or an fsspec URL.

    A vector appears whole or not at all (a folder: written beside, then renamed; an object
    store: one put); an entry that does not load (cut short on another file system) reads as
    missing and is extracted again.
    """

    def __init__(self, location: str | Path, key: dict):
        self.location, self.key = str(location), key
        self.fs = None
        if is_url(self.location):
            import fsspec
            try:
                # an instance of its own: fsspec's shared one may hold folder listings (made by
                # any code in this process) that miss vectors other workers stored since
                self.fs, self.root = fsspec.core.url_to_fs(self.location, skip_instance_cache=True)
            except (ImportError, ValueError) as error:
                raise PipelineError(f"${FEATURE_CACHE_ENV}={self.location}: cannot open this URL ({error}); "
                                    f"install its fsspec backend (e.g. s3fs for s3://) or use a folder") from error
        if self.get_bytes("key.json") is None:
            self.put_bytes("key.json", (json.dumps(key, indent=2) + "\n").encode())

    def _relative(self, digest: str) -> str:
        return f"{digest[:2]}/{digest}.npy"

    def get_bytes(self, relative: str) -> bytes | None:
        """The content of ``relative`` in the cache, or None if absent or unreadable."""
        try:
            if self.fs is not None:
                return self.fs.cat_file(f"{self.root}/{relative}")
            return Path(self.location, relative).read_bytes()
        except (FileNotFoundError, OSError):
            return None

    def put_bytes(self, relative: str, content: bytes) -> None:
        """Write ``content`` to ``relative`` whole (see the class docstring)."""
        if self.fs is not None:
            target = f"{self.root}/{relative}"
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)  # object stores: nothing to do
            self.fs.pipe_file(target, content)
            return
        path = Path(self.location, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get(self, digest: str) -> np.ndarray | None:
        content = self.get_bytes(self._relative(digest))
        if content is None:
            return None
        try:
            vector = np.load(io.BytesIO(content), allow_pickle=False)
        except (OSError, ValueError):
            return None  # damaged entry: extract again
        if vector.ndim != 1 or vector.dtype != np.float32 or vector.size == 0:
            return None
        return vector

    def put(self, digest: str, vector: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(vector, dtype=np.float32))
        self.put_bytes(self._relative(digest), buffer.getvalue())

    def remove(self, digest: str) -> None:
        """Forget one vector (it is extracted again next time)."""
        if self.fs is not None:
            if self.fs.exists(f"{self.root}/{self._relative(digest)}"):
                self.fs.rm_file(f"{self.root}/{self._relative(digest)}")
        else:
            Path(self.location, self._relative(digest)).unlink(missing_ok=True)

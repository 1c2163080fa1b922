"""The per-image feature cache: one ``.npy`` vector per (image content, backbone, view).

Images are keyed by the sha1 of their file's bytes, so a renamed or copied file is not
extracted again and an edited one is. Each cache folder holds the vectors of one backbone
seen through one :class:`fewlabel.features.recipes.View`, and its name carries a hash of everything that
makes those vectors (weights, view, library versions, the code that feeds the model), so a
change to any of them can never serve stale features.

The folders live in ``$FEWLABEL_FEATURE_CACHE``: a folder (a shared file system for a
cluster) or any fsspec URL (``s3://bucket/fewlabel-features`` with s3fs installed, ...);
by default ``<user cache>/features``. Every process that reads or writes it (featurize,
predict, the engine's workers) shares what any of them extracted.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.io import is_image_header, user_cache_dir

FEATURE_CACHE_ENV = "FEWLABEL_FEATURE_CACHE"
# Every entry is the vector's .npy bytes followed by this marker and the sha256 of the cache
# key, the image's digest and those bytes (see FeatureCache). numpy's readers stop at the end
# of the array, so fewlabel versions from before the checksum still read new entries.
CHECKSUM_MARKER = b"fewlabel-sha256:"
TRAILER_SIZE = len(CHECKSUM_MARKER) + 32
NO_CHECKSUM = "no checksum (written by a fewlabel from before checksums)"
# Damaged entries of one cache folder warned about one by one; the rest are counted.
MAX_WARNINGS = 5
VERIFY_HINT = "fewlabel cache verify --drop"
# Temporary files of writes older than this (seconds) were left by a killed writer.
STALE_TEMP_SECONDS = 3600
_warned: set = set()  # once-per-process warnings (read-only cache, ...)
_damaged: Counter = Counter()  # damaged entries seen per cache folder, in this process

# Leading bytes of the formats tf.io.decode_image reads (a cheap check before any extraction).
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
    if not is_image_header(head):
        return None, ("not an image (JPEG, PNG, GIF, BMP, WebP or JPEG XL): the file is corrupt or "
                      "was saved wrongly")
    return digest.hexdigest(), None


def cache_folder(label: str, key: dict) -> str:
    """``<feature cache>/<label>-<hash of key>``: one folder (or URL) per distinct ``key``."""
    digest = key_digest(key)[:16]
    label = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
    root = cache_root()
    return f"{root.rstrip('/')}/{label}-{digest}"


def cache_root() -> str:
    """Where the cache folders live: ``$FEWLABEL_FEATURE_CACHE``, else ``<user cache>/features``."""
    return os.environ.get(FEATURE_CACHE_ENV) or str(user_cache_dir("features"))


def key_digest(key: dict) -> str:
    """The sha1 of a cache key (its first 16 digits end the cache folder's name)."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _filesystem(location: str):
    """(fsspec file system, path in it) of an fsspec URL: an instance of its own, since
    fsspec's shared one may hold folder listings (made by any code in this process) that miss
    vectors other workers stored since."""
    import fsspec
    try:
        return fsspec.core.url_to_fs(location, skip_instance_cache=True)
    except (ImportError, ValueError) as error:
        raise PipelineError(f"${FEATURE_CACHE_ENV}={location}: cannot open this URL ({error}); "
                            f"install its fsspec backend (e.g. s3fs for s3://) or use a folder") from error


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(message, file=sys.stderr, flush=True)


def is_url(location: str) -> bool:
    """True for an fsspec URL (``s3://...``, ``file://...``), False for a plain path."""
    return "://" in str(location)


class FeatureCache:
    """One ``.npy`` feature vector per image content hash: ``<location>/<sha1[:2]>/<sha1>.npy``;
    ``key.json`` records what the vectors are. ``location`` is a folder or an fsspec URL.

    A vector appears whole or not at all (a folder: written beside, then renamed; an object
    store: one put), with the umask's file mode (a cache shared between users stays readable).

    Nothing read back is trusted: each entry carries the sha256 of the cache key, the image's
    digest and its payload, checked on every read. An entry that fails (damaged, written for
    another key or image, without a checksum, not a finite float32 vector) is reported as a
    warning naming the file and the backbone and view, and reads as missing, so it is
    extracted again and replaced. A cache that cannot be written (read-only) is read; stores
    that fail warn once and are skipped. :func:`verify_cache` checks a whole cache.
    """

    def __init__(self, location: str | Path, key: dict, store_key: bool = True):
        self.location, self.key = str(location), key
        self.key_id = key_digest(key)
        self.writable = True
        self.problems: Counter = Counter()  # entries not used, by problem
        self.fs = None
        if is_url(self.location):
            self.fs, self.root = _filesystem(self.location)
        if store_key:
            self._store_key()

    def _store_key(self) -> None:
        """Write ``key.json`` (what the vectors are) unless it already says so; note a cache root
        that had to be created (a typo in $FEWLABEL_FEATURE_CACHE would extract everything anew)."""
        content = self.get_bytes("key.json")
        expected = json.loads(json.dumps(self.key))
        try:
            if content is not None and json.loads(content) == expected:
                return
        except ValueError:
            pass
        root = self._missing_root()
        if self._store("key.json", (json.dumps(self.key, indent=2) + "\n").encode()):
            if content is not None:
                _warn_once(("key", self.location), f"warning: feature cache {self.location}: key.json was damaged; "
                                                   f"rewritten (its vectors are checked one by one)")
            if root is not None:
                named = f" (${FEATURE_CACHE_ENV})" if os.environ.get(FEATURE_CACHE_ENV) else ""
                _warn_once(("root", root), f"notice: feature cache: created {root}{named}, which did not exist, so "
                                           f"every feature is extracted anew into it; if the path is a typo, fix "
                                           f"${FEATURE_CACHE_ENV} (unset: <user cache>/features)")

    def _missing_root(self) -> str | None:
        """The folder above this cache folder (the cache root) when it does not exist yet (a
        folder or a file:// URL; an object store has no folders)."""
        if self.fs is None:
            root = Path(self.location).parent
            return None if root.exists() else str(root)
        if "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)):
            root = self.root.rstrip("/").rsplit("/", 1)[0]
            return None if self.fs.exists(root) else root
        return None

    def describe(self) -> str:
        """The backbone and view of this cache, for messages."""
        key = self.key
        folder = self.location.rstrip("/").rsplit("/", 1)[-1]
        view = f"{key['size']}-{key.get('resize', 'bilinear')}{'-mirror' if key.get('mirrored') else ''}" \
            if "size" in key else None
        backbone = key.get("backbone")
        if not isinstance(backbone, str):  # a model file or preset: named by the folder, <name>-<view>[-<runtime>]-<hash>
            backbone = re.sub(r"-[0-9a-f]{16}$", "", folder)
            name, found, _ = backbone.rpartition(f"-{view}")
            backbone = name if view and found else backbone
        parts = [f"backbone {backbone}"]
        if view:
            parts.append(f"view {view}")
        if key.get("runtime"):
            parts.append(f"runtime {key['runtime']}")
        return ", ".join(parts)

    def path_of(self, relative: str) -> str:
        return f"{self.location.rstrip('/')}/{relative}"

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
        # not mkstemp: its files are private (0600) whatever the umask
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _store(self, relative: str, content: bytes) -> bool:
        """``put_bytes``, or False (a warning, once per cache root) where the cache cannot be written."""
        if not self.writable:
            return False
        try:
            self.put_bytes(relative, content)
            return True
        except Exception as error:  # a cache that cannot be written never stops the work
            self.writable = False
            root = self.location.rstrip("/").rsplit("/", 1)[0]
            _warn_once(("read-only", root), f"warning: feature cache {root} cannot be written ({error}): it is "
                                            f"read-only or not yours; its vectors are read, new ones are not "
                                            f"stored (they are extracted again next time). Make it writable for "
                                            f"this user, or point ${FEATURE_CACHE_ENV} at a writable folder")
            return False

    def _checksum(self, digest: str, payload: bytes) -> bytes:
        hasher = hashlib.sha256(self.key_id.encode())
        hasher.update(b"\0" + digest.encode() + b"\0")
        hasher.update(payload)
        return hasher.digest()

    def check(self, digest: str) -> tuple[np.ndarray | None, str | None]:
        """(the vector, None) for a sound entry; (None, None) for no entry; (None, the problem)
        for an entry that must not be used."""
        content = self.get_bytes(self._relative(digest))
        if content is None:
            return None, None
        if len(content) < TRAILER_SIZE or content[-TRAILER_SIZE:-32] != CHECKSUM_MARKER:
            try:
                np.load(io.BytesIO(content), allow_pickle=False)
                return None, NO_CHECKSUM
            except (OSError, ValueError, EOFError):
                return None, "damaged: neither a checksummed entry nor a .npy file"
        payload = content[:-TRAILER_SIZE]
        if self._checksum(digest, payload) != content[-32:]:
            return None, ("checksum mismatch: the file was damaged or overwritten, or belongs to another "
                          "image or cache folder")
        try:
            vector = np.load(io.BytesIO(payload), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None, "damaged: the checksummed payload is not a .npy file"
        if vector.ndim != 1 or vector.dtype != np.float32 or vector.size == 0:
            return None, f"not a float32 vector (shape {vector.shape}, {vector.dtype})"
        if not np.isfinite(vector).all():
            return None, "holds non-finite values (NaN or inf)"
        return vector, None

    def has(self, digest: str) -> bool:
        """Whether an entry for ``digest`` exists (not read, not checked: see :meth:`get`)."""
        try:
            if self.fs is not None:
                return self.fs.exists(f"{self.root}/{self._relative(digest)}")
            return Path(self.location, self._relative(digest)).is_file()
        except OSError:
            return False

    def get(self, digest: str) -> np.ndarray | None:
        """The sound vector of ``digest``, or None (absent, or not to be used: warned about)."""
        vector, problem = self.check(digest)
        if problem is not None:
            self._report(digest, problem)
        return vector

    def _report(self, digest: str, problem: str) -> None:
        self.problems[problem] += 1
        if problem == NO_CHECKSUM:
            _warn_once(("old", self.location), f"warning: feature cache {self.location} ({self.describe()}) holds "
                                               f"entries without a checksum (from an older fewlabel): they are not "
                                               f"used but extracted again and replaced (`{VERIFY_HINT}` drops them "
                                               f"all at once)")
            return
        _damaged[self.location] += 1
        count = _damaged[self.location]
        if count <= MAX_WARNINGS:
            print(f"warning: feature cache entry {self.path_of(self._relative(digest))} ({self.describe()}): "
                  f"{problem}; not used: it is extracted again and replaced", file=sys.stderr, flush=True)
        elif count == MAX_WARNINGS + 1:
            print(f"warning: more damaged entries in feature cache {self.location} (not listed one by one; each "
                  f"is extracted again and replaced); `{VERIFY_HINT}` finds and drops them all",
                  file=sys.stderr, flush=True)

    def put(self, digest: str, vector: np.ndarray) -> None:
        """Store the vector of ``digest`` with its checksum (a non-finite one is not stored)."""
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        if not np.isfinite(vector).all():
            _warn_once(("non-finite", self.location), f"warning: feature cache {self.location}: a vector with "
                                                      f"non-finite values (NaN or inf) was not stored (image sha1 "
                                                      f"{digest})")
            return
        buffer = io.BytesIO()
        np.save(buffer, vector)
        payload = buffer.getvalue()
        self._store(self._relative(digest), payload + CHECKSUM_MARKER + self._checksum(digest, payload))

    def remove(self, digest: str) -> None:
        """Forget one vector (it is extracted again next time)."""
        try:
            if self.fs is not None:
                if self.fs.exists(f"{self.root}/{self._relative(digest)}"):
                    self.fs.rm_file(f"{self.root}/{self._relative(digest)}")
            else:
                Path(self.location, self._relative(digest)).unlink(missing_ok=True)
        except OSError as error:
            _warn_once(("remove", self.location), f"warning: feature cache {self.location}: cannot remove "
                                                  f"entries ({error}); they are not used")


# ----------------------------------------------------------------------------- verify

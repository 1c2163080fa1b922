"""Telling unreadable image files apart, in plain words and all at once.

featurize and predict both need to know, before any extraction, which files are not images
the extractor can decode (missing, empty, another format, truncated JPEGs) and why, in one
line each, without the lines libjpeg and TensorFlow's C++ logging print for each bad file
("Corrupt JPEG data: premature end of data segment", ``jpeg_mem.cc``). featurize stops on
them, naming every one in a single error; predict skips them and labels the rest.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys

from fewlabel.errors import PipelineError, capped_list

#: Leading bytes of the image formats, to say in plain words why a file does not decode.
MAGIC_BYTES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
#: Formats tf.io.decode_image reads; others get "convert it".
DECODABLE_KINDS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
#: Threads hashing and decoding images to check them (TensorFlow's decoders release the GIL).
CHECK_THREADS = 8
_decodable: set[str] = set()  # digests of image contents this process has decoded without error


def image_kind(head: bytes) -> str | None:
    """The image format a file's first bytes announce (JPEG, PNG, WebP, ...), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF"
    return next((kind for magic, kind in MAGIC_BYTES if head.startswith(magic)), None)


def describe_unreadable(path: str) -> str:
    """One plain line saying why ``path`` is not an image the feature extractor can decode."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except FileNotFoundError:
        return "not found"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not head:
        return "an empty file (0 bytes)"
    kind = image_kind(head)
    if kind is None:
        return f"not an image: its content is none of {', '.join(DECODABLE_KINDS)}"
    if kind not in DECODABLE_KINDS:
        return f"a {kind} image, which is not supported: convert it to JPEG or PNG"
    return f"a damaged or truncated {kind} file that cannot be decoded"


@contextlib.contextmanager
def native_stderr_silenced():
    """Send what native code writes to stderr (file descriptor 2) nowhere for a while.

    libjpeg and TensorFlow's C++ logging print lines such as "Improper call to JPEG library
    in state 201" for each bad file; :func:`describe_unreadable` says it in one line instead.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def undecodable(paths: list[str]) -> list[tuple[str, str]]:
    """(path, why) for each of ``paths`` that TensorFlow cannot decode, in the order given.

    Each file is decoded in full (a truncated JPEG fails only at its end), on a few threads,
    with the native decoders' own messages silenced.
    """
    if not paths:
        return []
    import tensorflow as tf
    from fewlabel.features.views import decode_image

    def fails(path: str) -> bool:
        try:
            decode_image(path)
            return False
        except tf.errors.OpError:
            return True

    with native_stderr_silenced(), concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
        failed = list(pool.map(fails, paths))
    return [(path, describe_unreadable(path)) for path, bad in zip(paths, failed) if bad]


def check_images(paths: list[str], caches: list = ()) -> tuple[list[str | None], list[tuple[str, str]]]:
    """The content digest of each of ``paths`` (None where the file cannot be read) and
    (path, why) for every missing, non-image or undecodable one, in the order given.

    Only images without a vector in any of ``caches`` (:class:`fewlabel.features.cache.FeatureCache`)
    are decoded (one with a vector decoded when it was made: the cache is keyed by content),
    each content once per process; so a run whose every vector is cached decodes nothing.
    """
    from fewlabel.features.cache import hash_image

    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
        hashed = list(pool.map(hash_image, paths))
    unchecked: dict[str, str] = {}
    for path, (digest, _) in zip(paths, hashed):
        if digest is not None and digest not in _decodable and digest not in unchecked \
                and not any(cache.has(digest) for cache in caches):
            unchecked[digest] = path
    failed = dict(undecodable(list(unchecked.values())))
    bad = {digest: failed[path] for digest, path in unchecked.items() if path in failed}
    _decodable.update(digest for digest in unchecked if digest not in bad)
    problems = [(path, problem or bad[digest]) for path, (digest, problem) in zip(paths, hashed)
                if problem or digest in bad]
    return [digest for digest, _ in hashed], problems


def screen_images(paths: list[str], caches: list) -> list[str]:
    """The content digests of ``paths``, once every image the run may have to extract is known
    to decode (:func:`check_images`); else one PipelineError naming every missing, non-image or
    undecodable file."""
    digests, problems = check_images(paths, caches)
    if problems:
        raise unreadable_images_error(problems)
    return digests


def unreadable_images_error(problems: list[tuple[str, str]]) -> PipelineError:
    """One error naming every unreadable image (up to a limit, then a count) and what to do."""
    return PipelineError(f"{len(problems)} image(s) cannot be read; replace or restore them all (for VOC: dvc "
                         f"repro download), or drop them from the image list, and rerun (features extracted "
                         f"so far are cached):{capped_list(f'{path}: {why}' for path, why in problems)}")

"""Labelling new photos: expanding inputs (files, folders, globs, lists), telling unreadable
files apart, the per-chunk worker that turns image paths into class probabilities (in this
process or on the engine's workers), and writing the labelled table chunk by chunk.

The command is ``fewlabel predict`` (:mod:`fewlabel.cli`); from Python, :func:`fewlabel.load`.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fewlabel.errors import PipelineError
from fewlabel.io import atomic_path
from fewlabel.model.rules import DecisionRule, apply_rule
from fewlabel.model.svm import positive_probabilities
from fewlabel.params import FeaturesParams

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
OUTPUT_SUFFIXES = (".csv", ".parquet")
CHUNK_IMAGES = 512


def read_file_list(path: str) -> list[str]:
    """The paths listed in a text file, one per line (blank lines and ``#`` comments skipped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError as error:
        raise PipelineError(f"{path}: cannot read the file list ({error.strerror or error}); "
                            f"give a text file with one image path per line") from error
    return [line for line in lines if line and not line.startswith("#")]


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (their images, sorted) and globs, as (image paths, [(input, problem)])."""
    paths, problems = [], []
    for item in inputs:
        if any(char in item for char in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                problems.append((item, "no file matches this pattern"))
            paths.extend(m for m in matches if os.path.isfile(m))
        elif os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append((item, f"folder holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            problems.append((item, "no such file or folder"))
    return list(dict.fromkeys(paths)), problems


#: Leading bytes of the image formats, to say in plain words why a file does not decode.
MAGIC_BYTES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
#: Formats tf.io.decode_image reads; others get "convert it".
DECODABLE_KINDS = ("JPEG", "PNG", "GIF", "BMP", "WebP")


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


def readable_images(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split paths into the images that decode and (path, problem) for those that do not."""
    import tensorflow as tf
    from fewlabel.features.views import load_image

    good, bad = [], []
    for path in paths:
        try:
            with native_stderr_silenced():
                load_image(path, 32)
            good.append(path)
        except tf.errors.OpError:
            bad.append((path, f"not a readable image ({describe_unreadable(path)}); skipped"))
    return good, bad


def label_images(probabilities: np.ndarray, rule: DecisionRule, classes, top_k: int) -> pd.DataFrame:
    """Per image: the labels of the decision rule (as evaluate's), the top-k classes, and every probability."""
    classes = list(classes)
    predicted = apply_rule(probabilities, rule).astype(bool)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    table = pd.DataFrame({
        "labels": [" ".join(c for c, on in zip(classes, row) if on) for row in predicted],
        f"top_{top_k}": [" ".join(classes[i] for i in row) for row in order],
    })
    for c, name in enumerate(classes):
        table[f"p_{name}"] = probabilities[:, c]
    for c, name in enumerate(classes):
        table[f"y_{name}"] = predicted[:, c].astype(int)
    return table


class ImageLabeller:
    """A worker of :func:`fewlabel.features.engine.map_chunks`: class probabilities for chunks of image paths.

    Each call takes a chunk (``position``, ``path``) and returns ``position``, ``problem`` (why
    an image was skipped; empty for the others), ``probability`` (n x classes; NaN where
    skipped) and ``from_cache`` (its features were all in the per-image cache). Extractors
    are built once per worker and kept for the next chunk.
    """

    def __init__(self, model, n_classes: int, params: FeaturesParams, recipes):
        # a copy: Ray hands a worker read-only arrays, and libsvm's predict refuses those
        self.model = copy.deepcopy(model)
        self.n_classes, self.params, self.recipes = n_classes, params, recipes
        self.extractors: dict = {}

    def __call__(self, chunk: dict) -> dict:
        from fewlabel.features.cache import hash_image
        from fewlabel.features.extract import extract_features

        paths = [str(p) for p in chunk["path"]]
        problems = [""] * len(paths)
        digests = {}
        for i, path in enumerate(paths):
            digest, problem = hash_image(path)
            if problem:
                problems[i] = f"not a readable image ({describe_unreadable(path)}); skipped"
            else:
                digests[i] = digest
        _, unreadable = readable_images([paths[i] for i in digests])
        unreadable = dict(unreadable)
        for i in digests:
            problems[i] = unreadable.get(paths[i], "")
        good = [i for i in digests if not problems[i]]
        probability = np.full((len(paths), self.n_classes), np.nan)
        from_cache = np.zeros(len(paths), dtype=bool)
        if good:
            features, stats = extract_features([paths[i] for i in good], self.params, progress=False,
                                               recipes=self.recipes, extractors=self.extractors,
                                               digests=[digests[i] for i in good])
            probability[good] = positive_probabilities(self.model, features)
            from_cache[good] = stats["from_cache"]
        return {"position": np.asarray(chunk["position"]), "problem": np.asarray(problems, dtype=object),
                "probability": probability, "from_cache": from_cache}


class TableWriter:
    """Appends tables to one CSV or Parquet file (by ``path``'s suffix), chunk after chunk.

    Rows go to a temporary file beside ``path``, renamed onto it when the ``with`` block ends
    without error; ``path`` None writes nothing.
    """

    def __init__(self, path: str | None):
        self.path, self.rows = path, 0
        suffix = Path(path).suffix.lower() if path is not None else None
        if path is not None and suffix not in OUTPUT_SUFFIXES:
            raise PipelineError(f"--out {path}: must end in {' or '.join(OUTPUT_SUFFIXES)} (CSV or Parquet)")
        self.parquet = suffix == ".parquet"
        if self.parquet:
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError as error:
                raise PipelineError(f"--out {path}: writing Parquet needs pyarrow (pip install pyarrow, or "
                                    f"pip install -r requirements-engine.txt); or write a .csv") from error

    def __enter__(self):
        self._atomic = atomic_path(self.path) if self.path is not None else contextlib.nullcontext()
        self.tmp = self._atomic.__enter__()
        self._parquet = None
        return self

    def write(self, table: pd.DataFrame) -> None:
        if self.path is None or table.empty:
            return
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq
            batch = pa.Table.from_pandas(table, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.tmp, batch.schema)
            self._parquet.write_table(batch)
        else:
            table.to_csv(self.tmp, mode="a" if self.rows else "w", header=not self.rows, index=False,
                         float_format="%.6g")
        self.rows += len(table)

    def __exit__(self, *exc):
        if self._parquet is not None:
            self._parquet.close()
        return self._atomic.__exit__(*exc)


def label_stream(results, paths: list[str], rule: DecisionRule, classes, top_k: int):
    """For each chunk result of :class:`ImageLabeller`: (the labelled table of its readable
    images, with ``path`` first; [(path, problem)] of the others; images served from the cache)."""
    for result in results:
        readable = result["problem"] == ""
        positions = result["position"][readable]
        table = label_images(result["probability"][readable], rule, classes, top_k)
        table.insert(0, "path", [paths[i] for i in positions])
        problems = [(paths[i], problem) for i, problem in zip(result["position"], result["problem"]) if problem]
        yield table, problems, int(result["from_cache"].sum())


def label_lines(table: pd.DataFrame, classes, top_k: int) -> list[str]:
    """One line per image: its labels and its top-k classes with their probabilities."""
    probabilities = table[[f"p_{name}" for name in classes]].to_numpy()
    lines = []
    for path, labels, row in zip(table["path"], table["labels"], probabilities):
        top = np.argsort(-row, kind="stable")[:top_k]
        tops = ", ".join(f"{classes[i]} {row[i]:.2f}" for i in top)
        lines.append(f"{path}: {labels or '(no label)'}  [top {top_k}: {tops}]")
    return lines


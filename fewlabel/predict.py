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
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from fewlabel.artifacts import PROBABILITY, class_values, probability_table
from fewlabel.errors import PipelineError
from fewlabel.features.screening import describe_unreadable, undecodable
from fewlabel.data.voc import IMAGE_EXTENSIONS
from fewlabel.io import atomic_path, read_lines
from fewlabel.model.rules import DecisionRule, apply_rule
from fewlabel.model.svm import positive_probabilities
from fewlabel.params import FeaturesParams

IMAGE_SUFFIXES = set(IMAGE_EXTENSIONS)  # the files prepare and the pool read too
OUTPUT_SUFFIXES = (".csv", ".parquet")
CHUNK_IMAGES = 512


def read_file_list(path: str) -> list[str]:
    """The paths listed in a text file, one per line (blank lines and ``#`` comments skipped;
    a byte order mark is not part of a path)."""
    return read_lines(path, "the file list of image paths")


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


def readable_images(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split paths into the images that decode and (path, problem) for those that do not."""
    bad = dict(undecodable(paths))
    return [p for p in paths if p not in bad], [(p, skipped(why)) for p, why in bad.items()]


def skipped(why: str) -> str:
    """predict's line for an image it leaves out."""
    return f"not a readable image ({why}); skipped"


def label_images(probabilities: np.ndarray, rule: DecisionRule, classes, top_k: int) -> pd.DataFrame:
    """Per image: the labels of the decision rule (as evaluate's), the top-k classes, and every probability."""
    classes = list(classes)
    predicted = apply_rule(probabilities, rule).astype(bool)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return probability_table({
        "labels": [" ".join(c for c, on in zip(classes, row) if on) for row in predicted],
        f"top_{top_k}": [" ".join(classes[i] for i in row) for row in order],
    }, classes, probabilities, decisions=predicted.astype(int))


class ImageLabeller:
    """A worker of :func:`fewlabel.features.engine.map_chunks`: class probabilities for chunks of image paths.

    Each call takes a chunk (``position``, ``path``) and returns ``position``, ``problem`` (why
    an image was skipped; empty for the others), ``probability`` (n x classes; NaN where
    skipped) and ``from_cache`` (its features were all in the per-image cache). Extractors
    are built once per worker and kept for the next chunk. ``on_batch(images)`` (in this
    process only) is called as extraction batches finish, in images of the chunk (fractions
    when several backbones each see every image).
    """

    def __init__(self, model, n_classes: int, params: FeaturesParams, recipes,
                 on_batch: Callable[[float], None] | None = None):
        # a copy: Ray hands a worker read-only arrays, and libsvm's predict refuses those
        self.model = copy.deepcopy(model)
        self.n_classes, self.params, self.recipes = n_classes, params, recipes
        self.extractors: dict = {}
        self.on_batch = None if on_batch is None else (lambda n: on_batch(n / len(recipes)))

    def __call__(self, chunk: dict) -> dict:
        from fewlabel.features.cache import hash_image
        from fewlabel.features.extract import extract_features

        paths = [str(p) for p in chunk["path"]]
        problems = [""] * len(paths)
        digests = {}
        for i, path in enumerate(paths):
            digest, problem = hash_image(path)
            if problem:
                problems[i] = skipped(describe_unreadable(path))
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
                                               digests=[digests[i] for i in good], on_batch=self.on_batch)
            probability[good] = positive_probabilities(self.model, features)
            from_cache[good] = stats["from_cache"]
        return {"position": np.asarray(chunk["position"]), "problem": np.asarray(problems, dtype=object),
                "probability": probability, "from_cache": from_cache}


def check_output_path(path: str) -> None:
    """A PipelineError naming ``--out`` and what to do unless a table can be written to ``path``:
    a CSV or Parquet name, not a folder, in a folder that exists (it is not created: a typo
    in it would otherwise scatter outputs) and that this user can write to."""
    target = Path(path)
    if target.suffix.lower() not in OUTPUT_SUFFIXES:
        raise PipelineError(f"--out {path}: must end in {' or '.join(OUTPUT_SUFFIXES)} (CSV or Parquet)")
    if target.is_dir():
        raise PipelineError(f"--out {path}: is a folder; give a file name, e.g. --out {target / 'predictions'}"
                            f"{target.suffix.lower()}")
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise PipelineError(f"--out {path}: the folder {folder} {what}; create it first (mkdir -p {folder}) "
                            f"or write the table elsewhere")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise PipelineError(f"--out {path}: cannot write in {folder} ({error.strerror or error}); choose a "
                            f"folder you can write to") from error


class TableWriter:
    """Appends tables to one CSV or Parquet file (by ``path``'s suffix), chunk after chunk.

    Rows go to a temporary file beside ``path``, renamed onto it when the ``with`` block ends
    without error; ``path`` None writes nothing. Made before any work: a path that cannot be
    written (see :func:`check_output_path`) raises a PipelineError at once.
    """

    def __init__(self, path: str | None):
        self.path, self.rows = path, 0
        if path is not None:
            check_output_path(path)
        self.parquet = path is not None and Path(path).suffix.lower() == ".parquet"
        if self.parquet:
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError as error:
                raise PipelineError(f"--out {path}: writing Parquet needs pyarrow, which requirements.txt "
                                    f"installs (pip install -r requirements.txt); or write a .csv") from error

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
    probabilities = class_values(table, PROBABILITY, classes)
    lines = []
    for path, labels, row in zip(table["path"], table["labels"], probabilities):
        top = np.argsort(-row, kind="stable")[:top_k]
        tops = ", ".join(f"{classes[i]} {row[i]:.2f}" for i in top)
        lines.append(f"{path}: {labels or '(no label)'}  [top {top_k}: {tops}]")
    return lines


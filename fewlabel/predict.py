"""Labelling new photos: telling unreadable files apart, the per-chunk worker that turns image
paths into class probabilities (in this process or on the engine's workers), and the labelled
table (the rule's labels, the top-k classes, every probability) with its printed lines.
Inputs are expanded by :mod:`fewlabel.data.images`; the table is written by :mod:`fewlabel.tables`.

The command is ``fewlabel predict`` (:mod:`fewlabel.cli`); from Python, :func:`fewlabel.load`.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import pandas as pd

from fewlabel.artifacts import PROBABILITY, class_values, probability_table
from fewlabel.features.screening import check_images, describe_unreadable
from fewlabel.model.rules import DecisionRule, apply_rule
from fewlabel.model.svm import positive_probabilities
from fewlabel.params import FeaturesParams

CHUNK_IMAGES = 512


def readable_images(paths: list[str], caches: list = ()) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Split paths into the images that decode, their content digests (what ``digests=`` of
    :func:`fewlabel.features.extract.extract_features` takes, so they are not read again) and
    (path, problem) for those that do not decode (an image whose content has a vector in one of
    ``caches`` is not decoded again: see :func:`fewlabel.features.screening.check_images`)."""
    digests, problems = check_images(paths, caches)
    bad = dict.fromkeys(path for path, _ in problems)  # a path given twice: one line
    readable = [(p, d) for p, d in zip(paths, digests) if p not in bad]
    return ([p for p, _ in readable], [d for _, d in readable],
            [(p, skipped(describe_unreadable(p))) for p in bad])


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
        from fewlabel.features.extract import extract_features, recipe_caches, resolve_runtime

        paths = [str(p) for p in chunk["path"]]
        runtime = resolve_runtime(self.params)
        digests, unreadable = check_images(paths, recipe_caches(self.params, self.recipes, runtime))
        bad = {path for path, _ in unreadable}
        problems = [skipped(describe_unreadable(path)) if path in bad else "" for path in paths]
        good = [i for i, path in enumerate(paths) if path not in bad]
        probability = np.full((len(paths), self.n_classes), np.nan)
        from_cache = np.zeros(len(paths), dtype=bool)
        if good:
            features, stats = extract_features([paths[i] for i in good], self.params, progress=False,
                                               recipes=self.recipes, extractors=self.extractors,
                                               digests=[digests[i] for i in good], on_batch=self.on_batch,
                                               runtime=runtime)
            probability[good] = positive_probabilities(self.model, features)
            from_cache[good] = stats["from_cache"]
        return {"position": np.asarray(chunk["position"]), "problem": np.asarray(problems, dtype=object),
                "probability": probability, "from_cache": from_cache}


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


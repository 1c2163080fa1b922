"""predict: label new photos with the trained model and its calibrated decision rule.

    python -m stages.predict photos/ more/*.jpg one.png [--out predictions.csv] [--top-k 3]

Features come from the same backbones, input sizes and weights the model was trained on
(read from the model and checked against ``data/features/meta.json``), through the same
per-image feature cache as the featurize stage, so an image seen before is not extracted
again. A file that is not a readable image gets its own error line; the others go on.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common import PipelineError, feature_signature, read_json, run_main, write_csv
from stages.calibrate import DecisionRule, apply_rule, load_rule
from stages.model import load_model, positive_probabilities
from stages.params import load_params

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


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
    from stages.views import load_image

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--out", help="write the table to this CSV too")
    parser.add_argument("--top-k", type=int, default=3, help="how many top classes to list (default 3)")
    parser.add_argument("--model", default="models/model.joblib")
    parser.add_argument("--thresholds", default="models/thresholds.json")
    parser.add_argument("--meta", default="data/features/meta.json",
                        help="the features the pipeline uses; the model must match them")
    args = parser.parse_args(argv)

    classes = load_params().data.classes
    if not 1 <= args.top_k <= len(classes):
        raise PipelineError(f"--top-k must be between 1 and {len(classes)}, got {args.top_k}")
    meta = read_json(args.meta)
    bundle = load_model(args.model, classes, feature_signature(meta))
    rule = load_rule(args.thresholds, classes, model_path=args.model)

    paths, problems = expand_inputs(args.inputs)
    paths, unreadable = readable_images(paths)
    problems += unreadable
    for item, problem in problems:
        print(f"error: {item}: {problem}", file=sys.stderr)
    if not paths:
        raise PipelineError("no readable image among the inputs; give JPEG/PNG files, folders or globs")

    from stages.featurize import extract_features, recipes_from_meta
    features_params, recipes = recipes_from_meta(meta)
    features, stats = extract_features(paths, features_params, progress=True, recipes=recipes)
    probabilities = positive_probabilities(bundle["model"], features)
    table = label_images(probabilities, rule, classes, args.top_k)
    table.insert(0, "path", paths)

    for row, probability_row in zip(table.itertuples(index=False), probabilities):
        top = np.argsort(-probability_row, kind="stable")[:args.top_k]
        tops = ", ".join(f"{classes[i]} {probability_row[i]:.2f}" for i in top)
        print(f"{row.path}: {row.labels or '(no label)'}  [top {args.top_k}: {tops}]")
    if args.out:
        write_csv(args.out, table)
        print(f"wrote {args.out} ({len(table)} images; {stats['n_cached']} served from the feature cache)")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)

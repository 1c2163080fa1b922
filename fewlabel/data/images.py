"""Image files on disk: the image file of each id of a subset CSV, and the images that files,
folders, globs and list files name (predict's inputs)."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fewlabel.errors import PipelineError
from fewlabel.data.voc import IMAGE_EXTENSIONS
from fewlabel.io import read_csv, read_lines


IMAGE_EXTENSION = ".jpg"


def subset_image_paths(images_dir: Path, csv_path: Path) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """(image ids in CSV order, their image paths, the CSV), checking the images exist.

    The path is ``<images>/<image_file>`` when the CSV has prepare's ``image_file`` column
    (PNG or ``.JPG`` exports of labelling tools), else ``<images>/<id>.jpg``.
    """
    frame = read_csv(csv_path, required=["image_id"])
    if frame["image_id"].isna().any():
        raise PipelineError(f"{csv_path}: has rows without an image_id; rerun the subset stage")
    ids = frame["image_id"].astype(str).to_numpy(dtype=str)
    if len(ids) == 0:
        raise PipelineError(f"{csv_path}: lists no images; rerun the subset stage")
    if "image_file" in frame.columns and frame["image_file"].notna().all():
        paths = [str(images_dir / name) for name in frame["image_file"].astype(str)]
    else:
        paths = [str(images_dir / f"{image_id}{IMAGE_EXTENSION}") for image_id in ids]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" ({len(missing)} of its {len(paths)} images are missing)" if len(missing) > 1 else ""
        raise PipelineError(f"{missing[0]}: image not found, listed in {csv_path}{more}; check --images "
                            f"or restore the dataset (dvc repro download)")
    return ids, paths, frame


IMAGE_SUFFIXES = set(IMAGE_EXTENSIONS)  # the files prepare and the pool read too


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

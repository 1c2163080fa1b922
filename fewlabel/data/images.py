"""Where a subset's images are: the image file of each id of a subset CSV."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fewlabel.errors import PipelineError
from fewlabel.io import read_csv


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

"""The pool: unlabelled images that the suggest stage ranks for labelling.

Either a VOC split list (``data.pool_split``: ids whose images are in ``JPEGImages``) or
``data.pool_images`` (a folder of images, or a text file of image paths, one per line). Only
the list and the image files are read here: never an annotation, so the pool's labels, where a
VOC folder has them, cannot steer which images are suggested. The images already in the
training set or the evaluation set are left out.
"""
from __future__ import annotations

import os
from pathlib import Path

from fewlabel.data.voc import IMAGE_EXTENSIONS, list_images, read_split_list, resolve_image_file
from fewlabel.errors import PipelineError
from fewlabel.io import read_lines
from fewlabel.params import DataParams


def pool_images(voc_dir: str | Path, data: DataParams, exclude: set[str]) -> tuple[list[str], list[str]]:
    """(ids, image paths) of the pool, in list (or file-name) order, without the ids in ``exclude``.

    An empty list when no pool is configured; a configured pool that leaves no image is an error.
    """
    if data.pool_split is not None:
        ids, paths = _from_split(Path(voc_dir), data.pool_split)
        source = f"data.pool_split '{data.pool_split}'"
    elif data.pool_images is not None:
        ids, paths = _from_files(data.pool_images)
        source = f"data.pool_images '{data.pool_images}'"
    else:
        return [], []
    kept = [(i, p) for i, p in zip(ids, paths) if i not in exclude]
    if not kept:
        raise PipelineError(f"params.yaml: {source} holds no image outside the training and evaluation sets "
                            f"({len(ids)} listed); point it at images still to label, or set it to null")
    return [i for i, _ in kept], [p for _, p in kept]


def pool_ids(voc_dir: str | Path, data: DataParams) -> set[str]:
    """The ids of the configured pool (empty when none), from its list or file names only. The
    subset stage never draws them: labelling pool images then cannot change the draw."""
    if data.pool_split is not None:
        path = Path(voc_dir) / "ImageSets" / "Main" / f"{data.pool_split}.txt"
        if not path.is_file():
            raise PipelineError(f"{path}: not found, so data.pool_split '{data.pool_split}' names no list; write "
                                f"the ids of the images to rank there, one per line, or set data.pool_split to null")
        return set(read_split_list(path))
    if data.pool_images is not None:
        return set(_from_files(data.pool_images)[0])
    return set()


def _from_split(voc_dir: Path, split: str) -> tuple[list[str], list[str]]:
    path = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise PipelineError(f"{path}: not found, so data.pool_split '{split}' names no list; write the ids of "
                            f"the images to rank there, one per line, or set data.pool_split to null")
    images = list_images(voc_dir / "JPEGImages")
    ids, paths, missing = [], [], []
    for image_id in dict.fromkeys(read_split_list(path)):
        name = resolve_image_file(image_id, "", images)
        if name is None:
            missing.append(image_id)
        else:
            ids.append(image_id)
            paths.append(str(voc_dir / "JPEGImages" / name))
    if missing:
        print(f"warning: {path}: {len(missing)} id(s) without an image in JPEGImages, left out of the pool: "
              f"{', '.join(missing[:10])}")
    return ids, paths


def _from_files(location: str) -> tuple[list[str], list[str]]:
    """A folder's images (sorted by name) or a list file's paths; each image's id is its file stem."""
    if os.path.isdir(location):
        paths = sorted(str(Path(location) / name) for name in os.listdir(location)
                       if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                       and os.path.isfile(os.path.join(location, name)))
    elif os.path.isfile(location):
        paths = read_lines(location, "a list of image paths")
    else:
        raise PipelineError(f"params.yaml: data.pool_images '{location}' is neither a folder nor a list file; "
                            f"fix the path (relative to the repository root) or set it to null")
    ids = [Path(path).stem for path in paths]
    seen: dict[str, str] = {}
    for image_id, path in zip(ids, paths):
        if image_id in seen:
            raise PipelineError(f"data.pool_images: {seen[image_id]} and {path} have the same id '{image_id}' "
                                f"(the file name without its extension); rename one of them")
        seen[image_id] = path
    return ids, paths

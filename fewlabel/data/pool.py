"""The pool: unlabelled images that the suggest stage ranks for labelling.

Either a VOC split list (``data.pool_split``: ids whose images are in ``JPEGImages``) or
``data.pool_images`` (a folder of images, or a text file of image paths, one per line). Only
the list and the image files are read here: never an annotation, so the pool's labels, where a
VOC folder has them, cannot steer which images are suggested. The images already in the
training set or the evaluation set are left out.

``data.pool_images`` is a DVC dependency through ``data/pool`` (:func:`link_pool`, the pool
stage): a link to the folder or list file, so an image added to the folder, or a list edited,
reruns featurize_pool.
"""
from __future__ import annotations

import os
from pathlib import Path

from fewlabel.data.source import link_dataset
from fewlabel.data.voc import IMAGE_EXTENSIONS, list_images, read_split_list, resolve_image_file
from fewlabel.errors import PipelineError
from fewlabel.io import is_image_header, read_lines
from fewlabel.params import DataParams


def link_pool(location: str | None, out: str | Path) -> None:
    """Make ``out`` what DVC tracks of ``data.pool_images``: a link to its folder or list file,
    or an empty folder when it is null (no pool, or ``data.pool_split``)."""
    out = Path(out)
    if location is None:
        if out.is_symlink() or out.is_file():
            out.unlink()
        out.mkdir(parents=True, exist_ok=True)
        return
    check_pool_location(location)
    link_dataset(location, out)


def check_pool_location(location: str) -> None:
    """``data.pool_images`` must name a folder of images or a text file listing them."""
    if os.path.isdir(location):
        return
    if not os.path.isfile(location):
        raise PipelineError(f"params.yaml: data.pool_images '{location}' is neither a folder nor a list file; "
                            f"fix the path (relative to the repository root) or set it to null")
    if os.path.splitext(location)[1].lower() in IMAGE_EXTENSIONS or _starts_an_image(location):
        raise PipelineError(f"params.yaml: data.pool_images '{location}' is one image; it takes a folder of "
                            f"images or a text file listing image paths (one per line): put the image in a "
                            f"folder and set data.pool_images to the folder")


def pool_images(voc_dir: str | Path, data: DataParams, exclude: set[str]) -> tuple[list[str], list[str]]:
    """(ids, image paths) of the pool, in list (or file-name) order, without the ids in ``exclude``.

    An empty list when no pool is configured; a configured pool that leaves no image is an error.
    """
    if data.pool_split is not None:
        ids, paths = _from_split(Path(voc_dir), data.pool_split)
    elif data.pool_images is not None:
        ids, paths = _from_files(data.pool_images)
    else:
        return [], []
    kept = [(i, p) for i, p in zip(ids, paths) if i not in exclude]
    require_images_left(data, ids, exclude)
    return [i for i, _ in kept], [p for _, p in kept]


def pool_setting(data: DataParams) -> str:
    """The setting that names the pool, for messages: ``data.pool_split 'x'`` or ``data.pool_images 'y'``."""
    if data.pool_split is not None:
        return f"data.pool_split '{data.pool_split}'"
    return f"data.pool_images '{data.pool_images}'"


def require_images_left(data: DataParams, pool: list[str] | set[str], exclude: set[str]) -> None:
    """A configured pool whose every image is in ``exclude`` (the training and evaluation sets)
    is an error. The subset stage checks it too, so that it fails before featurize."""
    if (data.pool_split is not None or data.pool_images is not None) and not set(pool) - set(exclude):
        raise PipelineError(f"params.yaml: {pool_setting(data)} holds no image outside the training and "
                            f"evaluation sets ({len(pool)} listed); point it at images still to label, or set "
                            f"it to null")


def pool_ids(voc_dir: str | Path, data: DataParams) -> set[str]:
    """The ids of the configured pool (empty when none), from its list or file names only. The
    subset stage never draws them: labelling pool images then cannot change the draw."""
    if data.pool_split is not None:
        return set(read_split_list(_split_list(Path(voc_dir), data.pool_split)))
    if data.pool_images is not None:
        return set(_from_files(data.pool_images)[0])
    return set()


def _split_list(voc_dir: Path, split: str) -> Path:
    """The list file that ``data.pool_split`` names (an error naming it when it is missing)."""
    path = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise PipelineError(f"{path}: not found, so data.pool_split '{split}' names no list; write the ids of "
                            f"the images to rank there, one per line, or set data.pool_split to null")
    return path


def _from_split(voc_dir: Path, split: str) -> tuple[list[str], list[str]]:
    path = _split_list(voc_dir, split)
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
    else:
        check_pool_location(location)
        paths = read_lines(location, "a list of image paths")
    ids = [Path(path).stem for path in paths]
    seen: dict[str, str] = {}
    for image_id, path in zip(ids, paths):
        if image_id in seen:
            raise PipelineError(f"data.pool_images: {seen[image_id]} and {path} have the same id '{image_id}' "
                                f"(the file name without its extension); rename one of them")
        seen[image_id] = path
    return ids, paths


def _starts_an_image(path: str) -> bool:
    with open(path, "rb") as handle:
        return is_image_header(handle.read(16))

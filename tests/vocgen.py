"""Synthetic PASCAL VOC datasets for tests: small, deterministic, in the real on-disk format.

Typical use::

    from tests.vocgen import make_voc, make_tarballs, md5s, voc_spec, label_table

    voc = make_voc(tmp_path) / "VOC2007"          # a VOCdevkit/VOC2007 tree (60 + 40 images)
    tarballs = make_tarballs(server_root, 2007)  # {"VOCtrainval_06-Nov-2007.tar": Path, ...}
    md5s(tarballs)                               # {"VOCtrainval_06-Nov-2007.tar": "3f2a...", ...}
    spec = voc_spec(year=2007)                   # the same content as data: what the XML says
    label_table(spec)                            # the data/labels.csv that prepare must write

Everything is a pure function of the arguments (``seed`` included): the same call always
writes the same bytes, so tarball md5s are stable within a test session.

Guarantees of :func:`voc_spec` (tests of later stages may rely on them):

- every image has 1 to 3 objects;
- in each split (``trainval``/``test`` for 2007, ``train``/``val`` for 2012), every class
  has at least 3 images with a non-difficult object of it (label ``1``);
- about 10% of objects are *difficult*, and in each split at least two images hold a
  class only as a difficult object (label ``0``);
- each object is drawn in the JPEG as a filled box whose colour depends on its class,
  so image features carry some signal about the labels.
"""
from __future__ import annotations

import colorsys
import io
import os
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewlabel.io import file_md5
from fewlabel.params import VOC_CLASSES

#: Official tarball names per year (what stages.download fetches).
TARBALLS = {
    2007: ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"),
    2012: ("VOCtrainval_11-May-2012.tar",),
}
#: The (train, eval) split names per year, as in the official devkit.
SPLITS = {2007: ("trainval", "test"), 2012: ("train", "val")}
POSES = ("Unspecified", "Left", "Right", "Frontal", "Rear")
MIN_IMAGES_PER_CLASS = 3
_TAR_MTIME = 1_173_000_000  # fixed, so that tarballs (and their md5s) are reproducible


@dataclass(frozen=True)
class ObjectSpec:
    """One annotated object: class name, VOC box (1-based, inclusive) and flags."""
    name: str
    bbox: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"


@dataclass(frozen=True)
class ImageSpec:
    """One image: its id, the split listing it, its size and its objects."""
    image_id: str
    split: str
    width: int
    height: int
    objects: tuple[ObjectSpec, ...]


@dataclass(frozen=True)
class VocSpec:
    """A whole synthetic dataset: year, class list, images (sorted by id) and split lists."""
    year: int
    classes: tuple[str, ...]
    images: tuple[ImageSpec, ...]
    splits: dict  # split name -> tuple of image ids (sorted)

    def image(self, image_id: str) -> ImageSpec:
        for image in self.images:
            if image.image_id == image_id:
                return image
        raise KeyError(image_id)

    def labels(self, image: ImageSpec) -> dict[str, int]:
        """VOC codes for one image: 1 non-difficult object, 0 only difficult ones, -1 absent."""
        codes = {}
        for name in self.classes:
            flags = [obj.difficult for obj in image.objects if obj.name == name]
            codes[name] = -1 if not flags else (0 if all(flags) else 1)
        return codes


def _image_ids(year: int, n: int, rng: np.random.Generator) -> list[str]:
    """Increasing ids in the official style: ``000005`` (2007) or ``2008_000002`` (2012)."""
    ids, number = [], int(rng.integers(1, 8))
    for i in range(n):
        if year == 2012:
            prefix = 2008 + (4 * i) // n
            if i and prefix != 2008 + (4 * (i - 1)) // n:
                number = int(rng.integers(1, 8))
            ids.append(f"{prefix}_{number:06d}")
        else:
            ids.append(f"{number:06d}")
        number += int(rng.integers(1, 4))
    return ids


def _random_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    min_w, min_h = max(4, width // 6), max(4, height // 6)
    xmin = int(rng.integers(1, width - min_w + 1))
    ymin = int(rng.integers(1, height - min_h + 1))
    xmax = int(rng.integers(xmin + min_w - 1, width + 1))
    ymax = int(rng.integers(ymin + min_h - 1, height + 1))
    return xmin, ymin, xmax, ymax


def _split_objects(ids: list[str], classes: tuple[str, ...], rng: np.random.Generator,
                   size: tuple[int, int]) -> dict[str, list[ObjectSpec]]:
    """Objects for the images of one split, meeting the guarantees in the module docstring."""
    width, height = size

    def new(name, difficult=False):
        return ObjectSpec(name=name, bbox=_random_box(rng, width, height), difficult=difficult,
                          truncated=bool(rng.random() < 0.2), pose=POSES[int(rng.integers(len(POSES)))])

    objects: dict[str, list[ObjectSpec]] = {i: [] for i in ids}
    # 1. Every class in MIN_IMAGES_PER_CLASS distinct images, as a non-difficult object;
    #    each slot goes to the least-loaded image without that class (ties broken by rng).
    for _ in range(MIN_IMAGES_PER_CLASS):
        for c in rng.permutation(len(classes)):
            name = classes[int(c)]
            free = [i for i in ids if len(objects[i]) < 3 and all(o.name != name for o in objects[i])]
            if not free:
                raise ValueError(f"cannot place class {name!r} in {MIN_IMAGES_PER_CLASS} images: "
                                 f"use at least {len(classes)} images per split")
            least = min(len(objects[i]) for i in free)
            pool = [i for i in free if len(objects[i]) == least]
            objects[pool[int(rng.integers(len(pool)))]].append(new(name))
    # 2. A few images get a class that is present only as a difficult object (label 0).
    roomy = [i for i in ids if len(objects[i]) < 3]
    n_difficult_only = min(len(roomy), max(2, len(ids) // 10))
    for i in rng.permutation(roomy)[:n_difficult_only]:
        absent = [c for c in classes if all(o.name != c for o in objects[str(i)])]
        objects[str(i)].append(new(absent[int(rng.integers(len(absent)))], difficult=True))
    # 3. Random extra objects up to 1-3 per image; some of them difficult.
    for i in ids:
        target = int(rng.integers(1, 4))
        while len(objects[i]) < target:
            objects[i].append(new(classes[int(rng.integers(len(classes)))],
                                  difficult=bool(rng.random() < 0.15)))
        order = rng.permutation(len(objects[i]))
        objects[i] = [objects[i][int(k)] for k in order]
    return objects


def voc_spec(year: int = 2007, n_train: int = 60, n_eval: int = 40,
             classes: tuple[str, ...] | list[str] = VOC_CLASSES, seed: int = 0,
             image_size: tuple[int, int] = (64, 48)) -> VocSpec:
    """Describe a synthetic VOC dataset (no files): what :func:`make_voc` writes for these args.

    ``n_train`` images go to the train split (``trainval`` for 2007, ``train`` for 2012) and
    ``n_eval`` to the eval split (``test`` / ``val``); 2012 also lists both in ``trainval``.
    Each split needs at least ``len(classes)`` images. ``image_size`` is (width, height).
    """
    if year not in SPLITS:
        raise ValueError(f"year must be one of {sorted(SPLITS)}, got {year!r}")
    classes = tuple(classes)
    if min(n_train, n_eval) < max(MIN_IMAGES_PER_CLASS, len(classes)):
        raise ValueError(f"n_train and n_eval must be >= {max(MIN_IMAGES_PER_CLASS, len(classes))} "
                         f"(every class needs {MIN_IMAGES_PER_CLASS} images of up to 3 objects per split)")
    width, height = image_size
    if width < 16 or height < 16:
        raise ValueError(f"image_size must be at least 16x16, got {image_size}")
    rng = np.random.default_rng(seed)
    ids = _image_ids(year, n_train + n_eval, rng)
    eval_positions = set(int(k) for k in rng.choice(len(ids), size=n_eval, replace=False))
    train_name, eval_name = SPLITS[year]
    split_ids = {train_name: [i for k, i in enumerate(ids) if k not in eval_positions],
                 eval_name: [i for k, i in enumerate(ids) if k in eval_positions]}
    images = []
    for split, members in split_ids.items():
        objects = _split_objects(members, classes, rng, image_size)
        images += [ImageSpec(i, split, width, height, tuple(objects[i])) for i in members]
    images.sort(key=lambda image: image.image_id)
    splits = {name: tuple(members) for name, members in split_ids.items()}
    if year == 2012:
        splits["trainval"] = tuple(sorted(ids))
    return VocSpec(year=year, classes=classes, images=tuple(images), splits=splits)


def class_colour(index: int, n_classes: int) -> tuple[int, int, int]:
    """A distinct saturated RGB colour per class index."""
    r, g, b = colorsys.hsv_to_rgb(index / max(n_classes, 1), 0.85, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def annotation_xml(spec: VocSpec, image: ImageSpec) -> str:
    """The VOC annotation XML of one image, as in the official devkit."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = f"VOC{spec.year}"
    ET.SubElement(root, "filename").text = f"{image.image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = f"The VOC{spec.year} Database"
    ET.SubElement(source, "annotation").text = f"PASCAL VOC{spec.year}"
    ET.SubElement(source, "image").text = "flickr"
    size = ET.SubElement(root, "size")
    for key, value in (("width", image.width), ("height", image.height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in image.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = obj.pose
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox):
            ET.SubElement(box, key).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def image_jpeg(spec: VocSpec, image: ImageSpec, seed: int = 0) -> bytes:
    """A small JPEG: a noisy grey background with each object's box filled in its class colour."""
    from PIL import Image

    rng = np.random.default_rng([seed, int("".join(ch for ch in image.image_id if ch.isdigit()))])
    pixels = rng.integers(90, 160, size=(image.height, image.width, 3), dtype=np.uint8)
    for obj in image.objects:
        xmin, ymin, xmax, ymax = obj.bbox
        colour = class_colour(spec.classes.index(obj.name), len(spec.classes)) \
            if obj.name in spec.classes else (0, 0, 0)
        pixels[ymin - 1:ymax, xmin - 1:xmax] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_voc(spec: VocSpec, root: str | Path, seed: int = 0) -> Path:
    """Write ``spec`` as ``root/VOCdevkit/VOC<year>/...``; return the VOCdevkit path."""
    devkit = Path(root) / "VOCdevkit"
    voc = devkit / f"VOC{spec.year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for image in spec.images:
        (voc / "Annotations" / f"{image.image_id}.xml").write_text(annotation_xml(spec, image))
        (voc / "JPEGImages" / f"{image.image_id}.jpg").write_bytes(image_jpeg(spec, image, seed))
    by_id = {image.image_id: image for image in spec.images}
    for split, members in spec.splits.items():
        main = voc / "ImageSets" / "Main"
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in members))
        # Per-class lists ("<id> <code>"), as the official devkit ships; prepare ignores them.
        for name in spec.classes:
            lines = (f"{i} {spec.labels(by_id[i])[name]:2d}\n" for i in members)
            (main / f"{name}_{split}.txt").write_text("".join(lines))
    return devkit


def make_voc(root: str | Path, year: int = 2007, n_train: int = 60, n_eval: int = 40,
             classes: tuple[str, ...] | list[str] = VOC_CLASSES, seed: int = 0,
             image_size: tuple[int, int] = (64, 48)) -> Path:
    """Write a synthetic VOC dataset under ``root``; return ``root/VOCdevkit``.

    The dataset itself is ``root/VOCdevkit/VOC<year>`` (Annotations/, JPEGImages/,
    ImageSets/Main/). See :func:`voc_spec` for the arguments and the module docstring for
    what the content guarantees.
    """
    return write_voc(voc_spec(year, n_train, n_eval, classes, seed, image_size), root, seed)


def _tar_members(voc: Path, year: int, split_names: tuple[str, ...], ids: set[str]) -> list[Path]:
    """The files of one official tarball: the listed images' files plus those splits' lists."""
    files = [voc / "Annotations" / f"{i}.xml" for i in sorted(ids)]
    files += [voc / "JPEGImages" / f"{i}.jpg" for i in sorted(ids)]
    for path in sorted((voc / "ImageSets" / "Main").iterdir()):
        split = path.stem.rsplit("_", 1)[-1]
        if split in split_names:
            files.append(path)
    return files


def write_tar(path: str | Path, base: Path, files: list[Path]) -> Path:
    """Write a reproducible tar of ``files`` (named relative to ``base``, parents included)."""
    path = Path(path)
    names, seen = [], set()
    for file in files:
        rel = file.relative_to(base)
        for parent in reversed(rel.parents[:-1]):
            if parent not in seen:
                seen.add(parent)
                names.append(parent)
        names.append(rel)

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = _TAR_MTIME, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for rel in names:
            tar.add(base / rel, arcname=rel.as_posix(), recursive=False, filter=normalise)
    os.replace(tmp, path)
    return path


def make_tarballs(dest_dir: str | Path, year: int = 2007, **make_voc_kwargs) -> dict[str, Path]:
    """Write the year's tarballs, named as the official ones, into ``dest_dir``.

    2007: ``VOCtrainval_06-Nov-2007.tar`` (trainval images, annotations and split lists) and
    ``VOCtest_06-Nov-2007.tar`` (the test part); 2012: ``VOCtrainval_11-May-2012.tar``.
    All extract to ``VOCdevkit/VOC<year>/...``. Other keyword arguments go to
    :func:`make_voc`. Returns ``{tarball name: path}``; see :func:`md5s` for their md5s.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    spec = voc_spec(year, **make_voc_kwargs)
    with tempfile.TemporaryDirectory(prefix="vocgen-") as tmp:
        devkit = write_voc(spec, tmp, make_voc_kwargs.get("seed", 0))
        voc = devkit / f"VOC{year}"
        train_name, eval_name = SPLITS[year]
        if year == 2007:
            parts = {TARBALLS[2007][0]: ((train_name,), set(spec.splits[train_name])),
                     TARBALLS[2007][1]: ((eval_name,), set(spec.splits[eval_name]))}
        else:
            parts = {TARBALLS[2012][0]: (tuple(spec.splits), {i.image_id for i in spec.images})}
        return {name: write_tar(dest_dir / name, Path(tmp), _tar_members(voc, year, splits, ids))
                for name, (splits, ids) in parts.items()}


def md5s(files: dict[str, Path]) -> dict[str, str]:
    """``{name: md5}`` for a ``{name: path}`` mapping such as :func:`make_tarballs` returns
    (the shape of ``data.md5`` in params.yaml)."""
    return {name: file_md5(path) for name, path in files.items()}


def label_table(spec: VocSpec, classes: tuple[str, ...] | list[str] | None = None):
    """The ``data/labels.csv`` table (a DataFrame) that ``prepare`` writes for ``spec``.

    Columns ``image_id, split, image_file, <class>...`` with codes 1/0/-1, rows sorted by
    image id; the split is the train/eval split listing the image (2012's ``trainval`` is not
    used); ``image_file`` is the JPEG's name in JPEGImages.
    """
    import pandas as pd

    classes = tuple(classes or spec.classes)
    rows = []
    for image in spec.images:
        codes = spec.labels(image)
        rows.append({"image_id": image.image_id, "split": image.split, "image_file": f"{image.image_id}.jpg",
                     **{c: codes.get(c, -1) for c in classes}})
    return pd.DataFrame(rows, columns=["image_id", "split", "image_file", *classes])

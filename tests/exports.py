"""Folders shaped like the VOC exports of labelling tools, built from a :class:`VocSpec`.

- :func:`write_cvat_export`: CVAT's "PASCAL VOC 1.1" export: ``Annotations/``,
  ``JPEGImages/`` with the uploaded files under their own names and extensions (PNG,
  ``.JPG``, ``.jpeg``), ``ImageSets/Main/<subset>.txt`` per CVAT subset, ``labelmap.txt``;
  each XML's ``<filename>`` names the image file.
- :func:`write_label_studio_export`: Label Studio's "Pascal VOC XML" export: ``Annotations/``
  and ``images/`` only (no split lists); XML ``<folder>images</folder>``, no ``<difficult>``
  unless set, upload names prefixed with a hash (``1a2b3c4d-IMG_0001.png``).
- :func:`as_voc_folder`: what README "Your own data" tells a Label Studio user to do:
  rename ``images/`` to ``JPEGImages/`` and write the two split lists.

The image files are real PNG/JPEG data of the same pictures :mod:`tests.vocgen` draws.
"""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.vocgen import VocSpec, image_jpeg

#: The extension each image gets, by position (CVAT keeps what was uploaded).
CVAT_EXTENSIONS = (".png", ".JPG", ".jpeg", ".PNG", ".jpg")


def _image_bytes(spec: VocSpec, image, extension: str) -> bytes:
    """The picture in the format its extension names (PNG or JPEG)."""
    jpeg = image_jpeg(spec, image)
    if extension.lower() != ".png":
        return jpeg
    from PIL import Image
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, format="PNG")
    return buffer.getvalue()


def _annotation(spec: VocSpec, image, filename: str, folder: str, difficult_tags: bool) -> str:
    """A VOC annotation as the tools write it (CVAT adds <occluded>; Label Studio may omit
    <difficult> for non-difficult objects)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "Unknown"
    size = ET.SubElement(root, "size")
    for key, value in (("width", image.width), ("height", image.height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in image.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        if difficult_tags or obj.difficult:
            ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        if difficult_tags:
            ET.SubElement(node, "occluded").text = "0"
        box = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox):
            ET.SubElement(box, key).text = f"{value:.2f}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def cvat_file_names(spec: VocSpec) -> dict[str, str]:
    """``{image id: file name}`` in a CVAT export: ``IMG_<id>`` with mixed extensions."""
    return {image.image_id: f"{image.image_id}{CVAT_EXTENSIONS[k % len(CVAT_EXTENSIONS)]}"
            for k, image in enumerate(spec.images)}


def write_cvat_export(spec: VocSpec, root: str | Path, subsets: tuple[str, str] = ("train", "test")) -> Path:
    """Write ``spec`` as a CVAT "PASCAL VOC 1.1" export under ``root``; return ``root``.

    The spec's train and eval splits become the CVAT subsets named ``subsets`` (their
    ``ImageSets/Main/<subset>.txt``); image ids are the spec's ids.
    """
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = cvat_file_names(spec)
    for image in spec.images:
        name = names[image.image_id]
        (root / "JPEGImages" / name).write_bytes(_image_bytes(spec, image, Path(name).suffix))
        (root / "Annotations" / f"{image.image_id}.xml").write_text(
            _annotation(spec, image, name, folder="", difficult_tags=True))
    for ids, subset in zip(spec.splits.values(), subsets):
        (root / "ImageSets" / "Main" / f"{subset}.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n"
                                       + "".join(f"{name}:0,0,0::\n" for name in spec.classes))
    return root


def label_studio_id(image_id: str, k: int) -> str:
    """A Label Studio upload name stem: an 8-hex-digit hash, a dash, the original name."""
    return f"{(k * 2654435761) % 2**32:08x}-IMG_{image_id}"


def write_label_studio_export(spec: VocSpec, root: str | Path) -> dict[str, str]:
    """Write ``spec`` as a Label Studio "Pascal VOC XML" export under ``root``.

    Returns ``{spec image id: image file name}``; the file's stem is its id in the export
    (the annotation is ``Annotations/<stem>.xml``).
    """
    root = Path(root)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = {}
    for k, image in enumerate(spec.images):
        stem = label_studio_id(image.image_id, k)
        name = names[image.image_id] = f"{stem}{'.png' if k % 2 else '.jpeg'}"
        (root / "images" / name).write_bytes(_image_bytes(spec, image, Path(name).suffix))
        (root / "Annotations" / f"{stem}.xml").write_text(
            _annotation(spec, image, name, folder="images", difficult_tags=False))
    return names


def as_voc_folder(export: str | Path, splits: dict[str, list[str]]) -> Path:
    """README's steps for a Label Studio export: ``images/`` becomes ``JPEGImages/`` and each
    ``{split name: image ids}`` becomes ``ImageSets/Main/<split>.txt``."""
    export = Path(export)
    (export / "images").rename(export / "JPEGImages")
    (export / "ImageSets" / "Main").mkdir(parents=True)
    for split, ids in splits.items():
        (export / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return export

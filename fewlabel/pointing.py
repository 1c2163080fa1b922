"""Judging class maps against boxes: the pointing game, the map's energy inside the boxes, a coarse mask's IoU.

- **Pointing game** (Zhang et al., ECCV 2016): a class present in a photo scores a hit when its
  map's maximum lies in one of that class's boxes, with ``TOLERANCE`` pixels of slack; the
  accuracy is the mean over classes of each class's hit rate.
- **Energy**: the share of a map's mass (above its minimum, so a constant offset weighs
  nothing) inside the class's boxes; a uniform map scores the boxes' share of the photo.
- **Mask IoU**: the map thresholded halfway between its minimum and maximum, against the union
  of the class's boxes.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict

import numpy as np

from fewlabel.errors import PipelineError

TOLERANCE = 15  # pixels (Zhang et al.)
#: A photo is "difficult" when one of its boxes covers less than this share of it and another class is present.
SMALL_BOX_SHARE = 0.25

Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in VOC's 1-based pixels


def parse_boxes(xml_text: str | bytes, source_name: str) -> dict[str, list[Box]]:
    """Class name (as written) -> the boxes of a VOC annotation."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as error:
        raise PipelineError(f"{source_name}: is not valid XML ({error}); fix or re-extract this annotation") from error
    boxes = defaultdict(list)
    for node in root.findall("object"):
        box = node.find("bndbox")
        if box is None:
            continue
        try:
            corners = tuple(float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as error:
            raise PipelineError(f"{source_name}: an object's <bndbox> lacks a number in xmin, ymin, xmax or "
                                f"ymax; fix the annotation") from error
        boxes[(node.findtext("name") or "").strip()].append(corners)
    return dict(boxes)


def box_mask(boxes: list[Box], height: int, width: int) -> np.ndarray:
    """The union of ``boxes`` as a height x width boolean mask (pixel (x, y) 0-based is VOC's x + 1)."""
    mask = np.zeros((height, width), dtype=bool)
    for xmin, ymin, xmax, ymax in boxes:
        mask[max(int(ymin) - 1, 0):int(ymax), max(int(xmin) - 1, 0):int(xmax)] = True
    return mask


def hit(point: tuple[float, float], boxes: list[Box], tolerance: float = TOLERANCE) -> bool:
    """True when ``point`` (x, y; 0-based pixels) lies within ``tolerance`` pixels of a box."""
    x, y = point[0] + 1, point[1] + 1  # VOC's 1-based corners
    for xmin, ymin, xmax, ymax in boxes:
        dx, dy = max(xmin - x, 0, x - xmax), max(ymin - y, 0, y - ymax)
        if dx * dx + dy * dy <= tolerance * tolerance:
            return True
    return False


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) of a map's maximum."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def energy(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass above its minimum inside ``mask`` (the boxes' share when flat)."""
    mass = heatmap.astype(np.float64) - heatmap.min()
    total = mass.sum()
    return float(mass[mask].sum() / total) if total > 0 else float(mask.mean())


def mask_iou(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the map above halfway between its minimum and maximum with ``mask``."""
    low, high = float(heatmap.min()), float(heatmap.max())
    predicted = heatmap >= (low + high) / 2 if high > low else np.ones_like(mask)
    union = np.logical_or(predicted, mask).sum()
    return float(np.logical_and(predicted, mask).sum() / union) if union else 0.0


def is_difficult(boxes: dict[str, list[Box]], height: int, width: int) -> bool:
    """A photo with a box under ``SMALL_BOX_SHARE`` of its area and more than one class."""
    areas = [(xmax - xmin + 1) * (ymax - ymin + 1) for per_class in boxes.values() for xmin, ymin, xmax, ymax in per_class]
    return len(boxes) > 1 and min(areas, default=height * width) < SMALL_BOX_SHARE * height * width


def class_mean(records: list[tuple[str, float]]) -> float | None:
    """The mean over classes of each class's mean value (None without records)."""
    per_class = defaultdict(list)
    for name, value in records:
        per_class[name].append(value)
    return float(np.mean([np.mean(values) for values in per_class.values()])) if per_class else None

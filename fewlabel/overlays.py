"""Heatmaps as files: an overlay PNG per photo (one panel per class shown) and the raw maps as .npz."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fewlabel.errors import PipelineError
from fewlabel.heatmaps import Heatmap
from fewlabel.io import atomic_path

#: The longest side of a panel in the overlay (the photo is shrunk to it, never enlarged).
PANEL_PIXELS = 384
ALPHA = 0.5


def shown_classes(labels: np.ndarray, probabilities: np.ndarray) -> list[int]:
    """The classes an overlay shows: the predicted ones, else the most probable one."""
    chosen = [int(i) for i in np.flatnonzero(labels)]
    return chosen or [int(np.argmax(probabilities))]


def overlay_image(heatmap: Heatmap, classes: Sequence[int], names: Sequence[str], caption: bool = True):
    """A PIL image: per class in ``classes``, the photo with its map over it (jet, each map
    stretched to its own range) and (``caption``) the class's name and probability above it."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    with Image.open(heatmap.path) as opened:
        photo = opened.convert("RGB")
    scale = min(1.0, PANEL_PIXELS / max(photo.size))
    width, height = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
    photo = np.asarray(photo.resize((width, height)), dtype=np.float32)
    caption = 18 if caption else 0
    canvas = Image.new("RGB", (width * len(classes), height + caption), "white")
    draw = ImageDraw.Draw(canvas)
    shrunk = Heatmap(heatmap.path, heatmap.probabilities, heatmap.grid, height, width)
    for panel, (c, heat) in enumerate(zip(classes, shrunk.maps(classes))):
        low, high = float(heat.min()), float(heat.max())
        stretched = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
        colour = colormaps["jet"](stretched)[..., :3] * 255
        blended = (1 - ALPHA) * photo + ALPHA * colour
        canvas.paste(Image.fromarray(blended.clip(0, 255).astype(np.uint8)), (panel * width, caption))
        if caption:
            draw.text((panel * width + 4, 3), f"{names[c]} {heatmap.probabilities[c]:.2f}", fill="black")
    return canvas


def output_names(paths: Sequence[str], taken: set[str]) -> list[str]:
    """A file stem per photo, unique within ``taken`` (updated): its own stem, else stem-2, -3..."""
    names = []
    for path in paths:
        stem, name, number = Path(path).stem, Path(path).stem, 1
        while name in taken:
            number += 1
            name = f"{stem}-{number}"
        taken.add(name)
        names.append(name)
    return names


def write_overlay(path: str | Path, heatmap: Heatmap, classes: Sequence[int], names: Sequence[str]) -> None:
    """The overlay PNG of ``classes``, written atomically."""
    with atomic_path(path) as tmp:
        overlay_image(heatmap, classes, names).save(tmp, format="PNG")


def write_raw(path: str | Path, heatmap: Heatmap, names: Sequence[str]) -> None:
    """The maps of every class at the photo's size (float16, probabilities) and the photo's
    probabilities, as .npz: ``maps`` (classes x height x width), ``classes``, ``probabilities``."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, maps=heatmap.maps().astype(np.float16), classes=np.asarray(names),
                            probabilities=heatmap.probabilities.astype(np.float32))


def check_output_folder(folder: str, option: str) -> Path:
    """``folder`` made if missing (its parent must exist), or a PipelineError naming ``option``."""
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise PipelineError(f"{option} {folder}: is a file; give a folder for the heatmap images")
    if not target.parent.is_dir():
        raise PipelineError(f"{option} {folder}: the folder {target.parent} does not exist; create it first "
                            f"(mkdir -p {target.parent})")
    try:
        target.mkdir(exist_ok=True)
    except OSError as error:
        raise PipelineError(f"{option} {folder}: cannot create it ({error.strerror or error}); choose a folder "
                            f"you can write to") from error
    return target

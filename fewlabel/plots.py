"""Matplotlib helpers: the file-only backend, panel grids, atomic figure files."""
from __future__ import annotations

from pathlib import Path

from fewlabel.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (stages run without a display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def panel_grid(n_panels: int, panel_size: tuple[float, float], columns: int = 5):
    """A figure of ``n_panels`` small axes, ``columns`` per row (4 x 5 for VOC's classes).

    Returns (figure, the first ``n_panels`` axes); the unused ones are hidden.
    """
    import numpy as np
    rows = int(np.ceil(n_panels / columns))
    figure, axes = pyplot().subplots(rows, columns, figsize=(panel_size[0] * columns, panel_size[1] * rows),
                                     squeeze=False)
    for axis in list(axes.flat)[n_panels:]:
        axis.axis("off")
    return figure, list(axes.flat)[:n_panels]


def write_figure(path: str | Path, figure) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(figure)

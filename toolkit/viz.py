"""Figures of chips: band selection and stretch for any band count, class masks in colour.

Everything takes plain arrays ``(bands, h, w)`` and returns matplotlib objects, so the same code
draws ``show_batch`` and ``show_results``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

_PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
                     [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127],
                     [188, 189, 34], [23, 190, 207]]) / 255.0


def default_rgb_bands(n_bands: int) -> list[int]:
    """One band shows in grey; three or more show their first three as red, green, blue."""
    return [0] if n_bands < 3 else [0, 1, 2]


def to_display(image: np.ndarray, rgb_bands: Sequence[int] | None = None,
               percentiles: tuple[float, float] = (2, 98)) -> np.ndarray:
    """``(bands, h, w)`` -> ``(h, w)`` grey or ``(h, w, 3)`` RGB in [0, 1].

    ``rgb_bands`` picks one band (grey) or three (RGB) by 0-based index; each shown band is
    stretched between its ``percentiles`` so multispectral and 16-bit data are visible.
    """
    image = np.asarray(image, dtype=np.float64)
    bands = list(rgb_bands) if rgb_bands is not None else default_rgb_bands(image.shape[0])
    if len(bands) not in (1, 3) or not all(0 <= b < image.shape[0] for b in bands):
        raise ValueError(f"rgb_bands must name 1 or 3 of the {image.shape[0]} bands (0-based), got {bands}.")
    out = np.empty((len(bands), *image.shape[1:]))
    for i, b in enumerate(bands):
        band = image[b]
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, percentiles) if finite.size else (0.0, 1.0)
        out[i] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    out = np.nan_to_num(out)
    return out[0] if len(bands) == 1 else np.moveaxis(out, 0, -1)


def mask_to_rgb(labels: np.ndarray, classes: Sequence[dict]) -> np.ndarray:
    """``(h, w)`` class values -> ``(h, w, 3)`` colours: the classes' own colours when they have
    them (ArcGIS writes -1 for none), else a palette; background (0) black."""
    rgb = np.zeros((*labels.shape, 3))
    for i, c in enumerate(classes):
        color = c.get("Color")
        if not color or min(color) < 0:
            color = _PALETTE[i % len(_PALETTE)]
        else:
            color = np.asarray(color[:3]) / 255.0
        rgb[labels == c["Value"]] = color
    return rgb


def show_grid(columns: dict[str, list[np.ndarray]], *, cell_size: float = 3.0,
              suptitle: str | None = None) -> Figure:
    """A figure of ``rows x len(columns)`` pictures, each column titled with its key.

    Each picture is ``(h, w)`` grey or ``(h, w, 3)`` RGB in [0, 1].
    """
    titles = list(columns)
    rows = len(columns[titles[0]])
    fig, axes = plt.subplots(rows, len(titles), figsize=(cell_size * len(titles), cell_size * rows),
                             squeeze=False)
    for c, title in enumerate(titles):
        for r, picture in enumerate(columns[title]):
            ax = axes[r, c]
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig

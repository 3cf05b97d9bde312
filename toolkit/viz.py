"""Figures of chips: band selection and stretch for any band count, class masks in colour.

Everything takes plain arrays ``(bands, h, w)`` and returns matplotlib objects, so the same code
draws ``show_batch`` and ``show_results``.

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def show_raster(path, *, rgb_bands: Sequence[int] | None = None, ax=None, title: str | None = None,
                cmap: str = "gray"):
    """Draw a raster georeferenced: axes in its CRS coordinates, bands picked and stretched as in
    :func:`to_display` (nodata and NaN transparent). Returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    _draw_map(ax, _map_picture(path, rgb_bands), title or Path(path).name, cmap)
    return ax


def _map_picture(path, rgb_bands: Sequence[int] | None):
    """A raster read once for drawing: the picture (masked grey or RGBA, nodata transparent),
    its extent in map coordinates and its CRS."""
    import rasterio
    from rasterio.plot import plotting_extent

    with rasterio.open(path) as src:
        data = src.read().astype(np.float64)
        if src.nodata is not None:
            data[data == src.nodata] = np.nan
        extent, crs = plotting_extent(src), src.crs
    picture = to_display(data, rgb_bands)
    missing = np.isnan(data).all(axis=0)
    if picture.ndim == 2:
        picture = np.ma.masked_where(missing, picture)
    else:
        picture = np.dstack([picture, (~missing).astype(float)])
    return picture, extent, crs


def _draw_map(ax, map_picture, title: str, cmap: str = "gray") -> None:
    picture, extent, crs = map_picture
    ax.imshow(picture, cmap=cmap if picture.ndim == 2 else None, vmin=0, vmax=1, extent=extent)
    ax.set_title(title)
    ax.xaxis.set_major_locator(plt.MaxNLocator(4))  # long map coordinates: few ticks
    ax.yaxis.set_major_locator(plt.MaxNLocator(4))
    ax.ticklabel_format(useOffset=False, style="plain")
    if crs is not None:
        ax.set_xlabel(crs.to_string())


def plot_footprints(image, layers: dict, *, rgb_bands: Sequence[int] | None = None,
                    area=None, area_label: str = "held out",
                    colors: Sequence[str] = ("#ff7f0e", "#2ca02c", "#d62728", "#1f77b4"),
                    cell_size: float = 6.0, credit: str | None = None) -> Figure:
    """One panel per layer: the image (a raster path) with that layer's polygons outlined, e.g.
    ``{"Predicted": footprints, "Ground truth": truth}``; polygons are reprojected to the image's
    CRS. ``area`` (a shapely geometry in the image's CRS, such as the held-out part of a scene)
    is outlined dashed in every panel and labelled ``area_label``. ``credit``: the data's
    attribution line (``datasets.credit(name)``), written under the panels. Returns the figure."""
    import geopandas as gpd

    map_picture = _map_picture(image, rgb_bands)  # read once, drawn in every panel
    crs = map_picture[2]
    fig, axes = plt.subplots(1, len(layers), figsize=(cell_size * len(layers), cell_size), squeeze=False)
    for ax, (title, polygons), color in zip(axes[0], layers.items(), colors):
        _draw_map(ax, map_picture, f"{title} ({len(polygons)})")
        if crs is not None and polygons.crs is not None and polygons.crs != crs:
            polygons = polygons.to_crs(crs)
        if len(polygons):  # thinner outlines where buildings crowd the panel
            polygons.boundary.plot(ax=ax, color=color, linewidth=1.5 if len(polygons) < 300 else 0.6)
        if area is not None:
            gpd.GeoSeries([area]).boundary.plot(ax=ax, color="white", linestyle="--", linewidth=1.2)
            left, _, _, top = area.bounds
            ax.text(left, top, f" {area_label}", color="white", va="top", fontsize=9)
    fig.tight_layout()
    if credit:
        fig.text(0.01, 0.002, credit, fontsize=8, color="0.35", va="bottom")
    return fig


class ResultsViewer:
    """An ipywidgets viewer that pages through samples: Input / Target / Prediction (``titles``).

    ``sample(i)`` returns ``(input, target_picture, prediction_picture)``: the input as
    ``(bands, h, w)`` and the two others ready to show (:func:`to_display`, :func:`mask_to_rgb`).
    With three or more input bands, three drop-downs pick the bands shown as red, green, blue.
    ``widget`` is the ipywidgets box to display; ``index`` its slider; ``image`` the rendering.
    """

    def __init__(self, sample, n_samples: int, band_names: Sequence[str],
                 rgb_bands: Sequence[int] | None = None,
                 titles: Sequence[str] = ("Input", "Target", "Prediction")) -> None:
        import ipywidgets as widgets

        self.sample = sample
        self.titles = list(titles)
        self.index = widgets.IntSlider(value=0, min=0, max=max(n_samples - 1, 0), description="Chip")
        self.band_pickers = []
        if len(band_names) >= 3:
            chosen = list(rgb_bands) if rgb_bands is not None else default_rgb_bands(len(band_names))
            options = [(name, i) for i, name in enumerate(band_names)]
            self.band_pickers = [widgets.Dropdown(options=options, value=b, description=label)
                                 for label, b in zip(("Red", "Green", "Blue"), chosen)]
        self.image = widgets.Image(format="png")
        for control in [self.index, *self.band_pickers]:
            control.observe(lambda _: self.render(), names="value")
        controls = [self.index] + ([widgets.HBox(self.band_pickers)] if self.band_pickers else [])
        self.widget = widgets.VBox([*controls, self.image])
        self.render()

    @property
    def rgb_bands(self) -> list[int] | None:
        return [p.value for p in self.band_pickers] or None

    def render(self) -> None:
        import io

        x, target, prediction = self.sample(self.index.value)
        first, second, third = self.titles
        fig = show_grid({first: [to_display(x, self.rgb_bands)], second: [target], third: [prediction]})
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=72)
        plt.close(fig)
        self.image.value = buffer.getvalue()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

"""Rasters read on a common pixel grid, window by window, and small GeoTIFF/PNG writes.

Every array here is ``(bands, height, width)`` as rasterio returns it.

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

__all__ = ["Grid", "AlignedReader", "bounds_overlap", "clip_raster", "is_toolkit_raster", "open_raster",
           "pixel_bounds", "streaming_env", "write_raster"]

# Metadata tag on every raster the toolkit writes as a result (predictions, clips): it names the
# writer, and overwrite=True replaces only rasters that carry it (toolkit._fs).
OUTPUT_TAG = "TOOLKIT_OUTPUT"

# GDAL's block cache defaults to 5% of RAM and keeps every block read, so one pass over a large
# raster would hold up to that much. Windows read row by row need only a row of blocks.
STREAMING_GDAL_CACHE_BYTES = 64 * 2**20


def streaming_env() -> rasterio.Env:
    """A rasterio environment for one streaming pass: GDAL's block cache capped at 64 MB."""
    return rasterio.Env(GDAL_CACHEMAX=STREAMING_GDAL_CACHE_BYTES)


def open_raster(path: str | os.PathLike, role: str) -> rasterio.io.DatasetReader:
    """Open a raster for reading; errors name the argument (``role``) and the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{role} {path}: no such file.")
    try:
        ds = rasterio.open(path)
    except RasterioIOError as err:
        raise ValueError(f"{role} {path}: not a raster GDAL can read ({err}).") from err
    if any(np.issubdtype(np.dtype(t), np.complexfloating) for t in ds.dtypes):
        ds.close()
        raise ValueError(
            f"{role} {path}: complex bands ({ds.dtypes[0]}) are not supported; convert them to "
            "amplitude or intensity first."
        )
    return ds


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS, affine transform of the pixel corners, width and height."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, ds) -> Grid:
        return cls(ds.crs, ds.transform, ds.width, ds.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return pixel_bounds(self.transform, self.width, self.height)

    def matches(self, ds) -> bool:
        """True when ``ds`` has exactly this grid, so no resampling is needed."""
        return (ds.crs == self.crs and (ds.width, ds.height) == (self.width, self.height)
                and ds.transform.almost_equals(self.transform, precision=1e-9))


def pixel_bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a ``width`` x ``height`` pixel block on ``transform``."""
    xs, ys = zip(*(transform @ corner for corner in [(0, 0), (width, 0), (0, height), (width, height)]))
    return min(xs), min(ys), max(xs), max(ys)


def bounds_overlap(a: tuple, b: tuple) -> bool:
    """True when two (left, bottom, right, top) boxes share some area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


class AlignedReader:
    """Read a raster on a reference grid, window by window.

    When the raster's grid differs from the reference (CRS, resolution or extent), it is read
    through a :class:`rasterio.vrt.WarpedVRT` with an alpha band, so pixels the source does not
    cover are known. Windows may reach past the grid's edge; those pixels are filled with the
    raster's nodata (NaN for floats without nodata, else 0) and reported as not covered.
    The caller opens and closes ``ds``.
    """

    def __init__(self, ds, grid: Grid, *, role: str,
                 resampling: Resampling = Resampling.nearest) -> None:
        self.ds = ds
        self.grid = grid
        self.role = role
        self.resampling = resampling
        self.count = ds.count
        self.dtype = np.dtype(ds.dtypes[0])
        self.nodata = ds.nodata
        self.band_names = [d or f"Band_{i + 1}" for i, d in enumerate(ds.descriptions)]
        if self.nodata is not None:
            self.fill = self.nodata
        elif np.issubdtype(self.dtype, np.floating):
            self.fill = np.nan
        else:
            self.fill = 0
        self._alpha: int | None = None
        self._source = ds
        if not grid.matches(ds):
            name = getattr(ds, "name", role)
            if ds.crs is None or grid.crs is None:
                raise ValueError(
                    f"{role} {name}: lies on another grid than the reference raster and one of "
                    "them has no CRS, so they cannot be aligned."
                )
            bounds = transform_bounds(ds.crs, grid.crs, *ds.bounds, densify_pts=21)
            if not bounds_overlap(bounds, grid.bounds):
                raise ValueError(
                    f"{role} {name}: does not overlap the reference raster (its bounds in "
                    f"{grid.crs.to_string()}: {tuple(round(v, 3) for v in bounds)}; reference "
                    f"bounds: {tuple(round(v, 3) for v in grid.bounds)})."
                )
            self._source = WarpedVRT(
                ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=resampling, add_alpha=True,
            )
            self._alpha = ds.count + 1

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(data, covered)``: ``(bands, h, w)`` values and a ``(h, w)`` boolean of the
        pixels the source covers (inside the grid and, for a warped source, inside its footprint).
        """
        col, row = int(window.col_off), int(window.row_off)
        w, h = int(window.width), int(window.height)
        data = np.full((self.count, h, w), self.fill, dtype=self.dtype)
        covered = np.zeros((h, w), dtype=bool)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + w, self.grid.width), min(row + h, self.grid.height)
        if c1 > c0 and r1 > r0:
            inner = Window(c0, r0, c1 - c0, r1 - r0)
            rows, cols = slice(r0 - row, r1 - row), slice(c0 - col, c1 - col)
            data[:, rows, cols] = self._source.read(list(range(1, self.count + 1)), window=inner)
            if self._alpha is None:
                covered[rows, cols] = True
            else:
                covered[rows, cols] = self._source.read(self._alpha, window=inner) > 0
                # The warper writes 0 where the source has no data; use the raster's own fill.
                data[:, ~covered] = self.fill
        return data, covered

    def read_on(self, transform: Affine, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Warp the raster onto another grid of ``size`` (width, height) pixels in the reference
        CRS, e.g. a turned chip's, with this reader's resampling: ``(data, covered)`` as
        :meth:`read` gives them. Pixels the raster does not cover (beyond its edge, or nodata in
        it) are ``covered=False`` and hold the fill value."""
        width, height = size
        count = self.count
        dest = np.empty((count + 1, height, width), dtype=self.dtype)  # last band: the warper's alpha
        dest[:count] = self.fill
        dest[count] = 0
        reproject(rasterio.band(self.ds, list(range(1, count + 1))), dest, src_nodata=self.nodata,
                  dst_transform=transform, dst_crs=self.grid.crs, dst_nodata=self.nodata,
                  dst_alpha=count + 1, init_dest_nodata=False, resampling=self.resampling)
        covered = dest[count] > 0
        data = dest[:count]
        data[:, ~covered] = self.fill
        return data, covered

    def close(self) -> None:
        """Close the warped view, if any; the dataset itself belongs to the caller."""
        if self._source is not self.ds:
            self._source.close()


def write_raster(path: str | os.PathLike, data: np.ndarray, *, transform: Affine,
                 crs: CRS | None, nodata: float | None, driver: str = "GTiff",
                 output_of: str | None = None) -> None:
    """Write ``(bands, h, w)`` ``data`` as one raster file carrying ``crs``, ``transform`` and
    ``nodata``; ``output_of`` (e.g. ``"predict"``) tags it as the toolkit's output."""
    bands, height, width = data.shape
    with rasterio.open(path, "w", driver=driver, width=width, height=height, count=bands,
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        if output_of:
            dst.update_tags(**{OUTPUT_TAG: output_of})


def is_toolkit_raster(path: str | os.PathLike) -> bool:
    """True when ``path`` is a raster the toolkit wrote as a result (it carries :data:`OUTPUT_TAG`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                return OUTPUT_TAG in src.tags()
    except (RasterioIOError, OSError):
        return False


def clip_raster(in_raster: str | os.PathLike, out_raster: str | os.PathLike, *,
                window: Window | None = None, bounds: tuple[float, float, float, float] | None = None,
                overwrite: bool = False) -> Path:
    """Write the part of ``in_raster`` inside a pixel ``window`` or map ``bounds`` (left, bottom,
    right, top, in its CRS) to ``out_raster``, keeping CRS, transform, dtype and nodata.

    Used to hold out part of a scene for evaluation, or to cut a study area.
    """
    from rasterio.windows import from_bounds

    from toolkit._fs import atomic_file, check_not_input, check_output_file

    check_not_input(out_raster, [in_raster], role="out_raster")
    out_raster = check_output_file(out_raster, overwrite=overwrite, role="out_raster",
                                   owned=is_toolkit_raster, what="a raster")
    if (window is None) == (bounds is None):
        raise ValueError("clip_raster takes a window or bounds (one of them).")
    with open_raster(in_raster, "in_raster") as src:
        if bounds is not None:
            window = from_bounds(*bounds, transform=src.transform)
        window = window.round_offsets().round_lengths().intersection(Window(0, 0, src.width, src.height))
        profile = src.profile | {"width": int(window.width), "height": int(window.height),
                                 "transform": src.window_transform(window)}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        with atomic_file(out_raster, overwrite=overwrite, owned=is_toolkit_raster) as tmp, \
                rasterio.open(tmp, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.update_tags(**{OUTPUT_TAG: "clip_raster"})
    return out_raster

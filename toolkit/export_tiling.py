"""How an export cuts rasters into chips: the tile grid, turned tiles, reading and resizing a tile.

:func:`tile_offsets` and :class:`Tiling` lay tiles on a raster's pixel grid (``tile_size``,
``stride``, ``edge``); :func:`rotation_angles` and :func:`rotate_about_centre` give the turned
copies of each window that Pro's ``rotation_angle`` asks for; :func:`read_tile` reads one tile
from every raster of a chip (on the turned grid when there is one) with its valid pixels, and
:func:`resize_image` resizes it to ``resize_to`` without letting nodata bleed in.

Layer: data. Used by :mod:`toolkit.export` (never the other way round); builds on
:mod:`toolkit.raster`, :mod:`toolkit.esri` and :mod:`toolkit.stats` (formats and I/O).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import cv2
import numpy as np
from affine import Affine
from rasterio.windows import Window

from toolkit import esri
from toolkit.raster import AlignedReader, Grid
from toolkit.stats import band_validity

__all__ = ["Tiling", "read_tile", "resize_image", "rotate_about_centre", "rotation_angles", "tile_offsets"]


def tile_offsets(size: int, tile: int, stride: int, edge: str) -> list[int]:
    """Pixel offsets of the tiles along one axis of ``size`` pixels.

    ``edge="trim"`` keeps only whole tiles (the remainder is dropped); ``edge="pad"`` adds tiles
    until every pixel is covered, the last one reaching past the edge.
    """
    if tile > size:
        raise ValueError(f"tile size {tile} px is larger than the raster ({size} px).")
    if edge == "trim":
        n = (size - tile) // stride + 1
    else:
        n = -(-(size - tile) // stride) + 1
    return [i * stride for i in range(n)]


class Tiling(NamedTuple):
    """How every raster of an export is cut into chips and written."""

    tile: tuple[int, int]  # (width, height) of a tile in the raster's pixels
    step: tuple[int, int]
    out_size: tuple[int, int]  # (width, height) of the written chips
    edge: str
    min_valid_fraction: float
    image_format: esri.ChipFormat  # images/ and images2/
    label_format: esri.ChipFormat  # labels/
    start_index: int  # number of the first chip
    angles: tuple[float, ...]  # rotations of each window, degrees; (0.0,) without rotation_angle
    progress: bool

    def windows(self, grid: Grid) -> list[Window]:
        """The tiles of ``grid``, row by row."""
        cols = tile_offsets(grid.width, self.tile[0], self.step[0], self.edge)
        rows = tile_offsets(grid.height, self.tile[1], self.step[1], self.edge)
        return [Window(c, r, self.tile[0], self.tile[1]) for r in rows for c in cols]


def rotation_angles(value) -> tuple[float, ...]:
    """Pro's ``rotation_angle`` -> the angles every window is exported at: 0, a, 2a... < 360."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"rotation_angle must be a number of degrees in [0, 360), got {value!r}.")
    if not 0 <= value < 360:
        raise ValueError(f"rotation_angle must lie in [0, 360) degrees (0: no rotated chips), got {value}.")
    if value == 0:
        return (0.0,)
    count = math.ceil(360.0 / value - 1e-9)  # k * value < 360
    return tuple(k * float(value) for k in range(count))


def rotate_about_centre(transform: Affine, size: tuple[int, int], angle: float) -> Affine:
    """The transform of a ``size`` (width, height) chip on ``transform``, turned about the chip's
    centre so that the ground appears turned counter-clockwise by ``angle`` degrees in the chip
    (for 90 degrees, the chip's pixels are ``np.rot90`` of the unturned chip's). The chip's grid
    turns clockwise on the map; the centre stays on the same map point."""
    centre = transform @ (size[0] / 2, size[1] / 2)
    return Affine.rotation(-angle, pivot=centre) @ transform


def read_tile(readers: list[AlignedReader], window: Window,
              rotated: Affine | None = None) -> tuple[list, float]:
    """Read one tile from every raster: ``[(reader, data, band_valid)]`` and the share of pixels
    that hold data in all of them (a pixel holds data when any of its bands does).

    With ``rotated`` (the turned tile's transform), each raster is warped onto that grid
    instead, with its own resampling."""
    chips = []
    size = (int(window.width), int(window.height))
    valid = np.ones((size[1], size[0]), dtype=bool)
    for reader in readers:
        data, covered = reader.read(window) if rotated is None else reader.read_on(rotated, size)
        band_valid = band_validity(data, reader.nodata) & covered
        valid &= band_valid.any(axis=0)
        chips.append((reader, data, band_valid))
    return chips, float(valid.mean())


def resize_image(data: np.ndarray, band_valid: np.ndarray, size: tuple[int, int],
                 fill) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize that ignores nodata: each band is resized as (value x valid) / valid."""
    out = np.empty((data.shape[0], size[1], size[0]), dtype=data.dtype)
    out_valid = np.empty(out.shape, dtype=bool)
    integer = np.issubdtype(data.dtype, np.integer)
    for b in range(data.shape[0]):
        weight = cv2.resize(band_valid[b].astype(np.float64), size, interpolation=cv2.INTER_LINEAR)
        values = cv2.resize(np.where(band_valid[b], data[b], 0).astype(np.float64), size,
                            interpolation=cv2.INTER_LINEAR)
        ok = weight >= 0.5
        values = values / np.where(ok, weight, 1.0)
        if integer:
            info = np.iinfo(data.dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        out[b] = np.where(ok, values, fill)
        out_valid[b] = ok
    return out, out_valid

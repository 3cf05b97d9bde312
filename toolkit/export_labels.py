"""Label chips of an export: ``in_class_data`` (polygons or a class raster) on each chip's grid.

:class:`VectorLabels` rasterizes polygons, reprojected to the raster's CRS, on every chip's own
grid (turned or resized ones included): class values from ``class_value_field`` (else 1),
background 0; point features become circles of ``buffer_radius`` (Pro's rule), and with
``contour_width`` each polygon's outer contour (:func:`contour_ring`) is drawn back as a
``"boundary"`` class. :class:`RasterLabels` reads a single-band integer class raster on the input's
grid (nearest neighbour). :func:`label_source` picks one for what the caller passed; both list the
classes for the export's metadata. :func:`check_buffer_radius` and :func:`check_contour_width`
check those two options before anything is read.

Layer: data. Used by :mod:`toolkit.export` (never the other way round); builds on
:mod:`toolkit.export_vectors` and :mod:`toolkit.vector` (data), and :mod:`toolkit.raster` and
:mod:`toolkit.stats` (formats and I/O).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import cv2
import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from toolkit.export_vectors import placeable, read_vector
from toolkit.raster import AlignedReader, Grid, bounds_overlap, open_raster, pixel_bounds
from toolkit.stats import band_validity
from toolkit.vector import repair_polygons

__all__ = ["MAX_CONTOUR_WIDTH", "RasterLabels", "VectorLabels", "check_buffer_radius", "check_contour_width",
           "contour_ring", "label_source"]

_VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml", ".zip"}
_RASTER_SUFFIXES = {".tif", ".tiff", ".img", ".vrt", ".jp2", ".png", ".jpg", ".jpeg", ".mrf"}
# Display colours for classes in the .emd (tab10).
_PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
            [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]]

MAX_CONTOUR_WIDTH = 255  # an outline wider than that fills any building chip (OpenCV's own limit is 32767)


def check_buffer_radius(value, in_class_data) -> float:
    """Pro's ``buffer_radius`` -> a distance >= 0 in the map units of the raster's CRS; it
    applies only with ``in_class_data``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"buffer_radius must be a distance >= 0 in the map units of the raster's "
                         f"CRS, got {value!r}.")
    if value and in_class_data is None:
        raise ValueError("buffer_radius turns the point features of in_class_data into circles: it "
                         "needs in_class_data.")
    return float(value)


def check_contour_width(contour_width) -> None:
    """Refuse a ``contour_width`` that is not a whole number of pixels in 0..MAX_CONTOUR_WIDTH."""
    if not (isinstance(contour_width, (int, float, np.number)) and not isinstance(contour_width, bool)
            and np.isfinite(contour_width) and int(contour_width) == contour_width
            and 0 <= contour_width <= MAX_CONTOUR_WIDTH):
        raise ValueError(f"contour_width must be a whole number of pixels from 0 to {MAX_CONTOUR_WIDTH}, "
                         f"got {contour_width!r}.")


def label_source(in_class_data, grid: Grid, class_value_field, contour_width, contour_value,
                 buffer_radius: float, stack: ExitStack) -> VectorLabels | RasterLabels:
    """The labels of ``in_class_data`` (a GeoDataFrame, a vector file or a class raster) on
    ``grid``, refusing the polygon-only options for a class raster; a class raster stays open
    until ``stack`` closes."""
    if isinstance(in_class_data, gpd.GeoDataFrame):
        return VectorLabels(in_class_data, "GeoDataFrame", grid, class_value_field,
                            contour_width, contour_value, buffer_radius)
    path = Path(in_class_data)
    if not path.exists():
        raise FileNotFoundError(f"in_class_data {path}: no such file.")
    suffix = path.suffix.lower()
    if suffix in _RASTER_SUFFIXES or (suffix not in _VECTOR_SUFFIXES and _is_raster(path)):
        if class_value_field is not None:
            raise ValueError(f"in_class_data {path} is a class raster; class_value_field applies "
                             "to polygons only.")
        if contour_width:
            raise ValueError(f"in_class_data {path} is a class raster; contour reinforcement "
                             "draws polygon outlines, so pass the polygons as a vector file.")
        if buffer_radius:
            raise ValueError(f"in_class_data {path} is a class raster; buffer_radius turns point "
                             "features into circles, so it applies to vector data only.")
        labels = RasterLabels(stack.enter_context(open_raster(path, "in_class_data")), grid)
        stack.callback(labels.reader.close)
        return labels
    return VectorLabels(read_vector(path, "in_class_data"), str(path), grid, class_value_field,
                        contour_width, contour_value, buffer_radius)


def _is_raster(path: Path) -> bool:
    try:
        with rasterio.open(path):
            return True
    except Exception:
        return False


class VectorLabels:
    """Polygons in the raster's CRS, rasterized chip by chip (background 0). Points become
    circles of ``buffer_radius`` map units of the raster's CRS (Pro's rule)."""

    def __init__(self, gdf: gpd.GeoDataFrame, name: str, grid: Grid, class_value_field,
                 contour_width: int, contour_value, buffer_radius: float = 0.0) -> None:
        role = f"in_class_data {name}"
        # OpenStreetMap's self-touching rings and the like: repaired, counted, never a crash
        gdf = repair_polygons(placeable(gdf, grid, role, "the polygons"), role)
        if class_value_field is None:
            values = np.ones(len(gdf), dtype=np.int64)
        else:
            if class_value_field not in gdf.columns:
                fields = ", ".join(c for c in gdf.columns if c != gdf.geometry.name)
                raise ValueError(f"{role}: class_value_field {class_value_field!r} does not exist; "
                                 f"fields: {fields}.")
            values = self._class_values(gdf[class_value_field], role, class_value_field)
        gdf = self._buffer_points(gdf.to_crs(grid.crs), buffer_radius, role)
        if len(gdf) == 0 or not bounds_overlap(gdf.total_bounds, grid.bounds):
            raise ValueError(f"{role}: no feature overlaps the input raster (raster bounds "
                             f"{tuple(round(v, 3) for v in grid.bounds)} in {grid.crs.to_string()}).")
        self.geometries = gdf.geometry.values
        self.values = values
        self.tree = shapely.STRtree(self.geometries)
        self.class_values = sorted(set(values.tolist()))
        self.contour_width = int(contour_width)
        self.contour_value = None
        if self.contour_width:
            self.contour_value = int(contour_value if contour_value is not None else self.class_values[-1] + 1)
            if not 0 < self.contour_value <= 65535:
                raise ValueError(f"contour_value must lie in 1..65535, got {self.contour_value}.")
        top = max(self.class_values + [self.contour_value or 0])
        self.dtype = np.uint8 if top <= 255 else np.uint16

    @staticmethod
    def _buffer_points(gdf: gpd.GeoDataFrame, radius: float, role: str) -> gpd.GeoDataFrame:
        """Point features -> circles of ``radius`` in the CRS's map units; other features kept."""
        points = gdf.geom_type.isin(["Point", "MultiPoint"]).to_numpy()
        if points.any() and not radius:
            raise ValueError(f"{role}: holds {int(points.sum())} point feature(s); points become "
                             "training samples as circles: give buffer_radius (> 0, in the map "
                             "units of the raster's CRS).")
        if radius and not points.any():
            kinds = ", ".join(sorted(set(gdf.geom_type))) or "none"
            raise ValueError(f"{role}: buffer_radius={radius} turns point features into circles, "
                             f"but the data holds no points (geometry types: {kinds}).")
        if points.any():
            geometry = gdf.geometry.copy()
            geometry[points] = geometry[points].buffer(radius, quad_segs=32)
            gdf = gdf.set_geometry(geometry)
        return gdf

    @staticmethod
    def _class_values(column: pd.Series, role: str, field: str) -> np.ndarray:
        if column.isna().any():
            raise ValueError(f"{role}: {int(column.isna().sum())} features have no value in "
                             f"class_value_field {field!r}.")
        try:
            numbers = pd.to_numeric(column).to_numpy(dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{role}: class_value_field {field!r} must hold integer class values "
                             f"> 0 ({err}).") from err
        if not np.all(numbers == np.round(numbers)) or numbers.min() <= 0 or numbers.max() > 65535:
            bad = sorted(set(numbers[(numbers != np.round(numbers)) | (numbers <= 0) | (numbers > 65535)]))
            raise ValueError(f"{role}: class_value_field {field!r} must hold whole numbers in "
                             f"1..65535 (0 is the background); found {bad[:5]}.")
        return numbers.astype(np.int64)

    def chip(self, window: Window, transform: Affine, size: tuple[int, int], *,
             tile_transform: Affine | None = None) -> np.ndarray:
        """The label chip of ``size`` (width, height) pixels on ``transform`` (turned or not)."""
        width, height = size
        label = np.zeros((height, width), dtype=self.dtype)
        bounds = pixel_bounds(transform, width, height)
        hits = np.sort(self.tree.query(shapely.box(*bounds)))  # keep the file's drawing order
        if len(hits):
            shapes = zip(self.geometries[hits], self.values[hits].tolist())
            rasterio.features.rasterize(shapes, out=label, transform=transform)
            if self.contour_width:
                self._draw_contours(label, hits, transform)
        return label[np.newaxis]

    def _draw_contours(self, label: np.ndarray, hits: np.ndarray, transform: Affine) -> None:
        height, width = label.shape
        margin = self.contour_width + 1  # so a polygon cut by the chip edge gets no contour there
        inverse = ~transform
        for geom in self.geometries[hits]:
            if geom.geom_type not in ("Polygon", "MultiPolygon"):
                continue
            # Rasterize the polygon alone on the part of the (margin-padded) chip it covers.
            minx, miny, maxx, maxy = geom.bounds
            cols, rows = zip(*(inverse @ xy for xy in [(minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy)]))
            c0 = max(math.floor(min(cols)) - 1, -margin)
            r0 = max(math.floor(min(rows)) - 1, -margin)
            c1 = min(math.ceil(max(cols)) + 1, width + margin)
            r1 = min(math.ceil(max(rows)) + 1, height + margin)
            if c1 <= c0 or r1 <= r0:
                continue
            mask = rasterio.features.rasterize(
                [(geom, 1)], out_shape=(r1 - r0, c1 - c0),
                transform=transform @ Affine.translation(c0, r0), dtype=np.uint8)
            ring = contour_ring(mask, self.contour_width)
            # Paste the part of the ring that falls inside the chip.
            rc0, rr0 = max(-c0, 0), max(-r0, 0)
            rc1, rr1 = min(width - c0, c1 - c0), min(height - r0, r1 - r0)
            if rc1 <= rc0 or rr1 <= rr0:
                continue
            target = label[r0 + rr0:r0 + rr1, c0 + rc0:c0 + rc1]
            target[ring[rr0:rr1, rc0:rc1]] = self.contour_value

    def classes(self, class_counts: list[np.ndarray]) -> list[dict]:
        classes = _class_entries(self.class_values)
        if self.contour_value is not None:
            if self.contour_value not in self.class_values:
                classes.append({"Value": self.contour_value, "Name": "boundary",
                                "Color": _PALETTE[len(classes) % len(_PALETTE)]})
            # marked, so that models and vectorize know which class separates touching footprints
            outline = next(c for c in classes if c["Value"] == self.contour_value)
            outline.update({"Boundary": True, "ContourWidth": self.contour_width})
        return classes


def contour_ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its outer contour, as found by OpenCV.

    ``mask`` is a uint8 0/1 array; contours of holes are not drawn. The result lies inside the
    mask, so drawing it onto a label never grows a footprint.
    """
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    ring = np.zeros_like(mask)
    cv2.drawContours(ring, contours, -1, 1, thickness=2 * width - 1)
    return (ring & mask).astype(bool)


class RasterLabels:
    """A single-band integer class raster read on the input raster's grid (nearest neighbour)."""

    def __init__(self, ds, grid: Grid) -> None:
        if ds.count != 1 or not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
            raise ValueError(f"in_class_data {ds.name}: a class raster has one integer band; this "
                             f"one has {ds.count} band(s) of {ds.dtypes[0]}.")
        self.reader = AlignedReader(ds, grid, role="in_class_data", resampling=Resampling.nearest)

    def chip(self, window: Window, transform: Affine, size: tuple[int, int], *,
             tile_transform: Affine | None = None) -> np.ndarray:
        """The label chip of ``window`` resized to ``size`` (width, height); with
        ``tile_transform`` (a turned tile's grid), the class raster is warped onto that grid."""
        if tile_transform is None:
            data, covered = self.reader.read(window)
        else:
            data, covered = self.reader.read_on(tile_transform, (int(window.width), int(window.height)))
        label = np.where(band_validity(data, self.reader.nodata)[0] & covered, data[0], 0)
        if label.min() < 0 or label.max() > 65535:
            raise ValueError(f"in_class_data {self.reader.ds.name}: class values must lie in "
                             f"0..65535; found {label.min()}..{label.max()}.")
        label = label.astype(np.uint8 if label.max() <= 255 else np.uint16)
        if (label.shape[1], label.shape[0]) != size:
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        return label[np.newaxis]

    def classes(self, class_counts: list[np.ndarray]) -> list[dict]:
        seen = set()
        for counts in class_counts:
            seen.update(np.nonzero(counts)[0].tolist())
        seen.discard(0)
        return _class_entries(sorted(seen))


def _class_entries(values: Sequence[int]) -> list[dict]:
    return [{"Value": int(v), "Name": str(v), "Color": _PALETTE[i % len(_PALETTE)]}
            for i, v in enumerate(values)]

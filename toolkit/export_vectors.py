"""The vector inputs of an export, placed on the raster: reading them, and Pro's mask polygons.

:func:`read_vector` reads a vector file (a ``ValueError`` naming it when GDAL cannot),
:func:`placeable` checks that features and raster both have a CRS and drops empty geometries,
and :class:`MaskPolygons` is ``in_mask_polygons``: the area that every chip must fall completely
within.

Layer: data. Used by :mod:`toolkit.export` and :mod:`toolkit.export_labels` (never the other
way round); builds on :mod:`toolkit.raster` (formats and I/O).
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import shapely
from affine import Affine

from toolkit.raster import Grid, bounds_overlap

__all__ = ["MaskPolygons", "placeable", "read_mask_polygons", "read_vector"]


def read_mask_polygons(in_mask_polygons) -> tuple[gpd.GeoDataFrame, str]:
    """``in_mask_polygons`` (a vector file path or a GeoDataFrame) -> its features and the name
    that messages give it."""
    if isinstance(in_mask_polygons, gpd.GeoDataFrame):
        return in_mask_polygons, "GeoDataFrame"
    if not isinstance(in_mask_polygons, (str, os.PathLike)):
        raise ValueError(f"in_mask_polygons must be a polygon file (GeoJSON, GeoPackage, Shapefile...) "
                         f"or a GeoDataFrame, got {type(in_mask_polygons).__name__}.")
    path = Path(in_mask_polygons)
    if not path.exists():
        raise FileNotFoundError(f"in_mask_polygons {path}: no such file.")
    return read_vector(path, "in_mask_polygons"), str(path)


def read_vector(path: Path, role: str) -> gpd.GeoDataFrame:
    """Read an existing vector file; anything GDAL cannot read is a ValueError naming it."""
    try:
        return gpd.read_file(path)
    except Exception as err:  # pyogrio raises several types; all mean "not a vector file"
        raise ValueError(f"{role} {path}: not a vector file that can be read ({err}).") from err


def placeable(gdf: gpd.GeoDataFrame, grid: Grid, role: str, what: str) -> gpd.GeoDataFrame:
    """The features of ``gdf`` that have a geometry, after checking that both it and the raster
    have a CRS (so the features can be placed on the raster)."""
    if gdf.crs is None:
        raise ValueError(f"{role}: the vector data has no CRS, so it cannot be placed on the raster.")
    if grid.crs is None:
        raise ValueError(f"{role}: the input raster has no CRS, so {what} cannot be placed on it.")
    return gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]


class MaskPolygons:
    """Pro's ``in_mask_polygons``: the area, in the raster's CRS, that every chip must fall
    completely within."""

    def __init__(self, polygons: tuple[gpd.GeoDataFrame, str], grid: Grid) -> None:
        gdf, name = polygons
        role = f"in_mask_polygons {name}"
        gdf = placeable(gdf, grid, role, "the mask")
        if len(gdf) == 0:
            raise ValueError(f"{role}: holds no polygons.")
        kinds = set(gdf.geom_type)
        if not kinds <= {"Polygon", "MultiPolygon"}:
            raise ValueError(f"{role}: a mask is made of polygons; found {', '.join(sorted(kinds))} "
                             "features.")
        area = shapely.union_all(shapely.make_valid(gdf.to_crs(grid.crs).geometry.values))
        if area.is_empty or not bounds_overlap(area.bounds, grid.bounds):
            raise ValueError(f"{role}: no polygon overlaps the input raster (raster bounds "
                             f"{tuple(round(v, 3) for v in grid.bounds)} in {grid.crs.to_string()}).")
        shapely.prepare(area)
        self.area = area

    def covers(self, transform: Affine, size: tuple[int, int]) -> bool:
        """True when the chip of ``size`` (width, height) pixels on ``transform`` lies completely
        within the mask (its edges may touch the mask's boundary)."""
        width, height = size
        corners = [transform @ xy for xy in [(0, 0), (width, 0), (width, height), (0, height)]]
        return bool(self.area.covers(shapely.Polygon(corners)))

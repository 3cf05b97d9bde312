"""Masks -> polygons: footprints a GIS opens, in the raster's CRS."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine

from toolkit.raster import OUTPUT_TAG, open_raster
from toolkit.stats import band_validity

__all__ = ["footprint_mask", "vectorize", "write_vector"]


def footprint_mask(data: np.ndarray, threshold: float = 0.5, nodata: float | None = None) -> np.ndarray:
    """``(bands, h, w)`` or ``(h, w)`` scores or class values -> boolean ``(h, w)`` footprint mask:
    the highest band at least ``threshold`` (class rasters: any class > 0 with the default 0.5),
    nodata and NaN left out."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    valid = band_validity(data, nodata)
    return np.where(valid, data, -np.inf).max(axis=0) >= threshold


def vectorize(source: str | os.PathLike | np.ndarray, *, threshold: float = 0.5,
              min_area: float = 0.0, simplify_tolerance: float = 0.0, opening: int = 0,
              transform: Affine | None = None, crs=None) -> gpd.GeoDataFrame:
    """Polygons of the footprints in a mask.

    Args:
        source: a mask or score raster (path: every band is read; see :func:`footprint_mask`), or
            an array ``(h, w)`` / ``(bands, h, w)`` with ``transform`` and ``crs``.
        threshold: score (or class value) from which a pixel is footprint.
        min_area: drop polygons smaller than this, in CRS units squared (m² in a UTM CRS).
        simplify_tolerance: simplify outlines (Douglas-Peucker, topology kept), in CRS units.
        opening: radius in pixels of a morphological opening applied to the mask first, which
            removes speckle and thin bridges between footprints; 0 for none.

    Returns:
        A GeoDataFrame with one polygon per connected footprint (holes kept), an ``area`` column
        in CRS units squared, and the raster's CRS; ``to_file("footprints.gpkg")`` writes it.
    """
    if isinstance(source, (str, os.PathLike)):
        with open_raster(source, "source") as src:
            data, nodata = src.read(), src.nodata
            transform = src.transform if transform is None else transform
            crs = src.crs if crs is None else crs
    else:
        data, nodata = np.asarray(source), None
        if transform is None:
            raise ValueError("vectorize(array) needs the array's transform (and crs) to place the polygons.")
    mask = footprint_mask(data, threshold, nodata)
    if opening > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * opening + 1, 2 * opening + 1))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    polygons = [shapely.geometry.shape(geom) for geom, value in
                rasterio.features.shapes(mask.astype(np.uint8), mask=mask, transform=transform)]
    gdf = gpd.GeoDataFrame(geometry=polygons, crs=crs)
    if simplify_tolerance > 0:
        gdf["geometry"] = gdf.geometry.simplify(simplify_tolerance, preserve_topology=True)
    gdf["area"] = gdf.geometry.area
    if min_area > 0:
        gdf = gdf[gdf["area"] >= min_area]
    return gdf.reset_index(drop=True)[["area", "geometry"]]


def write_vector(gdf: gpd.GeoDataFrame, path: str | os.PathLike, *, layer: str = "footprints",
                 overwrite: bool = False) -> Path:
    """Write polygons (e.g. from :func:`vectorize`) to a GeoPackage (``.gpkg``), keeping their CRS.

    The file is written to a temporary name and moved into place. An existing file is replaced
    only with ``overwrite=True`` and only when the toolkit wrote it (its layer carries the
    toolkit's tag); never an input or another program's file. GeoPackage only: it is one file,
    so it can be moved into place whole (a Shapefile is several).
    """
    from toolkit._fs import atomic_file, check_output_file

    if Path(path).suffix.lower() != ".gpkg":
        raise ValueError(f"path {path}: write_vector writes GeoPackages; name the file *.gpkg "
                         "(GeoPandas' to_file writes other formats).")
    path = check_output_file(path, overwrite=overwrite, role="path", owned=_is_toolkit_vector,
                             what="a vector file")
    with atomic_file(path) as tmp:
        gdf.to_file(tmp, layer=layer, driver="GPKG", layer_metadata={OUTPUT_TAG: "write_vector"})
    return path


def _is_toolkit_vector(path: Path) -> bool:
    import pyogrio

    try:
        return any(OUTPUT_TAG in (pyogrio.read_info(path, layer=name).get("layer_metadata") or {})
                   for name, _ in pyogrio.list_layers(path))
    except Exception:  # not a vector file GDAL reads: not ours
        return False

"""Masks -> polygons: footprints a GIS opens, in the raster's CRS.

Layer: data.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import cv2
import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine

from rasterio.windows import Window

from toolkit.raster import OUTPUT_TAG, open_raster, pixel_bounds
from toolkit.stats import band_validity

__all__ = ["footprint_labels", "footprint_mask", "footprint_tags", "regularize_footprints", "vectorize",
           "write_vector"]


def footprint_mask(data: np.ndarray, threshold: float = 0.5, nodata: float | None = None) -> np.ndarray:
    """``(bands, h, w)`` or ``(h, w)`` scores or class values -> boolean ``(h, w)`` footprint mask:
    the highest band at least ``threshold`` (class rasters: any class > 0 with the default 0.5),
    nodata and NaN left out."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    valid = band_validity(data, nodata)
    return np.where(valid, data, -np.inf).max(axis=0) >= threshold


# Tags that predict_raster writes so that vectorize(prediction.tif) needs no arguments.
BOUNDARY_BAND_TAG = "BOUNDARY_BAND"  # score rasters: 1-based band of the footprint-outline scores
BOUNDARY_CLASS_TAG = "BOUNDARY_CLASS"  # class rasters: the class value of footprint outlines
CONTOUR_WIDTH_TAG = "CONTOUR_WIDTH"  # the outline's width in pixels, as exported
SETTINGS_TAG = "FOOTPRINT_SETTINGS"  # JSON: threshold, boundary_threshold, min_area tuned on data

DEFAULTS = {"threshold": 0.5, "boundary_threshold": 0.5, "min_area": 0.0, "marker_erosion": 0}


def footprint_tags(classes: list[dict], *, class_raster: bool, settings: dict | None = None) -> dict:
    """The GeoTIFF tags that tell :func:`vectorize` how to read a prediction of a mask model with
    ``classes`` (``[{"Value", "Name", ...}]``, one score band each, or one band of class values
    with ``class_raster``): which band or class holds footprint outlines, and tuned settings."""
    from toolkit.data.layouts import boundary_class

    tags = {}
    outline = boundary_class(classes)
    if outline is not None:
        if class_raster:
            tags[BOUNDARY_CLASS_TAG] = str(outline["Value"])
        else:
            tags[BOUNDARY_BAND_TAG] = str(classes.index(outline) + 1)
        if outline.get("ContourWidth"):
            tags[CONTOUR_WIDTH_TAG] = str(outline["ContourWidth"])
    if settings:
        tags[SETTINGS_TAG] = json.dumps(settings)
    return tags


def vectorize(source: str | os.PathLike | np.ndarray, *, boundary_band: int | str | bool | None = None,
              boundary_class: int | None = None, threshold: float | None = None,
              boundary_threshold: float | None = None, min_area: float | None = None,
              simplify_tolerance: float = 0.0, opening: int = 0, marker_erosion: int | None = None,
              regularize: bool = False, window_size: int = 2048, margin: int = 128,
              transform: Affine | None = None, crs=None) -> gpd.GeoDataFrame:
    """Polygons of the footprints in a mask, one per building.

    With a footprint-outline band (the ``boundary`` class of ``export_training_data(contour_width=)``),
    touching footprints are separated by a marker-controlled watershed (scikit-image): markers
    are the connected groups of confident interior pixels (footprint score at least
    ``threshold``, outline score below ``boundary_threshold``, optionally eroded), grown over the
    footprint-or-outline area; each grown marker is one polygon. Without one, each connected
    footprint area is one polygon.

    Args:
        source: a mask, class or score raster (path: every band is read; see
            :func:`footprint_mask`), or an array ``(h, w)`` / ``(bands, h, w)`` with ``transform``
            and ``crs``.
        boundary_band: the band of outline scores: a 0-based index, or a band description (class
            name, e.g. ``"boundary"``). Default: what the raster's tags say (``predict_raster``
            writes them), else none. ``False``: none, whatever the tags say.
        boundary_class: for a raster of class values: the class of outline pixels (default from
            the tags).
        threshold: score (or class value) from which a pixel is footprint. Default: the tuned
            setting in the raster's tags (``Pix2Pix.tune_footprints``), else 0.5.
        boundary_threshold: outline score from which a pixel is outline (default as ``threshold``).
        min_area: drop polygons smaller than this, in CRS units squared (m² in a UTM CRS);
            default the tuned setting, else 0.
        simplify_tolerance: simplify outlines (Douglas-Peucker, topology kept), in CRS units.
        opening: radius in pixels of a morphological opening applied to the footprint area
            first, which removes speckle and thin bridges between footprints; 0 for none.
        marker_erosion: erode the interior markers by this many pixels first (splits markers
            joined by a thin bridge of interior pixels); default the tuned setting, else 0.
        regularize: straighten outlines into right angles and straight edges (the
            ``buildingregulariser`` package, edges merged within a pixel). Off by default: on
            blurry scores it changes object F1 either way (benchmarks/README.md).
        window_size, margin: a raster file is processed in windows of ``window_size`` pixels
            that overlap by ``margin`` on each side; a footprint is kept by the window whose core
            holds its representative point, so footprints up to ``margin`` pixels across are
            never cut or doubled and memory does not grow with the raster.

    Returns:
        A GeoDataFrame with one polygon per footprint (holes kept), an ``area`` column in CRS
        units squared, and the raster's CRS; :func:`write_vector` writes it.
    """
    _check_vectorize_numbers(threshold=threshold, boundary_threshold=boundary_threshold, min_area=min_area,
                             simplify_tolerance=simplify_tolerance, opening=opening, marker_erosion=marker_erosion)
    if isinstance(source, (str, os.PathLike)):
        with open_raster(source, "source") as src:
            tags = src.tags()
            descriptions = list(src.descriptions)
            reader = _RasterWindows(src, window_size, margin)
            settings = _settings(tags, threshold, boundary_threshold, min_area, marker_erosion)
            classes = np.issubdtype(np.dtype(src.dtypes[0]), np.integer)
            _check_thresholds(settings, classes, src.name)
            band, klass = _boundary(boundary_band, boundary_class, tags, descriptions, src.count,
                                    classes, src.name)
            transform = src.transform if transform is None else transform
            crs = src.crs if crs is None else crs
            polygons = []
            for data, window, core in reader:
                polygons += _window_polygons(data, src.nodata, band, klass, settings, opening,
                                             transform, window, core)
    else:
        data = np.asarray(source)
        if transform is None:
            raise ValueError("vectorize(array) needs the array's transform (and crs) to place the polygons.")
        data = data[np.newaxis] if data.ndim == 2 else data
        settings = _settings({}, threshold, boundary_threshold, min_area, marker_erosion)
        _check_thresholds(settings, np.issubdtype(data.dtype, np.integer), "array")
        band, klass = _boundary(boundary_band, boundary_class, {}, [None] * data.shape[0], data.shape[0],
                                np.issubdtype(data.dtype, np.integer), "array")
        window = Window(0, 0, data.shape[2], data.shape[1])
        polygons = _window_polygons(data, None, band, klass, settings, opening, transform, window, None)
    gdf = gpd.GeoDataFrame(geometry=polygons, crs=crs)
    if regularize and len(gdf):
        gdf = regularize_footprints(gdf, pixel_size=abs(transform.a))
    if simplify_tolerance > 0:
        gdf["geometry"] = gdf.geometry.simplify(simplify_tolerance, preserve_topology=True)
    if regularize or simplify_tolerance > 0:  # both can fold an outline onto itself
        gdf = repair_polygons(gdf, "vectorize (after regularize / simplify)")
    gdf["area"] = gdf.geometry.area
    if settings["min_area"] > 0:
        gdf = gdf[gdf["area"] >= settings["min_area"]]
    return gdf.reset_index(drop=True)[["area", "geometry"]]


def _check_vectorize_numbers(**values) -> None:
    """``ValueError`` for a setting that would give a silently wrong result: not finite, or
    negative where a size is meant; whole pixels for ``opening`` and ``marker_erosion``."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if name in ("min_area", "simplify_tolerance", "opening", "marker_erosion") and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}.")
        if name in ("opening", "marker_erosion") and int(value) != value:
            raise ValueError(f"{name} must be a whole number of pixels, got {value!r}.")


def _check_thresholds(settings: dict, classes: bool, name: str) -> None:
    """Scores lie in 0..1, so a threshold outside it gives all or nothing without a word; class
    values start at 1 (0 is the background)."""
    for key in ("threshold", "boundary_threshold"):
        value = settings[key]
        if classes and not value > 0:
            raise ValueError(f"{name}: {key} {value:g} on a class raster must be > 0 (a class value; 0 is "
                             "the background).")
        if not classes and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: {key} {value:g} must lie in 0..1 (the raster holds scores).")


def regularize_footprints(footprints: gpd.GeoDataFrame, *, pixel_size: float) -> gpd.GeoDataFrame:
    """Footprints with right-angled, straight outlines (``buildingregulariser``, in one process):
    the staircase of the pixel grid is simplified away first (one pixel), then nearly parallel
    edges within two pixels merge. On the Atlanta footprints this leaves a ninth of the
    vertices and the same object F1 (tests/test_vector_metrics.py)."""
    import warnings

    from buildingregulariser import regularize_geodataframe

    with warnings.catch_warnings():  # its use of pandas' deprecated inplace=
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        regular = regularize_geodataframe(footprints[["geometry"]], parallel_threshold=2 * pixel_size,
                                          simplify_tolerance=pixel_size, num_cores=1)
    return gpd.GeoDataFrame(geometry=regular.geometry.values, crs=footprints.crs)


def _settings(tags: dict, threshold, boundary_threshold, min_area, marker_erosion=None) -> dict:
    """Explicit arguments, else the tuned settings in the tags, else :data:`DEFAULTS`."""
    tuned = {}
    if SETTINGS_TAG in tags:
        try:
            tuned = {k: float(v) for k, v in json.loads(tags[SETTINGS_TAG]).items() if k in DEFAULTS}
        except (ValueError, TypeError, AttributeError):
            tuned = {}
    given = {"threshold": threshold, "boundary_threshold": boundary_threshold, "min_area": min_area,
             "marker_erosion": marker_erosion}
    settings = DEFAULTS | tuned | {k: v for k, v in given.items() if v is not None}
    settings["marker_erosion"] = int(settings["marker_erosion"])
    if boundary_threshold is None and "boundary_threshold" not in tuned and threshold is not None:
        settings["boundary_threshold"] = threshold
    return settings


def _boundary(boundary_band, boundary_class, tags: dict, descriptions: list, count: int,
              integer: bool, name) -> tuple[int | None, int | None]:
    """``(0-based outline band, outline class value)``: at most one is set."""
    if boundary_band is False:
        return None, None
    if boundary_class is not None or (boundary_band is None and integer and count == 1):
        value = boundary_class if boundary_class is not None else tags.get(BOUNDARY_CLASS_TAG)
        return None, (int(value) if value is not None else None)
    if boundary_band is None:
        if BOUNDARY_BAND_TAG in tags:
            return int(tags[BOUNDARY_BAND_TAG]) - 1, None
        return None, None
    if isinstance(boundary_band, str):
        names = [str(d).lower() if d else None for d in descriptions]
        if boundary_band.lower() not in names:
            raise ValueError(f"{name}: no band described as {boundary_band!r}; the bands are "
                             f"{descriptions} (pass a 0-based index instead).")
        return names.index(boundary_band.lower()), None
    index = int(boundary_band)
    if not 0 <= index < count or count < 2:
        raise ValueError(f"{name}: boundary_band {boundary_band} is not one of the {count} band(s) "
                         "besides a footprint band (0-based index).")
    return index, None


class _RasterWindows:
    """``(data, window, core)`` over a raster: windows of ``size`` pixels plus ``margin`` on each
    side (clipped at the edges); ``core`` is the window part this window answers for."""

    def __init__(self, src, size: int, margin: int) -> None:
        if size < 1 or margin < 0:
            raise ValueError(f"window_size must be >= 1 and margin >= 0, got {size} and {margin}.")
        self.src, self.size, self.margin = src, size, margin

    def __iter__(self):
        src, size, m = self.src, self.size, self.margin
        for row in range(0, src.height, size):
            for col in range(0, src.width, size):
                core = Window(col, row, min(size, src.width - col), min(size, src.height - row))
                c0, r0 = max(col - m, 0), max(row - m, 0)
                c1, r1 = min(col + core.width + m, src.width), min(row + core.height + m, src.height)
                window = Window(c0, r0, c1 - c0, r1 - r0)
                yield src.read(window=window), window, core


def _window_polygons(data, nodata, band, klass, settings, opening, transform, window, core) -> list:
    """The footprint polygons of one window, in map coordinates; with ``core``, only those whose
    representative point lies in it."""
    wt = transform @ Affine.translation(window.col_off, window.row_off)
    if band is None and klass is None:
        mask = footprint_mask(data, settings["threshold"], nodata)
        labels = _open(mask, opening).astype(np.int32)
    else:
        labels = footprint_labels(data, nodata=nodata, boundary_band=band, boundary_class=klass,
                                  threshold=settings["threshold"],
                                  boundary_threshold=settings["boundary_threshold"],
                                  opening=opening, marker_erosion=settings["marker_erosion"])
    parts: dict[int, list] = {}
    for geom, value in rasterio.features.shapes(labels, mask=labels > 0, transform=wt):
        parts.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    if band is None and klass is None:  # one polygon per connected area, as shapes gives them
        polygons = [p for group in parts.values() for p in group]
    else:
        polygons = [group[0] if len(group) == 1 else shapely.union_all(group) for group in parts.values()]
    if core is None:
        return polygons
    bounds = pixel_bounds(transform @ Affine.translation(core.col_off, core.row_off), int(core.width),
                          int(core.height))
    box = shapely.box(*bounds)
    # half-open: a point on the shared edge of two cores belongs to one of them only
    return [p for p in polygons if _inside(p.representative_point(), box)]


def _inside(point, box) -> bool:
    x0, y0, x1, y1 = box.bounds
    return x0 <= point.x < x1 and y0 < point.y <= y1


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)


def footprint_labels(data: np.ndarray, *, nodata: float | None = None, boundary_band: int | None = None,
                     boundary_class: int | None = None, threshold: float = 0.5,
                     boundary_threshold: float = 0.5, opening: int = 0,
                     marker_erosion: int = 0) -> np.ndarray:
    """One label per footprint, separated along their outlines: int32 ``(h, w)``, 0 background.

    ``data``: scores ``(bands, h, w)`` with the outline scores in ``boundary_band`` (the other
    bands are footprint classes; their highest score is the footprint score), or one band of
    class values ``(1, h, w)`` with outlines as ``boundary_class``. The recipe of the SpaceNet
    building winners (DESIGN 8): markers are the connected groups (4-connected) of interior
    pixels, footprint score >= ``threshold`` and outline score < ``boundary_threshold``; the
    watershed of the negated footprint score grows them over the footprint-or-outline area.
    Parts of that area that hold no marker (a small building drawn all in outline) keep a label
    of their own.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    data = np.asarray(data)
    data = data[np.newaxis] if data.ndim == 2 else data
    valid = band_validity(data, nodata).all(axis=0)
    if boundary_class is not None:
        values = data[0]
        outline = (values == boundary_class) & valid
        footprint = ((values > 0) & ~outline & valid).astype(np.float32)
        outline = outline.astype(np.float32)
        threshold = boundary_threshold = 0.5
    else:
        others = [b for b in range(data.shape[0]) if b != boundary_band]
        scores = np.where(np.isfinite(data), data, -np.inf).astype(np.float32)
        footprint = scores[others].max(axis=0) if others else np.full(data.shape[1:], -np.inf, np.float32)
        outline = scores[boundary_band]
    area = ((footprint >= threshold) | (outline >= boundary_threshold)) & valid
    area = _open(area, opening)
    interior = area & (footprint >= threshold) & (outline < boundary_threshold)
    if marker_erosion > 0:
        interior = ndimage.binary_erosion(interior, iterations=int(marker_erosion))
    markers, n = ndimage.label(interior)
    labels = watershed(-np.where(np.isfinite(footprint), footprint, 0.0), markers, mask=area)
    unreached = area & (labels == 0)
    if unreached.any():
        extra, _ = ndimage.label(unreached)
        labels = np.where(extra > 0, extra + n, labels)
    return labels.astype(np.int32)


def repair_polygons(gdf: gpd.GeoDataFrame, what: str) -> gpd.GeoDataFrame:
    """``gdf`` with its invalid polygons repaired (``shapely.make_valid``, keeping the polygonal
    parts: a self-touching OpenStreetMap ring becomes the polygons it outlines) and a warning
    naming ``what`` and how many; empty results are dropped. Valid input comes back unchanged."""
    import shapely

    invalid = ~gdf.geometry.is_valid & ~gdf.geometry.is_empty
    if not invalid.any():
        return gdf
    fixed = [_polygonal(g) for g in shapely.make_valid(gdf.geometry[invalid].values)]
    gdf = gdf.copy()
    gdf.loc[invalid, "geometry"] = gpd.GeoSeries(fixed, index=gdf.index[invalid], crs=gdf.crs)
    warnings.warn(f"{what}: {int(invalid.sum())} invalid polygon(s) (e.g. self-touching rings) repaired "
                  "with shapely.make_valid.", stacklevel=3)
    return gdf[~gdf.geometry.is_empty & gdf.geometry.notna()]


def _polygonal(geom):
    """The polygonal part of a repaired geometry (make_valid can add lines or points)."""
    from shapely.geometry import MultiPolygon, Polygon

    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    polygons = [q for g in parts for q in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    return MultiPolygon(polygons) if len(polygons) > 1 else polygons[0] if polygons else Polygon()


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
    gdf = repair_polygons(gdf, f"write_vector to {path}")
    with atomic_file(path, overwrite=overwrite, owned=_is_toolkit_vector) as tmp:
        gdf.to_file(tmp, layer=layer, driver="GPKG", layer_metadata={OUTPUT_TAG: "write_vector"})
    return path


def _is_toolkit_vector(path: Path) -> bool:
    import pyogrio

    try:
        return any(OUTPUT_TAG in (pyogrio.read_info(path, layer=name).get("layer_metadata") or {})
                   for name, _ in pyogrio.list_layers(path))
    except Exception:  # not a vector file GDAL reads: not ours
        return False

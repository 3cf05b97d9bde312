"""GeoTIFFs and vector files -> the chip folders of ArcGIS Pro's "Export Training Data For Deep Learning".

:func:`export_training_data` cuts a raster into chips on a regular grid and writes them, with the
matching chips of a second raster (``images2/``, the pix2pix target) or a class mask rasterized
from polygons (``labels/``), in Esri's layout (see :mod:`toolkit.esri`). Each chip is a GeoTIFF
(or PNG, or JPEG) carrying the CRS and the transform of its window, plus a world file. For
CycleGAN the two rasters need not overlap: each is cut on its own grid into its own folder
(``A/``, ``B/``).

The options of Pro's tool keep Pro's names: ``image_chip_format``, ``start_index``,
``in_mask_polygons`` (only chips that fall completely within the polygons),
``buffer_radius`` (point features become circles) and ``rotation_angle`` (each window is also
exported turned by multiples of the angle, georeferenced on the turned grid).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm.auto import tqdm

from toolkit import esri
from toolkit._args import size_pair
from toolkit._fs import atomic_folder, check_not_input, check_output_folder
from toolkit.raster import (AlignedReader, Grid, bounds_overlap, open_raster, pixel_bounds,
                            streaming_env, write_raster)
from toolkit.stats import BandStatistics, band_validity
from toolkit.vector import repair_polygons

__all__ = ["ExportSummary", "export_training_data", "rotate_about_centre", "tile_offsets"]

_VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml", ".zip"}
_RASTER_SUFFIXES = {".tif", ".tiff", ".img", ".vrt", ".jp2", ".png", ".jpg", ".jpeg", ".mrf"}
# Display colours for classes in the .emd (tab10).
_PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
            [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]]
_PNG_DTYPES = {np.dtype("uint8"), np.dtype("uint16")}
_JPEG_BANDS = (1, 3)
EXPORT_KIND = "export_training_data"  # the manifest kind of export folders (see toolkit._fs)


@dataclass
class ExportSummary:
    """What :func:`export_training_data` wrote."""

    out_folder: Path
    metadata_format: str
    num_chips: int
    chip_size: tuple[int, int]  # (width, height) of the written chips
    images: list[Path]  # CycleGAN: domain A's chips (A/images/)
    images2: list[Path] = field(default_factory=list)  # the paired targets; CycleGAN: B/images/
    labels: list[Path] = field(default_factory=list)
    classes: list[dict] = field(default_factory=list)  # [{"Value", "Name", "Color"}]
    skipped: int = 0  # chips left out: all nodata, below min_valid_fraction, without features,
    # or not completely within in_mask_polygons
    num_chips_b: int | None = None  # CycleGAN: chips of domain B (``num_chips`` counts A's)

    def __repr__(self) -> str:
        parts = [f"{self.num_chips} chips of {self.chip_size[0]}x{self.chip_size[1]} px",
                 self.metadata_format, f"in {self.out_folder}"]
        if self.num_chips_b is not None:
            parts[0] = f"{self.num_chips} (A/) and {self.num_chips_b} (B/) chips of " \
                       f"{self.chip_size[0]}x{self.chip_size[1]} px"
        elif self.images2:
            parts.append("with images2/")
        if self.labels:
            names = ", ".join(f"{c['Value']}={c['Name']}" for c in self.classes)
            parts.append(f"with labels/ (classes {names})")
        if self.skipped:
            parts.append(f"{self.skipped} tiles skipped")
        return f"ExportSummary({'; '.join(parts)})"


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


def export_training_data(
    in_raster: str | os.PathLike,
    out_folder: str | os.PathLike,
    *,
    additional_input_raster: str | os.PathLike | None = None,
    in_class_data: str | os.PathLike | gpd.GeoDataFrame | None = None,
    metadata_format: str | None = None,
    tile_size: int | tuple[int, int] = 256,
    stride: int | tuple[int, int] | None = None,
    class_value_field: str | None = None,
    contour_width: int = 0,
    contour_value: int | None = None,
    resize_to: int | tuple[int, int] | None = None,
    resampling: str = "bilinear",
    edge: str = "trim",
    image_chip_format: str = "TIFF",
    start_index: int = 0,
    in_mask_polygons: str | os.PathLike | gpd.GeoDataFrame | None = None,
    buffer_radius: float = 0,
    rotation_angle: float = 0,
    min_valid_fraction: float = 0.0,
    output_nofeature_tiles: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Cut ``in_raster`` into training chips in Esri's layout.

    Args:
        in_raster: the input image (any GDAL raster; any band count; uint8, uint16, int16 or
            float bands). Its pixel grid defines the chips.
        out_folder: folder to create. It must not hold files unless ``overwrite=True``, and
            then only an earlier export's (nothing else is ever replaced); it may not be or
            contain an input. The export is written to a temporary folder beside it and moved
            into place at the end, so a failed export leaves nothing behind.
        additional_input_raster: a second raster (the pix2pix target) read on ``in_raster``'s grid
            (reprojected and resampled with ``resampling`` when its CRS, resolution or extent
            differ) and written to ``images2/`` under the same chip names. Metadata format
            ``Export_Tiles``. With ``metadata_format="CycleGAN"`` it is instead domain B of
            unpaired data: cut on its own grid (its own CRS, resolution, extent and band count;
            it need not overlap ``in_raster``) with the same ``tile_size``, ``stride`` and
            ``resize_to`` in pixels, into ``B/``, while ``in_raster`` goes to ``A/``; chip
            counts may differ, and each folder holds its own metadata and statistics.
        in_class_data: polygons (a GeoJSON, GeoPackage, Shapefile... path, or a GeoDataFrame),
            reprojected to the raster's CRS and rasterized on each chip's grid, or a single-band
            integer class raster (nearest-neighbour on the input's grid). Point features need
            ``buffer_radius``. Written to ``labels/``: class values, background 0. Metadata
            format ``Classified_Tiles``.
        metadata_format: ``"Export_Tiles"``, ``"Classified_Tiles"`` or ``"CycleGAN"`` (needs
            ``additional_input_raster``); by default Export_Tiles or Classified_Tiles, inferred
            from the inputs above.
        tile_size: chip size in input pixels, ``n`` or ``(width, height)``.
        stride: step between chips; defaults to ``tile_size`` (no overlap).
        class_value_field: attribute holding each polygon's integer class value (> 0);
            without it every polygon is class 1.
        contour_width: when > 0, each polygon's outer contour (found with OpenCV) is drawn back
            onto the label, ``contour_width`` pixels wide inside the polygon, with
            ``contour_value``, so building boundaries weigh more in training. The footprint
            extent (label > 0) is unchanged.
        contour_value: label value of the contour pixels; default one more than the largest
            class value, listed as a class named ``"boundary"``.
        resize_to: resize every written chip to ``n`` or ``(width, height)`` pixels (bilinear for
            images, nodata-aware; polygons are rasterized directly on the resized grid; class
            rasters nearest); the chip transform is scaled to match.
        resampling: how ``additional_input_raster`` is resampled onto the input's grid (not
            for CycleGAN, where it keeps its own): a :class:`rasterio.enums.Resampling` name
            (``"bilinear"``, ``"cubic"``, ``"average"``...).
        edge: ``"trim"`` drops the partial last row/column of tiles; ``"pad"`` keeps it, padded
            with nodata.
        image_chip_format: Pro's chip format, case-insensitive: ``"TIFF"`` (GeoTIFF + .tfw),
            ``"PNG"`` (.png + .pgw + .png.aux.xml; uint8 or uint16 bands) or ``"JPEG"`` (.jpg +
            .jgw + .jpg.aux.xml, like Pro writes them; uint8, 1 or 3 bands; lossy, so pixel
            values change a little). ``"tif"``, ``"png"`` and ``"jpg"`` are accepted too.
            Labels of a JPEG export are PNG, so class values stay exact. MRF is not supported.
        start_index: number of the first chip (chip names count up from it, e.g.
            ``start_index=500`` names the first chip ``000000500.tif``), to add chips to an
            earlier export's numbering. Pro's tool has the same parameter (deprecated in recent
            Pro releases).
        in_mask_polygons: polygons (a vector file path or a GeoDataFrame) that delineate where
            chips are made: as in Pro, only chips that fall completely within the polygons are
            written (a chip's footprint, turned ones included, must be covered by them). The
            polygons are reprojected to the raster's CRS.
        buffer_radius: radius, in the map units of the raster's CRS (e.g. metres), of the circle
            that each point feature of ``in_class_data`` becomes, as Pro's buffer makes
            "circular polygon training samples from points"; polygons and lines are used as
            they are. Point features without a buffer radius are refused (a point covers no
            pixel area), and so is a buffer radius for data that holds no points.
        rotation_angle: degrees, ``0 <= rotation_angle < 360``. As in Pro, each window is
            first exported unrotated, then again turned by ``rotation_angle``,
            ``2 * rotation_angle``... while below 360 degrees (90 gives 4 chips a window, 45
            gives 8), for data augmentation. The turned chip keeps the window's centre and
            size: its transform is the window's, rotated about the chip centre (so world files
            carry rotation terms), the ground appears turned counter-clockwise by the angle,
            images are warped onto it (nearest neighbour for ``in_raster``, ``resampling`` for
            ``additional_input_raster``), labels are rasterized onto it, and pixels it takes from
            beyond the raster are nodata. Chips are numbered in order: a window's angles, then
            the next window.
        min_valid_fraction: skip chips whose share of valid (not nodata) pixels is below this;
            chips that are entirely nodata are always skipped (turned chips are judged alone).
        output_nofeature_tiles: Classified_Tiles: also write chips whose label holds no class
            (``False`` keeps only chips with features, ArcGIS's ``ONLY_TILES_WITH_FEATURES``;
            useful when the features are sparse).
        overwrite: replace ``out_folder`` if it holds an earlier export of the toolkit (and
            nothing else).
        progress: show a progress bar.

    Returns:
        An :class:`ExportSummary` with the chip count and the written paths.
    """
    tile = size_pair(tile_size, "tile_size")
    if edge not in ("trim", "pad"):
        raise ValueError(f"edge must be 'trim' or 'pad', got {edge!r}.")
    chip_format = esri.chip_format(image_chip_format)
    start_index = _start_index(start_index)
    angles = _rotation_angles(rotation_angle)
    buffer_radius = _buffer_radius(buffer_radius, in_class_data)
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise ValueError(f"min_valid_fraction must lie in [0, 1], got {min_valid_fraction}.")
    if not (isinstance(contour_width, (int, float, np.number)) and not isinstance(contour_width, bool)
            and np.isfinite(contour_width) and int(contour_width) == contour_width
            and 0 <= contour_width <= MAX_CONTOUR_WIDTH):
        raise ValueError(f"contour_width must be a whole number of pixels from 0 to {MAX_CONTOUR_WIDTH}, "
                         f"got {contour_width!r}.")
    if not output_nofeature_tiles and in_class_data is None:
        raise ValueError("output_nofeature_tiles=False keeps chips with features: it needs in_class_data.")
    metadata_format = _metadata_format(metadata_format, additional_input_raster, in_class_data)
    warp = _resampling(resampling)
    tiling = _Tiling(tile, size_pair(stride, "stride") if stride is not None else tile,
                     size_pair(resize_to, "resize_to") if resize_to is not None else tile,
                     edge, min_valid_fraction, chip_format, esri.label_chip_format(chip_format),
                     start_index, angles, progress)
    inputs = [in_raster, additional_input_raster,
              None if isinstance(in_class_data, gpd.GeoDataFrame) else in_class_data,
              None if isinstance(in_mask_polygons, gpd.GeoDataFrame) else in_mask_polygons]
    check_not_input(out_folder, inputs, role="out_folder")
    out_folder = check_output_folder(out_folder, overwrite=overwrite, kind=EXPORT_KIND)

    with ExitStack() as stack:
        stack.enter_context(streaming_env())
        ds = stack.enter_context(open_raster(in_raster, "in_raster"))
        ds2 = None
        if additional_input_raster is not None:
            ds2 = stack.enter_context(open_raster(additional_input_raster, "additional_input_raster"))
        parts = _parts(ds, ds2, unpaired=metadata_format == esri.CYCLEGAN, resampling=warp)
        for part in parts:
            for reader in part.readers:
                stack.callback(reader.close)
        _check_chip_format(chip_format, [r for part in parts for r in part.readers])
        labels = None
        if in_class_data is not None:
            labels = _label_source(in_class_data, parts[0].grid, class_value_field, contour_width,
                                   contour_value, buffer_radius, stack)
        windows = [tiling.windows(part.grid) for part in parts]  # before writing: tile size checks
        masks = [None] * len(parts)
        if in_mask_polygons is not None:
            polygons = _read_mask_polygons(in_mask_polygons)
            masks = [_MaskPolygons(polygons, part.grid) for part in parts]

        with atomic_folder(out_folder, overwrite=overwrite, kind=EXPORT_KIND) as staging:
            written = [_export_part(staging / part.folder, part, part_windows, tiling,
                                    metadata_format=metadata_format, labels=labels, mask=mask,
                                    output_nofeature_tiles=output_nofeature_tiles)
                       for part, part_windows, mask in zip(parts, windows, masks)]
    return _summary(out_folder, metadata_format, tiling, parts, written, with_labels=labels is not None)


class _Tiling(NamedTuple):
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


class _Part(NamedTuple):
    """Rasters cut together on one grid into one folder (``""``: the export folder itself)."""

    folder: str
    readers: list[AlignedReader]  # the first writes images/, a second images2/
    grid: Grid


class _Written(NamedTuple):
    num_chips: int
    skipped: int
    classes: list[dict]


def _parts(ds, ds2, *, unpaired: bool, resampling: Resampling) -> list[_Part]:
    """Paired formats: one part, ``ds2`` read on ``ds``'s grid. CycleGAN: one part per raster,
    each on its own grid, into ``A/`` and ``B/``."""
    grid = Grid.of(ds)
    first = AlignedReader(ds, grid, role="in_raster")
    if unpaired:
        grid2 = Grid.of(ds2)
        second = AlignedReader(ds2, grid2, role="additional_input_raster")
        return [_Part(esri.DOMAIN_FOLDERS[0], [first], grid), _Part(esri.DOMAIN_FOLDERS[1], [second], grid2)]
    readers = [first]
    if ds2 is not None:
        readers.append(AlignedReader(ds2, grid, role="additional_input_raster", resampling=resampling))
    return [_Part("", readers, grid)]


def _export_part(folder: Path, part: _Part, windows: list[Window], tiling: _Tiling, *,
                 metadata_format: str, labels, mask: _MaskPolygons | None,
                 output_nofeature_tiles: bool) -> _Written:
    """Cut ``part``'s rasters into ``windows`` (each at every angle of ``tiling.angles``) and
    write the chips (``images/``, ``images2/``, ``labels/``) and the metadata files into
    ``folder`` (created). Chips outside ``mask`` are left out."""
    readers, grid, tile, out_size = part.readers, part.grid, tiling.tile, tiling.out_size
    stats = [BandStatistics(r.count) for r in readers]
    class_counts: list[np.ndarray] = []  # pixels per label value, one array per chip
    map_rows: list[list[str]] = []
    skipped = 0
    folders = [esri.IMAGES, esri.IMAGES2][:len(readers)]  # one per reader, in order
    for name in folders + ([esri.LABELS] if labels is not None else []):
        (folder / name).mkdir(parents=True)
    tiles = [(window, angle) for window in windows for angle in tiling.angles]
    for window, angle in tqdm(tiles, desc="Exporting chips", unit="chip", disable=not tiling.progress,
                              leave=False):
        tile_transform = grid.transform @ Affine.translation(window.col_off, window.row_off)
        if angle:
            tile_transform = rotate_about_centre(tile_transform, tile, angle)
        if mask is not None and not mask.covers(tile_transform, tile):
            skipped += 1
            continue
        chips, fraction = _read_tile(readers, window, tile_transform if angle else None)
        if fraction == 0 or fraction < tiling.min_valid_fraction:
            skipped += 1
            continue
        transform = tile_transform
        if out_size != tile:
            transform = transform @ Affine.scale(tile[0] / out_size[0], tile[1] / out_size[1])
        label = None
        if labels is not None:
            label = labels.chip(window, transform, out_size, tile_transform=tile_transform if angle else None)
        if label is not None and not output_nofeature_tiles and not label.any():
            skipped += 1
            continue
        if out_size != tile:
            chips = [(r, *_resize_image(d, v, out_size, r.fill)) for r, d, v in chips]
        index = tiling.start_index + len(map_rows)
        name = esri.chip_name(index, tiling.image_format.extension)
        row_paths = []
        for sub, (reader, data, band_valid), st in zip(folders, chips, stats):
            _write_chip(folder / sub / name, data, transform, grid.crs, reader.nodata, tiling.image_format)
            st.update(data, band_valid)
            row_paths.append(f"{sub}/{name}")
        if label is not None:
            label_name = esri.chip_name(index, tiling.label_format.extension)
            _write_chip(folder / esri.LABELS / label_name, label, transform, grid.crs, None,
                        tiling.label_format)
            class_counts.append(np.bincount(label.ravel()))
            row_paths.append(f"{esri.LABELS}/{label_name}")
        map_rows.append(row_paths)

    _check_written(readers, stats, len(map_rows), len(tiles), tiling, masked=mask is not None)
    classes = labels.classes(class_counts) if labels is not None else []
    _write_metadata(folder, metadata_format=metadata_format, map_rows=map_rows, out_size=out_size,
                    readers=readers, stats=stats, classes=classes, class_counts=class_counts,
                    cell_size=(abs(grid.transform.a) * tile[0] / out_size[0],
                               abs(grid.transform.e) * tile[1] / out_size[1]))
    return _Written(len(map_rows), skipped, classes)


def _check_written(readers: list[AlignedReader], stats: list[BandStatistics], num_chips: int,
                   num_windows: int, tiling: _Tiling, *, masked: bool = False) -> None:
    """Refuse an export without chips, or with a band that holds no value in any chip."""
    if num_chips == 0:
        first = readers[0]
        within = " falls completely within in_mask_polygons and" if masked else ""
        raise ValueError(
            f"{first.role} {first.ds.name}: none of the {num_windows} tiles of {tiling.tile[0]}x"
            f"{tiling.tile[1]} px{within} has valid (not nodata) pixels, or a share of them of at "
            f"least min_valid_fraction={tiling.min_valid_fraction}."
        )
    for reader, st in zip(readers, stats):
        empty = (np.flatnonzero(st.count == 0) + 1).tolist()
        if empty:
            raise ValueError(f"{reader.role} {reader.ds.name}: band(s) {empty} hold no finite, "
                             "not-nodata value in any exported chip (all NaN, +-inf or nodata).")


def _summary(out_folder: Path, metadata_format: str, tiling: _Tiling, parts: list[_Part],
             written: list[_Written], *, with_labels: bool) -> ExportSummary:
    def chips(part: _Part, done: _Written, sub: str, extension: str | None = None) -> list[Path]:
        extension = extension or tiling.image_format.extension
        return [out_folder / part.folder / sub / esri.chip_name(tiling.start_index + i, extension)
                for i in range(done.num_chips)]

    first, done = parts[0], written[0]
    summary = ExportSummary(out_folder=out_folder, metadata_format=metadata_format,
                            num_chips=done.num_chips, chip_size=tiling.out_size,
                            images=chips(first, done, esri.IMAGES), classes=done.classes,
                            skipped=sum(w.skipped for w in written))
    if len(parts) > 1:  # CycleGAN: domain B's own chips
        summary.images2 = chips(parts[1], written[1], esri.IMAGES)
        summary.num_chips_b = written[1].num_chips
    elif len(first.readers) > 1:
        summary.images2 = chips(first, done, esri.IMAGES2)
    if with_labels:
        summary.labels = chips(first, done, esri.LABELS, tiling.label_format.extension)
    return summary


def _read_tile(readers: list[AlignedReader], window: Window,
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


def _resampling(name: str) -> Resampling:
    try:
        return Resampling[name]
    except KeyError:
        raise ValueError(f"resampling must be a rasterio resampling name such as 'bilinear', "
                         f"'cubic' or 'average', got {name!r}.") from None


def _start_index(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"start_index must be a whole number >= 0 (the number of the first chip), "
                         f"got {value!r}.")
    if not 0 <= value < 10**9:
        raise ValueError(f"start_index must lie in 0..999999999 (chip names have 9 digits), got {value}.")
    return int(value)


def _rotation_angles(value) -> tuple[float, ...]:
    """Pro's ``rotation_angle`` -> the angles every window is exported at: 0, a, 2a... < 360."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"rotation_angle must be a number of degrees in [0, 360), got {value!r}.")
    if not 0 <= value < 360:
        raise ValueError(f"rotation_angle must lie in [0, 360) degrees (0: no rotated chips), got {value}.")
    if value == 0:
        return (0.0,)
    count = math.ceil(360.0 / value - 1e-9)  # k * value < 360
    return tuple(k * float(value) for k in range(count))


def _buffer_radius(value, in_class_data) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"buffer_radius must be a distance >= 0 in the map units of the raster's "
                         f"CRS, got {value!r}.")
    if value and in_class_data is None:
        raise ValueError("buffer_radius turns the point features of in_class_data into circles: it "
                         "needs in_class_data.")
    return float(value)


def _check_chip_format(chip_format: esri.ChipFormat, readers: list[AlignedReader]) -> None:
    """PNG holds uint8/uint16 bands; JPEG (as Pro writes it) one or three uint8 bands."""
    for reader in readers:
        where = f"{reader.role} {reader.ds.name}"
        if chip_format.name == "PNG" and reader.dtype not in _PNG_DTYPES:
            raise ValueError(f"{where}: PNG chips hold uint8 or uint16 bands, not {reader.dtype}; "
                             "use image_chip_format='TIFF'.")
        if chip_format.name == "JPEG" and (reader.dtype != np.uint8 or reader.count not in _JPEG_BANDS):
            raise ValueError(f"{where}: JPEG chips hold 1 or 3 bands of uint8; this raster has "
                             f"{reader.count} band(s) of {reader.dtype}. Use image_chip_format='TIFF' "
                             "(any bands), or 'PNG' (uint8/uint16).")


def rotate_about_centre(transform: Affine, size: tuple[int, int], angle: float) -> Affine:
    """The transform of a ``size`` (width, height) chip on ``transform``, turned about the chip's
    centre so that the ground appears turned counter-clockwise by ``angle`` degrees in the chip
    (for 90 degrees, the chip's pixels are ``np.rot90`` of the unturned chip's). The chip's grid
    turns clockwise on the map; the centre stays on the same map point."""
    centre = transform @ (size[0] / 2, size[1] / 2)
    return Affine.rotation(-angle, pivot=centre) @ transform


def _read_mask_polygons(in_mask_polygons) -> tuple[gpd.GeoDataFrame, str]:
    if isinstance(in_mask_polygons, gpd.GeoDataFrame):
        return in_mask_polygons, "GeoDataFrame"
    if not isinstance(in_mask_polygons, (str, os.PathLike)):
        raise ValueError(f"in_mask_polygons must be a polygon file (GeoJSON, GeoPackage, Shapefile...) "
                         f"or a GeoDataFrame, got {type(in_mask_polygons).__name__}.")
    path = Path(in_mask_polygons)
    if not path.exists():
        raise FileNotFoundError(f"in_mask_polygons {path}: no such file.")
    return _read_vector(path, "in_mask_polygons"), str(path)


def _read_vector(path: Path, role: str) -> gpd.GeoDataFrame:
    """Read an existing vector file; anything GDAL cannot read is a ValueError naming it."""
    try:
        return gpd.read_file(path)
    except Exception as err:  # pyogrio raises several types; all mean "not a vector file"
        raise ValueError(f"{role} {path}: not a vector file that can be read ({err}).") from err


def _placeable(gdf: gpd.GeoDataFrame, grid: Grid, role: str, what: str) -> gpd.GeoDataFrame:
    """The features of ``gdf`` that have a geometry, after checking that both it and the raster
    have a CRS (so the features can be placed on the raster)."""
    if gdf.crs is None:
        raise ValueError(f"{role}: the vector data has no CRS, so it cannot be placed on the raster.")
    if grid.crs is None:
        raise ValueError(f"{role}: the input raster has no CRS, so {what} cannot be placed on it.")
    return gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]


class _MaskPolygons:
    """Pro's ``in_mask_polygons``: the area, in the raster's CRS, that every chip must fall
    completely within."""

    def __init__(self, polygons: tuple[gpd.GeoDataFrame, str], grid: Grid) -> None:
        gdf, name = polygons
        role = f"in_mask_polygons {name}"
        gdf = _placeable(gdf, grid, role, "the mask")
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


def _metadata_format(requested, additional_input_raster, in_class_data) -> str:
    inferred = esri.CLASSIFIED_TILES if in_class_data is not None else esri.EXPORT_TILES
    if requested is None:
        return inferred
    if requested not in esri.METADATA_FORMATS:
        raise ValueError(f"metadata_format must be one of {esri.METADATA_FORMATS}, got {requested!r}.")
    if requested == esri.CYCLEGAN and (additional_input_raster is None or in_class_data is not None):
        raise ValueError("metadata_format='CycleGAN' writes two unpaired image domains: it needs "
                         "additional_input_raster (domain B) and takes no in_class_data.")
    if requested == esri.CLASSIFIED_TILES and in_class_data is None:
        raise ValueError("metadata_format='Classified_Tiles' needs in_class_data (polygons or a class raster).")
    if requested == esri.EXPORT_TILES and in_class_data is not None:
        raise ValueError("metadata_format='Export_Tiles' writes no labels; drop in_class_data or use "
                         "'Classified_Tiles'.")
    return requested


def _write_chip(path: Path, data: np.ndarray, transform: Affine, crs, nodata,
                chip_format: esri.ChipFormat) -> None:
    write_raster(path, data, transform=transform, crs=crs, nodata=nodata, driver=chip_format.driver)
    esri.write_world_file(esri.world_file_path(path, chip_format.world_extension), transform)


def _resize_image(data: np.ndarray, band_valid: np.ndarray, size: tuple[int, int],
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


MAX_CONTOUR_WIDTH = 255  # an outline wider than that fills any building chip (OpenCV's own limit is 32767)


def _label_source(in_class_data, grid: Grid, class_value_field, contour_width, contour_value,
                  buffer_radius: float, stack: ExitStack):
    if isinstance(in_class_data, gpd.GeoDataFrame):
        return _VectorLabels(in_class_data, "GeoDataFrame", grid, class_value_field,
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
        labels = _RasterLabels(stack.enter_context(open_raster(path, "in_class_data")), grid)
        stack.callback(labels.reader.close)
        return labels
    return _VectorLabels(_read_vector(path, "in_class_data"), str(path), grid, class_value_field,
                         contour_width, contour_value, buffer_radius)


def _is_raster(path: Path) -> bool:
    try:
        with rasterio.open(path):
            return True
    except Exception:
        return False


class _VectorLabels:
    """Polygons in the raster's CRS, rasterized chip by chip (background 0). Points become
    circles of ``buffer_radius`` map units of the raster's CRS (Pro's rule)."""

    def __init__(self, gdf: gpd.GeoDataFrame, name: str, grid: Grid, class_value_field,
                 contour_width: int, contour_value, buffer_radius: float = 0.0) -> None:
        role = f"in_class_data {name}"
        # OpenStreetMap's self-touching rings and the like: repaired, counted, never a crash
        gdf = repair_polygons(_placeable(gdf, grid, role, "the polygons"), role)
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


class _RasterLabels:
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


def _write_metadata(folder: Path, *, metadata_format: str, map_rows, out_size, readers, stats,
                    classes: list[dict], class_counts: list[np.ndarray], cell_size: tuple[float, float]) -> None:
    """map.txt, esri_accumulated_stats.json, esri_model_definition.emd and stats.txt."""
    esri.write_map(folder / esri.MAP_FILE, map_rows)
    num_tiles = len(map_rows)
    image = readers[0]
    props = {"RasterCount": len(readers), "SensorName": "", "BandNames": image.band_names}
    accumulated = {
        "Version": 1,
        "NumBands": image.count,
        "TileSizeX": out_size[0],
        "TileSizeY": out_size[1],
        "NumClasses": len(classes),
        "NumTiles": num_tiles,
        "OutputFeatures": False,
        "MetaDataMode": metadata_format,
        # Cell size of the written chips (after resize_to); the rasters of a folder share a grid.
        "MinCellSize": {"x": cell_size[0], "y": cell_size[1]},
        "MaxCellSize": {"x": cell_size[0], "y": cell_size[1]},
        "InputRastersProps": props,
        "Classes": esri.classes_for_stats(classes),
        "BandStatsState": stats[0].as_band_stats_state(),
    }
    if len(readers) > 1:
        accumulated["NumBands2"] = readers[1].count
        accumulated["BandStatsState2"] = stats[1].as_band_stats_state()
    if classes:
        accumulated["ClassPixelStats"] = _class_pixel_stats(classes, class_counts)
    esri.write_json(folder / esri.STATS_FILE, accumulated)

    emd = esri.model_definition(
        tile_size=out_size, band_count=image.count, classes=classes,
        all_tiles_stats=stats[0].as_all_tiles_stats(image.band_names),
        all_tiles_stats2=stats[1].as_all_tiles_stats(readers[1].band_names) if len(readers) > 1 else None,
        input_rasters_props=props,
    )
    esri.write_json(folder / esri.EMD_FILE, emd)
    (folder / esri.STATS_TEXT_FILE).write_text(
        _stats_text(num_tiles, out_size, readers, stats, classes, accumulated.get("ClassPixelStats")))


def _class_pixel_stats(classes: list[dict], class_counts: list[np.ndarray]) -> dict:
    values = [c["Value"] for c in classes]
    per_chip = np.zeros((len(class_counts), len(values)), dtype=np.int64)
    for i, counts in enumerate(class_counts):
        for j, v in enumerate(values):
            per_chip[i, j] = counts[v] if v < len(counts) else 0
    present = per_chip > 0
    classes_per_image = present.sum(axis=1)

    def summary(x: np.ndarray) -> dict:
        return {"Min": int(x.min()), "Max": int(x.max()), "Mean": float(x.mean()),
                "Sum": int(x.sum()), "Count": int(x.size)}

    return {
        "NumClasses": len(values),
        "NumImagesTotal": len(class_counts),
        "NumImagesPerClass": present.sum(axis=0).tolist(),
        "NumPixelsPerClass": per_chip.sum(axis=0).tolist(),
        "NumClassesPerImage": summary(classes_per_image),
        "PixelsPerClass": [summary(per_chip[:, j]) for j in range(len(values))],
    }


def _stats_text(num_tiles, out_size, readers, stats, classes, pixel_stats) -> str:
    lines = []
    for folder, reader in zip([esri.IMAGES, esri.IMAGES2], readers):
        lines.append(f"{folder} = {num_tiles} *{reader.count}*{out_size[1]}*{out_size[0]}")
    for folder, reader, st in zip([esri.IMAGES, esri.IMAGES2], readers, stats):
        lines.append(f"{folder} band statistics:")
        lines.append(f"{'band':<20}{'min':>14}{'max':>14}{'mean':>14}{'std dev':>14}")
        for b, name in enumerate(reader.band_names):
            lines.append(f"{name:<20}{st.min[b]:>14.4f}{st.max[b]:>14.4f}{st.mean[b]:>14.4f}{st.std[b]:>14.4f}")
    if classes:
        per_image = pixel_stats["NumClassesPerImage"]
        lines.append(f"classes = {len(classes)}")
        lines.append(f"classes per image = [min = {per_image['Min']}, mean = {per_image['Mean']:.2f}, "
                     f"max = {per_image['Max']}]")
        lines.append(f"{'cls name':<22}{'cls value':<10}{'images':>10}{'pixels':>12}"
                     f"{'min size':>12}{'mean size':>12}{'max size':>12}")
        for j, c in enumerate(classes):
            px = pixel_stats["PixelsPerClass"][j]
            lines.append(f"{c['Name']:<22}{c['Value']:<10}{pixel_stats['NumImagesPerClass'][j]:>10}"
                         f"{pixel_stats['NumPixelsPerClass'][j]:>12}{px['Min']:>12.2f}"
                         f"{px['Mean']:>12.2f}{px['Max']:>12.2f}")
    return "\n".join(lines) + "\n"

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

Layer: data (the layers, bottom to top: formats and I/O, data, inference core, training, front
doors). This module is the export's entry point and its chip-writing loop; the parts it puts
together are its own modules, which never import it back: :mod:`toolkit.export_tiling` (the tile
grid, turned tiles, reading and resizing a tile), :mod:`toolkit.export_labels` (label chips from
polygons or a class raster), :mod:`toolkit.export_vectors` (reading vector inputs, the mask
polygons) and :mod:`toolkit.export_metadata` (map.txt, statistics, .emd). Below them all lie
:mod:`toolkit.raster`, :mod:`toolkit.esri`, :mod:`toolkit.stats` and :mod:`toolkit._fs`.
"""

from __future__ import annotations

import numbers
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import geopandas as gpd
import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm.auto import tqdm

from toolkit import esri
from toolkit._args import size_pair
from toolkit._fs import atomic_folder, check_not_input, check_output_folder
from toolkit.export_labels import check_buffer_radius, check_contour_width, label_source
# Defined with the labels; still importable from here, where they lived before the split.
from toolkit.export_labels import MAX_CONTOUR_WIDTH, contour_ring  # noqa: F401
from toolkit.export_metadata import write_metadata
from toolkit.export_tiling import (Tiling, read_tile, resize_image, rotate_about_centre, rotation_angles,
                                   tile_offsets)
from toolkit.export_vectors import MaskPolygons, read_mask_polygons
# write_raster and streaming_env are looked up here at call time, so tests and benchmarks can
# patch them on this module.
from toolkit.raster import AlignedReader, Grid, open_raster, streaming_env, write_raster
from toolkit.stats import BandStatistics

__all__ = ["ExportSummary", "export_training_data", "rotate_about_centre", "tile_offsets"]

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
    angles = rotation_angles(rotation_angle)
    buffer_radius = check_buffer_radius(buffer_radius, in_class_data)
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise ValueError(f"min_valid_fraction must lie in [0, 1], got {min_valid_fraction}.")
    check_contour_width(contour_width)
    if not output_nofeature_tiles and in_class_data is None:
        raise ValueError("output_nofeature_tiles=False keeps chips with features: it needs in_class_data.")
    metadata_format = _metadata_format(metadata_format, additional_input_raster, in_class_data)
    warp = _resampling(resampling)
    tiling = Tiling(tile, size_pair(stride, "stride") if stride is not None else tile,
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
            labels = label_source(in_class_data, parts[0].grid, class_value_field, contour_width,
                                  contour_value, buffer_radius, stack)
        windows = [tiling.windows(part.grid) for part in parts]  # before writing: tile size checks
        masks = [None] * len(parts)
        if in_mask_polygons is not None:
            polygons = read_mask_polygons(in_mask_polygons)
            masks = [MaskPolygons(polygons, part.grid) for part in parts]

        with atomic_folder(out_folder, overwrite=overwrite, kind=EXPORT_KIND) as staging:
            written = [_export_part(staging / part.folder, part, part_windows, tiling,
                                    metadata_format=metadata_format, labels=labels, mask=mask,
                                    output_nofeature_tiles=output_nofeature_tiles)
                       for part, part_windows, mask in zip(parts, windows, masks)]
    return _summary(out_folder, metadata_format, tiling, parts, written, with_labels=labels is not None)


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


def _export_part(folder: Path, part: _Part, windows: list[Window], tiling: Tiling, *,
                 metadata_format: str, labels, mask: MaskPolygons | None,
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
        chips, fraction = read_tile(readers, window, tile_transform if angle else None)
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
            chips = [(r, *resize_image(d, v, out_size, r.fill)) for r, d, v in chips]
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
    write_metadata(folder, metadata_format=metadata_format, map_rows=map_rows, out_size=out_size,
                    readers=readers, stats=stats, classes=classes, class_counts=class_counts,
                    cell_size=(abs(grid.transform.a) * tile[0] / out_size[0],
                               abs(grid.transform.e) * tile[1] / out_size[1]))
    return _Written(len(map_rows), skipped, classes)


def _check_written(readers: list[AlignedReader], stats: list[BandStatistics], num_chips: int,
                   num_windows: int, tiling: Tiling, *, masked: bool = False) -> None:
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


def _summary(out_folder: Path, metadata_format: str, tiling: Tiling, parts: list[_Part],
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

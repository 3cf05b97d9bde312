"""Training / validation splits of a chip folder: seeded at random, or by area on the ground.

A random split of chips exported with overlap (``stride`` smaller than ``tile_size``) puts
pixels of the training chips into validation chips: early stopping, checkpoint selection and
footprint tuning then choose on ground the model has seen, and the scores are optimistic. A split
by area (:func:`split_by_area`) keeps the validation chips on their own ground: chips wholly
inside the validation area validate, chips wholly outside it train, and chips that straddle its
edge are left out of both, so no validation chip shares a pixel with a training chip.

Part of the data layer (:mod:`toolkit.data`); reads the chips' georeference with rasterio.

Layer: data.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from toolkit.data.layouts import ChipFolder, ChipPair

__all__ = ["AreaSplit", "SceneSplit", "area_geometry", "chip_outline", "split_by_area", "split_items", "split_pairs",
           "split_scene"]

T = TypeVar("T")


def split_pairs(folder: ChipFolder, val_split_pct: float, seed: int) -> tuple[list[ChipPair], list[ChipPair]]:
    """The seeded train/validation split (pairs sorted by name first, so listing order does not
    matter). A folder with its own validation set (side by side ``val/``) keeps it."""
    if folder.valid_pairs:
        by_name = lambda p: p.name  # noqa: E731
        return sorted(folder.pairs, key=by_name), sorted(folder.valid_pairs, key=by_name)
    return split_items(folder.pairs, val_split_pct, seed, key=lambda p: p.name, where=str(folder.path))


def split_items(items: Sequence[T], val_split_pct: float, seed: int, *, key: Callable[[T], str],
                where: str) -> tuple[list[T], list[T]]:
    """Seeded train/validation split of chips or pairs, sorted by ``key`` first (so listing order
    does not matter): ``val_split_pct`` of them (at least one when > 0) go to validation.
    ``ValueError`` naming ``where`` when either set would be empty."""
    items = sorted(items, key=key)
    order = np.random.default_rng(seed).permutation(len(items))
    n_valid = int(round(len(items) * val_split_pct))
    if val_split_pct > 0:
        n_valid = max(n_valid, 1)
    valid = [items[i] for i in sorted(order[:n_valid])]
    train = [items[i] for i in sorted(order[n_valid:])]
    for name, subset in (("training", train), ("validation", valid)):
        if not subset:
            raise ValueError(f"{where}: the {name} set is empty after the split ({len(items)} "
                             f"chips, val_split_pct={val_split_pct}); add chips or change val_split_pct.")
    return train, valid


@dataclass
class AreaSplit:
    """The result of :func:`split_by_area`: pairs sorted by name."""

    train: list[ChipPair]
    valid: list[ChipPair]
    left_out: list[ChipPair] = field(default_factory=list)  # straddling the area's edge


def chip_outline(chip: Path):
    """A chip's footprint on the ground, a shapely polygon in its CRS (the four corners of its
    pixel grid, so chips on a turned grid count right), and the CRS; ``ValueError`` naming the
    chip when it has no georeference."""
    import rasterio
    from shapely.geometry import Polygon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio's NotGeoreferencedWarning: checked below
        with rasterio.open(chip) as src:
            if src.crs is None:
                raise ValueError(f"{chip}: the chip has no georeference (CRS and transform, in the file "
                                 "or a .tfw/.aux.xml beside it), so it cannot be placed against "
                                 "validation_area; use the random split (val_split_pct).")
            t, w, h = src.transform, src.width, src.height
            corners = [t @ (0, 0), t @ (w, 0), t @ (w, h), t @ (0, h)]
            return Polygon(corners), src.crs


def area_geometry(area, crs, *, where: str):
    """``area`` as one shapely geometry in ``crs``: a shapely geometry (taken to be in ``crs``),
    a GeoDataFrame or GeoSeries (reprojected when it has a CRS), or the path of a vector file."""
    import geopandas as gpd
    from shapely.geometry.base import BaseGeometry

    if isinstance(area, BaseGeometry):
        geometry = area
    else:
        if isinstance(area, (str, os.PathLike)):
            if not Path(area).exists():
                raise FileNotFoundError(f"validation_area {area}: no such vector file.")
            area = gpd.read_file(area)
        if isinstance(area, gpd.GeoDataFrame):
            area = area.geometry
        if not isinstance(area, gpd.GeoSeries):
            raise TypeError("validation_area must be a shapely geometry, a GeoDataFrame / GeoSeries or "
                            f"the path of a vector file; got {type(area).__name__}.")
        if area.crs is not None and crs is not None:
            area = area.to_crs(crs)
        geometry = area.union_all()
    if geometry.is_empty or geometry.area <= 0:
        raise ValueError(f"validation_area for {where} is empty or has no area.")
    return geometry


def split_by_area(pairs: Sequence[ChipPair], area, *, where: str) -> AreaSplit:
    """Split chips by where they lie: wholly inside ``area`` -> validation, wholly outside (a
    shared edge is outside) -> training, across its edge -> left out.

    Args:
        pairs: chip pairs whose input chips are georeferenced (one CRS).
        area: the validation area (see :func:`area_geometry`).
        where: names the folder in errors.

    Raises:
        ValueError: a chip without georeference, or a set that would be empty.
    """
    outlines, crs = [], None
    for pair in pairs:
        outline, chip_crs = chip_outline(pair.input)
        if crs is None:
            crs = chip_crs
        elif chip_crs != crs:
            raise ValueError(f"{pair.input}: CRS {chip_crs} differs from the other chips' {crs}; a split "
                             "by area needs chips in one CRS.")
        outlines.append(outline)
    geometry = area_geometry(area, crs, where=where)
    split = AreaSplit([], [])
    for pair, outline in zip(pairs, outlines):
        # in pixels' terms: a shared edge or a sliver of rounding is no shared pixel
        tolerance = 1e-6 * outline.area
        shared = outline.intersection(geometry).area
        if shared <= tolerance:
            split.train.append(pair)
        elif outline.area - shared <= tolerance:
            split.valid.append(pair)
        else:
            split.left_out.append(pair)
    for name, subset in (("validation", split.valid), ("training", split.train)):
        if not subset:
            raise ValueError(f"{where}: no chip lies wholly {'inside' if name == 'validation' else 'outside'} "
                             f"validation_area ({len(split.valid)} inside, {len(split.train)} outside, "
                             f"{len(split.left_out)} across its edge), so the {name} set would be empty.")
    by_name = lambda p: p.name  # noqa: E731
    return AreaSplit(sorted(split.train, key=by_name), sorted(split.valid, key=by_name),
                     sorted(split.left_out, key=by_name))


class SceneSplit(NamedTuple):
    """A scene cut in two (polygons in the scene's CRS): ``train`` the west part, whose pixel
    window is ``train_window``; ``validation`` its northern rows (pass it to
    ``prepare_data(validation_area=)``); ``held_out`` the east part, sharing no pixel with either."""

    train_window: object  # rasterio.windows.Window
    train: object  # shapely Polygon
    validation: object
    held_out: object


def split_scene(image: str | os.PathLike, train_share: float = 2 / 3, validation_rows: int = 192) -> SceneSplit:
    """Cut a raster at ``train_share`` of its width into a training part (west, with a validation
    strip of its northern ``validation_rows`` rows) and a held-out part (east): the demo's and
    the footprint benchmark's test of ground the model has not seen."""
    import rasterio
    from rasterio.windows import Window, bounds
    from shapely.geometry import box

    with rasterio.open(image) as src:
        width, height, transform = src.width, src.height, src.transform
    columns = round(width * train_share)
    if not 0 < columns < width or not 0 < validation_rows < height:
        raise ValueError(f"{image}: {width} x {height} px cannot be split at train_share={train_share} "
                         f"with validation_rows={validation_rows}.")
    west = Window(0, 0, columns, height)
    return SceneSplit(west, box(*bounds(west, transform)),
                      box(*bounds(Window(0, 0, columns, validation_rows), transform)),
                      box(*bounds(Window(columns, 0, width - columns, height), transform)))

"""Chip headers across a set: every chip alike in bands and size, and of one data type.

Holds the checks the folder index (:mod:`toolkit.data.layouts`) runs on the headers of a set of
chips (:func:`~toolkit.data.chips.read_header`, no pixels read), whose errors and warnings name
the chip that differs, and the ground size of a georeferenced chip's pixels.

Layer: data (the package's layers, bottom to top: formats and I/O, data, inference core,
training, front doors). Built on :mod:`toolkit.data.chips`; fastai-free.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import rasterio

from toolkit.data.chips import ChipHeader, read_header

__all__ = ["DtypeSeen", "alike_headers", "chip_cell_size", "require_alike", "require_same_size"]


def chip_cell_size(chip: Path) -> tuple[float, float] | None:
    """Pixel size of a georeferenced chip in its CRS units (the length of a pixel's sides, so
    chips on a turned grid, ``export_training_data(rotation_angle=...)``, count right); None for
    plain pictures."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(chip) as src:
            if src.crs is None:
                return None
            t = src.transform
            return math.hypot(t.a, t.d), math.hypot(t.b, t.e)


def alike_headers(chips: list[Path]) -> ChipHeader:
    """The header every chip of ``chips`` shares (bands, size); ``ValueError`` naming the first
    chip that differs; a warning when their data types differ."""
    first = read_header(chips[0])
    dtypes = DtypeSeen("chips")
    dtypes.add(chips[0], first)
    for chip in chips[1:]:
        header = read_header(chip)
        dtypes.add(chip, header)
        require_alike(chip, header, chips[0], first)
    dtypes.warn(chips[0].parent)
    return first


class DtypeSeen:
    """The first chip of each data type in a set: chips of one set in different types (8-bit
    and 16-bit, integers and floats) usually hold values on different scales, which one set of
    band statistics then normalises wrongly."""

    def __init__(self, role: str) -> None:
        self.role, self.first = role, {}

    def add(self, chip: Path, header: ChipHeader) -> None:
        self.first.setdefault(header.dtype, chip)

    def warn(self, where) -> None:
        if len(self.first) > 1:
            (a, chip_a), (b, chip_b) = list(self.first.items())[:2]
            warnings.warn(f"{where}: the {self.role} are of {len(self.first)} data types, e.g. {chip_a} is "
                          f"{a} and {chip_b} is {b}; their values may be on different scales, which one "
                          "set of band statistics normalises wrongly. Export them alike.", stacklevel=4)


def require_alike(chip: Path, got: ChipHeader, ref: Path, expected: ChipHeader) -> None:
    """``ValueError`` unless ``chip`` has the bands and size of ``ref``, the set's first chip."""
    if (got.bands, got.height, got.width) != (expected.bands, expected.height, expected.width):
        raise ValueError(
            f"{chip}: {got.bands} band(s) of {got.width}x{got.height} px, but {ref} and the "
            f"chips before it have {expected.bands} band(s) of {expected.width}x"
            f"{expected.height} px; all chips of a set must match.")


def require_same_size(chip: Path, got: ChipHeader, ref: Path, expected: ChipHeader, role: str) -> None:
    """``ValueError`` unless ``chip`` has the pixel size of ``ref`` (its ``role``: "its input
    chip"...); band counts may differ."""
    if (got.height, got.width) != (expected.height, expected.width):
        raise ValueError(f"{chip}: {got.width}x{got.height} px, but {role} {ref} is "
                         f"{expected.width}x{expected.height} px.")

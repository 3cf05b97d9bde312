"""Reading chips: headers for the index, pixels for training.

Pixels come through rasterio (GeoTIFF, PNG, JPEG, ...), with PIL only for files GDAL cannot open.
Headers for the index are parsed with tifffile (TIFF) or PIL (PNG, JPEG), which read a few bytes
instead of opening a GDAL dataset: ~0.3 ms a chip instead of ~1.5 ms, so 5,000 pairs index in
seconds.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

CHIP_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".mrf", ".img", ".jp2", ".bmp"}

# Each chip is opened once per epoch; GDAL's listing of the (large) chip folder to look for
# sidecar files on every open would cost more than reading the chip. Sidecars (.aux.xml) are
# still found, by name.
_READ_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "TRUE"}


@contextmanager
def _gdal_reading() -> Iterator[None]:
    """rasterio's environment for reading chips, quiet about chips without georeference (the
    PNG/JPEG pairs of the pix2pix research sets have none)."""
    with warnings.catch_warnings(), rasterio.Env(**_READ_ENV):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@dataclass(frozen=True)
class ChipHeader:
    """What the index needs to know of a chip without reading its pixels."""

    bands: int
    height: int
    width: int
    dtype: str


def is_chip(path: Path) -> bool:
    return path.suffix.lower() in CHIP_SUFFIXES and path.is_file()


def read_header(path: Path) -> ChipHeader:
    """Band count, size and dtype of a chip; ``ValueError`` naming the file when it is unreadable."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            return _tiff_header(path)
        if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
            return _pil_header(path)
    except Exception:
        pass  # not parseable by the fast readers: let GDAL decide below
    try:
        with _gdal_reading(), rasterio.open(path) as src:
            return ChipHeader(src.count, src.height, src.width, src.dtypes[0])
    except RasterioIOError as err:
        raise ValueError(f"{path}: corrupt or unreadable chip ({err}).") from err


def _tiff_header(path: Path) -> ChipHeader:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return ChipHeader(int(page.samplesperpixel), int(page.imagelength), int(page.imagewidth),
                          np.dtype(page.dtype).name)


_PIL_MODES = {"1": (1, "uint8"), "L": (1, "uint8"), "P": (1, "uint8"), "RGB": (3, "uint8"),
              "RGBA": (4, "uint8"), "LA": (2, "uint8"), "I;16": (1, "uint16"),
              "I;16B": (1, "uint16"), "I": (1, "int32"), "F": (1, "float32")}


def _pil_header(path: Path) -> ChipHeader:
    from PIL import Image

    with Image.open(path) as im:
        bands, dtype = _PIL_MODES[im.mode]
        return ChipHeader(bands, im.height, im.width, dtype)


def read_chip(path: Path) -> tuple[np.ndarray, float | None]:
    """Pixels ``(bands, height, width)`` in the file's dtype, and the file's nodata value."""
    try:
        with _gdal_reading(), rasterio.open(path) as src:
            return src.read(), src.nodata
    except RasterioIOError as gdal_error:
        try:
            return _read_with_pil(path), None
        except Exception:
            raise ValueError(f"{path}: corrupt or unreadable chip ({gdal_error}).") from gdal_error


def _read_with_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im)
    return array[np.newaxis] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def side_by_side_halves(data: np.ndarray, path: os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Split a pix2pix research image holding A and B side by side into (A, B)."""
    width = data.shape[-1]
    if width % 2:
        raise ValueError(f"{path}: a side-by-side A|B image has an even width; this one is {width} px.")
    return data[..., : width // 2], data[..., width // 2:]

"""The Esri chip-folder format written by ArcGIS Pro's "Export Training Data For Deep Learning".

One place for the names, line formats and JSON keys of that layout, used by the exporter that
writes it and the readers that load it::

    <export folder>/
      images/000000000.tif   (+ .tfw world file; PNG chips: .pgw, JPEG chips: .jpg + .jgw)
      images2/000000000.tif  Export_Tiles with an additional input raster (pix2pix target)
      labels/000000000.tif   Classified_Tiles: single-band class values of the same chip
                             (PNG when the images are JPEG: class values must stay exact)
      map.txt                one line per chip, Windows separators, CRLF
      esri_accumulated_stats.json, esri_model_definition.emd, stats.txt

CycleGAN (unpaired) data is two such folders side by side, one per raster, each cut on its own
grid: ``A/`` (the input raster) and ``B/`` (the additional raster), as arcgis.learn reads it (see
:mod:`toolkit.data.unpaired`).

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from affine import Affine

IMAGES = "images"
IMAGES2 = "images2"
LABELS = "labels"
MAP_FILE = "map.txt"
STATS_FILE = "esri_accumulated_stats.json"
EMD_FILE = "esri_model_definition.emd"
STATS_TEXT_FILE = "stats.txt"

EXPORT_TILES = "Export_Tiles"
CLASSIFIED_TILES = "Classified_Tiles"
CYCLEGAN = "CycleGAN"
METADATA_FORMATS = (EXPORT_TILES, CLASSIFIED_TILES, CYCLEGAN)
DOMAIN_FOLDERS = ("A", "B")  # CycleGAN: one export folder per raster


class ChipFormat(NamedTuple):
    """A raster format of exported chips: Pro's ``image_chip_format`` value, the file extension,
    the GDAL driver and the world-file extension written beside each chip."""

    name: str
    extension: str
    driver: str
    world_extension: str


# Pro's image_chip_format values (MRF, the fourth, is not written here).
CHIP_FORMATS = {
    "TIFF": ChipFormat("TIFF", ".tif", "GTiff", ".tfw"),
    "PNG": ChipFormat("PNG", ".png", "PNG", ".pgw"),  # georeference also in .png.aux.xml
    "JPEG": ChipFormat("JPEG", ".jpg", "JPEG", ".jgw"),  # georeference also in .jpg.aux.xml
}
_CHIP_FORMAT_NAMES = {"tiff": "TIFF", "tif": "TIFF", "png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}


def chip_format(name: str) -> ChipFormat:
    """The chip format named by Pro's ``image_chip_format`` value (``"TIFF"``, ``"PNG"``,
    ``"JPEG"``), or by an extension (``"tif"``, ``"png"``, ``"jpg"``), case-insensitively."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key == "mrf":
        raise ValueError("image_chip_format='MRF' (Esri's Meta Raster Format) is not supported: "
                         "choose 'TIFF', 'PNG' or 'JPEG'.")
    if key not in _CHIP_FORMAT_NAMES:
        raise ValueError(f"image_chip_format must be 'TIFF', 'PNG' or 'JPEG' (or 'tif', 'png', "
                         f"'jpg'), got {name!r}.")
    return CHIP_FORMATS[_CHIP_FORMAT_NAMES[key]]


def label_chip_format(image_format: ChipFormat) -> ChipFormat:
    """The format of the class-value chips (``labels/``) of an export in ``image_format``: the
    same, except that JPEG, being lossy, would alter class values, so those labels are PNG."""
    return CHIP_FORMATS["PNG"] if image_format.name == "JPEG" else image_format

# The band names ArcGIS lists in every exported .emd (usable in ExtractBands).
WELL_KNOWN_BAND_NAMES = [
    "Red", "Green", "Blue", "Infrared", "CoastalBlue", "Yellow", "RedEdge", "ShortWaveInfrared",
    "NearInfrared", "NearInfrared_1", "NearInfrared_2", "MidInfrared", "MidInfrared_1",
    "MidInfrared_2", "Thermal", "Thermal_1", "Thermal_2", "Panchromatic", "PseudoRed",
    "PseudoGreen", "PseudoBlue",
]


def chip_name(index: int, extension: str) -> str:
    """Esri's chip name: a 9-digit zero-padded counter, e.g. ``000000042.tif``; exports count
    from 0, or from their ``start_index``."""
    return f"{index:09d}{extension}"


def world_file_path(chip: str | os.PathLike, world_extension: str) -> Path:
    return Path(chip).with_suffix(world_extension)


def write_world_file(path: str | os.PathLike, transform: Affine) -> None:
    """Write an ESRI world file: A, D, B, E, then the centre of the upper-left pixel. B and D,
    the rotation terms, are non-zero for chips on a turned grid."""
    centre_x, centre_y = transform @ (0.5, 0.5)
    values = (transform.a, transform.d, transform.b, transform.e, centre_x, centre_y)
    lines = [v + 0.0 for v in values]  # + 0.0: no "-0.0" terms
    Path(path).write_text("".join(f"{v!r}\n" for v in lines))


def read_world_file(path: str | os.PathLike) -> Affine:
    """Read an ESRI world file back into the affine transform of the pixel corners."""
    values = [float(v) for v in Path(path).read_text().split()]
    if len(values) != 6:
        raise ValueError(f"{path}: a world file holds 6 numbers, found {len(values)}.")
    a, d, b, e, centre_x, centre_y = values
    return Affine(a, b, centre_x - 0.5 * a - 0.5 * b, d, e, centre_y - 0.5 * d - 0.5 * e)


def map_line(relative_paths: Sequence[str]) -> str:
    """One map.txt line as ArcGIS writes it: backslashes, two spaces between, trailing space, CRLF."""
    return "  ".join(p.replace("/", "\\") for p in relative_paths) + " \r\n"


def write_map(path: str | os.PathLike, rows: Iterable[Sequence[str]]) -> None:
    with open(path, "w", newline="") as f:
        f.writelines(map_line(row) for row in rows)


def read_map(path: str | os.PathLike) -> list[tuple[str, ...]]:
    """Parse map.txt into rows of POSIX relative paths. The file's order carries no meaning."""
    rows = []
    with open(path, newline="") as f:
        for line in f:
            fields = line.split()
            if fields:
                rows.append(tuple(p.replace("\\", "/") for p in fields))
    return rows


def write_json(path: str | os.PathLike, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def classes_for_stats(classes: Sequence[dict]) -> list[dict]:
    """``[{"Value", "Name", "Color"}]`` -> the stats file's ``[{"ClassValue", "ClassName", "Color"}]``."""
    return [{"ClassValue": c["Value"], "ClassName": c["Name"], "Color": c["Color"]} for c in classes]


def model_definition(*, tile_size: tuple[int, int], band_count: int, classes: Sequence[dict],
                     all_tiles_stats: list[dict], all_tiles_stats2: list[dict] | None,
                     input_rasters_props: dict) -> dict:
    """The esri_model_definition.emd of an export: ArcGIS's template keys plus real values."""
    emd = {
        "Framework": "e.g. CNTK",
        "ModelConfiguration": "some description",
        "ModelType": "e.g. ObjectDetection or ImageClassification",
        "ModelFile": "e.g. .\\trained.model",
        "ImageHeight": tile_size[1],
        "ImageWidth": tile_size[0],
        "ExtractBands": list(range(band_count)),
        "ImageSpaceUsed": "MAP_SPACE",
        "Classes": list(classes),
        "InputRastersProps": input_rasters_props,
        "AllTilesStats": all_tiles_stats,
        "WellKnownBandNames (FYI, these band names can be used in ExtractBands)":
            WELL_KNOWN_BAND_NAMES,
    }
    if all_tiles_stats2 is not None:
        emd["AllTilesStats2"] = all_tiles_stats2
    return emd

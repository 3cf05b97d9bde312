"""Esri export metadata as the folder index reads it: the .emd and stats files beside the chips.

Holds the reading of an export's ``esri_model_definition.emd`` and ``esri_accumulated_stats.json``
into the plain values a folder index keeps: class records (with the toolkit's mark of the
footprint-outline class), per-band statistics fit to normalise with (``AllTilesStats``,
``AllTilesStats2``), input band names and the ``MetaDataMode``. Detecting layouts and pairing
chips is :mod:`toolkit.data.layouts`, which builds on this; the files are written by
:func:`toolkit.export_training_data`.

Layer: data (the package's layers, bottom to top: formats and I/O, data, inference core,
training, front doors). Built on :mod:`toolkit.esri` (file names); fastai-free.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit import esri

__all__ = ["METADATA_FILES", "band_names", "boundary_class", "export_classes", "load_json", "metadata_mode",
           "stats_list"]

# an export's metadata files, beside its chip folders: read, never written into or over
METADATA_FILES = (esri.EMD_FILE, esri.MAP_FILE, esri.STATS_FILE, esri.STATS_TEXT_FILE)


def load_json(path: Path) -> dict | None:
    """The JSON of ``path``, None when there is no such file; ``ValueError`` naming it when it is
    not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err


def stats_list(value) -> list[dict] | None:
    """AllTilesStats entries usable for normalisation (every band has numbers), else None."""
    keys = ("Min", "Max", "Mean", "StdDev")
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(b, dict) and all(isinstance(b.get(k), (int, float)) for k in keys) for b in value):
        return None
    return value


def _contour_keys(record: dict) -> dict:
    """The toolkit's mark of the footprint-outline class (``export_training_data(contour_width=)``)."""
    return {k: record[k] for k in ("Boundary", "ContourWidth") if k in record}


def export_classes(emd: dict, stats: dict) -> list[dict]:
    """Class records ``[{"Value", "Name", "Color"}]`` of a Classified_Tiles export: the .emd's
    ``Classes`` (with any outline-class mark), else the stats file's; empty when neither names any."""
    if isinstance(emd.get("Classes"), list) and emd["Classes"]:
        return [{"Value": int(c["Value"]), "Name": str(c.get("Name", c["Value"])),
                 "Color": c.get("Color")} | _contour_keys(c) for c in emd["Classes"]]
    if isinstance(stats.get("Classes"), list) and stats["Classes"]:
        return [{"Value": int(c["ClassValue"]), "Name": str(c.get("ClassName", c["ClassValue"])),
                 "Color": c.get("Color")} for c in stats["Classes"]]
    return []


def boundary_class(classes: list[dict]) -> dict | None:
    """The class that holds footprint outlines: the one marked ``"Boundary": true`` by the export,
    else one named ``"boundary"``; ``None`` when there is none."""
    marked = [c for c in classes if c.get("Boundary")] or \
        [c for c in classes if str(c.get("Name", "")).lower() == "boundary"]
    return marked[0] if marked else None


def band_names(stats: dict) -> list | None:
    """The input raster's band names the stats file holds (``InputRastersProps``), else None."""
    names = (stats.get("InputRastersProps") or {}).get("BandNames")
    return names if isinstance(names, list) else None


def metadata_mode(path: Path) -> str | None:
    """``MetaDataMode`` of an export's stats file (where ArcGIS writes it), else of its .emd."""
    for name in (esri.STATS_FILE, esri.EMD_FILE):
        mode = (load_json(path / name) or {}).get("MetaDataMode")
        if mode:
            return str(mode)
    return None

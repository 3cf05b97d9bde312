"""The metadata files of an export folder: map.txt and Esri's statistics and model definition.

:func:`write_metadata` writes, beside the chips, ``map.txt`` (one line per chip),
``esri_accumulated_stats.json`` (band statistics, cell size, class pixel counts),
``esri_model_definition.emd`` (the model definition arcgis.learn reads) and ``stats.txt`` (the
same numbers as text).

Layer: data, though it only formats what the export gathered: used by :mod:`toolkit.export`
(never the other way round); the file names and line formats come from :mod:`toolkit.esri`
(formats and I/O).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit import esri

__all__ = ["write_metadata"]


def write_metadata(folder: Path, *, metadata_format: str, map_rows, out_size, readers, stats,
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

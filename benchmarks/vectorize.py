"""Speed and peak memory of vectorize on a large score raster, windowed and whole.

Builds an 8192 x 8192 two-band score raster (footprint, outline; float32, tiled, deflate) from
the real SpaceNet Atlanta footprints: grown by 3 m so that neighbours touch, exported with 2 px
outlines, turned into soft scores (Gaussian, sigma 1 px) and tiled 10 x 10 (cropped to 8192 px).
Then runs ``vectorize`` (outline band from the tags: watershed separation) in a fresh process
per setting and reports seconds, peak RSS (``VmHWM``) and the footprint count, for windows of
2048 px with a 128 px margin (the default) and for the whole raster at once.

    .venv/bin/python benchmarks/vectorize.py [size]      # default 8192
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from scipy import ndimage

from toolkit import datasets, export_training_data
from toolkit.vector import footprint_tags

CHILD = r"""
import json, sys, time
from toolkit import vectorize
start = time.perf_counter()
footprints = vectorize(sys.argv[1], window_size=int(sys.argv[2]), margin=128)
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
print(json.dumps({"footprints": len(footprints), "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""


def score_raster(size: int, folder: Path) -> Path:
    sample = datasets.fetch("atlanta_buildings")
    with rasterio.open(sample["image"]) as src:
        profile = src.profile
    grown = gpd.read_file(sample["footprints"]).to_crs(profile["crs"])
    grown["geometry"] = grown.buffer(3.0, join_style="mitre")
    summary = export_training_data(sample["image"], folder / "chips", in_class_data=grown, tile_size=900,
                                   contour_width=2, progress=False)
    with rasterio.open(summary.labels[0]) as src:
        label = src.read(1)
    tile = np.stack([ndimage.gaussian_filter((label == v).astype(np.float32), 1.0) for v in (1, 2)])
    reps = -(-size // tile.shape[1])
    path = folder / f"scores_{size}.tif"
    out = profile | {"width": size, "height": size, "count": 2, "dtype": "float32", "nodata": None,
                     "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                     "BIGTIFF": "IF_SAFER"}
    with rasterio.open(path, "w", **out) as dst:
        row = np.tile(tile, (1, 1, reps))[:, :, :size]  # one row of tiles at a time
        for r in range(reps):
            height = min(tile.shape[1], size - r * tile.shape[1])
            dst.write(row[:, :height], window=rasterio.windows.Window(0, r * tile.shape[1], size, height))
        dst.update_tags(**footprint_tags(summary.classes, class_raster=False))
    return path


def main(size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = score_raster(size, Path(tmp))
        print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MB on disk, "
              f"{2 * 4 * size * size / 2**20:.0f} MB as float32")
        for window in (2048, size):
            result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(window)],
                                    capture_output=True, text=True, check=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            label = "whole raster" if window == size else f"windows of {window} px, margin 128"
            print(f"{label}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"{r['footprints']} footprints")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8192)

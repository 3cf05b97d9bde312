"""Peak memory and speed of export_training_data as the raster grows.

Builds mosaics of the real SpaceNet Atlanta tile (900 px) repeated n x n times, with its 43
footprints shifted along, and exports each in a fresh subprocess (Classified_Tiles, 256 px chips,
2 px contours). Reports chips/s and the subprocess's peak RSS: the export reads and writes window
by window, so peak memory should stay flat while the raster grows. Each size runs twice: with the
toolkit's 64 MB cap on GDAL's block cache ("capped") and with GDAL's default cache, 5% of RAM
("default"), which keeps every block read and so grows with the raster up to that size.

    .venv/bin/python benchmarks/export_memory.py [n ...]      # default: 1 4 10 20
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import pandas as pd
import rasterio
from affine import Affine
from rasterio.windows import Window

from toolkit import datasets

CHILD = r"""
import json, sys, time
import rasterio
import toolkit.export
from toolkit import export_training_data
if sys.argv[4] == "default":  # GDAL's default block cache (5% of RAM) instead of the 64 MB cap
    toolkit.export.streaming_env = rasterio.Env
start = time.perf_counter()
s = export_training_data(sys.argv[1], sys.argv[2], in_class_data=sys.argv[3], tile_size=256,
                         contour_width=2, progress=False)
seconds = time.perf_counter() - start
# VmHWM is this process's own peak; ru_maxrss would also count the parent's memory at fork time.
with open("/proc/self/status") as f:
    peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
print(json.dumps({"chips": s.num_chips, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""


def mosaic(sample: dict, n: int, folder: Path) -> tuple[Path, Path]:
    raster, vector = folder / f"atlanta_{n}x{n}.tif", folder / f"atlanta_{n}x{n}.gpkg"
    footprints = gpd.read_file(sample["footprints"])
    with rasterio.open(sample["image"]) as src:
        tile = src.read()
        size = src.width
        profile = src.profile | {"width": size * n, "height": size * n, "tiled": True,
                                 "blockxsize": 256, "blockysize": 256}
        pixel = src.transform.a
        with rasterio.open(raster, "w", **profile) as dst:
            for i in range(n):
                for j in range(n):
                    dst.write(tile, window=Window(j * size, i * size, size, size))
    parts = [footprints.translate(j * size * pixel, -i * size * pixel) for i in range(n) for j in range(n)]
    gpd.GeoDataFrame(geometry=pd.concat(parts, ignore_index=True), crs=footprints.crs).to_file(vector)
    return raster, vector


def main(sizes: list[int]) -> None:
    sample = datasets.fetch("atlanta_buildings")
    print(f"{'raster':>14} {'MB':>6} {'chips':>6} {'s':>7} {'chips/s':>8} {'peak RSS MB':>12}  GDAL cache")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            raster, vector = mosaic(sample, n, Path(tmp))
            for cache in ("capped", "default"):
                out = Path(tmp) / f"chips_{n}_{cache}"
                result = subprocess.run(
                    [sys.executable, "-c", CHILD, str(raster), str(out), str(vector), cache],
                    capture_output=True, text=True, check=True)
                r = json.loads(result.stdout.strip().splitlines()[-1])
                side = 900 * n
                print(f"{side:>6} x {side:<6}{raster.stat().st_size / 2**20:>6.0f} {r['chips']:>6} "
                      f"{r['seconds']:>7.1f} {r['chips'] / r['seconds']:>8.0f} "
                      f"{r['peak_rss_mb']:>12.0f}  {cache}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 4, 10, 20])

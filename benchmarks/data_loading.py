"""Indexing time and loader throughput of prepare_data.

Builds an Export_Tiles folder of ~5,000 pairs of 256 px chips from the real Rotterdam sample:
input = 3 multispectral bands as uint16, target = the panchromatic band on the same grid, both
mosaicked 14 x 14 times and cut with a 56 px stride. Then measures:

- indexing: ``index_folder`` (layout, pairing, every chip's header) and the whole ``prepare_data``;
- loader throughput in chips/s (batch 8) with and without augmentation, for 0, 1 and 2 workers,
  and the time to the first batch of an epoch (worker start-up).

    .venv/bin/python benchmarks/data_loading.py [folder]   # reuses the folder when it exists
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from toolkit import datasets, export_training_data, prepare_data
from toolkit.data import index_folder

REPEAT = 14


def build_folder(folder: Path) -> None:
    sample = datasets.fetch("rotterdam")
    with rasterio.open(sample["multispectral_1"]) as ms, rasterio.open(sample["panchromatic_1"]) as pan:
        bands = ms.read([1, 2, 3]).round().astype(np.uint16)
        target = pan.read(out_shape=(1, ms.height, ms.width), resampling=Resampling.average)
        profile = ms.profile | {"dtype": "uint16", "tiled": True, "blockxsize": 256, "blockysize": 256,
                                "width": ms.width * REPEAT, "height": ms.height * REPEAT}
        size = ms.width
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, data in (("input", bands), ("target", target)):
            path = Path(tmp) / f"{name}.tif"
            with rasterio.open(path, "w", **(profile | {"count": data.shape[0]})) as dst:
                for i in range(REPEAT):
                    for j in range(REPEAT):
                        dst.write(data, window=Window(j * size, i * size, size, size))
            paths.append(path)
        export_training_data(paths[0], folder, additional_input_raster=paths[1], tile_size=256,
                             stride=56, overwrite=True)


def throughput(data, batches: int) -> float:
    start = time.perf_counter()
    seen = 0
    for i, (x, _) in enumerate(data.train):
        seen += len(x)
        if i + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


def first_batch_seconds(data) -> float:
    start = time.perf_counter()
    next(iter(data.train))
    return time.perf_counter() - start


def main(folder: Path) -> None:
    if not (folder / "map.txt").is_file():
        print(f"Building {folder} ...")
        build_folder(folder)
    start = time.perf_counter()
    indexed = index_folder(folder)
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    data = prepare_data(folder, batch_size=8, num_workers=0)
    prepare_s = time.perf_counter() - start
    print(f"{len(indexed.pairs)} pairs of {indexed.input_header.width} px "
          f"({indexed.input_header.bands} x {indexed.input_header.dtype} -> "
          f"{indexed.target_header.bands} x {indexed.target_header.dtype})")
    print(f"index_folder: {index_s:.2f} s; prepare_data (statistics from the .emd): {prepare_s:.2f} s")
    print(f"{'workers':>8} {'augment':>8} {'chips/s':>8} {'first batch s':>14}")
    for workers in (0, 1, 2):
        for augment in (False, True):
            data = prepare_data(folder, batch_size=8, num_workers=workers,
                                transforms=None if augment else False)
            rate = throughput(data, batches=60)
            first = np.median([first_batch_seconds(data) for _ in range(3)])
            print(f"{workers:>8} {str(augment):>8} {rate:>8.0f} {first:>14.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "toolkit_bench_5000")

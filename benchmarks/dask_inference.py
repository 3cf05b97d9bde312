"""predict_raster on a Dask LocalCluster of 1 and 2 worker processes (one thread each) against
the single-process predict_raster with one thread, on the same raster and model, in one run.

The raster and model are predict_raster.py's (a mosaic of the real Rotterdam multispectral sample,
3 bands uint16; a Pix2Pix 3 -> 1 band, 256 px chips, padding 64). Each configuration runs
``repeat`` times, alternating; medians are compared. The cluster is started once per worker
count and warmed up (each worker loads torch, the toolkit and the model once) before timing:
that start-up is reported separately.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dask_inference.py [--size 4096] [--ngf 8] [--repeat 3]
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).parent))
from predict_raster import scene_and_model  # noqa: E402


def main(size: int, ngf: int, repeat: int) -> None:
    import torch
    from distributed import Client, LocalCluster

    from toolkit import load_model

    torch.set_num_threads(1)
    raster, emd = scene_and_model(size, ngf, "toolkit_bench_dask_model")
    model = load_model(emd)
    out = Path(tempfile.gettempdir()) / "toolkit_bench_dask_prediction.tif"

    def timed(**kwargs) -> float:
        start = time.perf_counter()
        model.predict_raster(raster, out, overwrite=True, progress=False, **kwargs)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"single process": []}
    clients, startup = {}, {}
    for n in (1, 2):
        start = time.perf_counter()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                               env={"OMP_NUM_THREADS": "1"})
        clients[n] = Client(cluster)
        timed(client=clients[n])  # warm-up: imports and the model on every worker
        startup[n] = time.perf_counter() - start
        times[f"Dask, {n} worker{'s' if n > 1 else ''}"] = []
    timed()  # warm-up of the single-process path
    for _ in range(repeat):
        times["single process"].append(timed())
        for n, client in clients.items():
            times[f"Dask, {n} worker{'s' if n > 1 else ''}"].append(timed(client=client))
    for client in clients.values():
        client.close()
        client.cluster.close()

    windows = (math.ceil((size + 2 * 64 - 256) / 128) + 1) ** 2
    with rasterio.open(out) as dst:
        out_mb = os.path.getsize(out) / 2**20
        assert (dst.width, dst.height) == (size, size)
    base = np.median(times["single process"])
    print(f"{size} x {size} x 3 px, {windows} windows of 256 px (padding 64), ngf {ngf}, "
          f"{repeat} alternating runs each, 1 thread per process; output {out_mb:.0f} MB")
    print("| run | median s (runs) | Mpx/s | per window ms | speed-up over single process |")
    for name, ts in times.items():
        t = np.median(ts)
        print(f"| {name} | {t:.1f} ({', '.join(f'{x:.1f}' for x in sorted(ts))}) | "
              f"{size * size / t / 1e6:.2f} | {1000 * t / windows:.1f} | {base / t:.2f}x |")
    for n, s in startup.items():
        print(f"cluster of {n} start-up and first (warm-up) job: {s:.1f} s")


if __name__ == "__main__":
    args = sys.argv[1:]
    value = lambda flag, default: int(args[args.index(flag) + 1]) if flag in args else default  # noqa: E731
    main(value("--size", 4096), value("--ngf", 8), value("--repeat", 3))

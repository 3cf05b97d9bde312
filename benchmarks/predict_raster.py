"""predict_raster over an 8192 x 8192 3-band raster against the bare generator forward.

The raster is a mosaic of the real Rotterdam multispectral sample (3 bands, uint16). The model:
a Pix2Pix trained for a few batches on the data_loading folder (3 x uint16 -> 1 band, 256 px
chips), ngf 8 by default (a "small model" for the CPU), ``--ngf 64`` for the paper's size. In the
same run, each in a fresh process:

- ``predict_raster`` (256 px windows, padding 64, batch 8): pixels/s and peak RSS (VmHWM);
- the bare generator forward over the same number of 256 px windows in batches of 8, in eval
  mode without gradients (the upper bound on what any whole-raster inference can do).

    .venv/bin/python benchmarks/predict_raster.py [--ngf 8] [--size 8192] [--repeat 3]
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).parent))
from data_loading import build_folder  # noqa: E402

from toolkit import datasets  # noqa: E402

CHILD = r"""
import json, sys, time, torch, numpy as np
from toolkit import Pix2Pix
mode, emd, raster, out, n_windows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
model = Pix2Pix.from_model(emd)
start = time.perf_counter()
if mode == "toolkit":
    model.predict_raster(raster, out, padding=64, batch_size=8, overwrite=True, progress=False)
else:
    g = model.generator.eval()
    x = torch.zeros(8, model.config["n_bands_in"], 256, 256, device=model.device)
    with torch.no_grad():
        for i in range(0, n_windows, 8):
            g(x[: min(8, n_windows - i)])
    if model.device.type == "cuda":
        torch.cuda.synchronize()
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak}))
"""


def mosaic(size: int, path: Path) -> None:
    sample = datasets.fetch("rotterdam")
    with rasterio.open(sample["multispectral_1"]) as ms:
        tile = ms.read([1, 2, 3]).round().astype(np.uint16)
        profile = ms.profile | {"dtype": "uint16", "count": 3, "width": size, "height": size,
                                "tiled": True, "blockxsize": 256, "blockysize": 256}
    n = math.ceil(size / tile.shape[1])
    with rasterio.open(path, "w", **profile) as dst:
        for i in range(n):
            for j in range(n):
                h = min(tile.shape[1], size - i * tile.shape[1])
                w = min(tile.shape[2], size - j * tile.shape[2])
                dst.write(tile[:, :h, :w], window=Window(j * tile.shape[2], i * tile.shape[1], w, h))


def train_model(ngf: int, folder: Path, out: Path) -> Path:
    from toolkit import Pix2Pix, prepare_data

    data = prepare_data(folder, batch_size=8, val_split_pct=0.01, num_workers=0)
    data.train.n = 64  # one short epoch: the benchmark is about inference
    model = Pix2Pix(data, ngf=ngf, ndf=ngf)
    model.fit(1, checkpoint=False)
    return model.save(out, compute_metrics=False, overwrite=True)  # the last run's model


def run(mode, emd, raster, out, n_windows) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(emd), str(raster), str(out),
                             str(n_windows)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def scene_and_model(size: int, ngf: int, model_name: str = "toolkit_bench_model") -> tuple[Path, Path]:
    """The benchmark's mosaic of ``size`` px (made once, in the temporary folder) and a freshly
    trained model's .emd (``<tmp>/<model_name>_ngf<ngf>``); dask_inference.py uses the same."""
    tmp = Path(tempfile.gettempdir())
    folder = tmp / "toolkit_bench_5000"
    if not (folder / "map.txt").is_file():
        build_folder(folder)
    raster = tmp / f"toolkit_bench_mosaic_{size}.tif"
    if not raster.is_file():
        mosaic(size, raster)
    return raster, train_model(ngf, folder, tmp / f"{model_name}_ngf{ngf}")


def main(size: int, ngf: int, repeat: int) -> None:
    tmp = Path(tempfile.gettempdir())
    raster, emd = scene_and_model(size, ngf)
    stride, pad = 128, 64
    n = math.ceil((size + 2 * pad - 256) / stride) + 1
    # Runs on this machine vary by 10-25%: alternate the two, several times, and compare medians.
    ours, bare = [], []
    for _ in range(repeat):
        ours.append(run("toolkit", emd, raster, tmp / "toolkit_bench_prediction.tif", n * n))
        bare.append(run("bare", emd, raster, "-", n * n))
    pixels = size * size
    print(f"{size} x {size} x 3 px, 256 px windows, padding 64: {n * n} windows, ngf {ngf}, "
          f"{repeat} alternating runs each")
    for name, results in (("predict_raster", ours), ("bare forward", bare)):
        seconds = sorted(r["seconds"] for r in results)
        print(f"{name + ':':<16} median {np.median(seconds):.1f} s ({', '.join(f'{t:.1f}' for t in seconds)}), "
              f"{pixels / np.median(seconds) / 1e6:.2f} Mpx/s, "
              f"peak RSS {max(r['peak_rss_mb'] for r in results):.0f} MB")
    ratio = np.median([r["seconds"] for r in bare]) / np.median([r["seconds"] for r in ours])
    print(f"predict_raster reaches {ratio:.0%} of the bare forward's rate (medians)")


if __name__ == "__main__":
    args = sys.argv[1:]
    size = int(args[args.index("--size") + 1]) if "--size" in args else 8192
    ngf = int(args[args.index("--ngf") + 1]) if "--ngf" in args else 8
    repeat = int(args[args.index("--repeat") + 1]) if "--repeat" in args else 3
    main(size, ngf, repeat)

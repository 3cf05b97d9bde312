"""predict_raster on the CPU, backend by backend (toolkit.models.backends), against today's eager path.

The scene and model of predict_raster.py (a mosaic of the real Rotterdam multispectral sample,
3 bands uint16; a Pix2Pix 3 -> 1 band, 256 px chips, trained for a few batches), ``--ngf 64``
for the paper's size (8 levels, 54 M generator parameters). Each run in a fresh process with
the machine's threads; the paths alternate ``--repeat`` times and medians are compared:

- ``eager``: the generator in PyTorch on contiguous tensors (the toolkit until 2026-12-06);
- ``onnxruntime``; ``openvino`` (the default where installed);
- ``openvino-int8``, ``onnxruntime-int8``: ``precision="int8"`` (calibration included in the time).

Reported: seconds, Mpx/s, ms per window, the fraction of the cores' float32 peak the forward
passes reach (``--peak-gflops``, 360 for this 2-core AVX-512 machine), and the largest difference
from the eager output.

    .venv/bin/python benchmarks/cpu_inference.py --ngf 64 --size 4096 --repeat 2 [--modes eager,openvino]
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

sys.path.insert(0, str(Path(__file__).parent))
from predict_raster import scene_and_model  # noqa: E402

CHILD = r"""
import dataclasses, json, sys, time
from toolkit import predict_raster
from toolkit.models.translation import load_translation
mode, emd, raster, out = sys.argv[1:5]
translation = load_translation(emd, device="cpu")
backend, _, precision = mode.partition("-")
if backend == "eager":
    translation, backend = dataclasses.replace(translation, network=None), "auto"
start = time.perf_counter()
predict_raster(translation, raster, out, padding=64, batch_size=8, overwrite=True, progress=False, backend=backend,
               precision=precision or "fp32")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

MODES = ("eager", "onnxruntime", "openvino")


def run(mode: str, emd: Path, raster: Path, out: Path) -> float:
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(emd), str(raster), str(out)],
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def window_gflop(emd: Path) -> float:
    """Floating-point operations of one 256 px window's forward pass (multiply-add = 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from toolkit.models.translation import load_translation

    t = load_translation(emd, device="cpu")
    x = torch.zeros(1, t.n_bands_in, 256, 256)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        t.network.eval()(x)
    return counter.get_total_flops() / 1e9


def main(size: int, ngf: int, repeat: int, peak: float, modes: tuple[str, ...] = MODES) -> None:
    tmp = Path(tempfile.gettempdir())
    raster, emd = scene_and_model(size, ngf)
    n = (math.ceil((size + 2 * 64 - 256) / 128) + 1) ** 2
    gflop = window_gflop(emd)
    seconds = {m: [] for m in modes}
    for _ in range(repeat):
        for mode in modes:
            seconds[mode].append(run(mode, emd, raster, tmp / f"toolkit_cpu_{mode}.tif"))
    with rasterio.open(tmp / "toolkit_cpu_eager.tif") as src:
        reference = src.read()
    eager = np.median(seconds["eager"])
    print(f"{size} x {size} x 3 px, {n} windows of 256 px (padding 64, batch 8), ngf {ngf}, "
          f"{gflop:.1f} GFLOP a window, {repeat} alternating runs")
    print("| path | median s (runs) | Mpx/s | ms per window | fraction of peak | vs eager | max difference |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        with rasterio.open(tmp / f"toolkit_cpu_{mode}.tif") as src:
            diff = float(np.nanmax(np.abs(src.read() - reference)))
        med = np.median(seconds[mode])
        runs = ", ".join(f"{s:.1f}" for s in seconds[mode])
        print(f"| {mode} | {med:.1f} ({runs}) | {size * size / med / 1e6:.2f} | {1000 * med / n:.0f} | "
              f"{gflop * n / med / peak:.0%} | {eager / med:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    get = lambda name, default: type(default)(args[args.index(name) + 1]) if name in args else default  # noqa: E731
    modes = tuple(get("--modes", ",".join(MODES)).split(","))  # eager first: the reference
    main(get("--size", 4096), get("--ngf", 64), get("--repeat", 2), get("--peak-gflops", 360.0), modes)

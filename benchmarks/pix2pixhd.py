"""Pix2PixHD: parameters, the memory estimate against the measured peak, training and inference speed.

For each configuration, in a fresh process (so the peak resident memory is its own): the model is
built on Rotterdam's multispectral -> panchromatic pairs (256 px chips), ``memory_needed``'s
estimate taken, one epoch of ``fit`` timed after a warm-up epoch (seconds per step, its
validation included), then ``--steps`` forward passes of the generator alone (eval, no gradients). Reported: parameters, the estimate,
the peak RSS, images/s for training and for inference.

    .venv/bin/python benchmarks/pix2pixhd.py [--configs cpu,arcgis] [--steps 3] [--batch-size 1]

On a GPU (``--device cuda``) the peak is torch's ``max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {  # Pix2PixHDConfig keywords
    "cpu": {"n_gen_filters": 16, "n_dscr_filters": 16, "n_blocks_global": 4, "n_blocks_local": 2},
    "arcgis": {},  # arcgis.learn 2.4.4's defaults: local enhancer around a 1024-filter global generator
    "global64": {"gen_network": "global"},
}

CHILD = r"""
import json, resource, sys, time
import torch
from toolkit import Pix2PixHD, prepare_data
from toolkit.models.pix2pixhd import memory_needed
chips, name, kwargs, steps, batch, device = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
data = prepare_data(chips, batch_size=batch, seed=0, working_dir=chips + "_work", num_workers=0)
torch.manual_seed(0)
model = Pix2PixHD(data, **kwargs)
need = memory_needed(model.config, batch)
model.fit(1, lr=1e-4, checkpoint=False)  # warm-up
n = len(data.train_ds)
t = time.perf_counter()
model.fit(1, lr=1e-4, checkpoint=False)
train = (time.perf_counter() - t) / (n / batch)  # seconds per training step (validation included)
x, y = data.one_batch()
g = model.generator.eval()
with torch.no_grad():
    g(x)
    t = time.perf_counter()
    for _ in range(steps):
        g(x)
    if device == "cuda": torch.cuda.synchronize()
    infer = (time.perf_counter() - t) / steps
peak = (torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps({"config": name, "parameters": need["parameters"], "estimate_gib": (need["weights"] + need["activations"]) / 2**30,
                  "peak_gib": peak / 2**30, "train_images_per_s": batch / train, "infer_images_per_s": batch / infer}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="cpu,arcgis")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from toolkit import datasets, export_training_data

    rotterdam = datasets.fetch("rotterdam")
    with tempfile.TemporaryDirectory() as tmp:
        chips = Path(tmp) / "chips"
        export_training_data(rotterdam["multispectral_1"], chips, additional_input_raster=rotterdam["panchromatic_1"],
                             tile_size=256, stride=16, progress=False)
        for name in args.configs.split(","):
            run = subprocess.run([sys.executable, "-c", CHILD, str(chips), name, json.dumps(CONFIGS[name]),
                                  str(args.steps), str(args.batch_size), args.device],
                                 capture_output=True, text=True)
            lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
            print(lines[-1] if lines else f"{name}: failed\n{run.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()

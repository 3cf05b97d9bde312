"""Pix2Pix.fit data-parallel under torchrun (2 processes, gloo, one thread each) against one
process (one thread, and two threads), on the same chips, in one run.

The chips are data_loading.py's (real Rotterdam sample, 3 uint16 bands -> 1 band, 256 px); the
first ``--chips`` of them. Each configuration is started with ``torch.distributed.run
--standalone`` (1 process: ``WORLD_SIZE`` 1, a plain fit) and trains ``--epochs`` epochs; the
training phase of every epoch after the first is timed on rank 0 (loader, D and G steps and, with
2 processes, the gradient all-reduces included; validation excluded). Throughput is chips per
second over all processes: rank 0's chips times the number of processes (each rank trains the
same number). Configurations alternate, ``--repeat`` times; medians are compared.

    .venv/bin/python benchmarks/ddp_training.py [--chips 64] [--ngf 16] [--batch-size 4] [--epochs 3] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

RUNS = {"1 process, 1 thread": (1, 1), "1 process, 2 threads": (1, 2), "2 processes (gloo), 1 thread each": (2, 1)}


def child(args) -> None:
    """One rank of one configuration (started by torchrun)."""
    import torch
    from timing import TrainTimer

    from toolkit import Pix2Pix, ddp, prepare_data

    torch.manual_seed(0)
    data = prepare_data(args.folder, batch_size=args.batch_size, val_split_pct=0.1, num_workers=0)
    model = Pix2Pix(data, ngf=args.ngf, ndf=args.ngf, working_dir=Path(args.out).parent / "work")
    timer = TrainTimer()
    model.fit(args.epochs, checkpoint=False, callbacks=[timer])
    if ddp.is_main():
        Path(args.out).write_text(json.dumps({"seconds": timer.seconds, "images": timer.images,
                                              "processes": ddp.world_size(), "threads": torch.get_num_threads(),
                                              "train_chips": len(data.train_ds)}))


def run(folder: Path, processes: int, threads: int, args, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           __file__, "--child", "--folder", str(folder), "--out", str(out), "--ngf", str(args.ngf),
           "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    timed = range(1, len(result["seconds"]))  # the first epoch warms up
    chips = sum(result["images"][i] for i in timed) * result["processes"]
    result["rate"] = chips / sum(result["seconds"][i] for i in timed)
    return result


def main(args) -> None:
    from data_loading import build_folder
    from train_speed import subset

    root = Path(tempfile.gettempdir()) / "toolkit_bench_ddp"
    full = Path(tempfile.gettempdir()) / "toolkit_bench_chips"
    if not (full / "esri_model_definition.emd").exists():
        build_folder(full)
    folder = subset(full, args.chips, root / "chips")
    rates: dict[str, list[float]] = {name: [] for name in RUNS}
    info = {}
    for _ in range(args.repeat):
        for name, (processes, threads) in RUNS.items():
            start = time.perf_counter()
            result = run(folder, processes, threads, args, root / "result.json")
            info[name] = result | {"wall": time.perf_counter() - start}
            rates[name].append(result["rate"])
    base = statistics.median(rates["1 process, 1 thread"])
    print(f"{args.chips} chips of 256 px ({info['1 process, 1 thread']['train_chips']} training), ngf {args.ngf}, "
          f"batch {args.batch_size} per process, {args.epochs} epochs (first untimed), {args.repeat} runs")
    print("| run | chips/s median (runs) | speed-up over 1 process, 1 thread | wall s incl. start-up |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {statistics.median(values):.2f} ({runs}) | {statistics.median(values) / base:.2f}x "
              f"| {info[name]['wall']:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--folder")
    parser.add_argument("--out")
    parser.add_argument("--chips", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    arguments = parser.parse_args()
    child(arguments) if arguments.child else main(arguments)

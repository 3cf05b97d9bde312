"""Training images/s of CycleGAN.fit against a bare PyTorch loop running the same steps.

Data: a trainA/trainB folder cut with ``export_training_data`` from the real Rotterdam sample:
domain A = scene 1's multispectral image (4 bands, 1 m), domain B = scene 2's panchromatic image
averaged to 1 m (1 band; identity loss off), or with ``--same-bands`` scene 2's multispectral
image (4 bands; identity loss on). No augmentation. In the same process, alternating
``--repeat`` times after one warm-up of each:

- wrapper: ``CycleGAN(data).fit(1)``, timing its training phase (loader, fastai's machinery
  and the toolkit's callbacks included; validation excluded);
- bare loop: the same networks (ResNet generators, PatchGANs, instance norm, N(0, 0.02) init),
  the same G step (LSGAN + cycle L1 x 10 + identity L1 x 5 where the band counts match, one
  Adam (0.5, 0.999) over both generators), then the same D step on fakes from an ImagePool(50)
  per discriminator (one Adam over both), over the same batches, already in memory as plain
  tensors.

Medians of the rounds are compared (runs on a shared machine vary). ``--profile`` adds the bare
loop on the batches as fastai delivers them (``TensorImage``, whose ``__torch_function__`` every
operation then goes through) to each round, and a cProfile of one more ``fit(1)``, split into
where its time goes.

    .venv/bin/python benchmarks/cyclegan_speed.py [--size 64] [--batch 1,4] [--ngf 32]
        [--blocks 6] [--steps 10] [--repeat 3] [--same-bands] [--amp] [--profile] [--threads 1]

Defaults are CPU-sized; on a GPU use e.g. ``--size 256 --ngf 64 --blocks 9 --steps 50``. On a
CPU that other jobs share, ``--threads 1``: with two threads each on two busy cores, torch's
thread pool waits on itself and a step takes tens of times longer, at random.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from data_loading import throughput  # noqa: E402
from timing import TrainTimer, bare_rate, describe_device  # noqa: E402

from toolkit import CycleGAN, datasets, export_training_data, prepare_data  # noqa: E402
from toolkit.models import ImagePool, PatchDiscriminator, ResnetGenerator, init_weights  # noqa: E402
from fastai.torch_core import TensorImage  # noqa: E402


def build_folder(size: int, same_bands: bool, dest: Path) -> Path:
    """trainA/ (scene 1 multispectral) + trainB/ (scene 2 pan at 1 m, or multispectral) chips of
    ``size`` px, stride 16."""
    if (dest / "trainA").is_dir() and (dest / "trainB").is_dir():
        return dest
    sample = datasets.fetch("rotterdam")
    work = Path(tempfile.mkdtemp())
    opts = dict(tile_size=size, stride=16, progress=False)
    a = export_training_data(sample["multispectral_1"], work / "a", **opts).images
    if same_bands:
        b = export_training_data(sample["multispectral_2"], work / "b", **opts).images
    else:  # the pan averaged onto scene 2's 1 m grid: the same ground per chip as domain A
        b = export_training_data(sample["multispectral_2"], work / "b", additional_input_raster=sample["panchromatic_2"],
                                 resampling="average", **opts).images2
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub, chips in (("trainA", a), ("trainB", b)):
        (tmp / sub).mkdir(parents=True)
        for chip in chips:
            shutil.copy(chip, tmp / sub / chip.name)
    shutil.rmtree(work)
    tmp.rename(dest)
    return dest


def bare_step(n_a: int, n_b: int, *, ngf: int, blocks: int, device: torch.device, amp: bool,
              identity: bool):
    """The CycleGAN step in plain PyTorch; returns ``step(a, b)`` and the networks."""
    g_ab = init_weights(ResnetGenerator(n_a, n_b, ngf=ngf, n_blocks=blocks, norm="instance")).to(device)
    g_ba = init_weights(ResnetGenerator(n_b, n_a, ngf=ngf, n_blocks=blocks, norm="instance")).to(device)
    d_a = init_weights(PatchDiscriminator(n_a, ndf=ngf, norm="instance")).to(device)
    d_b = init_weights(PatchDiscriminator(n_b, ndf=ngf, norm="instance")).to(device)
    nets = [g_ab, g_ba, d_a, d_b]
    cuda = device.type == "cuda"
    if cuda:
        for net in nets:
            net.to(memory_format=torch.channels_last)
    g_opt = torch.optim.Adam([*g_ab.parameters(), *g_ba.parameters()], lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=2e-4, betas=(0.5, 0.999))
    pool_a, pool_b = ImagePool(50), ImagePool(50)
    half = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast("cuda", dtype=half) if amp and cuda else contextlib.nullcontext()
    scale = amp and cuda and half == torch.float16
    g_scaler, d_scaler = (torch.amp.GradScaler("cuda"), torch.amp.GradScaler("cuda")) if scale else (None, None)
    l1 = F.l1_loss

    def lsgan(pred: torch.Tensor, real: bool) -> torch.Tensor:
        pred = pred.float()
        return F.mse_loss(pred, torch.ones_like(pred) if real else torch.zeros_like(pred))

    def update(opt, scaler, loss) -> None:
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    for d in (d_a, d_b):
        d.requires_grad_(False)

    def step(a: torch.Tensor, b: torch.Tensor) -> None:
        g_opt.zero_grad(set_to_none=True)
        with autocast:
            fake_b, fake_a = g_ab(a), g_ba(b)
            loss = 10 * l1(g_ba(fake_b), a) + 10 * l1(g_ab(fake_a), b)
            if identity:
                loss = loss + 0.5 * (10 * l1(g_ab(b), b) + 10 * l1(g_ba(a), a))
            loss = loss + lsgan(d_b(fake_b), True) + lsgan(d_a(fake_a), True)
        update(g_opt, g_scaler, loss)
        pooled_a, pooled_b = pool_a.query(fake_a.detach()), pool_b.query(fake_b.detach())
        for d in (d_a, d_b):
            d.requires_grad_(True)
        d_opt.zero_grad(set_to_none=True)
        with autocast:
            d_loss = 0.5 * (lsgan(d_a(a), True) + lsgan(d_a(pooled_a), False)) + \
                0.5 * (lsgan(d_b(b), True) + lsgan(d_b(pooled_b), False))
        update(d_opt, d_scaler, d_loss)
        for d in (d_a, d_b):
            d.requires_grad_(False)

    return step, nets


def parameters(nets) -> int:
    return sum(p.numel() for net in nets for p in net.parameters())


# where the training phase's time goes: cumulative time of these functions (the indented row is
# part of the one above it; the rest do not call each other)
PROFILE_PARTS = {
    "loader (read, normalise, collate)": ("fastai/data/load.py", "__iter__"),
    "G forward (4-6 generator passes)": ("toolkit/models/cyclegan.py", "forward"),
    "G loss (L1 terms, D_A and D_B on the fakes)": ("toolkit/models/cyclegan.py", "g_loss"),
    "G backward": ("fastai/learner.py", "_backward"),
    "G optimizer step (fastai's Adam)": ("fastai/learner.py", "_step"),
    "G zero_grad (fastai's)": ("fastai/optimizer.py", "zero_grad"),
    "D step (after_step: pools, D forward/backward, Adam)": ("toolkit/models/cyclegan.py", "after_step"),
    "  of which ImagePool.query": ("toolkit/models/cyclegan.py", "query"),
}


class TrainProfiler(TrainTimer):
    """A TrainTimer that runs cProfile over the training phase only."""

    def before_train(self):
        self.profiler = cProfile.Profile()
        super().before_train()
        self.profiler.enable()

    def after_train(self):
        self.profiler.disable()
        super().after_train()


def profile_fit(model: CycleGAN) -> None:
    """cProfile one more fit(1) and print where its training phase's time goes (cProfile adds
    overhead to every Python call: read the shares, not the seconds)."""
    profiler = TrainProfiler()
    model.learn.add_cb(profiler)
    try:
        model.fit(1, checkpoint=False, one_cycle=False)
    finally:
        model.learn.remove_cb(profiler)
    stats = pstats.Stats(profiler.profiler).stats
    total = profiler.seconds[-1]
    print(f"  profile of one more fit(1): training phase {total:.2f} s under cProfile")
    parts = 0.0
    for label, (file, name) in PROFILE_PARTS.items():
        seconds = sum(ct for (path, _, func), (_, _, _, ct, _) in stats.items()
                      if path.endswith(file) and func == name)
        parts += seconds if not label.startswith(" ") else 0.0
        print(f"    {label:<55} {seconds:7.2f} s {seconds / total:6.1%}")
    rest = total - parts
    print(f"    {'the rest (fastai events, callbacks, Recorder, progress)':<55} {rest:7.2f} s {rest / total:6.1%}")


def measure(folder: Path, batch_size: int, args) -> dict:
    n_batches = args.steps
    data = prepare_data(folder, dataset_type="CycleGAN", batch_size=batch_size, val_split_pct=0.05,
                        transforms=False, num_workers=0, seed=0)
    data.train.n = n_batches * batch_size  # exactly `steps` full batches per epoch
    model = CycleGAN(data, ngf=args.ngf, ndf=args.ngf, gen_blocks=args.blocks, mixed_precision=args.amp,
                     working_dir=Path(tempfile.mkdtemp()))
    timer = TrainTimer()
    model.learn.add_cb(timer)
    batches = [(a.as_subclass(torch.Tensor).clone(), b.as_subclass(torch.Tensor).clone()) for a, b in data.train]
    step, nets = bare_step(data.n_bands_a, data.n_bands_b, ngf=args.ngf, blocks=args.blocks, device=data.device,
                           amp=args.amp, identity=model.config["identity"])
    if parameters(nets) != parameters(model.networks.values()):
        raise AssertionError("the bare loop's networks differ from the model's")
    # --profile: also the bare loop on the batches as fastai delivers them (TensorImage)
    wrapped = [(TensorImage(a), TensorImage(b)) for a, b in batches] if args.profile else None
    model.fit(1, checkpoint=False, one_cycle=False)  # warm-up of both
    step(*batches[0])
    fit, bare, bare_wrapped = [], [], []
    for _ in range(args.repeat):  # alternate: the machine's speed drifts
        model.fit(1, checkpoint=False, one_cycle=False)
        fit.append(timer.rate())
        bare.append(bare_rate(step, batches, data.device, warm_up=False))
        if wrapped:
            bare_wrapped.append(bare_rate(step, wrapped, data.device, warm_up=False))
    loader = throughput(data, n_batches)
    if args.profile:
        print(f"  bare loop on TensorImage batches: {np.median(bare_wrapped):.2f} img/s "
              f"({', '.join(f'{x:.2f}' for x in bare_wrapped)})")
        profile_fit(model)
    return {"fit": fit, "bare": bare, "loader": loader, "params": parameters(nets),
            "identity": model.config["identity"], "bands": (data.n_bands_a, data.n_bands_b)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="chip size, px")
    parser.add_argument("--batch", default="1,4", help="batch sizes, comma-separated")
    parser.add_argument("--ngf", type=int, default=32, help="ngf = ndf")
    parser.add_argument("--blocks", type=int, default=6, help="residual blocks per generator")
    parser.add_argument("--steps", type=int, default=10, help="batches per timed epoch")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds")
    parser.add_argument("--same-bands", action="store_true", help="domain B multispectral: identity loss on")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more fit epoch")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's); 1 on a CPU other jobs share")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.amp and not torch.cuda.is_available():
        parser.error("--amp needs CUDA: the model's mixed precision runs on CUDA only.")
    folder = build_folder(args.size, args.same_bands, Path(tempfile.gettempdir()) /
                          f"toolkit_bench_cyclegan_{args.size}{'_ms' if args.same_bands else ''}")
    print(describe_device(args.amp))
    rows = []
    for bs in (int(b) for b in args.batch.split(",")):
        r = measure(folder, bs, args)
        if not rows:
            print(f"A {r['bands'][0]} bands <-> B {r['bands'][1]} bands, {args.size} px, ngf = ndf = {args.ngf}, "
                  f"{args.blocks} blocks ({r['params'] / 1e6:.2f} M parameters), identity loss "
                  f"{'on' if r['identity'] else 'off'}; {args.steps} batches a round, {args.repeat} rounds, medians")
        fit, bare = np.median(r["fit"]), np.median(r["bare"])
        rows.append((bs, fit, bare, r))
        print(f"batch {bs}: fit {fit:.2f} img/s ({', '.join(f'{x:.2f}' for x in r['fit'])}), bare {bare:.2f} img/s "
              f"({', '.join(f'{x:.2f}' for x in r['bare'])}), loader alone {r['loader']:.0f} img/s", flush=True)
    print(f"\n{'batch':>6} {'fit img/s':>10} {'bare img/s':>11} {'overhead':>9}")
    for bs, fit, bare, _ in rows:
        print(f"{bs:>6} {fit:>10.2f} {bare:>11.2f} {1 - fit / bare:>9.1%}")


if __name__ == "__main__":
    main()

"""Training images/s of Pix2Pix.fit against a bare PyTorch loop over the same two networks.

256 px chips (3 uint16 bands -> 1 band, the data_loading.py folder), paper-sized networks
(ngf 64, ndf 64), batch sizes 1 and 8, same device, in the same run:

- wrapper: ``Pix2Pix(data).fit(2)``, timing the training phase of the second epoch (the
  first warms up), loader included;
- bare loop: the same G and D step (BCE + 100 L1, Adam (0.5, 0.999)) over the same batches,
  already in memory, after one warm-up step.

    .venv/bin/python benchmarks/train_speed.py [steps_per_epoch] [--amp]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from data_loading import build_folder  # noqa: E402
from timing import TrainTimer, bare_rate, describe_device  # noqa: E402

from toolkit import Pix2Pix, prepare_data  # noqa: E402
from toolkit.models import PatchDiscriminator, UNetGenerator, init_weights  # noqa: E402


def subset(folder: Path, n: int, dest: Path) -> Path:
    """A folder with the first ``n`` pairs of ``folder`` (links), and its .emd statistics."""
    if dest.exists():
        shutil.rmtree(dest)
    for sub in ("images", "images2"):
        (dest / sub).mkdir(parents=True)
        for chip in sorted((folder / sub).glob("*.tif"))[:n]:
            (dest / sub / chip.name).symlink_to(chip)
    shutil.copy(folder / "esri_model_definition.emd", dest)
    return dest


def bare_loop(batches, n_in, n_out, device, amp: bool) -> float:
    g = init_weights(UNetGenerator(n_in, n_out, depth=7, ngf=64)).to(device)
    d = init_weights(PatchDiscriminator(n_in + n_out, ndf=64)).to(device)
    g_opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")

    def step(a, b):
        with autocast:
            fake = g(a)
            d.requires_grad_(True)
            d_opt.zero_grad()
            real_l, fake_l = d(torch.cat([a, b], 1)), d(torch.cat([a, fake.detach()], 1))
            d_loss = 0.5 * (bce(real_l, torch.ones_like(real_l)) + bce(fake_l, torch.zeros_like(fake_l)))
        d_loss.backward()
        d_opt.step()
        d.requires_grad_(False)
        g_opt.zero_grad()
        with autocast:
            logits = d(torch.cat([a, fake], 1))
            g_loss = bce(logits, torch.ones_like(logits)) + 100 * F.l1_loss(fake, b)
        g_loss.backward()
        g_opt.step()

    return bare_rate(step, batches, device)


def main(steps: int, amp: bool) -> None:
    folder = Path(tempfile.gettempdir()) / "toolkit_bench_5000"
    if not (folder / "map.txt").is_file():
        build_folder(folder)
    print(describe_device(amp))
    print(f"{'batch':>6} {'fit img/s':>10} {'bare img/s':>11} {'overhead':>9}")
    for bs in (1, 8):
        sub = subset(folder, steps * bs + bs, Path(tempfile.gettempdir()) / f"toolkit_bench_sub{bs}")
        data = prepare_data(sub, batch_size=bs, val_split_pct=bs / (steps * bs + bs), transforms=False,
                            num_workers=0)
        model = Pix2Pix(data, ngf=64, ndf=64, mixed_precision=amp)
        timer = TrainTimer()
        model.learn.add_cb(timer)
        model.fit(2, checkpoint=False, one_cycle=False)
        fit_rate = timer.rate()
        batches = [(x.clone(), y.clone()) for x, y in data.train]
        bare = bare_loop(batches, data.n_bands_in, data.n_bands_out, data.device, amp)
        print(f"{bs:>6} {fit_rate:>10.2f} {bare:>11.2f} {1 - fit_rate / bare:>9.1%}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 6, "--amp" in sys.argv)

"""The training script tests/test_ddp.py starts under torchrun (not a test module itself).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py \
        MODEL CHIPS OUT [--crash-at STEP] [--resume] [--lr-find]

MODEL is ``pix2pix`` or ``cyclegan``. Each rank trains a tiny model on CHIPS for 2 epochs with
the plain Python API (``fit`` finds torchrun by itself), and writes ``OUT/rank<r>.json``: per
optimizer step, a digest of every network's parameters (generators and discriminators) and of
the batch it trained on, and per epoch the chips of its shard. Then ``save`` writes the model to
``OUT/model`` (rank 0 alone). With ``--crash-at STEP``, rank 1 raises at that step; with
``--resume`` the fit continues the unfinished fit of ``OUT/work`` from its last checkpoint; with
``--lr-find``, ``lr_find`` runs before and after the fit, and the fit keeps every epoch's
checkpoint (``checkpoint="all"``). Every run also checks that ``fit(distributed=False)`` is
refused under torchrun.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from fastai.callback.core import Callback

from toolkit import CycleGAN, Pix2Pix, ddp, prepare_data


class StepDigests(Callback):
    """After each step (both the G and the D step, order after the trainers'), the parameters'
    digest by network, and the digest of the batch."""

    order = 90

    def __init__(self, model, crash_at: int | None) -> None:
        self.model, self.crash_at = model, crash_at
        self.steps: list[dict] = []
        self.shards: list[list[int]] = []

    def before_train(self) -> None:
        self.shards.append(self.learn.dl.shuffle_fn.indices())

    def after_step(self) -> None:
        step = len(self.steps)
        if self.crash_at is not None and step == self.crash_at and torch.distributed.get_rank() == 1:
            raise RuntimeError(f"injected failure on rank 1 at step {step}")
        digests = {}
        for name, net in self.model.networks.items():
            h = hashlib.sha1()
            for p in net.parameters():
                h.update(p.detach().cpu().numpy().tobytes())
            digests[name] = h.hexdigest()
        batch = hashlib.sha1(self.xb[0].detach().cpu().numpy().tobytes()).hexdigest()
        self.steps.append({"params": digests, "batch": batch})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["pix2pix", "cyclegan"])
    parser.add_argument("chips")
    parser.add_argument("out")
    parser.add_argument("--crash-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lr-find", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    torch.manual_seed(0)
    if args.model == "cyclegan":
        data = prepare_data(args.chips, dataset_type="CycleGAN", batch_size=2, num_workers=0)
        model = CycleGAN(data, ngf=8, ndf=8, gen_blocks=1, working_dir=out / "work")
    else:
        data = prepare_data(args.chips, batch_size=2, num_workers=0)
        model = Pix2Pix(data, ngf=8, ndf=8, working_dir=out / "work")
    digests = StepDigests(model, args.crash_at)
    suggestions = []
    if args.lr_find:  # rank 0 searches, every rank gets its suggestion; before and after a fit
        suggestions.append(model.lr_find(allow_plot=False, num_it=5))
    try:
        model.fit(1, distributed=False)
    except ValueError as err:  # torchrun's copies would write the same files
        refused = str(err)
    else:
        refused = None
    model.fit(2, callbacks=[digests], resume=args.resume, checkpoint="all" if args.lr_find else True)
    if args.lr_find:
        suggestions.append(model.lr_find(allow_plot=False, num_it=5))
    emd = model.save(out / "model", compute_metrics=False)
    record = {"rank": torch.distributed.get_rank(), "world_size": ddp.world_size(), "steps": digests.steps,
              "shards": digests.shards, "n_train": len(data.train_ds), "emd": str(emd),
              "history": model.history, "lr_suggestions": suggestions, "refused": refused,
              "final": {n: hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
                        for n, net in model.networks.items()}}
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    sys.exit(main())

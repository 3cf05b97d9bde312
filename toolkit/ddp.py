"""Data-parallel training under ``torchrun`` (PyTorch ``DistributedDataParallel``).

Launch the training script, or the ``toolkit train`` command, with ``torchrun``; ``fit`` finds
the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...) and
trains data-parallel, with nothing else to change::

    torchrun --standalone --nproc_per_node=4 -m toolkit train chips --out models/buildings
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py

Per process (one per GPU, or per CPU socket with the ``gloo`` backend):

* the model is built and initialised as in one process, then rank 0's weights are broadcast;
* each process trains on its own shard of the training chips: a permutation seeded by the epoch
  (the same on every rank), padded to a multiple of the world size and dealt out, so every rank
  runs the same number of steps (:class:`Shard`); its random draws (crops, flips, CycleGAN's
  partner chips) come from its own stream, seeded by the fit, the epoch and the rank;
* the Learner's model (the generator or generators) is wrapped in
  ``DistributedDataParallel``, which averages its gradients during the backward pass. The
  discriminators have their own optimizer and step, run with ``requires_grad`` toggled on and
  off inside each batch, which DDP's reducer does not allow; their gradients are averaged with
  one ``all_reduce`` before their optimizer step, and their buffers follow rank 0's
  (:func:`average_gradients`, :func:`broadcast_modules`), as DDP does for the generator;
* every process validates the whole validation set, and rank 0's epoch record (losses,
  metrics) is broadcast, so early stopping and the best epoch are decided alike everywhere;
* only rank 0 shows progress, writes checkpoints and saves the model; the others wait for it.

Batch size and learning rate: ``batch_size`` is per process, so one step averages the gradients
of ``batch_size * world_size`` chips (the global batch). The learning rate is not rescaled for
you: the GAN recipes are tuned at batch 1 to 8, and at global batches of 32 and more the linear
scaling rule (lr x world size, with the one-cycle warm-up) is the usual starting point.

A rank that fails raises in its own process; ``torchrun`` then stops the other ranks and exits
non-zero with the failed rank's error. Collective calls time out after ``TOOLKIT_DDP_TIMEOUT``
seconds (default 1800), so a rank that hangs without exiting cannot block the job for ever.

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
from collections.abc import Iterable, Sequence
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from toolkit._fastai import quiet_import

with quiet_import():
    from fastai.callback.core import Callback
    from fastcore.foundation import L

__all__ = ["DataParallel", "RecordSync", "Shard", "average_gradients", "barrier",
           "broadcast_modules", "broadcast_object", "fastai_single_process", "init_distributed", "is_main",
           "launched", "local_device", "revert_sync_batchnorm", "world_size"]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def world_size() -> int:
    """The number of processes training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that logs, writes checkpoints and saves."""
    return rank() == 0


def local_device() -> torch.device:
    """The device this process trains on: ``cuda:LOCAL_RANK`` under ``torchrun`` with GPUs (made
    the current CUDA device), else fastai's default (the first GPU, or the CPU)."""
    if launched() and torch.cuda.is_available():
        device = torch.device("cuda", _env_int("LOCAL_RANK", 0))
        torch.cuda.set_device(device)
        return device
    from fastai.torch_core import default_device

    return default_device()


def init_distributed() -> bool:
    """Join the process group ``torchrun`` describes, once (``nccl`` on GPUs, ``gloo`` on CPUs);
    ``False`` when this process was not launched as one of several."""
    if not launched():
        return False
    if not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed: data-parallel training "
                               "under torchrun needs it.")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            local_device()
        timeout = timedelta(seconds=_env_int("TOOLKIT_DDP_TIMEOUT", 1800))
        dist.init_process_group(backend=backend, timeout=timeout)
        atexit.register(_leave)  # a group left open makes gloo/nccl abort at interpreter exit
    return True


@contextlib.contextmanager
def fastai_single_process():
    """Hide torchrun's ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` from fastai for a while.

    fastai switches to its own distributed behaviour whenever ``WORLD_SIZE`` > 1 (the Recorder
    gathers every batch's loss from all ranks, ``Learner.save`` writes on rank 0 only and
    ``Learner.load`` waits at a barrier): right inside a data-parallel ``fit``, wrong for work
    that one rank does alone (``lr_find`` runs on rank 0)."""
    saved = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """The inverse of ``nn.SyncBatchNorm.convert_sync_batchnorm``: plain ``BatchNorm2d`` layers
    holding the same parameters and statistics (children replaced in place)."""
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        out = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats).to(module.running_mean.device
                                                            if module.running_mean is not None else None)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the same Parameters: optimizers keep them
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` as rank ``src`` has it, on every rank (picklable objects)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_modules(modules: Iterable[nn.Module], src: int = 0, *, buffers_only: bool = False) -> None:
    """Give every rank rank ``src``'s parameters and buffers (in place); with ``buffers_only``
    the buffers alone (batch-norm running statistics), as DDP does at each forward."""
    if world_size() == 1:
        return
    for module in modules:
        for t in [*([] if buffers_only else module.parameters()), *module.buffers()]:
            dist.broadcast(t.data, src=src)


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the ranks: one ``all_reduce`` per dtype
    over the flattened gradients. Parameters without a gradient count as zero."""
    n = world_size()
    if n == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


class Shard:
    """The training chips of one rank for an epoch: a permutation of all ``n`` chips seeded by
    ``seed + epoch`` (so every rank draws the same one, without communicating, and a resumed fit
    the same as the interrupted one), padded by wrapping around to a multiple of the world size,
    then every ``world``-th chip from ``rank`` on. Every rank gets ``ceil(n / world)`` chips.

    Plugged into a fastai loader as its ``shuffle_fn``: the loader built with ``n=len(shard)``
    asks for its order each epoch and gets this rank's chips."""

    def __init__(self, n: int, rank: int, world: int, seed: int) -> None:
        self.n, self.rank, self.world, self.seed = n, rank, world, seed
        self.epoch = 0

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def indices(self) -> list[int]:
        order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        padded = np.resize(order, len(self) * self.world)  # wraps around
        return padded[self.rank::self.world].tolist()

    def __call__(self, idxs=None) -> list[int]:
        return self.indices()


class DataParallel(Callback):
    """fastai callback: train the Learner's model data-parallel over the process group (see the
    module docstring). ``trainer`` is the model's :class:`toolkit.models.gan.DiscriminatorStep`,
    whose discriminators get their gradients averaged. Runs before the progress bar (order 11)
    so that it counts this rank's batches."""

    order = 11

    def __init__(self, trainer, *, seed: int = 0, sync_bn: bool = False) -> None:
        self.trainer, self.seed, self.sync_bn = trainer, seed, sync_bn
        self.shard: Shard | None = None
        self._dl = None

    def before_fit(self) -> None:
        self.skip = hasattr(self.learn, "lr_finder")
        if self.skip:
            return
        device = next(self.learn.model.parameters()).device
        discriminators = list(self.trainer.discriminators)
        if self.sync_bn:
            if device.type != "cuda":
                raise ValueError("sync_bn=True needs GPUs: torch's SyncBatchNorm does not run on "
                                 "the CPU. Train without it.")
            self.learn.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.learn.model)
            for d in discriminators:
                nn.SyncBatchNorm.convert_sync_batchnorm(d)  # BN layers are children: in place
        broadcast_modules(discriminators)  # DDP broadcasts the generator's itself
        self.learn.model = nn.parallel.DistributedDataParallel(
            self.learn.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.trainer.grad_sync = self._sync_discriminators
        train = self.learn.dls.train
        self.shard = Shard(len(train.dataset), rank(), world_size(), self.seed)
        # the loader draws this rank's chips in the shard's order (fastai's shuffle_fn hook)
        self._dl = train.new(n=len(self.shard), shuffle=True, shuffle_fn=self.shard)

    def _sync_discriminators(self, params: Sequence[torch.Tensor]) -> None:
        average_gradients(params)
        broadcast_modules(self.trainer.discriminators, buffers_only=True)

    def before_train(self) -> None:
        if not self.skip:
            self.shard.epoch = int(self.epoch)
            self.learn.dl = self._dl
            # Each rank its own random stream for the epoch (crops, flips, CycleGAN's random
            # partner chips, image pools): seeded by (seed, epoch, rank), so the ranks differ and
            # a resumed fit draws as the interrupted one did. After the checkpoint's restore of
            # rank 0's states at a resumed fit's first epoch (before_epoch).
            seed = int(np.random.SeedSequence([self.seed, int(self.epoch), rank()]).generate_state(1)[0])
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)

    def after_fit(self) -> None:
        self.unwrap()

    def unwrap(self) -> None:
        """The Learner's model and the discriminators as they were before the fit (``fit`` also
        calls this when the fit failed, which skips ``after_fit``). Idempotent."""
        if self.learn is None or not isinstance(self.learn.model, nn.parallel.DistributedDataParallel):
            return
        self.learn.model = self.learn.model.module
        self.trainer.grad_sync = None
        if self.sync_bn:  # outside a fit, batch norm is the plain kind again (no collectives)
            self.learn.model = revert_sync_batchnorm(self.learn.model)
            for d in self.trainer.discriminators:
                revert_sync_batchnorm(d)


class RecordSync(Callback):
    """fastai callback: make every rank record the same epoch. The discriminator step's training
    losses are averaged over the ranks (fastai's Recorder already averages the training loss);
    the Recorder's epoch values (the validation loss and metrics) are broadcast from rank 0, before the checkpoint and
    early stopping read them; after the fit, rank 0's weights (the best epoch's, restored from
    its checkpoint) are broadcast. Order 66: after the Recorder (50) and the Checkpoint (65)."""

    order = 66

    def __init__(self, trainer, networks: Sequence[nn.Module]) -> None:
        self.trainer, self.networks = trainer, list(networks)

    def before_fit(self) -> None:
        self.skip = hasattr(self.learn, "lr_finder")

    def after_train(self) -> None:
        losses = self.trainer.epoch_losses
        if self.skip or not losses:
            return
        values = torch.tensor(list(losses.values()), dtype=torch.float64)
        dist.all_reduce(values)  # equal shards: the mean of the ranks' means is the epoch's mean
        self.trainer.epoch_losses = dict(zip(losses, (values / world_size()).tolist()))

    def after_validate(self) -> None:
        if not self.skip:
            self.recorder.log = L(broadcast_object([_item(v) for v in self.recorder.log]))

    def after_fit(self) -> None:
        if not self.skip:
            broadcast_modules(self.networks)


def _item(value):
    return value.item() if torch.is_tensor(value) else value

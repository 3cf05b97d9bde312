"""What the training benchmarks share: timing a fit's training phase and a bare loop's steps.

    from timing import TrainTimer, bare_rate, describe_device
"""

from __future__ import annotations

import time

import torch

from toolkit._fastai import quiet_import

with quiet_import():
    from fastai.callback.core import Callback


class TrainTimer(Callback):
    """Seconds and images of the training phase of each epoch (validation excluded; the loader,
    fastai's machinery and the toolkit's callbacks included). ``order`` 99: after the rest."""

    order = 99

    def __init__(self):
        self.seconds, self.images = [], []

    def before_train(self):
        self._start, self._n = time.perf_counter(), 0

    def after_batch(self):
        if self.training:
            self._n += len(self.xb[0])

    def after_train(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)
        self.images.append(self._n)

    def rate(self, epoch: int = -1) -> float:
        """Images per second of one timed epoch (the last by default)."""
        return self.images[epoch] / self.seconds[epoch]


def bare_rate(step, batches, device: torch.device, warm_up: bool = True) -> float:
    """Images per second of ``step(*batch)`` over ``batches`` (already in memory); with
    ``warm_up``, the first batch runs once untimed before the timed pass over all of them."""
    if warm_up:
        step(*batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        step(*batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(batch[0]) for batch in batches) / (time.perf_counter() - start)


def describe_device(amp: bool) -> str:
    device = f"cuda {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
            f"mixed precision {'on' if amp else 'off'}")

"""Checkpoints of a pix2pix fit: both networks and both optimizers, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toolkit._fastai import quiet_import
from toolkit._fs import atomic_file

with quiet_import():
    from fastai.callback.core import Callback

__all__ = ["Checkpoint", "load_checkpoint", "monitor_comparison", "plain_state"]


def monitor_comparison(monitor: str):
    """Lower is better for losses and errors, higher for other metrics (as fastai's trackers)."""
    return np.less if "loss" in monitor or "error" in monitor or monitor == "l1" else np.greater


def plain_state(obj):
    """``obj`` with numpy scalars, tuples and fastcore lists turned into Python numbers and lists,
    so that ``torch.load(weights_only=True)`` can read it back; tensors are kept."""
    if torch.is_tensor(obj):
        return obj
    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "L":
        return [plain_state(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from; run fit() with "
                                "checkpoint=True first.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err}).") from err


class Checkpoint(Callback):
    """After every epoch: ``<folder>/<name>_last.pth`` for ``resume``, and ``<name>_best.pth``
    when ``monitor`` improved. After the fit, the best epoch's weights are restored.

    ``state()`` (a function of the model) gives what to save: networks, optimizers, history.
    """

    order = 65  # after History (61)

    def __init__(self, folder: Path, name: str, monitor: str, state, restore, *, start_epoch: int = 0,
                 best: float | None = None) -> None:
        self.folder, self.stem, self.monitor = Path(folder), name, monitor
        self.state, self.restore = state, restore
        self.start_epoch = start_epoch
        self.comp = monitor_comparison(monitor)
        self.best = best
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.folder / f"{self.stem}_last.pth"

    @property
    def best_path(self) -> Path:
        return self.folder / f"{self.stem}_best.pth"

    def before_fit(self) -> None:
        if self.start_epoch == 0:  # a new fit: files of an earlier one must not be restored
            self.last_path.unlink(missing_ok=True)
            self.best_path.unlink(missing_ok=True)
        names = list(self.recorder.metric_names[1:])
        if self.monitor not in names:
            raise ValueError(f"monitor {self.monitor!r} is not recorded; choose one of "
                             f"{[n for n in names if n != 'time']}.")
        self.idx = names.index(self.monitor)

    def after_epoch(self) -> None:
        if self.epoch < self.start_epoch or hasattr(self.learn, "lr_finder"):
            return
        value = float(self.recorder.values[-1][self.idx])
        improved = self.best is None or bool(self.comp(value, self.best))
        if improved:
            self.best, self.best_epoch = value, int(self.epoch)
        state = self.state() | {"epoch": int(self.epoch), "monitor": self.monitor, "best": self.best}
        self._save(state, self.last_path)
        if improved:
            self._save(state, self.best_path)

    def after_fit(self) -> None:
        if self.best is not None and self.best_path.is_file():
            self.restore(load_checkpoint(self.best_path), optimizers=False)

    @staticmethod
    def _save(state: dict, path: Path) -> None:
        with atomic_file(path) as tmp:
            torch.save(plain_state(state), tmp)

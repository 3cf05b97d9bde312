"""``fit(tensorboard=True)``: a training log that TensorBoard shows, as arcgis.learn writes one.

Per epoch, :class:`TensorBoardLog` writes to ``<working_dir>/training_log/<run>/`` with
``torch.utils.tensorboard.SummaryWriter``:

* a scalar for every value the fastai Recorder logged: ``train_loss``, ``valid_loss``, the
  model's losses (``gen_loss``, ``l1_loss``, ``d_loss``... under ``losses/``) and the validation
  metrics monitored (``psnr``, ``ssim``... under ``metrics/``);
* ``learning_rate``: the generator's learning rate at the end of the epoch;
* ``show_results``: the model's ``show_results`` figure on the validation chips, as an image.

See the run with ``tensorboard --logdir <working_dir>/training_log``. Under ``torchrun`` only
rank 0 writes (:func:`toolkit.ddp.is_main`).

Layer: training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt

from toolkit import ddp
from toolkit._fs import check_writable_folder
from toolkit._fastai import quiet_import

with quiet_import():
    from fastai.callback.core import Callback

__all__ = ["LOG_FOLDER", "TensorBoardLog", "scalar_tag"]

LOG_FOLDER = "training_log"
_TOP_LEVEL = ("train_loss", "valid_loss")


def scalar_tag(name: str, loss_names: tuple[str, ...] | list[str]) -> str:
    """The TensorBoard tag of a recorded value: ``train_loss`` and ``valid_loss`` as they are,
    the model's own losses under ``losses/``, anything else (validation metrics) under ``metrics/``."""
    if name in _TOP_LEVEL:
        return name
    return f"losses/{name}" if name in loss_names else f"metrics/{name}"


class TensorBoardLog(Callback):
    """Writes each epoch's record (the one :class:`toolkit.models.gan.History` has just added to
    the model's history: recorded values and learning rate) and a results figure to TensorBoard.

    Args:
        log_dir: the run's folder (created on the first write).
        records: the model's history, which ``History`` appends to.
        loss_names: the model's recorded loss names (tagged ``losses/...``).
        figure: ``figure()`` -> a matplotlib figure of results (``show_results``), or ``None`` to
            write none; closed after it is written.
    """

    order = 62  # after History (61) has added the epoch's record

    def __init__(self, log_dir: str | Path, records: list[dict], loss_names: tuple[str, ...] | list[str],
                 figure: Callable[[], object] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.records = records
        self.loss_names = tuple(loss_names)
        self.figure = figure
        self.writer = None

    def before_fit(self) -> None:
        self.skip = hasattr(self.learn, "lr_finder") or not ddp.is_main()
        if not self.skip and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # else the writer's thread fails later, in the background, with a traceback
            check_writable_folder(self.log_dir, role="TensorBoard log folder",
                                  hint="Make it writable, or fit without tensorboard=True.")
            self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def after_epoch(self) -> None:
        step = int(self.epoch)
        if self.skip or not self.records or self.records[-1]["epoch"] != step:
            return  # an epoch History did not record (skipped when resuming)
        for name, value in self.records[-1].items():
            if name != "epoch" and math.isfinite(value):
                tag = "learning_rate" if name == "lr" else scalar_tag(name, self.loss_names)
                self.writer.add_scalar(tag, value, step)
        if self.figure is not None:
            fig = self.figure()
            try:
                self.writer.add_figure("show_results", fig, step, close=False)
            finally:
                plt.close(fig)
        self.writer.flush()

    def after_fit(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the event file (also called by ``fit`` when the fit failed, which skips after_fit)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

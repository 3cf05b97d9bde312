"""The pix2pix training step on fastai: a plain Learner over the generator, plus a callback that
owns the discriminator.

fastai's ``GANLearner`` cannot train a faithful pix2pix (no conditional discriminator, one
optimizer shared by both nets, G or D per batch instead of both). Here, per batch (DESIGN 4):

1. the Learner runs ``fake = G(A)``;
2. ``GANTrainer.after_pred`` runs the D step on the same batch, with D's own Adam:
   ``0.5 * (BCE(D(A, B), 1) + BCE(D(A, fake.detach()), 0))``;
3. ``Pix2PixLoss`` gives the G loss with D frozen:
   ``gan_weight * BCE(D(A, fake), 1) + lambda_l1 * L1(fake, B)``, which the Learner backpropagates
   into G only and steps with G's Adam.

In validation the loss is the plain L1, so fastai's ``valid_loss`` is the validation L1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolkit._fastai import quiet_import

with quiet_import():
    from fastai.callback.core import Callback
    from fastai.learner import ValueMetric

__all__ = ["GANTrainer", "History", "Pix2PixLoss", "balanced_l1", "loss_metrics"]


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class GANTrainer(Callback):
    """Owns the discriminator and its optimizer; runs the D step before each G step.

    ``gan_weight=0`` turns it into a plain L1 U-Net (no D step). D follows G's learning rate
    (so one-cycle or linear decay shape both), with Adam betas (0.5, 0.999). Runs after fastai's
    ``MixedPrecision`` (order 10), inside its autocast; with fp16 it scales D's loss with its own
    ``GradScaler``.
    """

    order = 20

    def __init__(self, discriminator: nn.Module, *, lambda_l1: float = 100.0, gan_weight: float = 1.0,
                 betas: tuple[float, float] = (0.5, 0.999), class_balance: bool = False) -> None:
        self.discriminator = discriminator.requires_grad_(False)  # trainable only in the D step
        self.lambda_l1 = lambda_l1
        self.gan_weight = gan_weight
        self.l1 = balanced_l1 if class_balance else F.l1_loss
        self.d_opt = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=betas)
        self.d_scaler: torch.amp.GradScaler | None = None
        self.l1_only = False  # lr_find and the plain-L1 baseline
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self.epoch_losses: dict[str, float] = {"gen_loss": float("nan"), "l1_loss": float("nan"),
                                               "d_loss": float("nan")}

    @property
    def adversarial(self) -> bool:
        return self.gan_weight > 0 and not self.l1_only and not hasattr(self.learn, "lr_finder")

    def before_fit(self) -> None:
        device = next(self.learn.model.parameters()).device
        self.discriminator.to(device)
        for state in self.d_opt.state.values():  # a restored optimizer state follows D's device
            for k, v in state.items():
                if torch.is_tensor(v):
                    state[k] = v.to(device)
        scaler = getattr(self.learn, "scaler", None)
        self.d_scaler = (torch.amp.GradScaler("cuda") if scaler is not None and scaler.is_enabled()
                         else None)

    def before_train(self) -> None:
        self.discriminator.train()
        self._sums, self._count = {}, 0

    def before_validate(self) -> None:
        self.discriminator.eval()

    def after_pred(self) -> None:
        if not self.training or not self.adversarial:
            return
        a, b, fake = self.xb[0], self.yb[0], self.pred.detach()
        for group in self.d_opt.param_groups:  # D follows G's scheduled learning rate
            group["lr"] = self.learn.opt.hypers[-1]["lr"]
        d = self.discriminator
        d.requires_grad_(True)
        self.d_opt.zero_grad(set_to_none=True)
        d_loss = 0.5 * (_bce(d(torch.cat([a, b], 1)), True) + _bce(d(torch.cat([a, fake], 1)), False))
        if self.d_scaler is not None:
            self.d_scaler.scale(d_loss).backward()
            self.d_scaler.step(self.d_opt)
            self.d_scaler.update()
        else:
            d_loss.backward()
            self.d_opt.step()
        d.requires_grad_(False)  # frozen for the G step that follows
        self._add("d_loss", d_loss)

    def g_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        l1 = self.l1(pred, target)
        if not self.training:
            return l1
        self._add("l1_loss", l1)
        if not self.adversarial:
            return self.lambda_l1 * l1
        gan = _bce(self.discriminator(torch.cat([self.xb[0], pred], 1)), True)
        self._add("gen_loss", gan)
        return self.gan_weight * gan + self.lambda_l1 * l1

    def after_batch(self) -> None:
        if self.training:
            self._count += 1

    def after_train(self) -> None:
        # One host sync per epoch, not per batch.
        n = max(self._count, 1)
        self.epoch_losses = {k: (self._sums[k].item() / n if k in self._sums else float("nan"))
                             for k in ("gen_loss", "l1_loss", "d_loss")}

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self._sums[name] = self._sums[name] + value if name in self._sums else value


def balanced_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 for mask targets (+1 class, -1 elsewhere) in which, in every target band, the class's
    pixels and the other pixels weigh half each (all of it for the part that is present).

    With sparse classes (buildings cover 2% of the Atlanta tile) the plain L1 is smallest when
    the generator predicts background everywhere, and its gradient, the same for every pixel,
    keeps pushing the Tanh into saturation at -1; balanced, the class counts as much as the rest.
    """
    err = (pred - target).abs()
    positive = target > 0
    n_pos = positive.sum(dim=(0, 2, 3), keepdim=True)
    n_neg = positive.numel() // positive.shape[1] - n_pos
    half = torch.where((n_pos > 0) & (n_neg > 0), 0.5, 1.0)
    weights = torch.where(positive, half / n_pos.clamp(min=1), half / n_neg.clamp(min=1))
    return (err * weights).sum() / target.shape[1]


class Pix2PixLoss:
    """The Learner's loss function: the G loss of :class:`GANTrainer` in training, L1 in validation."""

    def __init__(self, trainer: GANTrainer) -> None:
        self.trainer = trainer

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.trainer.g_loss(pred, target)


def loss_metrics(trainer: GANTrainer) -> list[ValueMetric]:
    """fastai metrics that report the training epoch's mean GAN, L1 and D losses."""
    return [ValueMetric(lambda k=k: trainer.epoch_losses[k], k) for k in ("gen_loss", "l1_loss", "d_loss")]


class History(Callback):
    """Keeps one record per epoch (losses and metrics as the Recorder logged them) in ``records``,
    a list the model owns, so history survives resumed fits and is saved with the model."""

    order = 61  # after the Recorder (50) has stored the epoch's values

    def __init__(self, records: list[dict], start_epoch: int = 0) -> None:
        self.records = records
        self.start_epoch = start_epoch

    def after_epoch(self) -> None:
        if self.epoch < self.start_epoch or hasattr(self.learn, "lr_finder"):
            return  # an epoch skipped when resuming
        names = self.recorder.metric_names[1:-1] if self.recorder.add_time else self.recorder.metric_names[1:]
        record = {"epoch": int(self.epoch)}
        record.update({n: _plain(v) for n, v in zip(names, self.recorder.values[-1])})
        record["lr"] = float(self.learn.opt.hypers[-1]["lr"])
        self.records.append(record)


def _plain(value) -> float:
    return float(value.item() if torch.is_tensor(value) else value)

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

Layer: training.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from toolkit._fastai import quiet_import

with quiet_import():
    from fastai.callback.core import Callback
    from fastai.learner import ValueMetric

__all__ = ["ArcGISGANTrainer", "DiscriminatorStep", "GANTrainer", "History", "PerceptualLoss", "Pix2PixLoss", "balanced_l1",
           "loss_metrics"]


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class DiscriminatorStep(Callback):
    """The mechanics every GAN of the toolkit shares, for a Learner whose model is the
    generator(s): the discriminator(s) and their own optimizer, which follows the generator's
    scheduled learning rate (one-cycle or linear decay shape both), a ``GradScaler`` of their own
    under fp16, ``requires_grad`` toggled so the discriminators learn only in their step, and the
    training epoch's mean of each named loss (``epoch_losses``, one host sync per epoch).

    Subclasses give ``loss_names`` and run their D step with :meth:`d_update`. Runs after
    fastai's ``MixedPrecision`` (order 10).
    """

    order = 20
    loss_names: tuple[str, ...] = ()

    def __init__(self, discriminators: nn.Module | list[nn.Module], *, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999)) -> None:
        nets = list(discriminators) if isinstance(discriminators, (list, tuple)) else [discriminators]
        self.discriminators = [d.requires_grad_(False) for d in nets]  # trainable only in the D step
        # one Adam over every discriminator, as the reference implementations do
        self.d_opt = torch.optim.Adam([p for d in nets for p in d.parameters()], lr=lr, betas=betas)
        self.d_scaler: torch.amp.GradScaler | None = None
        self.l1_only = False  # lr_find and plain-L1 baselines: the reconstruction terms alone
        # set by toolkit.ddp.DataParallel: averages the discriminators' gradients over the ranks
        self.grad_sync = None
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self.epoch_losses: dict[str, float] = {k: float("nan") for k in self.loss_names}

    @property
    def adversarial(self) -> bool:
        return not self.l1_only and not hasattr(self.learn, "lr_finder")

    def before_fit(self) -> None:
        device = next(self.learn.model.parameters()).device
        for d in self.discriminators:
            d.to(device)
        for state in self.d_opt.state.values():  # a restored optimizer state follows D's device
            for k, v in state.items():
                if torch.is_tensor(v):
                    state[k] = v.to(device)
        scaler = getattr(self.learn, "scaler", None)
        self.d_scaler = (torch.amp.GradScaler("cuda") if scaler is not None and scaler.is_enabled()
                         else None)

    def before_batch(self) -> None:
        # fastai's TensorImage routes every operation through its __torch_function__ (about 4%
        # of a CPU step, benchmarks/README.md); the networks and losses need plain tensors
        self.learn.xb = tuple(_plain_tensor(x) for x in self.xb)
        self.learn.yb = tuple(_plain_tensor(y) for y in self.yb)

    def before_train(self) -> None:
        for d in self.discriminators:
            d.train()
        self._sums, self._count = {}, 0

    def before_validate(self) -> None:
        for d in self.discriminators:
            d.eval()

    def d_update(self, loss_fn) -> torch.Tensor:
        """One optimizer step of the discriminators on ``loss_fn()`` (computed with their
        gradients on, at the generator's current learning rate); returns the loss."""
        for group in self.d_opt.param_groups:
            group["lr"] = self.learn.opt.hypers[-1]["lr"]
        for d in self.discriminators:
            d.requires_grad_(True)
        try:
            self.d_opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            if self.d_scaler is not None:
                self.d_scaler.scale(loss).backward()
                self._sync_grads()
                self.d_scaler.step(self.d_opt)
                self.d_scaler.update()
            else:
                loss.backward()
                self._sync_grads()
                self.d_opt.step()
        finally:
            for d in self.discriminators:
                d.requires_grad_(False)  # frozen for the G step that follows
        return loss

    def _sync_grads(self) -> None:
        if self.grad_sync is not None:  # scaled gradients average alike; an inf reaches every rank
            self.grad_sync([p for group in self.d_opt.param_groups for p in group["params"]])

    def after_batch(self) -> None:
        if self.training:
            self._count += 1

    def after_train(self) -> None:
        n = max(self._count, 1)
        self.epoch_losses = {k: (self._sums[k].item() / n if k in self._sums else float("nan"))
                             for k in self.loss_names}

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self._sums[name] = self._sums[name] + value if name in self._sums else value

    # what a checkpoint keeps besides the optimizer (CycleGAN's image pools)
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


class GANTrainer(DiscriminatorStep):
    """Pix2pix's D step: owns the conditional discriminator; runs its step before each G step.

    ``gan_weight=0`` turns it into a plain L1 U-Net (no D step). With fp16 it scales D's loss
    with its own ``GradScaler``.
    """

    loss_names = ("gen_loss", "l1_loss", "d_loss")

    def __init__(self, discriminator: nn.Module, *, lambda_l1: float = 100.0, gan_weight: float = 1.0,
                 betas: tuple[float, float] = (0.5, 0.999), class_balance: bool = False, mask_loss: str = "l1",
                 perceptual: PerceptualLoss | DiscriminatorFeatureLoss | None = None, lambda_perceptual: float = 10.0) -> None:
        if perceptual is not None:  # recorded too: set before the base makes epoch_losses
            self.loss_names = (*GANTrainer.loss_names, "perceptual_loss")
        super().__init__(discriminator, betas=betas)
        self.discriminator = discriminator
        self.lambda_l1 = lambda_l1
        self.gan_weight = gan_weight
        self.l1 = bce_dice if mask_loss == "bce_dice" else balanced_l1 if class_balance else F.l1_loss
        self.perceptual = perceptual
        self.lambda_perceptual = lambda_perceptual

    @property
    def adversarial(self) -> bool:
        return self.gan_weight > 0 and super().adversarial

    def before_fit(self) -> None:
        super().before_fit()
        if isinstance(self.perceptual, PerceptualLoss):  # the VGG features follow the generator's device
            self.perceptual.to(next(self.learn.model.parameters()).device)

    def after_pred(self) -> None:
        if not self.training or not self.adversarial:
            return
        a, b, fake = self.xb[0], self.yb[0], self.pred.detach()
        self._add("d_loss", self.d_update(lambda: self.d_loss(a, b, fake)))

    def d_loss(self, a: torch.Tensor, b: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on a real pair and a generated one (the paper's: BCE)."""
        d = self.discriminator
        return 0.5 * (_bce(d(torch.cat([a, b], 1)), True) + _bce(d(torch.cat([a, fake], 1)), False))

    def fake_logits(self, a: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits for the generated pair, in the generator's step."""
        return self.discriminator(torch.cat([a, pred], 1))

    def g_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        l1 = self.l1(pred, target)
        if not self.training:
            return l1
        self._add("l1_loss", l1)
        loss = self.lambda_l1 * l1
        if self.perceptual is not None and not self.l1_only:
            feature = self.perceptual(pred, target, self.xb[0])
            self._add("perceptual_loss", feature)
            loss = loss + self.lambda_perceptual * feature
        if not self.adversarial:
            return loss
        gan = _bce(self.fake_logits(self.xb[0], pred), True)
        self._add("gen_loss", gan)
        return self.gan_weight * gan + loss


class PerceptualLoss(nn.Module):
    """The feature ("perceptual") loss of Johnson et al. (2016), arcgis.learn's
    ``perceptual_loss``: the mean absolute difference of VGG-16 activations of the prediction and
    the target at ``relu1_2``, ``relu2_2``, ``relu3_3`` and ``relu4_3``, averaged over the four.

    The VGG weights come from a local file (a torchvision ``vgg16`` state dict, e.g. ImageNet's
    ``vgg16-397923af.pth``; its ``features.*`` part is used): nothing is downloaded. The network is
    frozen and stays in eval mode. Images in [-1, 1] of 3 bands (taken as RGB) or 1 band (repeated
    three times) are scaled to [0, 1] and normalised with ImageNet's mean and standard deviation.
    """

    ARCH = "vgg16"
    LAYERS = (3, 8, 15, 22)  # indices of relu1_2, relu2_2, relu3_3, relu4_3 in vgg16().features
    WEIGHTS: tuple[float, ...] | None = None  # per layer; None: the mean
    IMAGENET_SCALING = True  # [-1, 1] -> [0, 1] -> ImageNet's mean and standard deviation
    OPTION = "perceptual_loss"  # the keyword that takes the weights, for messages

    def __init__(self, weights: str | os.PathLike) -> None:
        super().__init__()
        import torchvision

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{self.OPTION} weights {path}: no such file. Pass the path of a "
                                    f"torchvision {self.ARCH} state dict (ImageNet weights), downloaded beforehand.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file: say which and why
            raise ValueError(f"{self.OPTION} weights {path}: not a readable PyTorch state dict ({err}).") from err
        features = getattr(torchvision.models, self.ARCH)(weights=None).features[: self.LAYERS[-1] + 1]
        wanted = features.state_dict()
        found = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} \
            if isinstance(state, dict) else {}
        found = {k: v for k, v in found.items() if k in wanted}
        missing = [k for k in wanted if k not in found or found[k].shape != wanted[k].shape]
        if missing:
            raise ValueError(f"{self.OPTION} weights {path}: not a torchvision {self.ARCH} state dict "
                             f"(features.{missing[0]} missing or of another shape).")
        features.load_state_dict(found)
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @staticmethod
    def check_bands(n_bands: int) -> None:
        """``ValueError`` unless images of ``n_bands`` bands can be compared (1 or 3)."""
        if n_bands not in (1, 3):
            raise ValueError(f"perceptual_loss compares VGG features of RGB images; the target has "
                             f"{n_bands} bands (1 or 3 are supported).")

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.IMAGENET_SCALING:
            x = ((x + 1.0) / 2.0 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.LAYERS:
                out.append(x)
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            wanted = self._activations(target)
        got = self._activations(pred)
        weights = self.WEIGHTS or (1.0 / len(got),) * len(got)
        return sum(k * F.l1_loss(g, w) for k, g, w in zip(weights, got, wanted))


class DiscriminatorFeatureLoss(nn.Module):
    """arcgis.learn 2.4.4's ``perceptual_loss=True``: no ImageNet network, the discriminator's
    own features. The mean absolute differences of the discriminator's first three activations
    (its first three LeakyReLUs) between the real and the generated target, weighted 5, 1.5 and
    1 and divided by 3, plus the RMSE of the logs of the two (negative values as 0): added to the
    generator's loss (``lambda_perceptual``, 1 as in arcgis.learn).

    Where it differs from arcgis.learn's, on purpose: the features carry gradients to the
    generator (arcgis.learn's hooks detach them, so its feature term only adds to the loss's
    value); the discriminator sees each target beside its input (arcgis.learn passes the target
    twice); batches are averaged (arcgis.learn's sum weighs later chips more)."""

    WEIGHTS = (5.0, 1.5, 1.0)

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.activations = [m for m in discriminator.modules() if isinstance(m, nn.LeakyReLU)][:len(self.WEIGHTS)]
        if len(self.activations) < len(self.WEIGHTS):
            raise ValueError("the discriminator has fewer than three LeakyReLU activations to compare.")
        self._discriminator = [discriminator]  # a reference, not a submodule: its weights are D's

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        found: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: found.append(out.clone())) for m in self.activations]
        try:
            self._discriminator[0](x)
        finally:
            for h in hooks:
                h.remove()
        return found

    def forward(self, pred: torch.Tensor, target: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            wanted = self._features(torch.cat([condition, target], 1))
        got = self._features(torch.cat([condition, pred], 1))
        features = sum(w * F.l1_loss(g, t) for w, g, t in zip(self.WEIGHTS, got, wanted)) / 3.0
        eps = 1e-7
        logs = torch.log(F.relu(target.float()) + eps) - torch.log(F.relu(pred.float()) + eps)
        return features + torch.sqrt(torch.mean(logs ** 2))


class ArcGISGANTrainer(GANTrainer):
    """arcgis.learn 2.4.4's Pix2Pix training step (``Pix2Pix(data, recipe="arcgis")``): the
    discriminator learns with least squares, real pairs as (input, target) and generated ones as
    (generated target, input), the order arcgis.learn's ``pix2pixTrainer`` gives them; the
    generator with binary cross-entropy on the discriminator's logits for (generated target,
    input), plus 100 x L1. Adam with betas (0.5, 0.99) for both. ``discriminator`` is a
    :class:`toolkit.models.networks.PadBands` (it widens each image to the networks' bands)."""

    def __init__(self, discriminator: nn.Module, *, lambda_l1: float = 100.0) -> None:
        super().__init__(discriminator, lambda_l1=lambda_l1, gan_weight=1.0, betas=(0.5, 0.99))

    def d_loss(self, a: torch.Tensor, b: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        d = self.discriminator
        return 0.5 * (_mse(d.pair(a, b), True) + _mse(d.pair(fake, a), False))

    def fake_logits(self, a: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return self.discriminator.pair(pred, a)


def _mse(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(logits, torch.full_like(logits, 1.0 if real else 0.0))


def _plain_tensor(x):
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) and type(x) is not torch.Tensor else x


def bce_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The segmentation loss for mask targets (one band per class: +1 in the class, -1
    elsewhere): binary cross-entropy plus soft Dice (1 - Dice of each band over the batch,
    averaged), the generator's Tanh output read as a score ``(pred + 1) / 2``, which is the
    sigmoid of twice its input. Dice weighs a band by its overlap, not by its pixel count, so
    thin and sparse classes (an outline band) count as much as the rest without weights."""
    score = ((pred.float() + 1) / 2).clamp(1e-6, 1 - 1e-6)  # float32, also under mixed precision
    truth = (target > 0).float()
    bce = F.binary_cross_entropy(score, truth)
    dims = (0, 2, 3)
    dice = (2 * (score * truth).sum(dims) + 1) / (score.sum(dims) + truth.sum(dims) + 1)
    return bce + (1 - dice).mean()


def balanced_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 for mask targets (one band per class: +1 in the class, -1 elsewhere) in which, in every
    band, the class's pixels weigh half and the other pixels the other half (all of it for the
    part that is present), and that other half is shared equally by the other classes present,
    background included.

    With sparse classes (buildings cover 2% of the Atlanta tile) the plain L1 is smallest when
    the generator predicts background everywhere, and its gradient, the same for every pixel,
    keeps pushing the Tanh into saturation at -1; balanced, the class counts as much as the rest.
    Sharing the rest by class matters for a thin class inside another, such as the outline of
    contour-reinforced footprints: counted by pixel, the footprint interior was a sliver of the
    outline band's rest, an interior pixel weighed tens of times less than an outline pixel, and
    under L1 (a weighted median) the outline band covered whole buildings, which left no
    interior to separate touching footprints by. Now the interior is a quarter of that band.
    """
    err = (pred - target).abs()
    bands = target.shape[1]
    positive = target > 0
    # each pixel's class: 1 + its band, or 0 (background) where no band holds it
    klass = torch.where(positive.any(dim=1), positive.to(torch.uint8).argmax(dim=1) + 1, 0)
    counts = torch.bincount(klass.flatten(), minlength=bands + 1).float()  # float32, also under AMP
    present = counts > 0
    # share[b, k]: the part of band b's loss that class k's pixels share
    own = torch.eye(bands + 1, dtype=torch.bool, device=err.device)[1:]  # (bands, classes)
    own_present = (own & present).any(dim=1, keepdim=True)
    others = (present & ~own).sum(dim=1, keepdim=True)  # other classes present, per band
    own_share = torch.where(own_present, torch.where(others > 0, 0.5, 1.0), 0.0)
    share = torch.where(own, own_share, (1.0 - own_share) / others.clamp(min=1))
    per_pixel = share / counts.clamp(min=1)
    weights = per_pixel[:, klass].movedim(0, 1)  # (n, bands, h, w)
    return (err * weights).sum() / bands


class Pix2PixLoss:
    """The Learner's loss function: the G loss of the trainer (``trainer.g_loss``): in training
    the full generator loss, in validation the reconstruction error (``valid_loss``)."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.trainer.g_loss(pred, target)


def loss_metrics(trainer: DiscriminatorStep) -> list[ValueMetric]:
    """fastai metrics that report the training epoch's mean of each of ``trainer.loss_names``."""
    return [ValueMetric(lambda k=k: trainer.epoch_losses[k], k) for k in trainer.loss_names]


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

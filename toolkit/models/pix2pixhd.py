"""``Pix2PixHD(data)``: high-resolution conditional GAN (Wang, Liu, Zhu, Tao, Kautz and Catanzaro,
2018) in arcgis.learn 2.4.4's shape.

    from toolkit import Pix2PixHD, prepare_data
    data = prepare_data("chips", batch_size=4)          # Export_Tiles pairs: images/ + images2/
    model = Pix2PixHD(data, n_gen_filters=32, gen_network="local")
    model.fit(20)
    model.predict_raster("scene.tif", "translated.tif")

A coarse-to-fine generator (:mod:`toolkit.models.networks_hd`: a global generator, and local
enhancers around it at twice its resolution each), ``n_dscr`` PatchGANs at full, half...
resolution, and the generator's loss of the reference code (arcgis.learn's too): least-squares
(or BCE) GAN terms over the scales, feature matching on every discriminator layer
(``lambda_feat``), VGG-19 feature matching (``lambda_feat``; with a local ``vgg_weights`` file:
nothing is downloaded) and for multispectral data L1 (``lambda_l1``) in its place, as
arcgis.learn. ``niter_fix_global``: the first epochs train the local enhancers alone, the
global generator fixed (the paper's schedule).

Everything else is Pix2Pix's (:class:`toolkit.Pix2Pix`, whose training, saving, inference,
metrics and figures this class inherits): only the networks, the losses and the ``.emd`` keys
are its own. arcgis.learn's saved Pix2PixHD models load as the other two do
(:mod:`toolkit.models.arcgis_learn`).

Layer: front doors (a model class).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.config import Pix2PixHDConfig
from toolkit.data.layouts import CLASSIFIED_TILES, DATASET_TYPES
from toolkit.data.normalization import MaskEncoding
from toolkit.models.base import register
from toolkit.models.emd_schema import check_config
from toolkit.models.gan import DiscriminatorStep, PerceptualLoss, Pix2PixLoss
from toolkit.models.networks import init_weights
from toolkit.models.pix2pix import Pix2Pix
from toolkit.models.specs import Pix2PixHDSpec

__all__ = ["Pix2PixHD", "Pix2PixHDTrainer", "VGG19Loss", "memory_needed", "training_memory"]

_DEFAULTS = Pix2PixHDConfig  # the keywords' defaults, stated once (toolkit.config)
SETTINGS = tuple(f.name for f in dataclasses.fields(Pix2PixHDConfig) if f.name not in ("vgg_weights",))


class VGG19Loss(PerceptualLoss):
    """pix2pixHD's VGG loss: L1 of VGG-19 activations at ``relu1_1`` ... ``relu5_1``, weighted 1/32,
    1/16, 1/8, 1/4, 1, on the images in [-1, 1] as the reference feeds them. Weights from a local
    torchvision ``vgg19`` state dict (``vgg19-dcbb9e9d.pth``)."""

    ARCH = "vgg19"
    LAYERS = (1, 6, 11, 20, 29)
    WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    IMAGENET_SCALING = False
    OPTION = "vgg_weights"


def _gan(outputs: list[list[torch.Tensor]], real: bool, lsgan: bool) -> torch.Tensor:
    """The GAN loss summed over the discriminators' scales (each scale's last output: logits)."""
    loss = 0.0
    for scale in outputs:
        logits = scale[-1]
        target = torch.full_like(logits, 1.0 if real else 0.0)
        loss = loss + (F.mse_loss(logits, target) if lsgan else F.binary_cross_entropy_with_logits(logits, target))
    return loss


class Pix2PixHDTrainer(DiscriminatorStep):
    """The pix2pixHD step on fastai, as :class:`toolkit.models.gan.GANTrainer` for pix2pix: per
    batch the discriminators' step (``0.5 * (GAN(D(A, fake), 0) + GAN(D(A, B), 1))`` over the
    scales), then the generator's loss with them frozen (:meth:`g_loss`). In validation the
    loss is the L1, so ``valid_loss`` is the validation L1 as for Pix2Pix."""

    def __init__(self, discriminator: nn.Module, generator: nn.Module, *, lsgan: bool, feat_loss: bool,
                 lambda_feat: float, vgg: VGG19Loss | None, l1_loss: bool, lambda_l1: float, n_layers_dscr: int,
                 n_dscr: int, niter_fix_global: int = 0) -> None:
        self.loss_names = ("gen_loss", *(("feat_loss",) if feat_loss else ()), *(("vgg_loss",) if vgg else ()),
                           "l1_loss", "d_loss")
        super().__init__(discriminator)
        self.discriminator, self.generator, self.vgg = discriminator, generator, vgg
        self.lsgan, self.feat_loss, self.lambda_feat = lsgan, feat_loss, lambda_feat
        self.l1_loss, self.lambda_l1 = l1_loss, lambda_l1
        # the reference's weights: each layer's match counts 4 / (n_layers + 1), each scale 1 / n_dscr
        self.feat_weight = 4.0 / (n_layers_dscr + 1) / n_dscr
        self.niter_fix_global = niter_fix_global

    def before_fit(self) -> None:
        super().before_fit()
        if self.vgg is not None:
            self.vgg.to(next(self.learn.model.parameters()).device)

    def before_epoch(self) -> None:
        """The local enhancers train alone for the first ``niter_fix_global`` epochs."""
        net = getattr(self.generator, "net", self.generator)  # arcgis.learn's layout: inside PadBands
        if self.niter_fix_global and hasattr(net, "enhancer_parameters"):
            fixed = self.epoch < self.niter_fix_global
            for p in net.model.parameters():
                p.requires_grad_(not fixed)

    def after_pred(self) -> None:
        if not self.training or not self.adversarial:
            return
        a, b, fake = self.xb[0], self.yb[0], self.pred.detach()
        d = self.discriminator
        self._add("d_loss", self.d_update(lambda: 0.5 * (_gan(d(torch.cat([a, fake], 1)), False, self.lsgan)
                                                        + _gan(d(torch.cat([a, b], 1)), True, self.lsgan))))

    def g_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        l1 = F.l1_loss(pred, target)
        if not self.training:
            return l1
        self._add("l1_loss", l1)
        if not self.adversarial:  # lr_find: the reconstruction term alone
            return self.lambda_l1 * l1
        loss = self.lambda_l1 * l1 if self.l1_loss else 0.0
        if self.vgg is not None:
            vgg = self.vgg(pred, target)
            self._add("vgg_loss", vgg)
            loss = loss + self.lambda_feat * vgg
        a = self.xb[0]
        fake = self.discriminator(torch.cat([a, pred], 1))
        gan = _gan(fake, True, self.lsgan)
        self._add("gen_loss", gan)
        if self.feat_loss:
            with torch.no_grad():
                real = self.discriminator(torch.cat([a, target], 1))
            feat = sum(F.l1_loss(f, r) for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1]))
            feat = self.feat_weight * feat
            self._add("feat_loss", feat)
            loss = loss + self.lambda_feat * feat
        return loss + gan


def available_memory(device: torch.device) -> int:
    """Bytes free for a new model on ``device``: the GPU's free memory, or the system's
    ``MemAvailable`` (Linux; elsewhere unbounded)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**63


def memory_needed(config: dict, batch_size: int) -> dict[str, int]:
    """What training ``config`` needs, estimated on the meta device (nothing is allocated):
    ``parameters`` (count), ``weights`` (bytes of weights, gradients and two Adam moments) and
    ``activations`` (bytes of every layer's output for one step, G and D, which autograd keeps
    for the backward pass)."""
    with torch.device("meta"):
        nets = Pix2PixHDSpec.build_networks(config)
        size = config["chip_size"]
        h, w = (size, size) if isinstance(size, int) else (size[1], size[0])
        total = [0]

        def count(module, inputs, output):
            outs = output if isinstance(output, (list, tuple)) else [output]
            for o in outs:
                if isinstance(o, torch.Tensor):
                    total[0] += o.numel() * 4
                elif isinstance(o, (list, tuple)):
                    total[0] += sum(t.numel() * 4 for t in o if isinstance(t, torch.Tensor))

        leaves = [m for net in nets.values() for m in net.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(count) for m in leaves]
        try:
            a = torch.empty(batch_size, config["n_bands_in"], h, w)
            fake = nets["generator"](a)
            for _ in range(3):  # D on the fake pair (D and G steps) and on the real pair
                nets["discriminator"](torch.cat([a, fake], 1))
        finally:
            for hook in hooks:
                hook.remove()
    parameters = sum(p.numel() for net in nets.values() for p in net.parameters())
    return {"parameters": parameters, "weights": parameters * 4 * 4, "activations": total[0]}


def training_memory(data, settings: Pix2PixHDConfig = Pix2PixHDConfig()) -> dict[str, int]:
    """:func:`memory_needed` for training a Pix2PixHD of ``settings`` on ``data`` (its bands, chip
    size and batch size), before building it."""
    size = data.chip_size
    config = {"n_bands_in": data.n_bands_in, "n_bands_out": data.n_bands_out,
              "chip_size": list(size) if isinstance(size, tuple) else size, **settings.to_dict()}
    return memory_needed(config, data.train.bs)


@register
class Pix2PixHD(Pix2PixHDSpec, Pix2Pix):
    """Pix2PixHD image-to-image translation: coarse-to-fine generator, multi-scale PatchGANs.

    Args:
        data: :func:`toolkit.prepare_data` DataLoaders of image pairs (Export_Tiles), or of
            class rasters and their images for label-to-image synthesis (a Classified_Tiles
            export read with ``direction="BtoA"``, or arcgis.learn's ``dataset_type="Pix2Pix"``:
            the classes one-hot, one input band each, as arcgis.learn's ``label_nc``; an outline
            class of a footprint export serves as the paper's instance-boundary map). ``None``
            only through :meth:`from_model`.
        pretrained_path: a saved model (.emd, folder or .dlpk; arcgis.learn's too) to start from.
        n_gen_filters, gen_network, n_downsample_global, n_blocks_global, n_local_enhancers,
            n_blocks_local, norm, lsgan, n_dscr_filters, n_layers_dscr, n_dscr, feat_loss,
            vgg_loss, lambda_feat, l1_loss, lambda_l1: arcgis.learn 2.4.4's keywords and
            defaults (:class:`toolkit.config.Pix2PixHDConfig` says what each means). As there,
            data that is not 3-band imagery on both sides trains with L1 instead of VGG.
        vgg_weights: a local torchvision ``vgg19`` state dict (ImageNet weights) for
            ``vgg_loss``; without one the VGG loss is off, with a warning (nothing is downloaded).
        niter_fix_global: ``gen_network="local"``: the first epochs train the local enhancers
            only, the global generator fixed.
        mixed_precision, working_dir: as :class:`toolkit.Pix2Pix`.

    The arcgis defaults (local generator, 64 filters) hold about 736 M parameters
    (benchmarks/README.md); a configuration whose training cannot fit in the memory of its device
    is refused before anything is allocated (:func:`memory_needed`).
    """

    model_type = "Pix2PixHD"
    checkpoint_name = "pix2pixhd"
    loss_panels = [("L1 (in [-1, 1] units)", [("l1_loss", "train L1"), ("valid_loss", "validation L1")]),
                   ("GAN", [("gen_loss", "G adversarial"), ("feat_loss", "G feature matching"),
                            ("vgg_loss", "G VGG"), ("d_loss", "D")])]
    supported_backbones = [None]
    supported_datasets = ["Pix2Pix", "Export_Tiles"]

    def __init__(self, data, pretrained_path: str | os.PathLike | None = None, *,
                 n_gen_filters: int = _DEFAULTS.n_gen_filters, gen_network: str = _DEFAULTS.gen_network,
                 n_downsample_global: int = _DEFAULTS.n_downsample_global,
                 n_blocks_global: int = _DEFAULTS.n_blocks_global, n_local_enhancers: int = _DEFAULTS.n_local_enhancers,
                 n_blocks_local: int = _DEFAULTS.n_blocks_local, norm: str = _DEFAULTS.norm,
                 lsgan: bool = _DEFAULTS.lsgan, n_dscr_filters: int = _DEFAULTS.n_dscr_filters,
                 n_layers_dscr: int = _DEFAULTS.n_layers_dscr, n_dscr: int = _DEFAULTS.n_dscr,
                 feat_loss: bool = _DEFAULTS.feat_loss, vgg_loss: bool = _DEFAULTS.vgg_loss,
                 vgg_weights: str | os.PathLike | None = _DEFAULTS.vgg_weights,
                 lambda_feat: float = _DEFAULTS.lambda_feat, l1_loss: bool = _DEFAULTS.l1_loss,
                 lambda_l1: float = _DEFAULTS.lambda_l1, niter_fix_global: int = _DEFAULTS.niter_fix_global,
                 mixed_precision: bool | None = None, working_dir: str | os.PathLike | None = None) -> None:
        if data is None:
            raise ValueError("Pix2PixHD needs data from prepare_data(); to load a saved model for "
                             "inference without data use Pix2PixHD.from_model(path).")
        if data.dataset_type == CLASSIFIED_TILES or data.dataset_type not in DATASET_TYPES:
            raise ValueError(f"{data.path}: Pix2PixHD makes images: from images (Export_Tiles pairs) or from class "
                             f"rasters (a Classified_Tiles folder read with prepare_data(..., direction='BtoA')); "
                             f"this data is {data.dataset_type!r} (image -> class mask).")
        settings = Pix2PixHDConfig(  # checks each value's type and range
            n_gen_filters=n_gen_filters, gen_network=gen_network, n_downsample_global=n_downsample_global,
            n_blocks_global=n_blocks_global, n_local_enhancers=n_local_enhancers, n_blocks_local=n_blocks_local,
            norm=norm, lsgan=lsgan, n_dscr_filters=n_dscr_filters, n_layers_dscr=n_layers_dscr, n_dscr=n_dscr,
            feat_loss=feat_loss, vgg_loss=vgg_loss, vgg_weights=None if vgg_weights is None else str(vgg_weights),
            lambda_feat=lambda_feat, l1_loss=l1_loss, lambda_l1=lambda_l1, niter_fix_global=niter_fix_global)
        self._vgg = None
        labels_in = isinstance(data.input_norm, MaskEncoding)  # label-to-image synthesis
        rgb = data.n_bands_out == 3 and (labels_in or data.n_bands_in == 3)
        if not rgb:  # arcgis.learn: multispectral trains with L1, without VGG
            settings = dataclasses.replace(settings, vgg_loss=False, l1_loss=True)
        elif settings.vgg_loss and vgg_weights is None:
            warnings.warn("Pix2PixHD: vgg_loss needs ImageNet VGG-19 weights, which the toolkit never downloads; "
                          "none given (vgg_weights=: the path of a torchvision vgg19 state dict), so it trains "
                          "without the VGG loss.", stacklevel=2)
            settings = dataclasses.replace(settings, vgg_loss=False)
        elif settings.vgg_loss:
            self._vgg = VGG19Loss(vgg_weights)
        size = data.chip_size
        config = {"n_bands_in": data.n_bands_in, "n_bands_out": data.n_bands_out,
                  "chip_size": list(size) if isinstance(size, tuple) else size, "dataset_type": data.dataset_type,
                  **{k: v for k, v in settings.to_dict().items() if k in SETTINGS},
                  "extract_bands": data.train_ds.extract_bands,
                  "cell_size": list(data.cell_size) if data.cell_size else None}
        pretrained = self._pretrained(pretrained_path, config)
        self._check_memory(config, data)
        self._setup(config, data.input_norm, data.target_norm, data, mixed_precision=mixed_precision,
                    working_dir=working_dir)
        if pretrained is not None:
            self._load_saved(pretrained)

    def _check_memory(self, config: dict, data) -> None:
        """``MemoryError`` before anything is allocated when training ``config`` cannot fit."""
        check_config(config, self.config_rules, type(self).__name__)
        need = memory_needed(config, data.train.bs)
        free = available_memory(data.device)
        if need["weights"] + need["activations"] > free:
            gib = 2.0**30
            raise MemoryError(
                f"Pix2PixHD: training this configuration needs about {(need['weights'] + need['activations']) / gib:.1f} "
                f"GiB ({need['parameters'] / 1e6:.0f} M parameters: {need['weights'] / gib:.1f} GiB with gradients and "
                f"Adam's moments; {need['activations'] / gib:.1f} GiB of activations at batch size "
                f"{data.train.bs}), more than the {free / gib:.1f} GiB free on {data.device}. Use "
                "gen_network='global', fewer n_gen_filters / n_dscr_filters, a smaller batch_size or chip_size.")

    # --- what the base needs -----------------------------------------------------------------------

    def _init_networks(self) -> None:
        init_weights(self.generator)
        init_weights(self.discriminator)

    def _make_trainer(self) -> Pix2PixHDTrainer:
        c = self.config
        return Pix2PixHDTrainer(self.discriminator, self.generator, lsgan=c["lsgan"], feat_loss=c["feat_loss"],
                                lambda_feat=c["lambda_feat"], vgg=getattr(self, "_vgg", None), l1_loss=c["l1_loss"],
                                lambda_l1=c["lambda_l1"], n_layers_dscr=c["n_layers_dscr"], n_dscr=c["n_dscr"],
                                niter_fix_global=c.get("niter_fix_global", 0))

    def _loss_func(self):
        return Pix2PixLoss(self.trainer)

    def _emd_keys(self, name: str) -> dict:
        c = self.config
        labels = self.input_norm.values if isinstance(self.input_norm, MaskEncoding) else None
        return {"ModelConfiguration": "_pix2pix_hd", "label_nc": len(labels) if labels else 0,
                **({"mask_map": [0, *labels]} if labels else {}),
                "Kwargs": {k: c[k] for k in SETTINGS if k in c and k != "niter_fix_global"},
                "IsMultispectral": not (c["n_bands_out"] == 3 and (labels or c["n_bands_in"] == 3))}

    def __repr__(self) -> str:
        c = self.config
        return (f"Pix2PixHD({c['dataset_type']}: {c['n_bands_in']} -> {c['n_bands_out']} bands, "
                f"{self.describe_networks(c)}, on {self.device})")

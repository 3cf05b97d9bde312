"""``CycleGAN(data)``: unpaired image-to-image translation (Zhu, Park, Isola and Efros, 2017).

    data = prepare_data("chips", dataset_type="CycleGAN")   # two domains, no pairs
    model = CycleGAN(data)
    model.fit(20)
    model.show_results()                       # A -> B -> A and B -> A -> B rows
    model.predict("sar_chip.tif", convert_to="b")
    model.predict_raster("scene_a.tif", "scene_as_b.tif", convert_to="b")
    model.save("sar2optical")

The reference implementation's recipe (DESIGN section 8): two ResNet generators ``G_AB`` (A ->
B) and ``G_BA``, two 70x70 PatchGANs ``D_A`` and ``D_B``; least-squares GAN loss; cycle L1
weighted by ``lambda_A`` / ``lambda_B``; identity loss ``L1(G_AB(B), B) * lambda_B *
lambda_identity`` (and the same for A), only when both domains have the same band count; a
history pool of generated images per discriminator; one Adam over both generators and one over
both discriminators, lr 2e-4, betas (0.5, 0.999). Per batch the G step comes first (the
Learner's step), then the D step on pooled fakes (:class:`CycleGANTrainer`).

Training, checkpoints, saving and inference are :class:`toolkit.models.base.TranslationModel`'s.

Layer: front doors.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit import viz
from toolkit.config import CycleGANConfig
from toolkit.inference import predict_raster
from toolkit.metrics import Scores, psnr, ssim
from toolkit.models.base import Translation, TranslationModel, one_image, progress, register
from toolkit.models.gan import DiscriminatorStep, Pix2PixLoss
from toolkit.models.specs import CycleGANSpec

__all__ = ["CycleGAN", "CycleGANTrainer", "ImagePool"]

_DEFAULTS = CycleGANConfig  # the keywords' defaults, stated once (toolkit.config)

CYCLEGAN = "CycleGAN"


class ImagePool:
    """The reference implementation's history of generated images for one discriminator.

    ``query(images)`` returns a batch of the same size: while fewer than ``size`` images are
    stored each new image is stored and returned; then, with probability 0.5, a stored image is
    returned and the new one takes its place, else the new one is returned. ``size=0`` returns
    the batch as it is. Draws come from torch's generator, so checkpoints restore them.
    """

    def __init__(self, size: int = 50) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif float(torch.rand(())) > 0.5:
                i = int(torch.randint(0, self.size, ()))
                out.append(self.images[i].to(image.device, image.dtype))
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)


class _CycleGenerators(nn.Module):
    """What the Learner trains with the generators' Adam: ``(a, b)`` -> ``(fake_b, rec_a,
    fake_a, rec_b)`` and, with identity loss, ``(idt_b, idt_a)`` = ``(G_AB(b), G_BA(a))``."""

    def __init__(self, generator_ab: nn.Module, generator_ba: nn.Module, identity: bool) -> None:
        super().__init__()
        self.generator_ab, self.generator_ba, self.identity = generator_ab, generator_ba, identity

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fake_b, fake_a = self.generator_ab(a), self.generator_ba(b)
        out = (fake_b, self.generator_ba(fake_b), fake_a, self.generator_ab(fake_a))
        if self.identity and self.training:
            out += (self.generator_ab(b), self.generator_ba(a))
        return out


class CycleGANTrainer(DiscriminatorStep):
    """CycleGAN's training step on fastai: owns ``D_A`` and ``D_B``, their pools and their Adam.

    * ``before_batch``: the generators' input becomes ``(a, b)`` (the batch is ``(a,), (b,)``);
    * :meth:`g_loss` (the Learner's loss): GAN terms with D frozen, cycle L1 and identity L1 in
      training; in validation the mean cycle L1 of both directions (``valid_loss``);
    * ``after_step`` (after the generators' optimizer step, as in the reference): the D step
      on pooled fakes, ``0.5 * (GAN(D(real), 1) + GAN(D(pool(fake)), 0))`` for each D.
    """

    loss_names = ("gen_loss", "cycle_loss", "identity_loss", "d_a_loss", "d_b_loss")

    def __init__(self, discriminator_a: nn.Module, discriminator_b: nn.Module, *, lambda_a: float = 10.0,
                 lambda_b: float = 10.0, lambda_identity: float = 0.5, lsgan: bool = True,
                 pool_size: int = 50, betas: tuple[float, float] = (0.5, 0.999)) -> None:
        super().__init__([discriminator_a, discriminator_b], betas=betas)
        self.discriminator_a, self.discriminator_b = discriminator_a, discriminator_b
        self.lambda_a, self.lambda_b, self.lambda_identity = lambda_a, lambda_b, lambda_identity
        self.lsgan = lsgan
        self.pool_a, self.pool_b = ImagePool(pool_size), ImagePool(pool_size)
        self._fakes: tuple[torch.Tensor, torch.Tensor] | None = None

    def gan_loss(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        """Least squares against 1 / 0 (``lsgan``), else binary cross-entropy on logits."""
        target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
        if self.lsgan:
            return F.mse_loss(prediction.float(), target.float())
        return F.binary_cross_entropy_with_logits(prediction.float(), target.float())

    def before_batch(self) -> None:
        super().before_batch()
        self.learn.xb = (self.xb[0], self.yb[0])

    def g_loss(self, pred: tuple[torch.Tensor, ...], b: torch.Tensor) -> torch.Tensor:
        a = self.xb[0]
        fake_b, rec_a, fake_a, rec_b = pred[:4]
        cycle_a, cycle_b = F.l1_loss(rec_a, a), F.l1_loss(rec_b, b)
        if not self.training:
            return 0.5 * (cycle_a + cycle_b)
        cycle = self.lambda_a * cycle_a + self.lambda_b * cycle_b
        loss = cycle
        self._add("cycle_loss", cycle)
        if len(pred) == 6:
            idt_b, idt_a = pred[4:]
            identity = self.lambda_identity * (self.lambda_b * F.l1_loss(idt_b, b)
                                               + self.lambda_a * F.l1_loss(idt_a, a))
            self._add("identity_loss", identity)
            loss = loss + identity
        if self.adversarial:
            gan = self.gan_loss(self.discriminator_b(fake_b), True) + \
                self.gan_loss(self.discriminator_a(fake_a), True)
            self._add("gen_loss", gan)
            loss = loss + gan
            self._fakes = (fake_a.detach(), fake_b.detach())
        return loss

    def after_step(self) -> None:
        if not self.training or not self.adversarial or self._fakes is None:
            return
        a, b = self.xb
        fake_a, fake_b = self.pool_a.query(self._fakes[0]), self.pool_b.query(self._fakes[1])
        self._fakes = None
        losses = {}

        def d_loss() -> torch.Tensor:
            for key, d, real, fake in (("d_a_loss", self.discriminator_a, a, fake_a),
                                       ("d_b_loss", self.discriminator_b, b, fake_b)):
                losses[key] = 0.5 * (self.gan_loss(d(real), True) + self.gan_loss(d(fake), False))
            return losses["d_a_loss"] + losses["d_b_loss"]

        # the G step's autocast (fastai's MixedPrecision) has closed by now: open it again
        mixed = getattr(self.learn, "mixed_precision", None)
        with (mixed.autocast if mixed is not None else contextlib.nullcontext()):
            self.d_update(d_loss)
        for key, value in losses.items():
            self._add(key, value)

    def extra_state(self) -> dict:
        return {"pool_a": list(self.pool_a.images), "pool_b": list(self.pool_b.images)}

    def load_extra_state(self, state: dict) -> None:
        self.pool_a.images = [t.clone() for t in state.get("pool_a", [])]
        self.pool_b.images = [t.clone() for t in state.get("pool_b", [])]


@register
class CycleGAN(CycleGANSpec, TranslationModel):
    """CycleGAN: translation between two domains learned from unpaired chips.

    Args:
        data: :func:`toolkit.prepare_data` DataLoaders of two domains
            (``dataset_type="CycleGAN"``); ``None`` only through :meth:`from_model`.
        pretrained_path: a saved CycleGAN (.emd, folder or .dlpk) to start from.
        gen_blocks: residual blocks of each ResNet generator (9 in the paper at 256 px, 6 at 128).
        lsgan: least-squares GAN loss (the paper); ``False``: binary cross-entropy.
        ngf, ndf: filters of the generators' and discriminators' first layers (64 in the paper).
        lambda_A, lambda_B: weights of the cycle L1 terms A -> B -> A and B -> A -> B (10).
        lambda_identity: weight of the identity terms relative to lambda_A / lambda_B (0.5).
            Identity (``G_AB(b)`` close to ``b``) needs both domains to have the same band count;
            otherwise it is off (``config["identity"]`` says which).
        pool_size: generated images kept per discriminator (50); 0 keeps none.
        norm: ``"instance"`` (the paper) or ``"batch"``.
        mixed_precision: ``None`` = on when training on CUDA (bf16 where supported, else fp16).
        working_dir: folder for checkpoints, saved models and TensorBoard logs; default
            ``<working_dir>/models`` of ``prepare_data(working_dir=...)``, else ``<data.path>/models``.

    The arguments up to ``lsgan`` are arcgis.learn's, in its order; the rest are keyword-only.
    """

    model_type = CYCLEGAN
    checkpoint_name = "cyclegan"
    loss_panels = [("cycle L1 (in [-1, 1] units)", [("valid_loss", "validation cycle L1 (mean of A, B)")]),
                   ("weighted training losses", [("gen_loss", "G adversarial (both)"),
                                                 ("cycle_loss", "cycle"), ("identity_loss", "identity")]),
                   ("D losses", [("d_a_loss", "D_A"), ("d_b_loss", "D_B")])]

    def __init__(self, data, pretrained_path: str | os.PathLike | None = None,
                 gen_blocks: int = _DEFAULTS.gen_blocks, lsgan: bool = _DEFAULTS.lsgan, *, ngf: int = _DEFAULTS.ngf,
                 ndf: int = _DEFAULTS.ndf, lambda_A: float = _DEFAULTS.lambda_A, lambda_B: float = _DEFAULTS.lambda_B,
                 lambda_identity: float = _DEFAULTS.lambda_identity, pool_size: int = _DEFAULTS.pool_size,
                 norm: str = _DEFAULTS.norm, mixed_precision: bool | None = None,
                 working_dir: str | os.PathLike | None = None) -> None:
        if data is None:
            raise ValueError("CycleGAN needs data from prepare_data(path, dataset_type='CycleGAN'); to "
                             "load a saved model for inference without data use CycleGAN.from_model(path).")
        if data.dataset_type != CYCLEGAN:
            raise ValueError(f"{data.path}: CycleGAN trains on two unpaired domains; this data is "
                             f"{data.dataset_type!r}. Use prepare_data(path, dataset_type='CycleGAN') on "
                             "a folder of two domains (trainA/ + trainB/, or an Esri CycleGAN export).")
        CycleGANConfig(gen_blocks=gen_blocks, lsgan=lsgan, ngf=ngf, ndf=ndf, lambda_A=lambda_A,  # checks
                       lambda_B=lambda_B, lambda_identity=lambda_identity, pool_size=pool_size, norm=norm)
        size = data.chip_size
        cell_b = getattr(data, "cell_size_b", None)
        config = {
            "n_bands_in": data.n_bands_in, "n_bands_out": data.n_bands_out,
            "chip_size": list(size) if isinstance(size, tuple) else size,
            "dataset_type": CYCLEGAN, "gen_blocks": int(gen_blocks), "ngf": ngf, "ndf": ndf,
            "norm": norm, "lsgan": bool(lsgan), "lambda_A": lambda_A, "lambda_B": lambda_B,
            "lambda_identity": lambda_identity, "pool_size": int(pool_size),
            "identity": bool(lambda_identity > 0 and data.n_bands_in == data.n_bands_out),
            "extract_bands": None,
            "cell_size": list(data.cell_size) if data.cell_size else None,
            "cell_size_b": list(cell_b) if cell_b else None,
        }
        pretrained = self._pretrained(pretrained_path, config)
        self._setup(config, data.input_norm, data.target_norm, data, mixed_precision=mixed_precision,
                    working_dir=working_dir)
        if pretrained is not None:
            self._load_saved(pretrained)

    # --- what the base needs -----------------------------------------------------------------------

    def _make_trainer(self) -> CycleGANTrainer:
        c = self.config
        return CycleGANTrainer(self.discriminator_a, self.discriminator_b, lambda_a=c["lambda_A"],
                               lambda_b=c["lambda_B"], lambda_identity=c["lambda_identity"],
                               lsgan=c["lsgan"], pool_size=c["pool_size"])

    def _learner_model(self) -> nn.Module:
        return _CycleGenerators(self.generator_ab, self.generator_ba, self.config["identity"])

    def _loss_func(self):
        return Pix2PixLoss(self.trainer)  # the trainer's g_loss, as for pix2pix

    def _emd_keys(self, name: str) -> dict:
        c = self.config
        return {"ModelConfiguration": "_cyclegan",
                "ModelParameters": {"gen_blocks": c["gen_blocks"], "lsgan": c["lsgan"], "ngf": c["ngf"],
                                    "ndf": c["ndf"]},
                "IsMultispectral": c["n_bands_in"] != 3 or c["n_bands_out"] != 3}

    def __repr__(self) -> str:
        c = self.config
        identity = "identity loss on" if c["identity"] else \
            f"identity loss off ({c['n_bands_in']} -> {c['n_bands_out']} bands)" if c["lambda_identity"] \
            else "identity loss off"
        return (f"CycleGAN(A: {c['n_bands_in']} bands <-> B: {c['n_bands_out']} bands, "
                f"{self.describe_networks(c)}, {'LSGAN' if c['lsgan'] else 'BCE GAN'}, lambda_A "
                f"{c['lambda_A']}, lambda_B {c['lambda_B']}, {identity}, on {self.device})")

    # --- inference ---------------------------------------------------------------------------------

    def translation(self, convert_to: str = "b") -> Translation:
        """One direction as :func:`toolkit.inference.predict_raster` uses it: ``"b"`` (or
        ``"B"``) runs ``G_AB`` on domain A's bands into domain B's units, ``"a"`` the other way."""
        network, swap, cell_key, name, convert_to = self.direction(self.config, convert_to)
        net = getattr(self, network)
        norms = (self.target_norm, self.input_norm) if swap else (self.input_norm, self.target_norm)
        return self._translation(lambda x: self._run(net, x), *norms, name,
                                 cell_size=self.config.get(cell_key), convert_to=convert_to, network=net,
                                 device=self.device)

    def generate(self, x: np.ndarray, convert_to: str = "b", tta: bool = False) -> np.ndarray:
        """Normalised ``(n, bands, h, w)`` of the source domain in [-1, 1] -> the other domain's
        ``(n, bands, h, w)`` in [-1, 1]; ``tta`` as :meth:`toolkit.Pix2Pix.generate`."""
        return self.translation(convert_to).generate(x, tta=tta)

    def predict(self, image: str | os.PathLike | np.ndarray | None = None, convert_to: str = "b",
                output: str | os.PathLike | None = None, *, img_path: str | os.PathLike | None = None,
                transform=None, crs=None, overwrite: bool = False, tta: bool = False) -> np.ndarray:
        """Translate one chip of any size, as arcgis.learn's ``predict(img_path, convert_to)``.

        Args:
            image: a chip file, or an array ``(bands, height, width)`` in the source domain's
                units (``img_path=``: arcgis.learn's name for it).
            convert_to: ``"b"`` (or ``"B"``): the chip is of domain A, translate it to B;
                ``"a"`` (``"A"``): B -> A.
            output, transform, crs, overwrite, tta: as :meth:`toolkit.Pix2Pix.predict`.

        Returns:
            float32 ``(bands, height, width)`` in the other domain's units; NaN where the input
            is nodata.
        """
        image = one_image(image, img_path, "img_path")
        return self.translation(convert_to).predict(image, output, transform=transform, crs=crs,
                                                    overwrite=overwrite, tta=tta)

    def predict_raster(self, in_raster: str | os.PathLike, out_raster: str | os.PathLike, *,
                       convert_to: str = "b", padding: int | None = None, batch_size: int = 8,
                       overwrite: bool = False, progress: bool = True, tta: bool = False,
                       client=None, timeout: float | None = 300.0, backend: str = "auto",
                       precision: str = "fp32") -> Path:
        """Translate a whole scene of one domain into a georeferenced GeoTIFF of the other
        (``convert_to`` ``"b"`` or ``"a"``), blended as :func:`toolkit.inference.predict_raster`;
        with a ``dask.distributed.Client`` as ``client``, on its workers (save the model first),
        failing after ``timeout`` seconds without any worker."""
        return predict_raster(self.translation(convert_to), in_raster, out_raster, padding=padding,
                                    batch_size=batch_size, overwrite=overwrite, progress=progress, tta=tta,
                                    client=client, timeout=timeout, backend=backend,
                                    precision=precision)

    # --- evaluation --------------------------------------------------------------------------------

    def _validation_batches(self, dl=None, show_progress: bool = False):
        """``(a, b, fake_b, rec_a, fake_a, rec_b)`` numpy batches in [-1, 1] over the validation
        chips (or ``dl``), no augmentation."""
        self._require_data("this")
        for a, b in progress(dl if dl is not None else self.data.valid, show_progress):
            a, b = a.cpu().numpy(), b.cpu().numpy()
            fake_b, fake_a = self._run(self.generator_ab, a), self._run(self.generator_ba, b)
            yield a, b, fake_b, self._run(self.generator_ba, fake_b), fake_a, self._run(self.generator_ab, fake_a)

    def compute_metrics(self, show_progress: bool = False) -> Scores:
        """Scores in [-1, 1] units (each band's normalisation range), as a
        :class:`toolkit.metrics.Scores` (read ``["PSNR"]`` as in arcgis.learn; arcgis.learn's
        ``FID_A`` / ``FID_B`` are not computed: they need Inception weights); ``show_progress``
        shows a progress bar over the validation batches:

        * ``cycle_a``, ``cycle_b``: mean absolute cycle-consistency error A -> B -> A and
          B -> A -> B on the validation chips, and ``cycle`` their mean (= ``valid_loss``);
        * when the data holds true pairs (``data.test_pairs``: ``testA/`` + ``testB/`` chips of
          the same names): ``psnr`` and ``ssim`` of A -> B against the true B (dB over the data
          range 2), and ``psnr_a``, ``ssim_a`` of B -> A against the true A.
        """
        cycle_a, cycle_b = [], []
        for a, b, _, rec_a, _, rec_b in self._validation_batches(show_progress=show_progress):
            cycle_a += [float(np.abs(r - t).mean()) for r, t in zip(rec_a, a)]
            cycle_b += [float(np.abs(r - t).mean()) for r, t in zip(rec_b, b)]
        metrics = {"cycle_a": float(np.mean(cycle_a)), "cycle_b": float(np.mean(cycle_b))}
        metrics["cycle"] = 0.5 * (metrics["cycle_a"] + metrics["cycle_b"])
        pairs = getattr(self.data, "test_pairs", None)
        if pairs is not None and len(pairs):
            metrics |= self.pair_scores(pairs)
        self.metrics = metrics
        return Scores(metrics)

    def pair_scores(self, pairs) -> dict[str, float]:
        """PSNR and SSIM of both directions on true pairs: a dataset of normalised ``(a, b)``
        tensors (``data.test_pairs``). Keys ``psnr``, ``ssim`` (A -> B), ``psnr_a``, ``ssim_a``."""
        scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "psnr_a": [], "ssim_a": []}
        for i in range(len(pairs)):
            a, b = (t.numpy()[np.newaxis] for t in pairs[i])
            fake_b, fake_a = self._run(self.generator_ab, a)[0], self._run(self.generator_ba, b)[0]
            scores["psnr"].append(psnr(fake_b, b[0], data_range=2.0))
            scores["ssim"].append(ssim(fake_b, b[0], data_range=2.0))
            scores["psnr_a"].append(psnr(fake_a, a[0], data_range=2.0))
            scores["ssim_a"].append(ssim(fake_a, a[0], data_range=2.0))
        return {k: float(np.mean([v for v in values if np.isfinite(v)] or [np.inf]))
                for k, values in scores.items()}

    @property
    def available_metrics(self) -> list[str]:
        return self.recorded + ["cycle", "cycle_a", "cycle_b", "psnr", "ssim", "psnr_a", "ssim_a"]

    def _check_scorable(self, metric: str) -> None:
        if metric.startswith(("psnr", "ssim")) and not len(getattr(self.data, "test_pairs", None) or []):
            raise ValueError(f"monitor {metric!r} compares translations with true pairs, and "
                             f"{getattr(self.data, 'path', 'this data')} has none (testA/ + testB/ chips "
                             "of the same names); monitor 'valid_loss' or 'cycle' instead.")

    # --- figures -----------------------------------------------------------------------------------

    def show_results(self, rows: int = 4, rgb_bands=None, interactive: bool = False, **kwargs):
        """For the first ``rows`` validation chips of each domain, the rows A | A -> B | A -> B -> A
        and B | B -> A | B -> A -> B; returns the figure. ``interactive=True`` returns a
        :class:`toolkit.viz.ResultsViewer` over all validation chips of domain A instead.
        ``rgb_bands`` picks domain A's bands to show (domain B's come from ``data.rgb_bands_b``
        when it has them)."""
        rgb_a = rgb_bands if rgb_bands is not None else getattr(self.data, "rgb_bands", None)
        rgb_b = getattr(self.data, "rgb_bands_b", None)
        if interactive:
            return self._results_viewer(rgb_a, rgb_b)
        batches = {k: [] for k in ("a", "b", "fake_b", "rec_a", "fake_a", "rec_b")}
        for batch in self._validation_batches():
            for key, values in zip(batches, batch):
                batches[key].extend(values)
            if len(batches["a"]) >= rows:
                break
        show = lambda key, rgb: [viz.to_display(x, rgb) for x in batches[key][:rows]]  # noqa: E731
        columns = {"A": show("a", rgb_a), "A → B": show("fake_b", rgb_b), "A → B → A": show("rec_a", rgb_a),
                   "B": show("b", rgb_b), "B → A": show("fake_a", rgb_a), "B → A → B": show("rec_b", rgb_b)}
        return viz.show_grid(columns, **kwargs)

    def _results_viewer(self, rgb_a=None, rgb_b=None) -> viz.ResultsViewer:
        self._require_data("show_results")
        dataset = self.data.valid_ds

        def sample(i: int):
            a = dataset[i][0].numpy()
            fake_b = self._run(self.generator_ab, a[np.newaxis])
            rec_a = self._run(self.generator_ba, fake_b)[0]
            return a, viz.to_display(fake_b[0], rgb_b), viz.to_display(rec_a, rgb_a)

        return viz.ResultsViewer(sample, len(dataset), self.input_norm.band_names, rgb_bands=rgb_a,
                                 titles=("A", "A → B", "A → B → A"))

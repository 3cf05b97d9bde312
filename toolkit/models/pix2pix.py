"""``Pix2Pix(data)``: the conditional GAN of Isola et al. (2017) in arcgis.learn's shape.

    model = Pix2Pix(data)          # data from prepare_data
    model.lr_find()
    model.fit(20)
    model.show_results()
    model.compute_metrics()
    model.save("buildings_v1")
    model = Pix2Pix.from_model("chips/models/buildings_v1/buildings_v1.emd")
    model.predict("chip.tif", output="prediction.tif")

It sits on parts a user can also use alone: ``model.learn`` is a fastai ``Learner`` whose model
is the generator; ``GANTrainer`` (in ``model.learn.cbs``) owns the discriminator. Training,
saving and inference are :class:`toolkit.models.base.TranslationModel`'s; this file holds what
is pix2pix's own: its networks, its loss, its ``.emd`` keys, its metrics and figures.

Layer: front doors.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from torch import nn

from toolkit import viz
from toolkit.config import Pix2PixConfig
from toolkit.data.layouts import CLASSIFIED_TILES, DATASET_TYPES
from toolkit.inference import predict_raster
from toolkit.metrics import Scores, confusion, object_counts, psnr, scores_from_confusion, ssim
from toolkit.models.arcgis_learn import arcgis_emd, arcgis_weights
from toolkit.models.base import Translation, TranslationModel, one_image, progress, register
from toolkit.models.gan import ArcGISGANTrainer, DiscriminatorFeatureLoss, GANTrainer, PerceptualLoss, Pix2PixLoss
from toolkit.models.networks import SUPPORTED_BACKBONES, init_weights, unet_depth
from toolkit.models.specs import Pix2PixSpec

__all__ = ["Pix2Pix"]

DEFAULT_LR = 2e-4
RECIPES = typing.get_args(typing.get_type_hints(Pix2PixConfig)["recipe"])
_DEFAULTS = Pix2PixConfig  # the keywords' defaults, stated once (toolkit.config)
RECORDED = ["valid_loss", "train_loss", "gen_loss", "l1_loss", "d_loss"]  # per epoch, by fit


@register
class Pix2Pix(Pix2PixSpec, TranslationModel):
    """Pix2pix image-to-image translation: U-Net generator, 70x70 PatchGAN discriminator.

    Args:
        data: :func:`toolkit.prepare_data` DataLoaders (``None`` only through :meth:`from_model`).
        pretrained_path: a saved model (.emd, folder or .dlpk) to start from.
        backbone: ``None`` for the paper's U-Net, or a ResNet name (``"resnet34"``...) for
            fastai's DynamicUnet over it (random init unless ``backbone_weights`` names a local
            torchvision state dict; nothing is downloaded).
        perceptual_loss: ``True``: arcgis.learn 2.4.4's perceptual loss, the discriminator's own
            features of real and generated targets compared, plus an RMSE of logs
            (:class:`toolkit.models.gan.DiscriminatorFeatureLoss`; nothing to download). The
            path of a local torchvision ``vgg16`` state dict (ImageNet weights): the VGG-16
            feature loss of Johnson et al. (:class:`toolkit.models.gan.PerceptualLoss`), for
            targets of 1 or 3 bands. ``False`` (default): the paper's loss.
        lambda_perceptual: weight of the perceptual term: default 1 (arcgis.learn's) for
            ``True``, 10 for VGG-16.

    The arguments up to ``perceptual_loss`` are arcgis.learn's, in its order; the rest are
    keyword-only.
        ngf, ndf: filters of the first generator / discriminator layer (64 in the paper).
        lambda_l1: weight of the L1 term (100 in the paper).
        gan_weight: weight of the adversarial term; 0 gives a plain L1 U-Net (the baseline).
        norm: ``"batch"`` (the paper) or ``"instance"``.
        dropout: Dropout 0.5 in the U-Net's up blocks of ``ngf * 8`` filters outside the innermost
            one (the paper's; only while training). ``False`` for a plain segmentation U-Net.
        class_balance: mask targets (Classified_Tiles) only: in the L1 term, each class's band
            weighs its class's pixels half and the rest half, shared equally by the other classes
            (:func:`toolkit.models.gan.balanced_l1`), and report that as ``valid_loss``. For
            sparse classes such as buildings, where the paper's L1 favours predicting background
            everywhere.
        mask_loss: mask targets only: ``"l1"`` (the paper's; class-balanced with
            ``class_balance``) or ``"bce_dice"``: binary cross-entropy plus soft Dice per class
            band (:func:`toolkit.models.gan.bce_dice`), the usual loss of segmentation networks.
        mixed_precision: ``None`` = on when training on CUDA (bf16 where supported, else fp16).
        recipe: ``"paper"`` (default): Isola et al.'s recipe (nested U-Net with BatchNorm, BCE
            GAN loss, Adam betas (0.5, 0.999), mean ± 3 std band scaling). ``"arcgis"``: what
            arcgis.learn 2.4.4's ``Pix2Pix(data)`` trains: its networks (8 named down blocks,
            InstanceNorm, both sides widened to the larger band count), least-squares
            discriminator loss, Adam betas (0.5, 0.99), bands scaled min..max
            (:class:`toolkit.models.gan.ArcGISGANTrainer`); ``save`` then writes arcgis.learn's
            ``.emd`` keys and ``.pth`` tensor names, so arcgis.learn and ArcGIS Pro's own
            function load the model. Augmentation stays the data's (arcgis.learn's is
            ``prepare_data(max_lighting=0.3, max_rotate=10, max_zoom=1.1)``).
        working_dir: folder for checkpoints, saved models and TensorBoard logs; default
            ``<working_dir>/models`` of ``prepare_data(working_dir=...)``, else ``<data.path>/models``.
    """

    model_type = "Pix2Pix"
    checkpoint_name = "pix2pix"
    loss_panels = [("L1 (in [-1, 1] units)", [("l1_loss", "train L1"), ("valid_loss", "validation L1")]),
                   ("BCE", [("gen_loss", "G adversarial"), ("d_loss", "D")])]
    supported_backbones = [None, *SUPPORTED_BACKBONES]
    supported_datasets = list(DATASET_TYPES) + ["Export_Tiles"]

    def __init__(self, data, pretrained_path: str | os.PathLike | None = None,
                 backbone: str | None = _DEFAULTS.backbone, perceptual_loss: bool | str | os.PathLike = False, *,
                 lambda_perceptual: float | None = None, ngf: int = _DEFAULTS.ngf, ndf: int = _DEFAULTS.ndf,
                 lambda_l1: float = _DEFAULTS.lambda_l1, gan_weight: float = _DEFAULTS.gan_weight,
                 norm: str = _DEFAULTS.norm, dropout: bool = _DEFAULTS.dropout,
                 class_balance: bool = _DEFAULTS.class_balance, mask_loss: str = _DEFAULTS.mask_loss,
                 backbone_weights: str | os.PathLike | None = None, mixed_precision: bool | None = None,
                 recipe: str = _DEFAULTS.recipe, working_dir: str | os.PathLike | None = None) -> None:
        if data is None:
            raise ValueError("Pix2Pix needs data from prepare_data(); to load a saved model for "
                             "inference without data use Pix2Pix.from_model(path).")
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
        Pix2PixConfig(backbone=backbone, ngf=ngf, ndf=ndf, lambda_l1=lambda_l1, gan_weight=gan_weight,  # checks
                      norm=norm, dropout=bool(dropout), class_balance=bool(class_balance), mask_loss=mask_loss,
                      recipe=recipe)
        self._perceptual = None
        kind = "discriminator" if perceptual_loss is True else None
        if kind is None and perceptual_loss is not False and perceptual_loss is not None:
            kind = "vgg16"
            if data.dataset_type == CLASSIFIED_TILES:
                raise ValueError("perceptual_loss compares VGG features of images; this data's target is "
                                 "a class mask (Classified_Tiles).")
            PerceptualLoss.check_bands(data.n_bands_out)
            self._perceptual = PerceptualLoss(perceptual_loss)
        if kind == "discriminator" and data.dataset_type == CLASSIFIED_TILES:
            raise ValueError("perceptual_loss compares features of images; this data's target is a "
                             "class mask (Classified_Tiles).")
        if data.dataset_type not in DATASET_TYPES:
            raise ValueError(f"{data.path}: Pix2Pix trains on pairs (dataset_type {list(DATASET_TYPES)}); "
                             f"this data is {data.dataset_type!r} (unpaired domains: use CycleGAN).")
        if mask_loss != "l1" and data.dataset_type != CLASSIFIED_TILES:
            raise ValueError(f"mask_loss={mask_loss!r} scores class masks; this data's target is an image "
                             "(dataset_type 'Pix2Pix').")
        if mask_loss != "l1" and class_balance:
            raise ValueError(f"class_balance weighs the classes in the L1 term; mask_loss={mask_loss!r} "
                             "has no L1 term (Dice already weighs each class by its overlap).")
        if class_balance and data.dataset_type != CLASSIFIED_TILES:
            raise ValueError("class_balance weighs the classes of a mask target; this data's target "
                             "is an image (dataset_type 'Pix2Pix').")
        size = data.chip_size
        config = {
            "n_bands_in": data.n_bands_in, "n_bands_out": data.n_bands_out,
            "chip_size": list(size) if isinstance(size, tuple) else size,
            "dataset_type": data.dataset_type, "backbone": backbone,
            "depth": None if backbone else unet_depth(size), "ngf": ngf, "ndf": ndf,
            "norm": norm, "dropout": bool(dropout), "lambda_l1": lambda_l1, "gan_weight": gan_weight,
            "class_balance": bool(class_balance), "mask_loss": mask_loss,
            "perceptual_loss": kind is not None, "perceptual_kind": kind,
            "lambda_perceptual": float(lambda_perceptual if lambda_perceptual is not None
                                       else 1.0 if kind == "discriminator" else 10.0),
            "extract_bands": data.train_ds.extract_bands,
            "cell_size": list(data.cell_size) if data.cell_size else None,
        }
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
        if recipe == "arcgis":
            if data.dataset_type == CLASSIFIED_TILES or backbone or kind:
                raise ValueError("recipe='arcgis' trains arcgis.learn 2.4.4's default Pix2Pix: image "
                                 "targets, no backbone, no perceptual loss.")
            # arcgis.learn's networks, bands widened to the larger side's count, scaled min..max
            config |= {"architecture": "arcgis", "n_channel": max(data.n_bands_in, data.n_bands_out),
                       "depth": 8, "ngf": 64, "ndf": 64, "norm": "instance", "lambda_l1": 100.0,
                       "gan_weight": 1.0, "recipe": "arcgis"}
            data.use_normalization(replace(data.input_norm, scaling="minmax"),
                                   replace(data.target_norm, scaling="minmax"))
        pretrained = self._pretrained(pretrained_path, config)
        self._setup(config, data.input_norm, data.target_norm, data, backbone_weights=backbone_weights,
                    mixed_precision=mixed_precision, working_dir=working_dir)
        if pretrained is not None:
            self._load_saved(pretrained)

    # --- what the base needs -----------------------------------------------------------------------

    def _init_networks(self) -> None:
        if not self.config["backbone"]:  # a backbone keeps torchvision's init (or its weights)
            init_weights(self.generator)
        init_weights(self.discriminator)

    def _make_trainer(self) -> GANTrainer:
        c = self.config
        if c.get("recipe") == "arcgis":
            return ArcGISGANTrainer(self.discriminator, lambda_l1=c["lambda_l1"])
        perceptual = (DiscriminatorFeatureLoss(self.discriminator) if c.get("perceptual_kind") == "discriminator"
                      else getattr(self, "_perceptual", None))
        return GANTrainer(self.discriminator, lambda_l1=c["lambda_l1"], gan_weight=c["gan_weight"],
                          class_balance=c.get("class_balance", False), mask_loss=c.get("mask_loss", "l1"),
                          perceptual=perceptual,
                          lambda_perceptual=c.get("lambda_perceptual", 10.0))

    def _learner_model(self) -> nn.Module:
        return self.generator

    def _loss_func(self):
        return Pix2PixLoss(self.trainer)

    def _saved_form(self, weights: dict, emd: dict, name: str, save_inference_file: bool) -> tuple[dict, dict]:
        if self.config.get("recipe") != "arcgis":
            return weights, emd
        # arcgis.learn's .emd keys and tensor names, so arcgis.learn and Pro's own function load it
        return arcgis_weights(self.model_type, weights), arcgis_emd(emd, name, save_inference_file)

    def _adam_betas(self) -> tuple[float, float]:
        return (0.5, 0.99) if self.config.get("recipe") == "arcgis" else super()._adam_betas()

    def _emd_keys(self, name: str) -> dict:
        c = self.config
        return {"ModelConfiguration": "_pix2pix",
                "ModelParameters": {"backbone": c["backbone"], "ngf": c["ngf"], "ndf": c["ndf"]},
                "IsMultispectral": c["n_bands_in"] != 3 or c["n_bands_out"] not in (1, 3)}

    def __repr__(self) -> str:
        c = self.config
        return (f"Pix2Pix({c['dataset_type']}: {c['n_bands_in']} -> {c['n_bands_out']} bands, "
                f"{self.describe_networks(c)}, lambda_l1 {c['lambda_l1']}, gan_weight "
                f"{c['gan_weight']}, on {self.device})")

    # --- inference ---------------------------------------------------------------------------------

    def translation(self, convert_to: str | None = None) -> Translation:
        """The model as :func:`toolkit.inference.predict_raster` uses it (input -> target);
        ``convert_to`` (CycleGAN's direction) must be ``None``: ``ValueError`` otherwise."""
        self.direction(self.config, convert_to)
        return self._translation(lambda x: self._generate(x), self.input_norm, self.target_norm,
                                 "model", extract_bands=self.config.get("extract_bands"),
                                 footprint_settings=self.footprint_settings, network=self.generator,
                                 device=self.device)

    def generate(self, x: np.ndarray, tta: bool = False) -> np.ndarray:
        """Normalised ``(n, bands, h, w)`` in [-1, 1] -> generator output ``(n, bands_out, h, w)``
        in [-1, 1] (eval mode, no gradients; mixed precision on CUDA). :meth:`predict`,
        :meth:`predict_raster` and the validation metrics all go through here.

        Args:
            tta: test-time augmentation: the mean of the outputs for the 8 dihedral transforms of
                each input (identity, rotations by 90, 180 and 270 degrees, and the horizontal
                flip of each), each output transformed back first. Inputs that are not square
                (``h != w``) get the 4 transforms that keep their shape (identity, the 180-degree
                rotation, the horizontal and the vertical flip). All transforms of the ``n``
                inputs run as one batch of ``8 * n`` (or ``4 * n``): 8 times the forward work and
                the activation memory of ``tta=False``.
        """
        return self.translation().generate(x, tta=tta)

    def _generate(self, x: np.ndarray) -> np.ndarray:
        """One plain forward pass of the generator (every inference pass goes through here)."""
        return self._run(self.generator, x)

    def to_target_units(self, out: np.ndarray) -> np.ndarray:
        """Generator output in [-1, 1] -> target units: band values for image targets, class scores
        in [0, 1] (one band per class; 0.5 is the decision threshold) for mask targets."""
        return self.translation().to_target_units(out)

    def predict(self, image: str | os.PathLike | np.ndarray | None = None, output: str | os.PathLike | None = None,
                *, path: str | os.PathLike | None = None, transform=None, crs=None, overwrite: bool = False,
                tta: bool = False) -> np.ndarray:
        """Translate one chip of any size.

        Args:
            image: a chip file, or an array ``(bands, height, width)`` in input units
                (``path=``: arcgis.learn's name for it).
            output: write the result there as a float32 GeoTIFF carrying the chip's CRS and
                transform (``transform``/``crs`` for an array input); nodata NaN.
            overwrite: replace an existing ``output`` that the toolkit wrote (as
                :meth:`predict_raster`: never another file, and never the input).
            tta: test-time augmentation: the mean over the 8 flips and 90-degree rotations of
                the chip, each output turned back (4 for a chip that is not square: identity,
                180 degrees and the two flips); 8 (4) times the work. See :meth:`generate`.

        Returns:
            float32 ``(bands, height, width)`` in target units (see :meth:`to_target_units`);
            pixels where the input is nodata are NaN.
        """
        image = one_image(image, path, "path")
        return self.translation().predict(image, output, transform=transform, crs=crs,
                                          overwrite=overwrite, tta=tta)

    def predict_raster(self, in_raster: str | os.PathLike, out_raster: str | os.PathLike, *,
                       padding: int | None = None, batch_size: int = 8, threshold: float | None = None,
                       overwrite: bool = False, progress: bool = True, tta: bool = False,
                       client=None, timeout: float | None = 300.0, backend: str = "auto",
                       precision: str = "fp32") -> Path:
        """Translate a whole scene into a georeferenced GeoTIFF, window by window with Hann-weighted
        blending of overlaps (no seams); ``tta=True`` averages each window over its flips and
        90-degree rotations first; with a ``dask.distributed.Client`` as ``client``, bands of the
        scene run on its workers (save the model first), failing after ``timeout`` seconds
        without any worker; ``backend`` where the generator runs (default the fastest exact path
        installed, :mod:`toolkit.models.backends`); see :func:`toolkit.inference.predict_raster`."""
        return predict_raster(self.translation(), in_raster, out_raster, padding=padding,
                                    batch_size=batch_size, threshold=threshold, overwrite=overwrite,
                                    progress=progress, tta=tta, client=client, timeout=timeout, backend=backend,
                                    precision=precision)

    # --- evaluation --------------------------------------------------------------------------------

    def _validation_batches(self, show_progress: bool = False):
        """``(x, y, prediction)`` numpy batches in [-1, 1] over the validation set (no augmentation)."""
        self._require_data("this")
        for x, y in progress(self.data.valid, show_progress):
            yield x.cpu().numpy(), y.cpu().numpy(), self.generate(x.cpu().numpy())

    def compute_metrics(self, show_progress: bool = False) -> Scores:
        """Scores on the validation set (a :class:`toolkit.metrics.Scores`: ``["PSNR"]`` reads
        as in arcgis.learn; ``show_progress`` shows a progress bar over the validation batches):
        ``psnr`` (dB, from the MSE over the [-1, 1] data range,
        i.e. each band's normalisation range), ``ssim``, ``l1`` (mean absolute error in [-1, 1]
        units, as ``valid_loss``); for Classified_Tiles also ``iou``, ``f1``, ``precision``,
        ``recall`` and ``accuracy`` of the footprint (any class against background) at 0.5, and
        ``footprint_f1``: the object F1 (IoU >= 0.5) of the footprints with the best of a few
        settings (:attr:`METRIC_GRID`, a corner of :meth:`tune_footprints`' grid), about what
        tuning would reach now; ``fit(monitor="footprint_f1")`` keeps the epoch whose footprints
        are best."""
        psnrs, ssims, l1s = [], [], []
        counts = np.zeros(4, dtype=np.int64)
        batches = []
        for x, y, pred in self._validation_batches(show_progress):
            if self.is_mask:
                batches.append((None, y, pred))
            for p, t in zip(pred, y):
                psnrs.append(psnr(p, t, data_range=2.0))
                ssims.append(ssim(p, t, data_range=2.0))
                l1s.append(float(np.abs(p - t).mean()))
                if self.is_mask:
                    counts += confusion(self.target_norm.decode(p) > 0, self.target_norm.decode(t) > 0)
        finite = [v for v in psnrs if np.isfinite(v)]
        metrics = {"psnr": float(np.mean(finite)) if finite else float("inf"),
                   "ssim": float(np.mean(ssims)), "l1": float(np.mean(l1s))}
        if self.is_mask:
            metrics.update(scores_from_confusion(counts))
            grid = self._footprint_grid(*self.METRIC_GRID.values(), batches=batches)
            metrics["footprint_f1"] = float(max(grid.values()))
        self.metrics = metrics
        return Scores(metrics)

    # the settings tune_footprints tries by default
    TUNING_GRID = {"thresholds": (0.3, 0.4, 0.5, 0.6, 0.7),
                   "boundary_thresholds": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
                   "min_areas": (0.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0), "marker_erosions": (0, 1)}
    # the footprint_f1 metric's: a corner of the tuning grid, cheap enough for every epoch
    METRIC_GRID = {"thresholds": (0.3, 0.5), "boundary_thresholds": (0.5, 0.7), "min_areas": (10.0, 30.0),
                   "marker_erosions": (0,)}

    def tune_footprints(self, thresholds=TUNING_GRID["thresholds"],
                        boundary_thresholds=TUNING_GRID["boundary_thresholds"],
                        min_areas=TUNING_GRID["min_areas"],
                        marker_erosions=TUNING_GRID["marker_erosions"]) -> dict[str, float]:
        """Pick the footprint settings of :func:`toolkit.vectorize` by object F1 (IoU >= 0.5, the
        SpaceNet metric) on the validation chips, and keep them with the model.

        Every combination of ``thresholds`` (footprint score), ``boundary_thresholds`` (outline
        score), ``marker_erosions`` (pixels; both only when the model has an outline class) and
        ``min_areas`` (CRS units squared, m² for a UTM CRS) is tried; true footprints are the
        chips' labels, separated along their outline class. The best combination becomes
        :attr:`footprint_settings`: saved with the model, written by :meth:`predict_raster` into
        the prediction's tags, and so the default of ``vectorize(prediction.tif)``. Validation
        chips on ground of their own (``prepare_data(validation_area=...)``) keep the choice
        honest: chips that overlap training chips favour settings that suit seen ground.

        Returns:
            ``{"threshold", "boundary_threshold", "min_area", "marker_erosion", "f1",
            "default_f1"}``: the chosen settings, their object F1 and that of the defaults (0.5,
            0.5, 0, 0), or None when the grid does not hold them.
        """
        from toolkit.vector import DEFAULTS

        self._require_data("tune_footprints")
        if not self.is_mask:
            raise ValueError("tune_footprints needs a mask model (Classified_Tiles); this one "
                             "translates images.")
        results = self._footprint_grid(thresholds, boundary_thresholds, min_areas, marker_erosions)
        best, f1 = max(results.items(), key=lambda item: item[1])
        names = ("threshold", "boundary_threshold", "min_area", "marker_erosion")
        default_f1 = results.get(tuple(DEFAULTS[k] for k in names))
        self.footprint_settings = {k: (int(v) if k == "marker_erosion" else float(v)) for k, v in zip(names, best)}
        self.metrics["footprint_f1"] = float(f1)
        return self.footprint_settings | {"f1": float(f1),
                                          "default_f1": float(default_f1) if default_f1 is not None else None}

    def _footprint_grid(self, thresholds, boundary_thresholds, min_areas, marker_erosions,
                        batches=None) -> dict[tuple, float]:
        """Object F1 on the validation chips for each combination of settings:
        ``{(threshold, boundary_threshold, min_area, marker_erosion): f1}``. Scored on label
        rasters (:func:`toolkit.metrics.object_counts`), the same counts as on the vectorized
        polygons, at a fraction of the cost. ``batches``: the validation batches, if at hand."""
        from toolkit.data.layouts import boundary_class
        from toolkit.vector import DEFAULTS, footprint_labels

        classes = self.target_norm.classes
        outline = boundary_class(classes)
        band = classes.index(outline) if outline is not None else None
        if outline is None:  # connected areas: no outline score, no markers
            boundary_thresholds = (DEFAULTS["boundary_threshold"],)
            marker_erosions = (DEFAULTS["marker_erosion"],)
        cell = self.config.get("cell_size") or (1.0, 1.0)
        pixel_area = abs(cell[0] * cell[1])
        chips = []
        for _, y, pred in (batches if batches is not None else self._validation_batches()):
            for scores, target in zip(pred, y):
                labels = self.target_norm.decode(target).astype(np.int32)[np.newaxis]
                truth = (footprint_labels(labels, boundary_class=outline["Value"]) if outline is not None
                         else ndimage.label(labels[0] > 0)[0])
                chips.append((self.to_target_units(scores), truth))
        counts: dict[tuple, np.ndarray] = {}
        for t in thresholds:
            for bt in boundary_thresholds:
                for erosion in marker_erosions:
                    for scores, truth in chips:
                        if band is None:
                            found = ndimage.label(scores.max(axis=0) >= t)[0]
                        else:
                            found = footprint_labels(scores, boundary_band=band, threshold=t,
                                                     boundary_threshold=bt, marker_erosion=erosion)
                        for area in min_areas:
                            key = (t, bt, area, erosion)
                            tp_fp_fn = object_counts(found, truth, min_pixels=math.ceil(area / pixel_area - 1e-9))
                            counts[key] = counts.get(key, 0) + np.asarray(tp_fp_fn)
        return {key: scores_from_confusion([*c, 0])["f1"] for key, c in counts.items()}

    @property
    def available_metrics(self) -> list[str]:
        base = RECORDED + ["psnr", "ssim", "l1"]
        return base + (["iou", "f1", "precision", "recall", "accuracy", "footprint_f1"] if self.is_mask else [])

    # --- figures -----------------------------------------------------------------------------------

    def _display_target(self, y: np.ndarray) -> np.ndarray:
        if self.is_mask:
            return viz.mask_to_rgb(self.target_norm.decode(y), self.target_norm.classes)
        return viz.to_display(y)

    def show_results(self, rows: int = 4, rgb_bands=None, interactive: bool = False, **kwargs):
        """Input / Target / Prediction columns for the first ``rows`` validation chips; returns
        the figure. ``interactive=True`` returns a :class:`toolkit.viz.ResultsViewer` instead: a
        widget with a slider over all validation chips and, for 3 or more input bands, the bands
        to show as red, green and blue."""
        rgb_bands = rgb_bands if rgb_bands is not None else getattr(self.data, "rgb_bands", None)
        if interactive:
            return self._results_viewer(rgb_bands)
        xs, ys, ps = [], [], []
        for x, y, pred in self._validation_batches():
            xs.extend(x)
            ys.extend(y)
            ps.extend(pred)
            if len(xs) >= rows:
                break
        columns = {"Input": [viz.to_display(x, rgb_bands) for x in xs[:rows]],
                   "Target": [self._display_target(y) for y in ys[:rows]],
                   "Prediction": [self._display_target(p) for p in ps[:rows]]}
        return viz.show_grid(columns, **kwargs)

    def _results_viewer(self, rgb_bands=None) -> viz.ResultsViewer:
        self._require_data("show_results")
        dataset = self.data.valid_ds

        def sample(i: int):
            x, y = (t.numpy() for t in dataset[i])
            prediction = self.generate(x[np.newaxis])[0]
            return x, self._display_target(y), self._display_target(prediction)

        return viz.ResultsViewer(sample, len(dataset), self.input_norm.band_names, rgb_bands=rgb_bands)

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
is the generator; ``GANTrainer`` (in ``model.learn.cbs``) owns the discriminator.
"""

from __future__ import annotations

import os
import warnings
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from toolkit import __version__, viz
from toolkit._fastai import quiet_import
from toolkit._fs import (atomic_file, check_not_input, check_output_file, check_output_folder,
                         check_writable_folder)
from toolkit.data.chips import read_chip
from toolkit.data.layouts import CLASSIFIED_TILES, DATASET_TYPES
from toolkit.data.normalization import BandNorm, MaskEncoding, target_from_dict
from toolkit.metrics import confusion, object_f1, psnr, scores_from_confusion, ssim
from toolkit.models.checkpoint import Checkpoint, find_resumable, load_checkpoint, new_fit_id, plain_state
from toolkit.models.gan import GANTrainer, History, Pix2PixLoss, loss_metrics
from toolkit.models.emd_schema import build_networks, check_state_fits, check_weights_fit
from toolkit.models.model_folder import MODEL_KIND, read_model_folder, write_model_folder
from toolkit.models.networks import SUPPORTED_BACKBONES, init_weights, unet_depth
from toolkit.raster import is_toolkit_raster, write_raster
from toolkit.stats import band_validity, check_band_coverage

with quiet_import():
    from fastai.callback.fp16 import MixedPrecision
    from fastai.callback.schedule import ParamScheduler, SchedLin, SchedNo, combine_scheds
    from fastai.learner import Learner
    from fastai.optimizer import Adam
    from fastai.torch_core import default_device

__all__ = ["Pix2Pix"]

DEFAULT_LR = 2e-4
RECORDED = ["valid_loss", "train_loss", "gen_loss", "l1_loss", "d_loss"]  # per epoch, by fit


class Pix2Pix:
    """Pix2pix image-to-image translation: U-Net generator, 70x70 PatchGAN discriminator.

    Args:
        data: :func:`toolkit.prepare_data` DataLoaders (``None`` only through :meth:`from_model`).
        pretrained_path: a saved model (.emd, folder or .dlpk) to start from.
        backbone: ``None`` for the paper's U-Net, or a ResNet name (``"resnet34"``...) for
            fastai's DynamicUnet over it (random init unless ``backbone_weights`` names a local
            torchvision state dict; nothing is downloaded).
        ngf, ndf: filters of the first generator / discriminator layer (64 in the paper).
        lambda_l1: weight of the L1 term (100 in the paper).
        gan_weight: weight of the adversarial term; 0 gives a plain L1 U-Net (the baseline).
        norm: ``"batch"`` (the paper) or ``"instance"``.
        class_balance: mask targets (Classified_Tiles) only: weigh each class's pixels and the
            rest equally in the L1 term (:func:`toolkit.models.gan.balanced_l1`), and report that
            as ``valid_loss``. For sparse classes such as buildings, where the paper's L1 favours
            predicting background everywhere.
        mixed_precision: ``None`` = on when training on CUDA (bf16 where supported, else fp16).
        working_dir: folder for checkpoints and saved models; default ``<data.path>/models``.
    """

    supported_backbones = [None, *SUPPORTED_BACKBONES]
    supported_datasets = list(DATASET_TYPES) + ["Export_Tiles"]

    def __init__(self, data, *, pretrained_path: str | os.PathLike | None = None,
                 backbone: str | None = None, ngf: int = 64, ndf: int = 64,
                 lambda_l1: float = 100.0, gan_weight: float = 1.0, norm: str = "batch",
                 class_balance: bool = False, backbone_weights: str | os.PathLike | None = None,
                 mixed_precision: bool | None = None,
                 working_dir: str | os.PathLike | None = None) -> None:
        if data is None:
            raise ValueError("Pix2Pix needs data from prepare_data(); to load a saved model for "
                             "inference without data use Pix2Pix.from_model(path).")
        if class_balance and data.dataset_type != CLASSIFIED_TILES:
            raise ValueError("class_balance weighs the classes of a mask target; this data's target "
                             "is an image (dataset_type 'Pix2Pix').")
        size = data.chip_size
        config = {
            "n_bands_in": data.n_bands_in, "n_bands_out": data.n_bands_out,
            "chip_size": list(size) if isinstance(size, tuple) else size,
            "dataset_type": data.dataset_type, "backbone": backbone,
            "depth": None if backbone else unet_depth(size), "ngf": ngf, "ndf": ndf,
            "norm": norm, "lambda_l1": lambda_l1, "gan_weight": gan_weight,
            "class_balance": bool(class_balance),
            "extract_bands": data.train_ds.extract_bands,
            "cell_size": list(data.cell_size) if data.cell_size else None,
        }
        self._setup(config, data.input_norm, data.target_norm, data, backbone_weights=backbone_weights,
                    mixed_precision=mixed_precision, working_dir=working_dir)
        if pretrained_path is not None:
            self.load(pretrained_path)

    # --- construction ----------------------------------------------------------------------------

    def _setup(self, config: dict, input_norm: BandNorm, target_norm, data, *, backbone_weights=None,
               mixed_precision=None, working_dir=None) -> None:
        self.config = config
        self.input_norm, self.target_norm = input_norm, target_norm
        self.data = data
        self.history: list[dict] = []
        self.metrics: dict[str, float] = {}
        self.footprint_settings: dict[str, float] | None = None  # tune_footprints(); vectorize's defaults
        self._suggested_lr: float | None = None
        self.device = data.device if data is not None else default_device()
        # The same builder checks a saved model's weights on the meta device (emd_schema).
        self.generator, self.discriminator = build_networks(config, backbone_weights=backbone_weights)
        if not config["backbone"]:  # a backbone keeps torchvision's init (or its weights)
            init_weights(self.generator)
        init_weights(self.discriminator)
        self.trainer = GANTrainer(self.discriminator, lambda_l1=config["lambda_l1"],
                                  gan_weight=config["gan_weight"],
                                  class_balance=config.get("class_balance", False))
        self.models_dir = Path(working_dir) if working_dir else (
            Path(data.path) / "models" if data is not None else None)
        self.learn = None
        if data is not None:
            cbs = [self.trainer]
            cuda = self.device.type == "cuda"
            if mixed_precision or (mixed_precision is None and cuda):
                bf16 = cuda and torch.cuda.is_bf16_supported()
                cbs.append(MixedPrecision(amp_mode="bf16" if bf16 else "fp16"))
            if cuda:
                self.generator.to(memory_format=torch.channels_last)
                self.discriminator.to(memory_format=torch.channels_last)
            self.learn = Learner(data, self.generator, loss_func=Pix2PixLoss(self.trainer),
                                 opt_func=partial(Adam, mom=0.5, sqr_mom=0.999, eps=1e-8, wd=0.0),
                                 wd=0.0, lr=DEFAULT_LR, metrics=loss_metrics(self.trainer), cbs=cbs,
                                 path=self.models_dir.parent, model_dir=self.models_dir.name)
        self.generator.to(self.device)
        self.discriminator.to(self.device)

    @classmethod
    def from_model(cls, path: str | os.PathLike, data=None, *, normalization: str = "model",
                   working_dir: str | os.PathLike | None = None) -> Pix2Pix:
        """Load a saved model (its ``.emd``, folder or ``.dlpk``) for inference, or, with ``data``,
        to train further (fine-tuning). Without data, ``fit`` raises a clear error.

        Args:
            normalization: with ``data``: ``"model"`` (default) trains on the data's chips scaled
                with the statistics the model learned with: ``data`` is switched to them (see
                :meth:`toolkit.data.ChipDataLoaders.use_normalization`), so training and
                prediction see the same scaling. ``"data"`` re-fits the model to the data's
                statistics instead (the model then scales every input with them; a warning says so).
            working_dir: folder for checkpoints and saved models; default ``<data.path>/models``.
        """
        if normalization not in ("model", "data"):
            raise ValueError(f"normalization must be 'model' or 'data', got {normalization!r}.")
        emd, weights, emd_path = read_model_folder(path)  # a validated .emd, size-capped reads
        config = emd["Toolkit"]["config"]
        # shapes first, on the meta device: an .emd whose sizes the weights do not have (say
        # ngf=100000) is refused before anything real is allocated
        check_weights_fit(config, weights, emd_path)
        input_norm = BandNorm.from_dict(emd["Toolkit"]["input_norm"])
        target_norm = target_from_dict(emd["Toolkit"]["target_norm"])
        model = cls.__new__(cls)
        if data is not None:
            if (data.n_bands_in, data.n_bands_out) != (config["n_bands_in"], config["n_bands_out"]):
                raise ValueError(f"{emd_path}: the model maps {config['n_bands_in']} -> "
                                 f"{config['n_bands_out']} bands, the data {data.n_bands_in} -> "
                                 f"{data.n_bands_out}.")
            if normalization == "model":
                data.use_normalization(input_norm, target_norm)
            else:
                input_norm, target_norm = data.input_norm, data.target_norm
                warnings.warn(f"{emd_path}: fine-tuning with the statistics of {data.path} "
                              "(normalization='data'): the model's own statistics are replaced, "
                              "and it scales every input with the new ones from now on.", stacklevel=2)
        model._setup(config, input_norm, target_norm, data, working_dir=working_dir)
        model._load_weights(weights, emd_path)
        model.history = list(emd["Toolkit"].get("history", []))
        model.metrics = dict(emd["Toolkit"].get("metrics", {}))
        model.footprint_settings = emd["Toolkit"].get("footprint_settings")
        model.emd_path = emd_path
        return model

    def __repr__(self) -> str:
        c = self.config
        net = f"{c['backbone']} U-Net" if c["backbone"] else f"U-Net depth {c['depth']}, ngf {c['ngf']}"
        return (f"Pix2Pix({c['dataset_type']}: {c['n_bands_in']} -> {c['n_bands_out']} bands, "
                f"{net}, PatchGAN ndf {c['ndf']}, lambda_l1 {c['lambda_l1']}, gan_weight "
                f"{c['gan_weight']}, on {self.device})")

    # --- files ----------------------------------------------------------------------------------

    def _input_paths(self) -> list[Path]:
        """What this model reads: the training chips and metadata (never written over)."""
        folder = getattr(self.data, "folder", None)
        return folder.input_paths if folder is not None else []

    @property
    def source_files(self) -> list[Path]:
        """The saved model files this model was loaded from or last saved to."""
        emd_path = getattr(self, "emd_path", None)
        if emd_path is None:
            return []
        return [emd_path] if emd_path.suffix.lower() == ".dlpk" else [emd_path, emd_path.with_suffix(".pth")]

    def _check_working_dir(self, what: str) -> Path:
        """The working folder, checked before any work: not inside the training chips, and writable."""
        if self.models_dir is None:
            raise ValueError(f"{what} needs a working folder: pass working_dir= to Pix2Pix.from_model().")
        hint = ("Pass working_dir= (Pix2Pix(data, working_dir=...) or Pix2Pix.from_model(path, data, "
                "working_dir=...)) to use a folder you can write.")
        check_not_input(self.models_dir, self._input_paths(), role="working_dir")
        return check_writable_folder(self.models_dir, role="working folder", hint=hint)

    # --- training --------------------------------------------------------------------------------

    def _require_data(self, what: str) -> None:
        if self.learn is None:
            raise RuntimeError(f"{what} needs training data: this model was loaded for inference. "
                               "Use Pix2Pix.from_model(path, data=prepare_data(...)).")

    fit_id: str | None = None  # the id of the last fit (its checkpoint files); set by fit()

    def fit(self, epochs: int = 10, lr: float | None = None, one_cycle: bool = True,
            early_stopping: bool | int = False, checkpoint: bool | str = True,
            monitor: str = "valid_loss", resume: bool | str = False, schedule: str | None = None) -> None:
        """Train for ``epochs`` epochs.

        Args:
            lr: learning rate; default the last :meth:`lr_find` suggestion, else 2e-4.
            one_cycle: fastai's one-cycle learning-rate schedule (beta1 stays 0.5); else constant.
            schedule: ``"linear_decay"``: the paper's schedule, constant for the first half of the
                epochs, then linear to 0 (overrides ``one_cycle``).
            early_stopping: stop when ``monitor`` has not improved for 5 epochs (or this many).
            checkpoint: after each epoch write a checkpoint to ``<working_dir>/checkpoints/``:
                ``<name>-<fit id>_last.pth`` and, when ``monitor`` improved, ``_best.pth``
                (``name`` is ``"pix2pix"``, or this string); the best epoch is restored at the
                end. Each fit has its own files (id in :attr:`fit_id`); none of another fit's
                are touched.
            monitor: ``valid_loss`` (validation L1), ``train_loss``, ``gen_loss``, ``l1_loss`` or ``d_loss``.
            resume: ``True`` continues the most recently saved unfinished fit of this checkpoint
                name, a fit id continues that fit, from its last checkpoint: same ``epochs``; the
                learning rate, schedule, monitor and early stopping (unless given; 0 turns it
                off) are the checkpoint's. Weights, optimizers, gradient scalers, early
                stopping's state and the random-number states come back, so the fit ends as it
                would have without the interruption.
        """
        self._require_data("fit")
        self._check_working_dir("fit")
        if schedule not in (None, "linear_decay"):
            raise ValueError(f"schedule must be None or 'linear_decay', got {schedule!r}.")
        if monitor not in RECORDED:
            raise ValueError(f"monitor {monitor!r} is not recorded during fit; choose one of {RECORDED}.")
        name = checkpoint if isinstance(checkpoint, str) else "pix2pix"
        folder = self.models_dir / "checkpoints"
        start, state = 0, None
        if resume:
            path = find_resumable(folder, name, resume if isinstance(resume, str) else None)
            state = load_checkpoint(path)
            if state["fit"]["epochs"] != epochs:
                how = "True" if resume is True else repr(state["fit_id"])
                raise ValueError(f"{path}: the checkpoint is of a fit of {state['fit']['epochs']} "
                                 f"epochs; resume it with fit({state['fit']['epochs']}, resume={how}).")
            self._restore(state, optimizers=True)
            # loaded: no second copy of the weights for the whole fit, only the loop's state
            state = {k: v for k, v in state.items()
                     if k not in ("generator", "discriminator", "g_opt", "d_opt")}
            lr, one_cycle, schedule = state["fit"]["lr"], state["fit"]["one_cycle"], state["fit"]["schedule"]
            start, monitor, self.fit_id = state["epoch"] + 1, state["monitor"], state["fit_id"]
            if early_stopping is False:  # as the interrupted fit did, unless asked otherwise
                early_stopping = state["fit"].get("patience") or False
            if start >= epochs:
                return
        else:
            self.fit_id = new_fit_id(folder, name)
        lr = float(lr or self._suggested_lr or DEFAULT_LR)
        patience = None if not early_stopping else 5 if early_stopping is True else int(early_stopping)
        fit_config = {"epochs": epochs, "lr": lr, "one_cycle": one_cycle, "schedule": schedule,
                      "patience": patience}
        cbs = [History(self.history, start_epoch=start)]
        if checkpoint or patience or state:
            # One callback tracks the best epoch for both: early stopping's state is saved with
            # the checkpoint of the epoch, before the fit stops. It also puts a resumed fit's
            # loop state back (even with checkpoint=False).
            cbs.append(Checkpoint(folder if checkpoint else None, name, self.fit_id, monitor,
                                  lambda: self._state(fit_config), self._restore_best,
                                  scalers={"scaler": lambda: getattr(self.learn, "scaler", None),
                                           "d_scaler": lambda: self.trainer.d_scaler},
                                  patience=patience, resume=state))
        if schedule == "linear_decay":
            half = epochs // 2
            sched = combine_scheds([half / epochs, 1 - half / epochs], [SchedNo(lr, lr), SchedLin(lr, 0.0)]) \
                if half else SchedLin(lr, 0.0)
            self.learn.fit(epochs, lr, cbs=cbs + [ParamScheduler({"lr": sched})], start_epoch=start)
        elif one_cycle:
            self.learn.fit_one_cycle(epochs, lr, moms=(0.5, 0.5, 0.5), cbs=cbs, start_epoch=start)
        else:
            self.learn.fit(epochs, lr, cbs=cbs, start_epoch=start)

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 1e-1, num_it: int = 100,
                show_plot: bool = True) -> float:
        """Run fastai's learning-rate finder on the L1 part of the generator loss (the GAN term
        says little about the step size) and return the suggested rate, used by the next ``fit``."""
        self._require_data("lr_find")
        self._check_working_dir("lr_find")
        self.trainer.l1_only = True
        try:
            suggestion = self.learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it,
                                            show_plot=show_plot)
        finally:
            self.trainer.l1_only = False
        self._suggested_lr = float(suggestion.valley)
        return self._suggested_lr

    # --- state -------------------------------------------------------------------------------------

    def _state(self, fit_config: dict | None = None, optimizers: bool = True) -> dict:
        """The model's state: ``generator``, ``discriminator`` (state dicts), ``history``,
        ``config``; with ``optimizers`` (and an optimizer made) ``g_opt`` and ``d_opt``; with a
        ``fit_config`` (``epochs``, ``lr``... of a fit, for its checkpoints) also ``fit``. The
        training loop's state (epoch, scalers, random numbers) is the ``Checkpoint``'s to add."""
        state = {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                 "history": list(self.history), "config": dict(self.config)}
        if optimizers and self.learn is not None and self.learn.opt is not None:
            state["g_opt"] = _opt_state(self.learn.opt)
            state["d_opt"] = self.trainer.d_opt.state_dict()
        if fit_config is not None:
            state["fit"] = fit_config
        return state

    def _restore(self, state: dict, optimizers: bool = True) -> None:
        """Load what :meth:`_state` gave: both networks, the history and, with ``optimizers``
        (when the state has them), both optimizers' states."""
        self._load_weights(state, "checkpoint")
        if state.get("history") is not None:
            self.history[:] = state["history"]
        if optimizers and "g_opt" in state:
            if self.learn.opt is None:
                self.learn.create_opt()
            _load_opt_state(self.learn.opt, state["g_opt"])
            self.trainer.d_opt.load_state_dict(state["d_opt"])

    def _restore_best(self, state: dict) -> None:
        """After a fit: the best epoch's weights, from its checkpoint. The history keeps every
        epoch trained, and the optimizers stay as the last epoch left them."""
        self._load_weights(state, "checkpoint")

    def _load_weights(self, state: dict, source) -> None:
        """Load ``state["generator"]`` (and ``state["discriminator"]`` where present) into the
        networks. ``ValueError`` naming ``source`` and the first tensor that is missing, extra or
        of another shape, raised before any weight changes (no half-loaded model)."""
        check_state_fits({"generator": self.generator, "discriminator": self.discriminator}, state,
                         source, f"this network ({self!r})")
        try:
            self.generator.load_state_dict(state["generator"])
            if "discriminator" in state:
                self.discriminator.load_state_dict(state["discriminator"])
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"{source}: the weights do not fit this network ({self!r}): {err}") from err

    # --- inference ---------------------------------------------------------------------------------

    @property
    def is_mask(self) -> bool:
        return isinstance(self.target_norm, MaskEncoding)

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
        if not tta:
            return self._generate(x)
        x = np.asarray(x)
        n = len(x)
        transforms = _dihedral(x.shape[-2] == x.shape[-1])
        out = self._generate(np.concatenate([_transform(x, k, flip) for k, flip in transforms]))
        mean = np.zeros((n, *out.shape[1:2], *x.shape[-2:]), np.float32)
        for i, (k, flip) in enumerate(transforms):
            mean += _untransform(out[i * n:(i + 1) * n], k, flip)
        return mean / np.float32(len(transforms))

    def _generate(self, x: np.ndarray) -> np.ndarray:
        """One plain forward pass: :meth:`generate` with ``tta=False`` (kept for callers of the
        earlier name; every forward pass of the generator at inference goes through here)."""
        self.generator.eval()
        with torch.no_grad(), self._autocast():
            out = self.generator(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return out.float().cpu().numpy()

    def _autocast(self):
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def to_target_units(self, out: np.ndarray) -> np.ndarray:
        """Generator output in [-1, 1] -> target units: band values for image targets, class scores
        in [0, 1] (one band per class; 0.5 is the decision threshold) for mask targets."""
        if self.is_mask:
            return ((np.asarray(out, np.float32) + 1.0) / 2.0).astype(np.float32)
        return self.target_norm.denormalize(out)

    def predict(self, image: str | os.PathLike | np.ndarray, output: str | os.PathLike | None = None,
                *, transform=None, crs=None, overwrite: bool = False, tta: bool = False) -> np.ndarray:
        """Translate one chip of any size.

        Args:
            image: a chip file, or an array ``(bands, height, width)`` in input units.
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
        nodata = None
        if output is not None:
            inputs = [image] if isinstance(image, (str, os.PathLike)) else []
            check_not_input(output, inputs + self.source_files, role="output")
            check_output_file(output, overwrite=overwrite, role="output", owned=is_toolkit_raster,
                              what="a prediction")
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such chip.")
            data, nodata = read_chip(path)
            if output is not None and (transform is None or crs is None):
                import rasterio

                with rasterio.open(path) as src:
                    transform = src.transform if transform is None else transform
                    crs = src.crs if crs is None else crs
        else:
            data = np.asarray(image)
            if data.ndim == 2:
                data = data[np.newaxis]
        if self.config.get("extract_bands"):
            data = data[self.config["extract_bands"]]
        if data.ndim != 3 or data.shape[0] != self.config["n_bands_in"]:
            raise ValueError(f"the model takes {self.config['n_bands_in']} band(s) (bands, height, width); "
                             f"got an array of shape {data.shape}.")
        valid = band_validity(data, nodata)
        check_band_coverage(valid, image if isinstance(image, (str, os.PathLike)) else "image")
        x = self.input_norm.normalize(data, valid)
        result = self.to_target_units(self.generate(x[np.newaxis], tta=tta)[0])
        result[:, ~valid.any(axis=0)] = np.nan
        if output is not None:
            with atomic_file(output) as tmp:
                write_raster(tmp, result, transform=transform, crs=crs, nodata=np.nan, output_of="predict")
        return result

    def predict_raster(self, in_raster: str | os.PathLike, out_raster: str | os.PathLike, *,
                       padding: int | None = None, batch_size: int = 8, threshold: float | None = None,
                       overwrite: bool = False, progress: bool = True, tta: bool = False) -> Path:
        """Translate a whole scene into a georeferenced GeoTIFF, window by window with Hann-weighted
        blending of overlaps (no seams); ``tta=True`` averages each window over its flips and
        90-degree rotations first; see :func:`toolkit.inference.predict_raster`."""
        from toolkit.inference import predict_raster

        return predict_raster(self, in_raster, out_raster, padding=padding, batch_size=batch_size,
                              threshold=threshold, overwrite=overwrite, progress=progress, tta=tta)

    # --- evaluation --------------------------------------------------------------------------------

    def _validation_batches(self):
        """``(x, y, prediction)`` numpy batches in [-1, 1] over the validation set (no augmentation)."""
        self._require_data("this")
        for x, y in self.data.valid:
            yield x.cpu().numpy(), y.cpu().numpy(), self.generate(x.cpu().numpy())

    def compute_metrics(self) -> dict[str, float]:
        """Scores on the validation set: ``psnr`` (dB, from the MSE over the [-1, 1] data range,
        i.e. each band's normalisation range), ``ssim``, ``l1`` (mean absolute error in [-1, 1]
        units, as ``valid_loss``); for Classified_Tiles also ``iou``, ``f1``, ``precision``,
        ``recall`` and ``accuracy`` of the footprint (any class against background) at 0.5."""
        psnrs, ssims, l1s = [], [], []
        counts = np.zeros(4, dtype=np.int64)
        for x, y, pred in self._validation_batches():
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
        self.metrics = metrics
        return metrics

    def tune_footprints(self, thresholds=(0.3, 0.4, 0.5, 0.6, 0.7),
                        boundary_thresholds=(0.3, 0.4, 0.5, 0.6, 0.7),
                        min_areas=(0.0, 2.0, 5.0, 10.0, 20.0)) -> dict[str, float]:
        """Pick the footprint settings of :func:`toolkit.vectorize` by object F1 (IoU >= 0.5, the
        SpaceNet metric) on the validation chips, and keep them with the model.

        Every combination of ``thresholds`` (footprint score), ``boundary_thresholds`` (outline
        score; only when the model has an outline class) and ``min_areas`` (CRS units squared, m²
        for a UTM CRS) is tried; true footprints are the chips' labels, separated along their
        outline class. The best combination becomes :attr:`footprint_settings`: saved with the
        model, written by :meth:`predict_raster` into the prediction's tags, and so the default
        of ``vectorize(prediction.tif)``.

        Returns:
            ``{"threshold", "boundary_threshold", "min_area", "f1", "default_f1"}``: the chosen
            settings, their object F1 and that of the defaults (0.5, 0.5, 0).
        """
        from affine import Affine

        from toolkit.data.layouts import boundary_class
        from toolkit.vector import DEFAULTS, vectorize

        self._require_data("tune_footprints")
        if not self.is_mask:
            raise ValueError("tune_footprints needs a mask model (Classified_Tiles); this one "
                             "translates images.")
        classes = self.target_norm.classes
        outline = boundary_class(classes)
        band = classes.index(outline) if outline is not None else False
        if outline is None:
            boundary_thresholds = (DEFAULTS["boundary_threshold"],)
        cell = self.config.get("cell_size") or (1.0, 1.0)
        transform = Affine.scale(cell[0], -cell[1])  # areas in CRS units, as min_area
        chips = []
        for _, y, pred in self._validation_batches():
            for scores, target in zip(pred, y):
                labels = self.target_norm.decode(target).astype(np.int32)[np.newaxis]
                truth = vectorize(labels, boundary_class=outline["Value"] if outline else None,
                                  boundary_band=None if outline else False, transform=transform)
                chips.append((self.to_target_units(scores), truth))
        results = {}
        for t in thresholds:
            for bt in boundary_thresholds:
                found = [vectorize(s, boundary_band=band, threshold=t, boundary_threshold=bt,
                                   transform=transform) for s, _ in chips]
                for area in min_areas:
                    counts = np.zeros(3)
                    for polygons, (_, truth) in zip(found, chips):
                        score = object_f1(polygons[polygons["area"] >= area], truth)
                        counts += [score["tp"], score["fp"], score["fn"]]
                    results[(t, bt, area)] = scores_from_confusion([*counts, 0])["f1"]
        (t, bt, area), f1 = max(results.items(), key=lambda item: item[1])
        default = (DEFAULTS["threshold"], DEFAULTS["boundary_threshold"], DEFAULTS["min_area"])
        default_f1 = results.get(default)
        self.footprint_settings = {"threshold": float(t), "boundary_threshold": float(bt), "min_area": float(area)}
        self.metrics["footprint_f1"] = float(f1)
        return self.footprint_settings | {"f1": float(f1),
                                          "default_f1": float(default_f1) if default_f1 is not None else None}

    @property
    def available_metrics(self) -> list[str]:
        base = RECORDED + ["psnr", "ssim", "l1"]
        return base + (["iou", "f1", "precision", "recall", "accuracy"] if self.is_mask else [])

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

    def plot_losses(self) -> Figure:
        """Training and validation loss per epoch, and the GAN terms (G and D)."""
        if not self.history:
            raise RuntimeError("no losses yet: call fit() first.")
        epochs = [r["epoch"] + 1 for r in self.history]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        left.plot(epochs, [r.get("l1_loss") for r in self.history], "o-", label="train L1")
        left.plot(epochs, [r.get("valid_loss") for r in self.history], "o-", label="validation L1")
        left.set_xlabel("epoch")
        left.set_ylabel("L1 (in [-1, 1] units)")
        left.legend()
        right.plot(epochs, [r.get("gen_loss") for r in self.history], "o-", label="G adversarial")
        right.plot(epochs, [r.get("d_loss") for r in self.history], "o-", label="D")
        right.set_xlabel("epoch")
        right.set_ylabel("BCE")
        right.legend()
        fig.tight_layout()
        return fig

    # --- saving ------------------------------------------------------------------------------------

    def save(self, name_or_path: str | os.PathLike, save_optimizer: bool = False,
             compute_metrics: bool = True, overwrite: bool = False) -> Path:
        """Save to ``<working_dir>/<name>/`` (or the given folder): ``<name>.pth``, ``<name>.emd``,
        ``ModelCharacteristics/`` figures and ``<name>.dlpk``; returns the ``.emd`` path.

        The folder is written to a temporary name and moved into place. An existing folder is
        replaced only with ``overwrite=True`` and only when it holds a model the toolkit saved
        and nothing else; the training chips are never written over."""
        target = Path(name_or_path)
        if len(target.parts) == 1 and not target.is_absolute():
            if self.models_dir is None:
                raise ValueError("this model has no working folder; save it to a path.")
            target = self._check_working_dir("save") / target
        else:
            check_writable_folder(target.parent, role="the folder of save path",
                                  hint="Save the model to a folder you can write.")
        check_not_input(target, self._input_paths(), role="save path")
        check_output_folder(target, overwrite=overwrite, kind=MODEL_KIND, role="save path")
        name = target.name
        if compute_metrics and self.data is not None:
            self.compute_metrics()
        figures = {}
        if self.history:
            figures["loss_graph.png"] = self.plot_losses()
        if self.data is not None:
            figures["show_results.png"] = self.show_results(rows=min(4, len(self.data.valid_ds)))
        try:
            emd_path = write_model_folder(target, name, weights=plain_state(self._state(optimizers=save_optimizer)),
                                          emd=self._emd(name), figures=figures, overwrite=overwrite)
        finally:
            for fig in figures.values():
                plt.close(fig)
        self.emd_path = emd_path
        return emd_path

    def load(self, name_or_path: str | os.PathLike) -> None:
        """Load the weights of a saved model (name in the working folder, .emd, folder or .dlpk)."""
        path = Path(name_or_path)
        if not path.exists() and self.models_dir is not None and (self.models_dir / path).exists():
            path = self.models_dir / path
        emd, weights, emd_path = read_model_folder(path)
        self._load_weights(weights, emd_path)

    def _emd(self, name: str) -> dict:
        c = self.config
        height, width = _size_tuple(c["chip_size"])[::-1]
        emd = {
            "Framework": "arcgis.learn.models._inferencing",
            "ModelConfiguration": "_pix2pix",
            "ModelType": "Pix2Pix",
            "InferenceFunction": "ArcGISImageTranslation.py",
            "ModelFile": f"{name}.pth",
            "ImageHeight": height,
            "ImageWidth": width,
            "ExtractBands": c.get("extract_bands") or list(range(c["n_bands_in"])),
            "SupportsVariableTileSize": True,
            "n_intput_channel": c["n_bands_in"],  # sic: arcgis.learn's key
            "n_channel": c["n_bands_out"],
            "NormalizationStats": _arcgis_stats(self.input_norm),
            "NormalizationStats_b": _arcgis_stats(self.target_norm) if not self.is_mask else None,
            "ModelParameters": {"backbone": c["backbone"], "ngf": c["ngf"], "ndf": c["ndf"]},
            "IsMultispectral": c["n_bands_in"] != 3 or c["n_bands_out"] not in (1, 3),
            "ArcGISLearnVersion": "toolkit " + __version__,
            "ImageSpaceUsed": "MAP_SPACE",
            "Toolkit": {"version": __version__, "config": c, "input_norm": self.input_norm.to_dict(),
                        "target_norm": self.target_norm.to_dict(), "history": self.history,
                        "metrics": self.metrics, "footprint_settings": self.footprint_settings},
        }
        if self.is_mask:
            emd["Classes"] = self.target_norm.classes
        emd.update({k: v for k, v in self.metrics.items()})
        return emd


def _opt_state(opt) -> dict:
    """A fastai optimizer's state as plain dicts and lists, which ``torch.load(weights_only=True)``
    reads back (fastai's own ``state_dict`` holds fastcore ``L`` objects)."""
    return plain_state(opt.state_dict())


def _load_opt_state(opt, sd: dict) -> None:
    from fastcore.foundation import L

    params = [p for p, *_ in opt.all_params()]
    state = [{k: v.to(p.device) if torch.is_tensor(v) else v for k, v in s.items()}
             for p, s in zip(params, sd["state"])]
    opt.load_state_dict({"state": state, "hypers": L(dict(h) for h in sd["hypers"])})


def _arcgis_stats(norm: BandNorm) -> dict:
    return {"band_min_values": norm.min, "band_max_values": norm.max,
            "band_mean_values": norm.mean, "band_std_values": norm.std,
            "scaled_min_values": norm.low.tolist(), "scaled_max_values": norm.high.tolist()}


def _dihedral(square: bool) -> list[tuple[int, bool]]:
    """Test-time transforms as ``(quarter turns, horizontal flip after the turns)``: the 8 of the
    dihedral group for square inputs, the 4 that keep the shape for the others."""
    return [(k, flip) for k in ((0, 1, 2, 3) if square else (0, 2)) for flip in (False, True)]


def _transform(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate the last two axes of ``x`` by ``k`` quarter turns (counter-clockwise), then flip
    them left to right when ``flip``."""
    x = np.rot90(x, k, axes=(-2, -1))
    return x[..., ::-1] if flip else x


def _untransform(y: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The inverse of :func:`_transform`: an output of a transformed input back on the input's grid."""
    y = y[..., ::-1] if flip else y
    return np.rot90(y, -k, axes=(-2, -1))


def _size_tuple(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

"""What every translation model of the toolkit shares: the workflow around its networks.

:class:`TranslationModel` owns training on fastai (``fit`` with checkpoints, resume and early
stopping; ``lr_find``; mixed precision), the model folder (``save``, ``load``, ``from_model``),
inference (``predict``, ``predict_raster`` through a :class:`Translation`), and the loss plot.
A model (:class:`toolkit.Pix2Pix`, :class:`toolkit.CycleGAN`) supplies what is its own, in one
file, as torchgeo's ``BaseTask`` subclasses do:

* ``model_type`` (the ``.emd`` ``ModelType``), ``checkpoint_name``, ``config_rules`` (what its
  ``Toolkit.config`` in the ``.emd`` must hold, :mod:`toolkit.models.emd_schema` rules);
* ``build_networks(config)``: its named networks (built on the meta device too, to check a
  saved model's weights before anything is allocated);
* ``_make_trainer()``: the fastai callback that owns the discriminators and their step (a
  :class:`toolkit.models.gan.DiscriminatorStep`), with the loss names it records;
* ``_learner_model()`` and ``_loss_func()``: what the fastai ``Learner`` trains with the
  generator's optimizer;
* ``_emd_keys(name)``: its arcgis.learn ``.emd`` keys; ``translation(...)``: its inference.

:func:`register` makes a model class loadable by :func:`load_model` from its ``ModelType``.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import warnings
from functools import partial
from pathlib import Path
from typing import ClassVar

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from toolkit import __version__, ddp
from toolkit._fastai import quiet_import
from toolkit._fs import check_not_input, check_output_folder, check_writable_folder
from toolkit.data.normalization import BandNorm, MaskEncoding, target_from_dict
from toolkit.models.checkpoint import (Checkpoint, checkpoint_path, find_resumable, load_checkpoint, new_fit_id,
                                      plain_state)
from toolkit.models.emd_schema import check_config, check_state_fits, check_weights_fit
from toolkit.models.gan import History, loss_metrics
from toolkit.models.model_folder import read_model_folder, write_model_folder
from toolkit.models.networks import init_weights
from toolkit.models.translation import Translation, run_network, size_tuple

with quiet_import():
    from fastai.callback.fp16 import MixedPrecision
    from fastai.callback.schedule import ParamScheduler, SchedLin, SchedNo, combine_scheds
    from fastai.learner import Learner, ValueMetric
    from fastai.optimizer import Adam
    from fastai.torch_core import default_device

__all__ = ["MODEL_TYPES", "Translation", "TranslationModel", "load_model", "register"]

# the config keys that fix the networks' layout (the weights' names and shapes)
LAYOUT_KEYS = ("architecture", "n_channel", "backbone", "depth", "norm", "ngf", "ndf", "gen_blocks")

MODEL_TYPES: dict[str, type[TranslationModel]] = {}
"""``.emd`` ModelType -> model class, filled by :func:`register`."""


def register(cls: type[TranslationModel]) -> type[TranslationModel]:
    """Class decorator: make ``cls`` loadable from an ``.emd`` whose ModelType is ``cls.model_type``."""
    MODEL_TYPES[cls.model_type] = cls
    return cls


def model_class(model_type: str) -> type[TranslationModel]:
    """The registered class for an ``.emd`` ModelType; ``KeyError`` when there is none."""
    import toolkit.models.cyclegan  # noqa: F401  (registers the toolkit's models)
    import toolkit.models.pix2pix  # noqa: F401

    return MODEL_TYPES[model_type]


def load_model(path: str | os.PathLike, data=None, **kwargs) -> TranslationModel:
    """Load any saved model (``.emd``, folder or ``.dlpk``) as the class its ``ModelType`` names:
    ``load_model("m.dlpk")`` gives a :class:`toolkit.Pix2Pix` or a :class:`toolkit.CycleGAN`.
    ``data`` and ``kwargs`` as for that class's ``from_model``."""
    return TranslationModel.from_model(path, data, **kwargs)  # the base picks the class


def one_image(image, alias, name: str):
    """The chip to predict, given as ``image`` or under arcgis.learn's name ``alias``."""
    if (image is None) == (alias is None):
        raise TypeError(f"predict takes one chip: image (or {name}=, arcgis.learn's name).")
    return image if alias is None else alias


def progress(iterable, show: bool):
    """``iterable``, with fastai's progress bar when ``show`` (arcgis.learn's ``show_progress``)."""
    if not show:
        return iterable
    from fastprogress.fastprogress import progress_bar

    return progress_bar(iterable)


# --- the base ------------------------------------------------------------------------------------


class TranslationModel:
    """The workflow every translation model shares; see the module docstring for what a model adds.

    Attributes set by :meth:`_setup`: ``config`` (the JSON-serialisable settings the ``.emd``
    stores), ``input_norm`` / ``target_norm``, ``data``, ``learn`` (the fastai ``Learner``;
    ``None`` for a model loaded without data), ``trainer`` (the discriminators' callback),
    ``history`` (one record per epoch trained), ``metrics``, ``models_dir`` (working folder),
    ``device``, and each network under its name.
    """

    model_type: ClassVar[str]
    checkpoint_name: ClassVar[str]
    default_lr: ClassVar[float] = 2e-4
    # (y label, [(recorded name, legend)]) per panel of plot_losses
    loss_panels: ClassVar[list[tuple[str, list[tuple[str, str]]]]] = []
    schedules: ClassVar[tuple[str, ...]] = ("linear", "linear_decay")

    # --- what a model supplies -------------------------------------------------------------------
    # (with its spec, :mod:`toolkit.models.specs`, which comes first in its bases: config_rules,
    # required_networks, build_networks, describe_networks, validate_config, direction)

    def _make_trainer(self):
        raise NotImplementedError

    def _save_target(self, name_or_path) -> Path:
        """``save``'s folder: a bare name is a folder in the working folder, anything else a path."""
        target = Path(name_or_path)
        if len(target.parts) == 1 and not target.is_absolute():
            if self.models_dir is None:
                raise ValueError("this model has no working folder; save it to a path.")
            return self.models_dir / target
        return target

    def check_save_path(self, name_or_path: str | os.PathLike, overwrite: bool = False) -> Path:
        """The folder ``save(name_or_path, overwrite=...)`` would write, checked now (writable, not
        the training chips, free or the toolkit's own model with ``overwrite``): call it before a
        long fit, so that the fit is not lost to a save that cannot happen."""
        from toolkit.models.model_folder import MODEL_KIND

        target = self._save_target(name_or_path)
        if target.parent == self.models_dir and len(Path(name_or_path).parts) == 1:
            self._check_working_dir("save")
        else:
            check_writable_folder(target.parent, role="the folder of save path",
                                  hint="Save the model to a folder you can write.")
        check_not_input(target, self._input_paths(), role="save path")
        check_output_folder(target, overwrite=overwrite, kind=MODEL_KIND, role="save path")
        return target

    def _saved_form(self, weights: dict, emd: dict, name: str, save_inference_file: bool) -> tuple[dict, dict]:
        """The weights and ``.emd`` as ``save`` writes them: the toolkit's form; a model of
        arcgis.learn's recipe overrides this to write arcgis.learn's."""
        return weights, emd

    def _adam_betas(self) -> tuple[float, float]:
        """The generator optimizer's Adam betas (the papers': 0.5, 0.999)."""
        return (0.5, 0.999)

    def _learner_model(self) -> nn.Module:
        raise NotImplementedError

    def _loss_func(self):
        raise NotImplementedError

    def _emd_keys(self, name: str) -> dict:
        raise NotImplementedError

    def translation(self, **kwargs) -> Translation:
        raise NotImplementedError

    # --- construction ----------------------------------------------------------------------------

    def _setup(self, config: dict, input_norm: BandNorm, target_norm, data, *, mixed_precision=None,
               working_dir=None, device=None, **build_kwargs) -> None:
        # ngf=0, lambda_l1=nan...: refused here (the backbone by its builder, with its own message)
        check_config(config, {k: r for k, r in self.config_rules.items() if k != "backbone"}, type(self).__name__)
        self.config = config
        self.input_norm, self.target_norm = input_norm, target_norm
        self.data = data
        self.history: list[dict] = []
        self.metrics: dict[str, float] = {}
        self.footprint_settings: dict[str, float] | None = None
        self._suggested_lr: float | None = None
        self.device = (data.device if data is not None else
                       torch.device(device) if device is not None else default_device())
        # The same builder checks a saved model's weights on the meta device (emd_schema).
        self.network_names = []
        for name, net in self.build_networks(config, **build_kwargs).items():
            setattr(self, name, net)
            self.network_names.append(name)
        self._init_networks()
        self.trainer = self._make_trainer()
        data_dir = getattr(data, "working_dir", None)  # prepare_data(working_dir=): <it>/models
        self.models_dir = Path(working_dir) if working_dir else (
            Path(data_dir) / "models" if data_dir else Path(data.path) / "models" if data is not None else None)
        self.learn = None
        if data is not None:
            cbs = [self.trainer]
            cuda = self.device.type == "cuda"
            if mixed_precision or (mixed_precision is None and cuda):
                bf16 = cuda and torch.cuda.is_bf16_supported()
                cbs.append(MixedPrecision(amp_mode="bf16" if bf16 else "fp16"))
            if cuda:
                for net in self.networks.values():
                    net.to(memory_format=torch.channels_last)
            self.learn = Learner(data, self._learner_model(), loss_func=self._loss_func(),
                                 opt_func=partial(Adam, mom=self._adam_betas()[0], sqr_mom=self._adam_betas()[1],
                                                  eps=1e-8, wd=0.0),
                                 wd=0.0, lr=self.default_lr, metrics=loss_metrics(self.trainer), cbs=cbs,
                                 path=self.models_dir.parent, model_dir=self.models_dir.name)
        for net in self.networks.values():
            net.to(self.device)

    def _init_networks(self) -> None:
        """The papers' init: N(0, 0.02) convolutions (see :func:`init_weights`)."""
        for net in self.networks.values():
            init_weights(net)

    @property
    def networks(self) -> dict[str, nn.Module]:
        """The model's networks by name (generators first)."""
        return {name: getattr(self, name) for name in self.network_names}

    @property
    def recorded(self) -> list[str]:
        """What ``fit`` records per epoch (and so what it can monitor)."""
        return ["valid_loss", "train_loss", *self.trainer.loss_names]

    @classmethod
    def from_model(cls, emd_path: str | os.PathLike, data=None, *, normalization: str = "model",
                   working_dir: str | os.PathLike | None = None, device: str | torch.device | None = None):
        """Load a saved model (its ``.emd``, folder or ``.dlpk``) for inference, or, with ``data``,
        to train further (fine-tuning). Without data, ``fit`` raises a clear error. Called as
        arcgis.learn's ``from_model(emd_path, data=None)`` (ArcGIS Pro's loaders pass both by name).

        Args:
            normalization: with ``data``: ``"model"`` (default) trains on the data's chips scaled
                with the statistics the model learned with: ``data`` is switched to them (see
                :meth:`toolkit.data.ChipDataLoaders.use_normalization`), so training and
                prediction see the same scaling. ``"data"`` re-fits the model to the data's
                statistics instead (the model then scales every input with them; a warning says so).
            working_dir: folder for checkpoints and saved models; default ``<data.path>/models``.
            device: without ``data``, where the networks are loaded and run (``"cpu"``,
                ``"cuda:1"``...); default the GPU when there is one. With ``data``, its device.
        """
        if device is not None and data is not None:
            raise ValueError("from_model: pass device= only without data; with data the model "
                             "trains and runs on the data's device.")
        if normalization not in ("model", "data"):
            raise ValueError(f"normalization must be 'model' or 'data', got {normalization!r}.")
        emd, weights, emd_path = read_model_folder(emd_path)  # a validated .emd, size-capped reads
        if emd["ModelType"] != getattr(cls, "model_type", None):
            if cls is not TranslationModel:
                raise ValueError(f"{emd_path}: a {emd['ModelType']} model, not a {cls.model_type}; load it "
                                 f"with {emd['ModelType']}.from_model() or toolkit.load_model().")
            cls = model_class(emd["ModelType"])
        config = emd["Toolkit"]["config"]
        # shapes first, on the meta device: an .emd whose sizes the weights do not have (say
        # ngf=100000) is refused before anything real is allocated
        check_weights_fit(config, weights, emd_path, model_type=cls.model_type)
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
        if data is not None and config.get("perceptual_loss") and config.get("perceptual_kind") != "discriminator":
            # the VGG weights are not part of the model: say so rather than train without them quietly
            warnings.warn(f"{emd_path}: the model was trained with the perceptual loss; fine-tuning "
                          "continues without it (the VGG-16 weights are not saved with the model). "
                          "Its config records perceptual_loss=False from now on.", stacklevel=2)
            config = dict(config, perceptual_loss=False, perceptual_kind=None)
        model._setup(config, input_norm, target_norm, data, working_dir=working_dir, device=device)
        model._load_weights(weights, emd_path)
        model.history = list(emd["Toolkit"].get("history", []))
        model.metrics = dict(emd["Toolkit"].get("metrics", {}))
        model.footprint_settings = emd["Toolkit"].get("footprint_settings")
        model.emd_path = emd_path
        return model

    # --- files -----------------------------------------------------------------------------------

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
        name = type(self).__name__
        if self.models_dir is None:
            raise ValueError(f"{what} needs a working folder: pass working_dir= to {name}.from_model().")
        hint = (f"Pass working_dir= ({name}(data, working_dir=...) or {name}.from_model(path, data, "
                "working_dir=...)) to use a folder you can write.")
        check_not_input(self.models_dir, self._input_paths(), role="working_dir")
        return check_writable_folder(self.models_dir, role="working folder", hint=hint)

    # --- training --------------------------------------------------------------------------------

    def _require_data(self, what: str) -> None:
        if self.learn is None:
            name = type(self).__name__
            raise RuntimeError(f"{what} needs training data: this model was loaded for inference. "
                               f"Use {name}.from_model(path, data=prepare_data(...)).")

    fit_id: str | None = None  # the id of the last fit (its checkpoint files); set by fit()
    unsaved_checkpoint: Path | None = None  # fit(keep_until_saved=True): resumable until save()

    def fit(self, epochs: int = 10, lr: float | slice | None = None, one_cycle: bool = True,
            early_stopping: bool | int = False, checkpoint: bool | str = True,
            tensorboard: bool = False, monitor: str = "valid_loss", mixed_precision: bool | None = None, *,
            checkpoint_name: str | None = None, resume: bool | str = False,
            schedule: str | None = None, callbacks: list | None = None,
            distributed: bool | None = None, sync_bn: bool = False, keep_until_saved: bool = False) -> None:
        """Train for ``epochs`` epochs. The arguments up to ``mixed_precision`` are arcgis.learn's
        (2.4.4), in its order; the toolkit's own follow, keyword-only.

        Args:
            lr: learning rate, a float or a ``slice`` (arcgis.learn, fastai): a slice's
                ``stop`` is used, as fastai does for a model of one layer group (the
                generators are one group here); default the last :meth:`lr_find` suggestion,
                else 2e-4 (arcgis.learn runs ``lr_find`` instead).
            one_cycle: fastai's one-cycle learning-rate schedule (beta1 stays 0.5); else constant.
            early_stopping: stop when ``monitor`` has not improved for 5 epochs (or this many).
            checkpoint: ``True``: after each epoch write a checkpoint to
                ``<working_dir>/checkpoints/``: ``<name>-<fit id>_last.pth`` and, when
                ``monitor`` improved, ``_best.pth``; the best epoch is restored at the end.
                ``"all"`` (arcgis.learn) also keeps every epoch's, ``_epoch<N>.pth`` (N from 0).
                ``False``: none. Each fit has its own files (id in :attr:`fit_id`); none of
                another fit's are touched.
            tensorboard: log the losses, learning rate, validation metrics and a
                ``show_results`` image per epoch to ``<working_dir>/training_log/<name>-<fit
                id>/`` (:mod:`toolkit.models.tensorboard`); open with ``tensorboard --logdir
                <working_dir>/training_log``.
            monitor: what checkpoints and early stopping follow: any of
                :attr:`available_metrics` (``valid_loss`` is the validation reconstruction
                error: L1 for Pix2Pix, the cycle L1 for CycleGAN). Scores that fit does not
                record itself (``psnr``, ``ssim``...) are computed on the validation chips after
                each epoch, as :meth:`compute_metrics` does, and recorded in the history.
            checkpoint_name: the checkpoints' file name stem; default the model's
                (``"pix2pix"``, ``"cyclegan"``).
            schedule: ``"linear"`` (or ``"linear_decay"``): the papers' schedule, constant for
                the first half of the epochs, then linear to 0 (overrides ``one_cycle``).
            resume: ``True`` continues the most recently saved unfinished fit of this checkpoint
                name, a fit id continues that fit, from its last checkpoint: same ``epochs``; the
                learning rate, schedule, monitor and early stopping (unless given; 0 turns it
                off) are the checkpoint's. Weights, optimizers, gradient scalers, early
                stopping's state and the random-number states come back, so the fit ends as it
                would have without the interruption.
            mixed_precision: for this fit only: ``True`` trains in mixed precision (bf16 where
                the GPU supports it, else fp16; on the CPU a warning says it trains in float32),
                ``False`` in float32; ``None`` (default): as the model was made
                (``mixed_precision=`` of the model: on for CUDA).
            callbacks: more fastai callbacks for this fit (they see the Learner as usual).
            distributed: data-parallel training over the processes ``torchrun`` started
                (:mod:`toolkit.ddp`): ``None`` (default) when launched by it, ``False`` never.
                ``batch_size`` is per process; only rank 0 logs, checkpoints and saves.
            sync_bn: under ``torchrun`` on GPUs, synchronise batch-norm statistics over the
                processes (``torch.nn.SyncBatchNorm``), useful at 1 or 2 chips per GPU.
            keep_until_saved: the completed fit stays resumable until :meth:`save` succeeds:
                when saving fails (a full disk...), ``fit(epochs, resume=True)`` gives the
                trained model back from its checkpoints without training again (``toolkit
                train`` does this, so a failed save never loses a fit).
        """
        self._require_data("fit")
        self._check_working_dir("fit")
        lr = learning_rate(lr)  # checked before any work
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
            raise ValueError(f"epochs must be a whole number >= 1, got {epochs!r}.")
        if not isinstance(early_stopping, bool) and (not isinstance(early_stopping, numbers.Integral)
                                                     or early_stopping < 0):
            raise ValueError("early_stopping must be True, False, or a whole number of epochs >= 1 "
                             f"(0: off), got {early_stopping!r}.")
        if distributed is False and ddp.launched():
            raise ValueError("distributed=False, but torchrun started this script as one of "
                             f"{os.environ['WORLD_SIZE']} processes, which would train copies that "
                             "write the same files: run it without torchrun, or leave distributed unset.")
        parallel = distributed is not False and ddp.init_distributed()
        if distributed and not parallel:
            raise ValueError("distributed=True trains over the processes torchrun starts: launch "
                             "the script with torchrun --nproc_per_node=N (WORLD_SIZE is not set).")
        if sync_bn and not parallel:
            raise ValueError("sync_bn=True synchronises batch norm over torchrun's processes; "
                             "this fit runs in one process.")
        if schedule not in (None, *self.schedules):
            raise ValueError(f"schedule must be None or one of {list(self.schedules)}, got {schedule!r}.")
        if isinstance(checkpoint, str) and checkpoint != "all":
            raise ValueError(f"checkpoint must be True, False or 'all' (a checkpoint per epoch), got "
                             f"{checkpoint!r}; name the checkpoint files with checkpoint_name=.")
        self._check_monitor(monitor)
        name = checkpoint_name or self.checkpoint_name
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
            if state.get("completed"):  # trained to the end; only saving the model failed
                self.fit_id, self.unsaved_checkpoint = state["fit_id"], path
                best = checkpoint_path(folder, name, self.fit_id, "best")
                if best.is_file():
                    self._restore_best(load_checkpoint(best))
                if ddp.is_main():
                    print(f"Fit {self.fit_id} had completed ({len(self.history)} epochs) but its model "
                          f"was not saved: restored from {path.parent}, nothing to train.")
                return
            # loaded: no second copy of the weights for the whole fit, only the loop's state
            heavy = {*self.network_names, "g_opt", "d_opt", "trainer"}
            state = {k: v for k, v in state.items() if k not in heavy}
            lr, one_cycle, schedule = state["fit"]["lr"], state["fit"]["one_cycle"], state["fit"]["schedule"]
            start, monitor, self.fit_id = state["epoch"] + 1, state["monitor"], state["fit_id"]
            if early_stopping is False:  # as the interrupted fit did, unless asked otherwise
                early_stopping = state["fit"].get("patience") or False
            if start >= epochs:
                return
        else:
            self.fit_id = ddp.broadcast_object(new_fit_id(folder, name))  # rank 0's names the files
        keep = keep_until_saved and checkpoint and ddp.is_main()
        self.unsaved_checkpoint = checkpoint_path(folder, name, self.fit_id) if keep else None
        lr = lr or float(self._suggested_lr or self.default_lr)
        self._check_monitor(monitor)  # a resumed fit's, too
        patience = None if not early_stopping else 5 if early_stopping is True else int(early_stopping)
        fit_config = {"epochs": epochs, "lr": lr, "one_cycle": one_cycle, "schedule": schedule,
                      "patience": patience, "processes": ddp.world_size()}
        if parallel:
            # the shards' order: rank 0's seed, kept in the checkpoints for a resumed fit
            fit_config["shard_seed"] = (state["fit"].get("shard_seed", 0) if state else
                                        ddp.broadcast_object(int.from_bytes(os.urandom(4), "little")))
        main = ddp.is_main()
        cbs = [History(self.history, start_epoch=start), *(callbacks or [])]
        scores = self._score_metrics(monitor)
        if checkpoint or patience or state:
            # One callback tracks the best epoch for both: early stopping's state is saved with
            # the checkpoint of the epoch, before the fit stops. It also puts a resumed fit's
            # loop state back (even with checkpoint=False). Under torchrun only rank 0 writes.
            cbs.append(Checkpoint(folder if checkpoint and main else None, name, self.fit_id, monitor,
                                  lambda: self._state(fit_config), self._restore_best,
                                  scalers={"scaler": lambda: getattr(self.learn, "scaler", None),
                                           "d_scaler": lambda: self.trainer.d_scaler},
                                  patience=patience, resume=state, verbose=main,
                                  every_epoch=checkpoint == "all", unsaved=bool(keep)))
        tb_log = None
        if tensorboard:
            from toolkit.models.tensorboard import LOG_FOLDER, TensorBoardLog

            log_dir = self.models_dir / LOG_FOLDER / f"{name}-{self.fit_id}"
            tb_log = TensorBoardLog(log_dir, self.history, self.trainer.loss_names, figure=self._results_figure)
            cbs.append(tb_log)
            if main:
                print(f"Training log for TensorBoard in {log_dir}: tensorboard --logdir "
                      f"{self.models_dir / LOG_FOLDER}")
        data_parallel = None
        if parallel:
            n, batch = ddp.world_size(), self.data.train.bs
            if main:
                print(f"Data-parallel training on {n} processes ({torch.distributed.get_backend()}): "
                      f"{batch} chips per process and step, a global batch of {n * batch}.")
            data_parallel = ddp.DataParallel(self.trainer, seed=fit_config["shard_seed"], sync_bn=sync_bn)
            cbs += [data_parallel, ddp.RecordSync(self.trainer, self.networks.values())]
        quiet = contextlib.ExitStack()
        if not main:  # one progress bar and one table: rank 0's
            quiet.enter_context(self.learn.no_bar())
            quiet.enter_context(self.learn.no_logging())
        metrics = list(self.learn.metrics)
        self.learn.metrics = metrics + scores  # for this fit only
        quiet.enter_context(self._precision(mixed_precision))
        with quiet:
            try:
                if schedule in ("linear", "linear_decay"):
                    half = epochs // 2
                    sched = combine_scheds([half / epochs, 1 - half / epochs],
                                           [SchedNo(lr, lr), SchedLin(lr, 0.0)]) if half else SchedLin(lr, 0.0)
                    self.learn.fit(epochs, lr, cbs=cbs + [ParamScheduler({"lr": sched})], start_epoch=start)
                elif one_cycle:
                    self.learn.fit_one_cycle(epochs, lr, moms=(0.5, 0.5, 0.5), cbs=cbs, start_epoch=start)
                else:
                    self.learn.fit(epochs, lr, cbs=cbs, start_epoch=start)
            finally:
                self.learn.metrics = metrics
                if tb_log is not None:
                    tb_log.close()  # a failed fit skips after_fit: the event file is closed here
                if data_parallel is not None:
                    data_parallel.unwrap()  # a failed fit (no after_fit) leaves no DDP wrapper either

    def _check_monitor(self, monitor: str) -> None:
        """``ValueError`` unless ``fit`` can follow ``monitor``: a recorded value or a metric of
        :attr:`available_metrics` that this data can score."""
        if monitor in self.recorded:
            return
        if monitor not in self.available_metrics:
            raise ValueError(f"monitor {monitor!r} is not a metric of this model; choose one of "
                             f"{self.available_metrics}.")
        self._check_scorable(monitor)

    def _check_scorable(self, metric: str) -> None:
        """``ValueError`` when this model's data cannot give ``metric`` (CycleGAN's PSNR needs
        true pairs); every metric is scorable by default."""

    def _score_metrics(self, monitor: str) -> list:
        """fastai metrics for this fit: ``monitor`` when it is a validation score that fit does
        not record by itself (computed after each validation, as :meth:`compute_metrics`)."""
        if monitor in self.recorded:
            return []
        return [ValidationScore(self, monitor)]

    def _results_figure(self) -> Figure:
        """The results figure that ``save`` keeps and TensorBoard shows per epoch:
        ``show_results`` of a few validation chips."""
        return self.show_results(rows=min(4, len(self.data.valid_ds)))

    def _precision(self, mixed_precision: bool | None):
        """A context in which the Learner trains in mixed precision or not (``None``: as set up)."""
        stack = contextlib.ExitStack()
        if mixed_precision is None:
            return stack
        current = [cb for cb in self.learn.cbs if isinstance(cb, MixedPrecision)]
        if mixed_precision and not current:
            if self.device.type != "cuda":
                warnings.warn("mixed_precision=True: mixed precision runs on CUDA GPUs; this model is on "
                              f"the {self.device.type}, so it trains in float32.", stacklevel=3)
            else:
                bf16 = torch.cuda.is_bf16_supported()
                stack.enter_context(self.learn.added_cbs([MixedPrecision(amp_mode="bf16" if bf16 else "fp16")]))
        elif not mixed_precision and current:
            stack.enter_context(self.learn.removed_cbs(current))
        return stack

    def lr_find(self, allow_plot: bool = True, mixed_precision: bool | None = None, *, start_lr: float = 1e-7,
                end_lr: float = 1e-1, num_it: int = 100) -> float:
        """Run fastai's learning-rate finder on the reconstruction part of the generator loss (L1
        for Pix2Pix, cycle and identity for CycleGAN; the GAN terms say little about the step
        size) and return the suggested rate, used by the next ``fit``. ``allow_plot``
        (arcgis.learn's name) shows the loss against the learning rate; ``mixed_precision`` as
        for :meth:`fit`."""
        self._require_data("lr_find")
        self._check_working_dir("lr_find")
        parallel = ddp.init_distributed()  # under torchrun: rank 0 searches, the others wait
        if ddp.is_main():
            self.trainer.l1_only = True
            try:
                with ddp.fastai_single_process() if parallel else contextlib.nullcontext(), \
                        self._precision(mixed_precision):
                    suggestion = self.learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it,
                                                    show_plot=allow_plot)
            finally:
                self.trainer.l1_only = False
            value = float(suggestion.valley)
        else:
            value = None
        # the finder puts the weights back as they were; the suggestion is rank 0's everywhere
        self._suggested_lr = float(ddp.broadcast_object(value))
        return self._suggested_lr

    def unfreeze(self) -> None:
        """Make every layer of the generator(s) trainable, as arcgis.learn's ``unfreeze`` (fastai's
        ``Learner.unfreeze``). The toolkit freezes nothing (a ``backbone`` starts from random or
        local weights and trains with the rest), so this changes nothing unless layers were
        frozen by hand (``requires_grad``); it is here so that arcgis.learn code runs unchanged."""
        self._require_data("unfreeze")
        self.learn.unfreeze()
        for net in self.networks.values():
            if net not in self.trainer.discriminators:  # trainable only in their own step
                net.requires_grad_(True)

    # --- state -----------------------------------------------------------------------------------

    def _state(self, fit_config: dict | None = None, optimizers: bool = True) -> dict:
        """The model's state: each network's state dict under its name, ``history``, ``config``;
        with ``optimizers`` (and an optimizer made) ``g_opt`` and ``d_opt``; with a ``fit_config``
        (``epochs``, ``lr``... of a fit, for its checkpoints) also ``fit`` and the trainer's own
        state (``trainer``: CycleGAN's image pools). The training loop's state (epoch, scalers,
        random numbers) is the ``Checkpoint``'s to add."""
        state = {name: net.state_dict() for name, net in self.networks.items()}
        state |= {"history": list(self.history), "config": dict(self.config)}
        if optimizers and self.learn is not None and self.learn.opt is not None:
            state["g_opt"] = plain_state(self.learn.opt.state_dict())
            state["d_opt"] = self.trainer.d_opt.state_dict()
        if fit_config is not None:
            state["fit"] = fit_config
            state["trainer"] = self.trainer.extra_state()
        return state

    def _restore(self, state: dict, optimizers: bool = True) -> None:
        """Load what :meth:`_state` gave: the networks, the history and, with ``optimizers``
        (when the state has them), both optimizers' states and the trainer's."""
        self._load_weights(state, "checkpoint")
        if state.get("history") is not None:
            self.history[:] = state["history"]
        if optimizers and "g_opt" in state:
            if self.learn.opt is None:
                self.learn.create_opt()
            _load_opt_state(self.learn.opt, state["g_opt"])
            self.trainer.d_opt.load_state_dict(state["d_opt"])
        if "trainer" in state:
            self.trainer.load_extra_state(state["trainer"])

    def _restore_best(self, state: dict) -> None:
        """After a fit: the best epoch's weights, from its checkpoint. The history keeps every
        epoch trained, and the optimizers stay as the last epoch left them."""
        self._load_weights(state, "checkpoint")

    def _load_weights(self, state: dict, source) -> None:
        """Load each network's weights from ``state`` (the generators must be there, the
        discriminators are loaded where present). ``ValueError`` naming ``source`` and the first
        tensor that is missing, extra or of another shape, raised before any weight changes."""
        check_state_fits(self.networks, state, source, f"this network ({self!r})",
                         required=self.required_networks)
        try:
            for name, net in self.networks.items():
                if name in state:
                    net.load_state_dict(state[name])
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"{source}: the weights do not fit this network ({self!r}): {err}") from err

    # --- inference -------------------------------------------------------------------------------

    @property
    def is_mask(self) -> bool:
        return isinstance(self.target_norm, MaskEncoding)

    def _run(self, net: nn.Module, x: np.ndarray) -> np.ndarray:
        """One forward pass of ``net`` on a normalised numpy batch (:func:`run_network`)."""
        return run_network(net, x, self.device)

    def _translation(self, forward, input_norm, target_norm, name: str, **kwargs) -> Translation:
        c = self.config
        kwargs.setdefault("cell_size", c.get("cell_size"))
        kwargs["cell_size"] = tuple(kwargs["cell_size"]) if kwargs["cell_size"] else None
        return Translation(forward=forward, input_norm=input_norm, target_norm=target_norm,
                           chip_size=size_tuple(c["chip_size"]), source_files=tuple(self.source_files),
                           name=name, **kwargs)

    def _predict_raster(self, translation: Translation, in_raster, out_raster, **kwargs) -> Path:
        from toolkit.inference import predict_raster

        return predict_raster(translation, in_raster, out_raster, **kwargs)

    # --- figures ---------------------------------------------------------------------------------

    def plot_losses(self) -> Figure:
        """The recorded losses per epoch, one panel per group of ``loss_panels`` that holds any
        (a plain L1 U-Net, ``gan_weight=0``, records no adversarial losses)."""
        if not self.history:
            raise RuntimeError("no losses yet: call fit() first.")
        epochs = [r["epoch"] + 1 for r in self.history]
        recorded = lambda key: not all(r.get(key) is None or r.get(key) != r.get(key)  # noqa: E731
                                       for r in self.history)  # NaN: never recorded
        panels = [(ylabel, [(k, label) for k, label in curves if recorded(k)]) for ylabel, curves in self.loss_panels]
        panels = [(ylabel, curves) for ylabel, curves in panels if curves] or self.loss_panels[:1]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
        for ax, (ylabel, curves) in zip(np.atleast_1d(axes), panels):
            for key, label in curves:
                ax.plot(epochs, [r.get(key) for r in self.history], "o-", label=label)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            if curves:
                ax.legend()
        fig.tight_layout()
        return fig

    # --- saving ----------------------------------------------------------------------------------

    def save(self, name_or_path: str | os.PathLike, framework: str = "PyTorch", publish: bool = False,
             gis=None, compute_metrics: bool = True, save_optimizer: bool = False,
             save_inference_file: bool = True, overwrite: bool = False) -> Path:
        """Save to ``<working_dir>/<name>/`` (or the given folder): ``<name>.pth``, ``<name>.emd``,
        ``ModelCharacteristics/`` figures and ``<name>.dlpk``; returns the ``.emd`` path. The
        arguments are arcgis.learn's, in its order.

        ``framework`` must be ``"PyTorch"`` (arcgis.learn's ``"TF-ONNX"`` exists for some of its
        detectors only). ``publish=True`` (with ``gis``) would upload the ``.dlpk`` to ArcGIS
        Online or Enterprise, which needs the ``arcgis`` package and a portal: it raises
        ``ValueError`` before anything is written, naming the ``.dlpk`` to add as a "Deep Learning
        Package" item yourself. ``compute_metrics`` scores the validation chips first (stored in
        the ``.emd``); ``save_optimizer`` keeps both optimizers' states in the ``.pth``.

        With ``save_inference_file`` (arcgis.learn's name), the Python raster function that
        ArcGIS Pro runs (``ArcGISImageTranslation.py``, the ``.emd``'s ``InferenceFunction``; see
        :mod:`toolkit.arcgis_pro`) is written beside the ``.emd`` and into the ``.dlpk``, so that
        Pro's "Classify Pixels Using Deep Learning" runs the package (with the toolkit installed
        in Pro's Python environment). Without it the ``.emd`` names no ``InferenceFunction``
        (arcgis.learn then names Pro's built-in function, which reads only arcgis.learn's own
        models), and a warning says Pro cannot run the package.

        The folder is written to a temporary name and moved into place. An existing folder is
        replaced only with ``overwrite=True`` and only when it holds a model the toolkit saved
        and nothing else; the training chips are never written over.

        Under ``torchrun`` rank 0 writes the model; the other ranks wait for it and return its path."""
        if str(framework).lower() != "pytorch":
            raise ValueError(f"framework {framework!r} is not supported: the toolkit saves PyTorch "
                             "weights (framework='PyTorch'); arcgis.learn's 'TF-ONNX' exists for some "
                             "of its object detectors only, not for image translation.")
        target = self._save_target(name_or_path)
        if publish:
            raise ValueError(f"publish=True uploads the model to ArcGIS Online or Enterprise (gis={gis!r}), "
                             "which needs the arcgis package and a portal; the toolkit does not publish. "
                             f"Save with publish=False and add {target / (target.name + '.dlpk')} to your "
                             "portal as a 'Deep Learning Package' item (ArcGIS Pro: Share > Add Item).")
        ddp.init_distributed()  # under torchrun, even when this process never ran fit
        if not ddp.is_main():
            self.emd_path = ddp.broadcast_object(None)  # returns once rank 0 has written
            return self.emd_path
        self.check_save_path(name_or_path, overwrite=overwrite)
        name = target.name
        if compute_metrics and self.data is not None:
            self.compute_metrics()
        figures = {}
        if self.history:
            figures["loss_graph.png"] = self.plot_losses()
        if self.data is not None:
            figures["show_results.png"] = self._results_figure()
        from toolkit.arcgis_pro import INFERENCE_FUNCTION, inference_function_path

        extra_files = {}
        weights, emd = self._saved_form(plain_state(self._state(optimizers=save_optimizer)), self._emd(name),
                                        name, save_inference_file)
        if save_inference_file:
            extra_files[INFERENCE_FUNCTION] = inference_function_path()
        elif emd.get("InferenceFunction") == INFERENCE_FUNCTION:  # it must not name a file the package lacks
            del emd["InferenceFunction"]
            warnings.warn(f"{target}: saved without the raster function (save_inference_file=False): the "
                          "toolkit loads the model, ArcGIS Pro cannot run it (its own image-translation "
                          "function reads arcgis.learn's models only).", stacklevel=2)
        try:
            emd_path = write_model_folder(target, name, weights=weights, emd=emd, figures=figures,
                                          extra_files=extra_files, overwrite=overwrite)
        finally:
            for fig in figures.values():
                plt.close(fig)
        self.emd_path = ddp.broadcast_object(emd_path)  # under torchrun: to the waiting ranks
        if self.unsaved_checkpoint is not None and Path(self.unsaved_checkpoint).is_file():
            from toolkit.models.checkpoint import mark_unsaved

            mark_unsaved(self.unsaved_checkpoint, False)  # saved: the fit is finished for good
            self.unsaved_checkpoint = None
        return emd_path

    def load(self, name_or_path: str | os.PathLike) -> None:
        """Load the weights of a saved model (name in the working folder, .emd, folder, .dlpk or
        .pth with its .emd beside it; arcgis.learn's models too)."""
        path = Path(name_or_path)
        if not path.exists() and getattr(self, "models_dir", None) is not None and (self.models_dir / path).exists():
            path = self.models_dir / path
        self._load_saved(self._read_saved(path))

    def _read_saved(self, path) -> tuple[dict, dict, Path]:
        emd, weights, emd_path = read_model_folder(path)
        if emd["ModelType"] != self.model_type:
            raise ValueError(f"{emd_path}: a {emd['ModelType']} model; this is a {self.model_type}.")
        return emd, weights, emd_path

    def _load_saved(self, saved: tuple[dict, dict, Path]) -> None:
        _, weights, emd_path = saved
        self._load_weights(weights, emd_path)

    def _pretrained(self, pretrained_path, config: dict) -> tuple[dict, dict, Path] | None:
        """``pretrained_path`` read, before the networks are built: a model saved by arcgis.learn
        has its own network layout, which ``config`` then takes (as arcgis.learn builds its own),
        so that its weights fit. ``_load_saved`` loads them once the networks exist."""
        if pretrained_path is None:
            return None
        saved = self._read_saved(pretrained_path)
        saved_config = saved[0]["Toolkit"]["config"]
        if saved_config.get("architecture") == "arcgis":
            config.update({k: saved_config[k] for k in LAYOUT_KEYS if k in saved_config})
        return saved

    def _emd(self, name: str) -> dict:
        """The ``.emd``: the keys ArcGIS Pro reads and arcgis.learn's (``_emd_keys``), then the
        toolkit's own.

        Pro runs the model through the Python raster function ``InferenceFunction`` (saved beside
        the ``.emd``, :mod:`toolkit.arcgis_pro`), which loads ``ModelFile`` (relative to the
        ``.emd``'s folder) with the toolkit. ``Framework`` is ``"PyTorch"`` as in Esri's PyTorch
        examples: these weights are not arcgis.learn's, so Pro must not fall back to its own
        ``arcgis.learn`` loaders. ``ModelPadding`` and ``BatchSize`` are left out on purpose:
        Pro would then fix them, while the raster function offers ``padding`` (default a
        quarter chip) and ``batch_size`` as arguments of the tool. Mask models list their
        ``Classes`` with ``Value``, ``Name`` and an RGB ``Color`` (tab10 where the data gave none).
        """
        from toolkit.arcgis_pro import INFERENCE_FUNCTION

        c = self.config
        width, height = size_tuple(c["chip_size"])
        emd = {
            "Framework": "PyTorch",
            "ModelType": self.model_type,
            "ModelName": type(self).__name__,
            "InferenceFunction": INFERENCE_FUNCTION,
            "ModelFile": f"{name}.pth",
            "ImageHeight": height,
            "ImageWidth": width,
            "ExtractBands": c.get("extract_bands") or list(range(c["n_bands_in"])),
            "SupportsVariableTileSize": True,
            "n_intput_channel": c["n_bands_in"],  # sic: arcgis.learn's key
            "n_channel": c["n_bands_out"],
            "NormalizationStats": arcgis_stats(self.input_norm),
            "NormalizationStats_b": arcgis_stats(self.target_norm) if not self.is_mask else None,
            "ArcGISLearnVersion": "toolkit " + __version__,
            "ImageSpaceUsed": "MAP_SPACE",
        }
        emd |= self._emd_keys(name)
        emd["Toolkit"] = {"version": __version__, "config": c, "input_norm": self.input_norm.to_dict(),
                          "target_norm": self.target_norm.to_dict(), "history": self.history,
                          "metrics": self.metrics, "footprint_settings": self.footprint_settings}
        if self.is_mask:
            from matplotlib import colormaps

            tab10 = colormaps["tab10"]
            emd["Classes"] = [
                {"Value": int(k["Value"]), "Name": str(k.get("Name", k["Value"])),
                 "Color": [int(v) for v in k["Color"][:3]] if k.get("Color") and min(k["Color"][:3]) >= 0
                 else [round(255 * v) for v in tab10(i % 10)[:3]]}
                for i, k in enumerate(self.target_norm.classes)]
        emd.update({k: v for k, v in self.metrics.items()})
        return emd


def _load_opt_state(opt, sd: dict) -> None:
    """Load a fastai optimizer's state saved as plain dicts and lists (fastai's own
    ``state_dict`` holds fastcore ``L`` objects, which ``torch.load(weights_only=True)`` refuses)."""
    from fastcore.foundation import L

    params = [p for p, *_ in opt.all_params()]
    state = [{k: v.to(p.device) if torch.is_tensor(v) else v for k, v in s.items()}
             for p, s in zip(params, sd["state"])]
    opt.load_state_dict({"state": state, "hypers": L(dict(h) for h in sd["hypers"])})


def arcgis_stats(norm: BandNorm) -> dict:
    """A band normalisation in arcgis.learn's ``NormalizationStats`` keys."""
    return {"band_min_values": norm.min, "band_max_values": norm.max,
            "band_mean_values": norm.mean, "band_std_values": norm.std,
            "scaled_min_values": norm.low.tolist(), "scaled_max_values": norm.high.tolist()}



def learning_rate(lr: float | slice | None) -> float | None:
    """A learning rate as a float: a ``slice`` (arcgis.learn, fastai) gives its ``stop``, as
    fastai does for a model of one layer group; ``None`` stays ``None``."""
    if lr is None:
        return None
    if isinstance(lr, slice):
        if lr.stop is None:
            raise ValueError(f"lr {lr!r} has no stop: give slice(low, high) or a number.")
        lr = lr.stop
    try:
        value = float(lr)
    except (TypeError, ValueError) as err:
        raise ValueError(f"lr must be a number or a slice of numbers, got {lr!r}.") from err
    if not value > 0:
        raise ValueError(f"lr must be > 0, got {value}.")
    return value


class ValidationScore(ValueMetric):
    """A fastai metric whose value is one of ``model.compute_metrics()`` (PSNR, SSIM, IoU...),
    computed on the validation chips once per epoch, after fastai's validation. The model's
    :attr:`metrics` are left as they were."""

    def __init__(self, model: TranslationModel, name: str) -> None:
        self.model = model
        super().__init__(self._score, name)

    def _score(self) -> float:
        kept = dict(self.model.metrics)
        try:
            return float(self.model.compute_metrics()[self.name])
        finally:
            self.model.metrics = kept

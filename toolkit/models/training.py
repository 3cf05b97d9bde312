"""Training, shared by every translation model: ``fit``, ``lr_find``, ``unfreeze``, the loss plot.

:class:`Training` is a mixin of :class:`toolkit.models.base.TranslationModel`: the model's
networks, trainer (a :class:`toolkit.models.gan.DiscriminatorStep`) and fastai ``Learner`` are
set up by the base; here they are trained, with checkpoints and resume
(:mod:`toolkit.models.checkpoint`), early stopping, a learning-rate schedule, mixed precision,
TensorBoard (:mod:`toolkit.models.tensorboard`) and DDP under ``torchrun`` (:mod:`toolkit.ddp`).

Layer: training (on fastai; above the inference core, below the models' public classes).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from toolkit import ddp
from toolkit._fastai import quiet_import
from toolkit.config import FitConfig
from toolkit.models.checkpoint import Checkpoint, checkpoint_path, find_resumable, load_checkpoint, new_fit_id
from toolkit.models.gan import History

with quiet_import():
    from fastai.callback.fp16 import MixedPrecision
    from fastai.callback.schedule import ParamScheduler, SchedLin, SchedNo, combine_scheds
    from fastai.learner import ValueMetric
    from fastai.optimizer import OptimWrapper

__all__ = ["Training", "ValidationScore", "learning_rate"]


class Training:
    """``fit`` and what goes with it, for a :class:`toolkit.models.base.TranslationModel`."""

    # --- training --------------------------------------------------------------------------------

    def _require_data(self, what: str) -> None:
        if self.learn is None:
            name = type(self).__name__
            raise RuntimeError(f"{what} needs training data: this model was loaded for inference. "
                               f"Use {name}.from_model(path, data=prepare_data(...)).")

    fit_id: str | None = None  # the id of the last fit (its checkpoint files); set by fit()
    unsaved_checkpoint: Path | None = None  # fit(keep_until_saved=True): resumable until save()
    run: dict | None = None  # the data and fit settings that trained it (the .emd's Toolkit.run)

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
        if checkpoint in ("best", "none"):  # FitConfig's words (toolkit train --checkpoint)
            checkpoint = checkpoint == "best"
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
        # what a repeat of this fit needs (the .emd's Toolkit.run.fit, toolkit train --config)
        self.run = dict(self.run or {}, fit=FitConfig(
            epochs=epochs, lr=float(lr), one_cycle=bool(one_cycle), early_stopping=patience or False,
            checkpoint="all" if checkpoint == "all" else "best" if checkpoint else "none",
            tensorboard=bool(tensorboard), monitor=monitor, schedule="linear" if schedule else None,
            sync_bn=bool(sync_bn)).to_dict())
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


def adam(betas: tuple[float, float], device: torch.device):
    """The generators' optimizer for the Learner (``opt_func``): PyTorch's Adam, fused on the
    CPU, the same arithmetic as fastai's Adam, which updates tensor by tensor (the demo's
    training on 2 cores: 3.4 s per epoch against 4.5 s); wrapped so that fit's schedules set its
    learning rate and first beta (fastai's ``mom``)."""
    fused = {"fused": True} if device.type == "cpu" else {}  # on CUDA torch picks its own multi-tensor path
    return functools.partial(OptimWrapper, opt=functools.partial(torch.optim.Adam, betas=betas, eps=1e-8,
                                                                 weight_decay=0.0, **fused))


def _load_opt_state(opt, sd: dict) -> None:
    """Load an optimizer state saved by :meth:`TranslationModel._state` (PyTorch's Adam, its
    tuples saved as lists), or by toolkits before it, which trained with fastai's Adam: the same
    moments under other names, converted. The current run's fused or multi-tensor setting stays."""
    inner = opt.opt
    if "hypers" in sd:  # fastai's Adam: one state per parameter, in order
        sd = {"state": {i: {"step": torch.tensor(float(s["step"])), "exp_avg": s["grad_avg"],
                            "exp_avg_sq": s["sqr_avg"]} for i, s in enumerate(sd["state"]) if "grad_avg" in s},
              "param_groups": inner.state_dict()["param_groups"]}  # the same order of parameters
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in inner.param_groups]
    inner.load_state_dict(sd)
    for group, kept in zip(inner.param_groups, flags):
        group.update(kept)


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

    def __init__(self, model: Training, name: str) -> None:
        self.model = model
        super().__init__(self._score, name)

    def _score(self) -> float:
        kept = dict(self.model.metrics)
        try:
            return float(self.model.compute_metrics()[self.name])
        finally:
            self.model.metrics = kept

"""What every translation model of the toolkit shares: the workflow around its networks.

:class:`TranslationModel` owns training on fastai (``fit`` with checkpoints, resume and early
stopping; ``lr_find``; mixed precision; the loss plot: the :class:`toolkit.models.training.Training`
mixin), the model folder (``save``, ``load``, ``from_model``) and inference (``predict``,
``predict_raster`` through a :class:`Translation`).
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

:func:`register` makes a model class loadable by :func:`toolkit.load_model` from its ``ModelType``
(:mod:`toolkit.models.zoo` imports every model of the toolkit).

Layer: training.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import ClassVar

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from toolkit import ddp
from toolkit._fastai import quiet_import
from toolkit._fs import check_not_input, check_output_folder, check_writable_folder
from toolkit.data.normalization import BandNorm, MaskEncoding, target_from_dict
from toolkit.models.checkpoint import plain_state
from toolkit.models.emd_schema import check_config, check_state_fits, check_weights_fit
from toolkit.models.gan import loss_metrics
from toolkit.models.model_folder import model_emd, read_model_folder, write_model_folder
from toolkit.models.networks import init_weights
from toolkit.models.training import Training, adam
from toolkit.models.translation import Translation, run_network, size_tuple

with quiet_import():
    from fastai.callback.fp16 import MixedPrecision
    from fastai.learner import Learner
    from fastai.torch_core import default_device

__all__ = ["MODEL_TYPES", "Translation", "TranslationModel", "model_class", "register"]

# the config keys that fix the networks' layout (the weights' names and shapes)
LAYOUT_KEYS = ("architecture", "n_channel", "backbone", "depth", "norm", "ngf", "ndf", "gen_blocks")

MODEL_TYPES: dict[str, type[TranslationModel]] = {}
"""``.emd`` ModelType -> model class, filled by :func:`register`."""


def register(cls: type[TranslationModel]) -> type[TranslationModel]:
    """Class decorator: make ``cls`` loadable from an ``.emd`` whose ModelType is ``cls.model_type``."""
    MODEL_TYPES[cls.model_type] = cls
    return cls


def model_class(model_type: str) -> type[TranslationModel]:
    """The registered class for an ``.emd`` ModelType (:mod:`toolkit.models.zoo` registers the
    toolkit's); ``KeyError`` when there is none."""
    if model_type not in MODEL_TYPES:
        raise KeyError(f"no model class registered for ModelType {model_type!r}: load the model with "
                       "toolkit.load_model(), which knows every model of the toolkit.")
    return MODEL_TYPES[model_type]


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


class TranslationModel(Training):
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
        settings = getattr(data, "settings", None)  # prepare_data's DataConfig
        self.run = {"data": settings.to_dict()} if settings is not None else None
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
                                 opt_func=adam(self._adam_betas(), self.device),
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
        input_norm = target_from_dict(emd["Toolkit"]["input_norm"])
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
        if data is None:  # fine-tuning with data is a new run; the saved one is kept for a repeat
            model.run = emd["Toolkit"].get("run")
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
        return model_emd(name, model_type=self.model_type, model_name=type(self).__name__, config=self.config,
                         input_norm=self.input_norm, target_norm=self.target_norm,
                         model_keys=self._emd_keys(name), history=self.history, metrics=self.metrics,
                         footprint_settings=self.footprint_settings, run=self.run)

"""The settings of each stage of the workflow, typed, documented and stated once.

One dataclass per stage: :class:`ExportConfig` (``export_training_data``), :class:`DataConfig`
(``prepare_data``), :class:`Pix2PixConfig`, :class:`CycleGANConfig` and :class:`Pix2PixHDConfig`
(the models),
:class:`FitConfig` (``fit``), :class:`PredictConfig` (``predict_raster``) and
:class:`VectorizeConfig` (``vectorize``). Each field is one keyword of that function, with its
type, its default (the function's signature takes it from here) and its meaning in the
field's terms (``help``). From them:

* the ``toolkit`` command's options are generated (:func:`add_options`): a field added here
  is an option of its command, with its range, choices and default in ``--help``;
* a run is a file (:class:`toolkit.runs.RunConfig`, YAML or JSON, ``toolkit train --config run.yaml``);
  a saved model's ``.emd`` is one too: ``Toolkit.config`` holds the model's fields by the
  same names, ``Toolkit.run`` the data and fit settings it was trained with;
* the demo and the notebooks build these instead of dicts of their own.

    from toolkit.config import Pix2PixConfig, FitConfig
    model = Pix2Pix(data, **Pix2PixConfig(ngf=32).to_dict())

Layer: formats and I/O (pure Python; it imports nothing of the toolkit).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

__all__ = ["CycleGANConfig", "DataConfig", "ExportConfig", "FitConfig", "MODEL_CONFIGS", "Pix2PixConfig",
           "Pix2PixHDConfig", "PredictConfig", "StageConfig", "VectorizeConfig", "add_options", "from_options",
           "setting"]

MAX_PIXELS = 16384  # chip and tile sides: larger is a typo, and would allocate gigabytes per chip
Size = Union[int, tuple[int, int]]
"""A chip or tile size: ``n`` (square) or ``(width, height)`` in pixels."""


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            above: bool = False, cli: bool = True, metavar: str | None = None) -> Any:
    """A config field: its default, what it means, and for numbers the range it must lie in
    (``low``/``high`` inclusive, or above ``low`` when ``above``). ``cli=False``: not an option
    of the command line (a Python object, or a setting the command sets itself)."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "above": above,
                                            "cli": cli, "metavar": metavar})


@dataclass(frozen=True)
class StageConfig:
    """What every stage's config can do: check itself, become a dict (JSON, YAML, ``**kwargs``)
    and be read back from one."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(type(self), f, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (sizes as lists), by the keyword names of the stage's function."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments of the stage's function (sizes as tuples)."""
        return {f.name: _size(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config", *, strict: bool = True):
        """The config of ``values``; ``ValueError`` naming ``source`` and the key for a value of
        the wrong type or range, or (``strict``) a key that is not a field."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected an object of {cls.__name__} settings, got {values!r}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if strict and unknown:
            raise ValueError(f"{source}: {unknown[0]!r} is not a setting of {cls.__name__}; "
                             f"expected one of {sorted(names)}.")
        try:
            return cls(**{k: _size(v) for k, v in values.items() if k in names})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each field's default."""
        return {f.name: f.default for f in dataclasses.fields(cls)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _size(value):
    return tuple(value) if isinstance(value, list) else value


# --- checking a value against its field -------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict:
    """A config class's evaluated annotations (once per class: every config built checks each field)."""
    return typing.get_type_hints(cls)


def _hint(cls: type, f: dataclasses.Field):
    return _hints(cls)[f.name]


def _parts(hint) -> tuple[list, bool]:
    """The alternatives of a type hint, without ``None``, and whether ``None`` is allowed."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    return [a for a in args if a is not type(None)], type(None) in args


def _describe(cls: type, f: dataclasses.Field) -> str:
    parts, optional = _parts(_hint(cls, f))
    m = f.metadata
    words = []
    for p in parts:
        if typing.get_origin(p) is Literal:
            words.append("one of " + ", ".join(repr(a) for a in typing.get_args(p)))
        elif p is bool:
            words.append("true or false")
        elif p in (int, float):
            words.append(Number(p, m["low"], m["high"], above=m["above"]).range)
        elif typing.get_origin(p) is tuple:
            words.append("a (width, height) pair")
        elif p is str:
            words.append("a string")
    return " or ".join(words) + (" or null" if optional else "")


def _fits(p, value, m) -> bool:
    if typing.get_origin(p) is Literal:
        return value in typing.get_args(p)
    if p is bool:
        return isinstance(value, bool)
    if p is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and \
            Number(int, m["low"], m["high"], above=m["above"]).accepts(value)
    if p is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and \
            Number(float, m["low"], m["high"], above=m["above"]).accepts(value)
    if typing.get_origin(p) is tuple:
        return isinstance(value, tuple) and len(value) == 2 and all(_fits(int, v, m) for v in value)
    if p is str:
        return isinstance(value, str)
    return True  # a Python object (cli=False): the function checks it


def check_value(cls: type, f: dataclasses.Field, value) -> None:
    parts, optional = _parts(_hint(cls, f))
    if value is None and optional or any(_fits(p, value, f.metadata) for p in parts):
        return
    raise ValueError(f"{f.name} is {value!r}; expected {_describe(cls, f)}.")


# --- the command line -------------------------------------------------------------------------


class Number:
    """An argparse type: a finite int or float within ``low .. high`` (either may be open:
    ``None``); anything else is a usage error (exit 2) that states the range."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 above: bool = False) -> None:
        self.kind, self.low, self.high, self.above = kind, low, high, above
        self.__name__ = self.range  # argparse names the type in its message

    @property
    def range(self) -> str:
        word = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{word} from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{word} {'>' if self.above else '>='} {self.low:g}"
        return f"{word} <= {self.high:g}" if self.high is not None else word

    def accepts(self, value: float) -> bool:
        return math.isfinite(value) and (self.low is None or (value > self.low if self.above else value >= self.low)) \
            and (self.high is None or value <= self.high)

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.range}, got {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.range}, got {text!r}")
        return value


class SizeOption(Number):
    """``256`` or ``256,128`` (width,height): whole pixels from 1 to :data:`MAX_PIXELS`."""

    def __init__(self) -> None:
        super().__init__(int, 1, MAX_PIXELS)

    @property
    def range(self) -> str:
        return f"N or WIDTH,HEIGHT, whole pixels from 1 to {MAX_PIXELS}"

    def __call__(self, text: str):
        try:
            parts = [super(SizeOption, self).__call__(p) for p in text.split(",")]
        except argparse.ArgumentTypeError:
            parts = []
        if len(parts) not in (1, 2):
            raise argparse.ArgumentTypeError(f"expected {self.range}, got {text!r}")
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, config: type[StageConfig], *, only_for: dict[str, str] | None = None,
                skip: tuple[str, ...] = (), default_text: dict[str, str] | None = None) -> list[str]:
    """Add an option per command-line field of ``config`` to ``parser`` (``--tile-size`` for
    ``tile_size``): its type, range or choices and help from the field, its default shown but
    left to the config (an option not given is not set). ``only_for`` prefixes a field's help
    (the models it is an option of). Options already on ``parser`` (a setting several configs share) are
    kept; ``default_text`` says a field's default in other words. Returns the field names added."""
    added = []
    taken = {s for action in parser._actions for s in action.option_strings}
    for f in dataclasses.fields(config):
        if not f.metadata.get("cli", True) or f.name in skip or option_name(f.name) in taken:
            continue
        parts, _ = _parts(_hint(config, f))
        m = f.metadata
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        if m.get("metavar"):
            kwargs["metavar"] = m["metavar"]
        prefix = (only_for or {}).get(f.name)
        help_text = (f"{prefix}: " if prefix else "") + m["help"]
        kinds = [p for p in parts if p is not bool]
        if parts == [bool]:
            kwargs["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
        elif any(typing.get_origin(p) is tuple for p in kinds):
            kwargs["type"] = SizeOption()
        elif typing.get_origin(kinds[0]) is Literal:
            kwargs["choices"] = list(typing.get_args(kinds[0]))
        elif kinds[0] in (int, float):
            kind = int if int in kinds else float
            kwargs["type"] = Number(kind, m["low"], m["high"], above=m["above"])
        if (default_text or {}).get(f.name):
            help_text += f" (default {default_text[f.name]})"
        elif f.default is not None and f.default is not False:
            help_text += f" (default {_plain(f.default)})"
        kwargs["help"] = help_text.replace("%", "%%")
        parser.add_argument(option_name(f.name), **kwargs)
        added.append(f.name)
    return added


def from_options(config: type[StageConfig], args: argparse.Namespace, base: dict | None = None) -> StageConfig:
    """``config`` from the options given on the command line (by field name), over ``base``
    (a file's settings), over the config's defaults."""
    values = dict(base or {})
    names = {f.name for f in dataclasses.fields(config)}
    values |= {k: v for k, v in vars(args).items() if k in names}
    return config.from_dict(values, "command line")


# --- the stages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    """:func:`toolkit.export_training_data`: how a scene is cut into training chips."""

    additional_input_raster: str | None = setting(
        None, "the paired target raster (Export_Tiles), or domain B (CycleGAN)")
    in_class_data: str | None = setting(None, "polygons or a class raster (Classified_Tiles)")
    metadata_format: Literal["Export_Tiles", "Classified_Tiles", "CycleGAN"] | None = setting(
        None, "the chip folder's layout (default: from the inputs)")
    tile_size: int | tuple[int, int] = setting(256, "chip size in pixels")
    stride: int | tuple[int, int] | None = setting(None, "step between chips in pixels (default the tile size)")
    class_value_field: str | None = setting(None, "the polygons' field holding the class value")
    contour_width: int = setting(0, "outline class width in pixels (0: none)", low=0, high=255)
    resize_to: int | tuple[int, int] | None = setting(None, "resample each chip to this size")
    image_chip_format: str = setting("TIFF", "TIFF, PNG or JPEG (Pro's values; tif/png/jpg too)")
    start_index: int = setting(0, "number of the first chip", low=0)
    in_mask_polygons: str | None = setting(None, "write only the chips that lie completely inside these polygons")
    buffer_radius: float = setting(0.0, "point features become circles of this radius (raster CRS units)",
                                   low=0)
    rotation_angle: float = setting(0.0, "also export each chip rotated by this angle, twice it... below 360 "
                                    "degrees", low=0, high=360)


@dataclass(frozen=True)
class DataConfig(StageConfig):
    """:func:`toolkit.prepare_data`: how chips become training and validation batches."""

    batch_size: int = setting(8, "chips per batch", low=1, high=65536)
    val_split_pct: float = setting(0.1, "share of the chips kept for validation (above 0, below 1)",
                                   low=0, high=1, above=True)
    seed: int = setting(42, "seed of the split and the shuffling", low=0, high=2**32 - 1)
    chip_size: int | tuple[int, int] | None = setting(None, "crop chips to this size")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_split_pct >= 1:
            raise ValueError(f"val_split_pct is {self.val_split_pct}; expected a share above 0 and below 1.")


@dataclass(frozen=True)
class Pix2PixConfig(StageConfig):
    """:class:`toolkit.Pix2Pix`: the U-Net generator, the PatchGAN and the losses. The ``.emd``'s
    ``Toolkit.config`` holds these fields by the same names (and what the data fixes: bands,
    chip size)."""

    ngf: int = setting(64, "generator filters of the first layer", low=1, high=1024)
    ndf: int = setting(64, "discriminator filters of the first layer", low=1, high=1024)
    lambda_l1: float = setting(100.0, "weight of the L1 term", low=0)
    gan_weight: float = setting(1.0, "weight of the adversarial term (0: a plain L1 U-Net)", low=0)
    norm: Literal["batch", "instance"] = setting("batch", "normalisation layers")
    dropout: bool = setting(True, "Dropout 0.5 in the U-Net's inner up blocks (the paper's)")
    class_balance: bool = setting(False, "on class masks: L1 weighted by the classes' shares")
    mask_loss: Literal["l1", "bce_dice"] = setting("l1", "on class masks: the paper's L1 (class-balanced with "
                                                    "class_balance) or cross-entropy plus Dice")
    backbone: str | None = setting(None, "a torchvision encoder for the U-Net", cli=False)
    recipe: Literal["paper", "arcgis"] = setting("paper", "'arcgis': arcgis.learn 2.4.4's networks and "
                                                 "training", cli=False)


@dataclass(frozen=True)
class CycleGANConfig(StageConfig):
    """:class:`toolkit.CycleGAN`: two ResNet generators, two PatchGANs, the cycle losses."""

    gen_blocks: int = setting(9, "residual blocks per generator", low=0, high=64)
    lsgan: bool = setting(True, "least-squares GAN loss (else binary cross-entropy)", cli=False)
    ngf: int = setting(64, "generator filters of the first layer", low=1, high=1024)
    ndf: int = setting(64, "discriminator filters of the first layer", low=1, high=1024)
    lambda_A: float = setting(10.0, "weight of the A -> B -> A cycle", low=0, cli=False)
    lambda_B: float = setting(10.0, "weight of the B -> A -> B cycle", low=0, cli=False)
    lambda_identity: float = setting(0.5, "weight of the identity terms (of the cycle's)", low=0, cli=False)
    pool_size: int = setting(50, "earlier fakes the discriminators see again", low=0, cli=False)
    norm: Literal["batch", "instance"] = setting("instance", "normalisation layers")


@dataclass(frozen=True)
class Pix2PixHDConfig(StageConfig):
    """:class:`toolkit.Pix2PixHD`: arcgis.learn 2.4.4's keywords and defaults (a local enhancer
    around a global generator, two PatchGANs, feature matching)."""

    n_gen_filters: int = setting(64, "generator filters of the first layer (of the local enhancer)", low=1, high=1024)
    gen_network: Literal["global", "local"] = setting("local", "'global': the coarse generator alone; 'local': "
                                                      "local enhancer(s) around it, at twice its resolution")
    n_downsample_global: int = setting(4, "downsamplings of the global generator", low=1, high=8)
    n_blocks_global: int = setting(9, "residual blocks of the global generator", low=0, high=64)
    n_local_enhancers: int = setting(1, "local enhancers (each doubles the resolution)", low=1, high=4)
    n_blocks_local: int = setting(3, "residual blocks per local enhancer", low=0, high=64)
    norm: Literal["batch", "instance"] = setting("instance", "normalisation layers")
    lsgan: bool = setting(True, "least-squares GAN loss (else binary cross-entropy)")
    n_dscr_filters: int = setting(64, "discriminator filters of the first layer", low=1, high=1024)
    n_layers_dscr: int = setting(3, "layers of each discriminator", low=1, high=8)
    n_dscr: int = setting(2, "discriminators, at full, half... resolution", low=1, high=8)
    feat_loss: bool = setting(True, "feature matching on the discriminators' layers")
    vgg_loss: bool = setting(True, "VGG-19 feature matching (3-band images; needs vgg_weights)")
    vgg_weights: str | None = setting(None, "a local torchvision vgg19 state dict (ImageNet weights) for the "
                                      "VGG loss; nothing is downloaded")
    lambda_feat: float = setting(10.0, "weight of the feature-matching and VGG terms", low=0)
    l1_loss: bool = setting(False, "an L1 term (on for multispectral data, as arcgis.learn)")
    lambda_l1: float = setting(100.0, "weight of the L1 term", low=0)
    niter_fix_global: int = setting(0, "first epochs in which only the local enhancers train, the global "
                                    "generator fixed", low=0)


MODEL_CONFIGS: dict[str, type[StageConfig]] = {"pix2pix": Pix2PixConfig, "cyclegan": CycleGANConfig,
                                               "pix2pixhd": Pix2PixHDConfig}
"""The config of each model, by the name ``toolkit train --model`` takes."""


@dataclass(frozen=True)
class FitConfig(StageConfig):
    """``model.fit``: how long and how the model trains."""

    epochs: int = setting(10, "epochs to train", low=1, high=100000)
    lr: float | None = setting(None, "learning rate (default: lr_find's suggestion, else 2e-4)",
                               low=0, high=10, above=True)
    one_cycle: bool = setting(True, "one-cycle schedule (else constant)", cli=False)
    early_stopping: int | bool = setting(False, "stop when the monitored value has not improved for this "
                                         "many epochs", low=1, metavar="EPOCHS")
    checkpoint: Literal["best", "all", "none"] = setting(
        "best", "checkpoints: the last and best epoch, one per epoch too, or none")
    tensorboard: bool = setting(False, "log to <working dir>/training_log/ for TensorBoard")
    monitor: str = setting("valid_loss", "what decides the best epoch (valid_loss, psnr, ssim...)")
    schedule: Literal["linear"] | None = setting(None, "constant, then linear decay (else one-cycle)")
    sync_bn: bool = setting(False, "under torchrun on GPUs: synchronised batch norm")


@dataclass(frozen=True)
class PredictConfig(StageConfig):
    """:func:`toolkit.predict_raster`: how a model runs over a scene."""

    padding: int | None = setting(None, "overlap on each side of a window, in pixels (below half the chip; "
                                  "default a quarter of it)", low=0)
    batch_size: int = setting(8, "windows per forward pass", low=1, high=65536)
    threshold: float | None = setting(None, "mask models: write a class raster (a score from 0 to 1)",
                                      low=0, high=1)
    tta: bool = setting(False, "test-time augmentation (8 flips/rotations)")
    convert_to: Literal["a", "b"] | None = setting(None, "CycleGAN: the direction (default b)")
    backend: Literal["auto", "openvino", "onnxruntime", "torch"] = setting(
        "auto", "where the generator runs: the fastest exact path installed (auto), or one named")
    precision: Literal["fp32", "int8"] = setting(
        "fp32", "int8: quantized on the CPU, calibrated on the scene (faster; see benchmarks/README.md)")
    timeout: float | None = setting(300.0, "on a Dask cluster: fail when it has had no worker for this many "
                                    "seconds", low=0, above=True)


@dataclass(frozen=True)
class VectorizeConfig(StageConfig):
    """:func:`toolkit.vectorize`: footprint masks to polygons; unset thresholds come from the
    prediction's tags."""

    threshold: float | None = setting(None, "footprint score (or class value) from which a pixel is footprint")
    boundary_threshold: float | None = setting(None, "outline score (or class value) from which a pixel is "
                                               "outline")
    min_area: float | None = setting(None, "drop smaller polygons (CRS units squared)", low=0)
    marker_erosion: int | None = setting(None, "erode watershed markers by this many pixels", low=0, high=1000)
    simplify_tolerance: float = setting(0.0, "in CRS units", low=0)
    regularize: bool = setting(False, "square the polygons' corners")

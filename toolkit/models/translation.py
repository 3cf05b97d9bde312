"""One direction of a saved model, as inference uses it, without fastai.

:class:`Translation` is all that :func:`toolkit.inference.predict_raster`, ``predict``, the
distributed workers and the ArcGIS Pro raster function use of a model: a forward function, the
band scaling on both sides, the chip size. :func:`load_translation` builds one straight from a
saved model (``.emd``, folder, ``.dlpk``; arcgis.learn's too) with torch, numpy and rasterio
alone: the path from a ``.dlpk`` to pixels imports neither fastai nor fastcore, so the toolkit
runs in ArcGIS Pro's Python beside arcgis.learn (which needs fastai 1). Training a model
(:mod:`toolkit.models.base`) is what needs fastai 2.

Layer: inference core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from toolkit._args import size_tuple
from toolkit._fs import atomic_file, check_not_input, check_output_file
from toolkit.data.chips import read_chip
from toolkit.data.normalization import BandCounts, BandNorm, MaskEncoding, target_from_dict
from toolkit.raster import is_toolkit_raster, write_raster
from toolkit.models.emd_schema import check_state_fits, check_weights_fit
from toolkit.models.model_folder import read_model_folder
from toolkit.models.specs import spec_of
from toolkit.stats import band_validity, check_band_coverage

__all__ = ["Translation", "load_translation", "run_network", "scores_to_classes", "size_tuple"]


@dataclass
class Translation(BandCounts):
    """One direction of a model, as inference sees it: normalised input bands in, target units out.

    :func:`toolkit.inference.predict_raster`, ``predict`` and distributed workers use nothing
    else of a model. ``forward`` maps normalised ``(n, bands_in, h, w)`` float32 in [-1, 1] to
    the generator's ``(n, bands_out, h, w)`` in [-1, 1]; :meth:`generate` adds test-time
    augmentation, :meth:`to_target_units` the way back to band values or class scores.
    """

    forward: Callable[[np.ndarray], np.ndarray]
    input_norm: BandNorm
    target_norm: BandNorm | MaskEncoding
    chip_size: tuple[int, int]  # (width, height) of the chips the model was trained on
    extract_bands: list[int] | None = None  # 0-based bands of the input raster to use
    cell_size: tuple[float, float] | None = None  # training ground pixel size, CRS units
    source_files: tuple[Path, ...] = ()  # the model's own files: never written over
    footprint_settings: dict | None = None
    name: str = "model"  # for messages
    convert_to: str | None = None  # the direction, on models that have two (CycleGAN "a"/"b")
    # the generator that ``forward`` runs, where known: toolkit.models.backends can then run it
    # elsewhere (OpenVINO, ONNX Runtime); None for a forward given as a plain function
    network: nn.Module | None = field(default=None, repr=False, compare=False)
    device: torch.device | None = field(default=None, repr=False, compare=False)

    @property
    def is_mask(self) -> bool:
        return isinstance(self.target_norm, MaskEncoding)

    def generate(self, x: np.ndarray, tta: bool = False) -> np.ndarray:
        """``forward`` on ``x``; with ``tta``, the mean of its outputs for the 8 dihedral
        transforms of each input (identity, rotations by 90, 180 and 270 degrees, and the
        horizontal flip of each), each output turned back first. Inputs that are not square get
        the 4 transforms that keep their shape (identity, 180 degrees, the two flips). All
        transforms of the ``n`` inputs run as one batch of ``8 * n`` (or ``4 * n``)."""
        if not tta:
            return self.forward(x)
        x = np.asarray(x)
        n = len(x)
        transforms = _dihedral(x.shape[-2] == x.shape[-1])
        out = self.forward(np.concatenate([_transform(x, k, flip) for k, flip in transforms]))
        mean = np.zeros((n, *out.shape[1:2], *x.shape[-2:]), np.float32)
        for i, (k, flip) in enumerate(transforms):
            mean += _untransform(out[i * n:(i + 1) * n], k, flip)
        return mean / np.float32(len(transforms))

    def to_target_units(self, out: np.ndarray) -> np.ndarray:
        """Generator output in [-1, 1] -> target units: band values for image targets, class
        scores in [0, 1] (one band per class; 0.5 is the decision threshold) for mask targets."""
        if self.is_mask:
            return ((np.asarray(out, np.float32) + 1.0) / 2.0).astype(np.float32)
        return self.target_norm.denormalize(out)

    def predict(self, image: str | os.PathLike | np.ndarray, output: str | os.PathLike | None = None,
                *, transform=None, crs=None, overwrite: bool = False, tta: bool = False) -> np.ndarray:
        """Translate one chip of any size (a chip file, or ``(bands, h, w)`` in input units) into
        float32 ``(bands_out, h, w)`` in target units, NaN where the input is nodata; with
        ``output``, also written there as a GeoTIFF with the chip's CRS and transform."""
        nodata = None
        if output is not None:
            inputs = [image] if isinstance(image, (str, os.PathLike)) else []
            check_not_input(output, inputs + list(self.source_files), role="output")
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
        if self.extract_bands:
            data = data[self.extract_bands]
        if data.ndim != 3 or data.shape[0] != self.input_norm.raster_bands:
            raise ValueError(f"the {self.name} takes {self.input_norm.raster_bands} band(s) (bands, height, width); "
                             f"got an array of shape {data.shape}.")
        source = image if isinstance(image, (str, os.PathLike)) else "image"
        result = self.predict_chips(data[np.newaxis], nodata=nodata, tta=tta, source=source)[0]
        if output is not None:
            with atomic_file(output, overwrite=overwrite, owned=is_toolkit_raster) as tmp:
                write_raster(tmp, result, transform=transform, crs=crs, nodata=np.nan, output_of="predict")
        return result


    def predict_chips(self, chips: np.ndarray, *, nodata=None, tta: bool = False, source="image") -> np.ndarray:
        """Translate ``n`` chips ``(n, bands, h, w)`` of the model's input bands, in input units,
        in one batch: float32 ``(n, bands_out, h, w)`` in target units, NaN where a chip's pixel
        is nodata in every band (``nodata``: the input's nodata value; NaN always counts).
        ``ValueError`` naming ``source`` when a band of a chip holds no valid pixel."""
        xs, blank = [], []
        for chip in chips:
            valid = band_validity(chip, nodata)
            check_band_coverage(valid, source)
            xs.append(self.input_norm.normalize(chip, valid))
            blank.append(~valid.any(axis=0))
        result = self.to_target_units(self.generate(np.stack(xs), tta=tta))
        for out, empty in zip(result, blank):
            out[:, empty] = np.nan
        return result


def scores_to_classes(scores: np.ndarray, values, threshold: float) -> np.ndarray:
    """Class scores ``(classes, h, w)`` in [0, 1] -> class values ``(h, w)``: the value of the
    class with the highest score where that score is at least ``threshold``, else 0. NaN scores
    never win."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    best = scores.argmax(axis=0)
    return np.where(scores.max(axis=0) >= threshold, np.asarray(values, dtype=np.int64)[best], 0)


def _dihedral(square: bool) -> list[tuple[int, bool]]:
    """Test-time transforms as ``(quarter turns, horizontal flip after the turns)``: the 8 of the
    dihedral group for square inputs, the 4 that keep the shape for the others."""
    return [(k, flip) for k in ((0, 1, 2, 3) if square else (0, 2)) for flip in (False, True)]


def _transform(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    x = np.rot90(x, k, axes=(-2, -1))
    return x[..., ::-1] if flip else x


def _untransform(y: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The inverse of :func:`_transform`: an output of a transformed input back on the input's grid."""
    y = y[..., ::-1] if flip else y
    return np.rot90(y, -k, axes=(-2, -1))




def autocast(device: torch.device):
    """Mixed precision for inference on CUDA (bf16 where supported, else fp16); none on the CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def run_network(net: nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    """One forward pass of ``net`` on a normalised numpy batch: eval mode, no gradients, mixed
    precision on CUDA; float32 numpy out."""
    net.eval()
    with torch.no_grad(), autocast(device):
        out = net(torch.from_numpy(np.ascontiguousarray(x)).to(device))
    return out.float().cpu().numpy()


def make_translation(spec, config: dict, networks: dict[str, nn.Module], input_norm, target_norm,
                     device: torch.device, convert_to: str | None = None, **kwargs) -> Translation:
    """The :class:`Translation` of one direction of a model: ``spec`` (its class or
    :mod:`toolkit.models.specs` entry) says which generator runs and which statistics scale each
    side (:meth:`direction`)."""
    network, swap, cell_key, name, convert_to = spec.direction(config, convert_to)
    net = networks[network]
    inputs, targets = (target_norm, input_norm) if swap else (input_norm, target_norm)
    cell = config.get(cell_key)
    return Translation(forward=lambda x: run_network(net, x, device), input_norm=inputs, target_norm=targets,
                       chip_size=size_tuple(config["chip_size"]), cell_size=tuple(cell) if cell else None,
                       name=name, convert_to=convert_to, network=net, device=device, **kwargs)


def load_translation(path: str | os.PathLike, convert_to: str | None = None, *,
                     device: str | torch.device | None = None) -> Translation:
    """One direction of a saved model (``.emd``, folder, ``.dlpk``, or ``.pth`` with its
    ``.emd``; arcgis.learn's models too), ready for :func:`toolkit.inference.predict_raster`,
    without fastai: the generator of that direction is built and its weights loaded.

    Args:
        convert_to: models with two directions (CycleGAN): ``"b"`` (A -> B, default) or ``"a"``.
        device: where the generator runs (``"cpu"``, ``"cuda:1"``...); default the GPU when
            there is one.
    """

    emd, weights, emd_path = read_model_folder(path)
    spec = spec_of(emd["ModelType"])
    config = emd["Toolkit"]["config"]
    check_weights_fit(config, weights, emd_path, model_type=emd["ModelType"])
    device = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = spec.direction(config, convert_to)[0]
    net = spec.build_networks(config)[network]
    check_state_fits({network: net}, weights, emd_path, spec.describe_networks(config), required=(network,))
    net.load_state_dict(weights[network])
    source_files = (emd_path,) if emd_path.suffix.lower() == ".dlpk" else (emd_path, emd_path.with_suffix(".pth"))
    return make_translation(spec, config, {network: net.to(device)},
                            target_from_dict(emd["Toolkit"]["input_norm"]),
                            target_from_dict(emd["Toolkit"]["target_norm"]), device, convert_to,
                            extract_bands=config.get("extract_bands") if not spec.two_way else None,
                            footprint_settings=emd["Toolkit"].get("footprint_settings"),
                            source_files=source_files)

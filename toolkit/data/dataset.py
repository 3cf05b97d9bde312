"""The dataset behind the DataLoaders: chip pairs -> (input, target) tensors in [-1, 1].

Layer: data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from toolkit._fastai import quiet_import
from toolkit.data.chips import read_chip, side_by_side_halves
from toolkit.data.layouts import ChipPair
from toolkit.data.normalization import BandNorm, MaskEncoding
from toolkit.stats import band_validity, check_band_coverage

with quiet_import():
    from fastai.torch_core import TensorImage


def read_pair(pair: ChipPair, *, extract_bands: Sequence[int] | None = None):
    """Raw band values of one pair: ``(x, x_valid, y, y_valid)``, ``(bands, h, w)`` arrays in
    the files' dtypes and boolean validity (nodata and NaN are not valid)."""
    if not pair.side_by_side:
        x, x_valid = read_image(pair.input, extract_bands=extract_bands)
        y, y_valid = read_image(pair.target)
        return x, x_valid, y, y_valid
    data, nodata = read_chip(pair.input)
    a, b = side_by_side_halves(data, pair.input)
    x, y = (a, b) if pair.side_by_side == "AtoB" else (b, a)
    if extract_bands is not None:
        x = x[list(extract_bands)]
    return x, band_validity(x, nodata), y, band_validity(y, nodata)


def read_image(path: Path, *, extract_bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw band values of one chip, ``(bands, h, w)`` in the file's dtype, and their boolean
    validity (nodata and NaN are not valid); ``extract_bands`` keeps those 0-based bands."""
    data, nodata = read_chip(path)
    if extract_bands is not None:
        data = data[list(extract_bands)]
    return data, band_validity(data, nodata)


def resize_bands(data: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize ``(bands, h, w)`` to ``size`` (width, height): bilinear, or nearest for labels."""
    if (data.shape[-1], data.shape[-2]) == tuple(size):
        return data
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return np.stack([cv2.resize(band, tuple(size), interpolation=interpolation) for band in data])


# Raw chips kept in memory by each dataset, up to this many bytes: reading a chip pair from disk
# (two GeoTIFF opens) costs about as much as a training step on a small network spends on it.
CHIP_CACHE_BYTES = 256 * 2**20  # per dataset and loader process


class ChipPairDataset:
    """Map-style dataset: item ``i`` is ``(input, target)``, two float32 ``TensorImage`` s
    ``(bands, h, w)`` in [-1, 1].

    Inputs are normalised with ``input_norm`` (images) or, label-to-image, encoded one-hot with a
    ``MaskEncoding`` (class rasters); targets with ``target_norm`` (images) or encoded with a
    ``MaskEncoding`` (class labels). When training with ``lighting`` > 0, the input's
    brightness and contrast change at random (:func:`lighting`; the target does not). Then, in
    order: ``resize_to`` (bilinear; nearest for labels), a crop to ``chip_size`` (random when
    training, centred otherwise), and for training with ``augment`` a random flip / 90-degree
    rotation; input and target always get the same one.
    ``split_idx`` is 0 for training and 1 for validation, as fastai transforms expect.
    """

    def __init__(self, pairs: Sequence[ChipPair], *, input_norm: BandNorm | MaskEncoding,
                 target_norm: BandNorm | MaskEncoding, train: bool, augment: bool,
                 resize_to: tuple[int, int] | None = None, chip_size: tuple[int, int] | None = None,
                 extract_bands: Sequence[int] | None = None, lighting: float = 0.0,
                 rotate: float = 0.0, zoom: float = 1.0) -> None:
        self.pairs = list(pairs)
        self.lighting = float(lighting)
        self.rotate = float(rotate)
        self.zoom = float(zoom)
        self._cache: dict[int, tuple] = {}
        self._cached_bytes = 0
        self.input_norm = input_norm
        self.target_norm = target_norm
        self.train = train
        self.augment = augment
        self.resize_to = resize_to
        self.chip_size = chip_size
        self.extract_bands = list(extract_bands) if extract_bands is not None else None
        self.split_idx = 0 if train else 1

    @property
    def is_mask(self) -> bool:
        return isinstance(self.target_norm, MaskEncoding)

    @property
    def input_is_mask(self) -> bool:
        """Label-to-image: the inputs are class rasters, one-hot encoded after augmentation."""
        return isinstance(self.input_norm, MaskEncoding)

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The raw arrays of pair ``i`` (see :func:`read_pair`), from memory after the first read
        while they fit in :data:`CHIP_CACHE_BYTES`. Callers must not change them in place."""
        if i in self._cache:
            return self._cache[i]
        arrays = read_pair(self.pairs[i], extract_bands=self.extract_bands)
        size = sum(a.nbytes for a in arrays)
        if self._cached_bytes + size <= CHIP_CACHE_BYTES:
            self._cache[i] = arrays
            self._cached_bytes += size
        return arrays

    def __getitem__(self, i: int) -> tuple[TensorImage, TensorImage]:
        pair = self.pairs[i]
        x, x_valid, y, y_valid = self._read(i)
        check_band_coverage(x_valid, pair.input)
        if self.input_is_mask:  # class values, kept as such through resampling (nearest)
            x = np.where(x_valid[:1], x[:1], 0)
            self.input_norm.check(x, pair.input)
        else:
            x = self.input_norm.normalize(x, x_valid)
            if self.train and self.lighting > 0:
                x = lighting(x, self.lighting, x_valid)
        if self.is_mask:
            y = y[:1]
            self.target_norm.check(y, pair.target)
        else:
            check_band_coverage(y_valid, pair.target)
            y = self.target_norm.normalize(y, y_valid)
        if self.resize_to is not None:
            x = resize_bands(x, self.resize_to, nearest=self.input_is_mask)
            y = resize_bands(y, self.resize_to, nearest=self.is_mask)
        if self.chip_size is not None:
            x, y = crop((x, y), self.chip_size, random=self.train)
        if self.train and self.augment:
            x, y = dihedral(x, y)
        if self.train and (self.rotate > 0 or self.zoom > 1):
            x, y = turn_and_zoom(x, y, self.rotate, self.zoom, nearest=self.is_mask, nearest_x=self.input_is_mask)
        if self.input_is_mask:
            x = self.input_norm.encode(x[0])
        if self.is_mask:
            y = self.target_norm.encode(y[0])
        return (TensorImage(torch.from_numpy(np.ascontiguousarray(x))),
                TensorImage(torch.from_numpy(np.ascontiguousarray(y))))


def lighting(x: np.ndarray, strength: float, valid: np.ndarray | None = None) -> np.ndarray:
    """A random change of brightness and contrast of a normalised chip ``(bands, h, w)`` in
    [-1, 1], as fastai's ``max_lighting`` (arcgis.learn uses 0.3): on the logit of the values
    mapped to [0, 1], contrast multiplies by a factor drawn log-uniformly from
    ``[1 - strength, 1 / (1 - strength)]`` and brightness adds the logit of a value drawn from
    ``0.5 * [1 - strength, 1 + strength]``; each band's brightness also moves by up to a third
    of that range on its own (a colour cast). Pixels not ``valid`` keep their value. Aerial
    scenes differ in sun, haze and camera from flight to flight; a model trained on one flight
    should not learn its exposure."""
    if not 0 < strength < 1:
        raise ValueError(f"lighting must lie in (0, 1), got {strength}.")
    # torch's generator, as dihedral: DataLoader workers get distinct seeds
    u = torch.rand(2 + x.shape[0]).numpy().astype(np.float32)
    low, high = np.log(1 - strength), -np.log(1 - strength)
    contrast = np.exp(low + (high - low) * u[0])
    brightness = _logit(0.5 * (1 - strength + 2 * strength * u[1]))
    cast = (u[2:] - 0.5) * 2 / 3 * (_logit(0.5 * (1 + strength)))
    p = np.clip((x + 1) / 2, 1e-3, 1 - 1e-3)
    logits = _logit(p) * contrast + brightness + cast[:, None, None]
    out = (2 / (1 + np.exp(-logits)) - 1).astype(np.float32)
    if valid is not None:
        out = np.where(valid, out, x)
    return out


def turn_and_zoom(x: np.ndarray, y: np.ndarray, max_rotate: float, max_zoom: float, *,
                  nearest: bool, nearest_x: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Turn ``x`` and ``y`` (``(bands, h, w)``) by the same random angle in ``[-max_rotate,
    max_rotate]`` degrees about the chip's centre and enlarge them by the same random factor in
    ``[1, max_zoom]``; edges are mirrored (so no empty corners appear), labels resampled by
    nearest neighbour: ``y`` when ``nearest``, ``x`` when ``nearest_x`` (label-to-image). Buildings stand at every angle, and towns at every
    ground resolution near the training one; flips and quarter turns alone show four angles."""
    u = torch.rand(2).numpy()
    angle = (2 * u[0] - 1) * max_rotate
    scale = 1 + (max_zoom - 1) * u[1]
    h, w = x.shape[-2:]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), float(angle), float(scale))

    def warp(a: np.ndarray, interpolation: int) -> np.ndarray:
        return np.stack([cv2.warpAffine(np.ascontiguousarray(band), matrix, (w, h), flags=interpolation,
                                        borderMode=cv2.BORDER_REFLECT_101) for band in a])

    return (warp(x, cv2.INTER_NEAREST if nearest_x else cv2.INTER_LINEAR),
            warp(y, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR))


def _logit(p):
    return np.log(p / (1 - p))


def crop(arrays: Sequence[np.ndarray], size: tuple[int, int], *, random: bool) -> list[np.ndarray]:
    """Crop ``(bands, h, w)`` arrays of one height and width to ``size`` (width, height): all with
    the same window, drawn at random (training) or centred."""
    width, height = size
    h, w = arrays[0].shape[-2:]
    if (w, h) == (width, height):
        return list(arrays)
    if random:
        top = int(torch.randint(0, h - height + 1, ()))
        left = int(torch.randint(0, w - width + 1, ()))
    else:
        top, left = (h - height) // 2, (w - width) // 2
    window = (..., slice(top, top + height), slice(left, left + width))
    return [a[window] for a in arrays]


def dihedral(*arrays: np.ndarray) -> list[np.ndarray]:
    """One random flip / 90-degree rotation (180 for non-square chips), the same for every
    ``(bands, h, w)`` array given."""
    # torch's generator, not numpy's: DataLoader workers get distinct torch seeds.
    square = arrays[0].shape[-1] == arrays[0].shape[-2]
    k = int(torch.randint(0, 4, ())) if square else 2 * int(torch.randint(0, 2, ()))
    flip = bool(torch.randint(0, 2, ()))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        out.append(a[..., ::-1] if flip else a)
    return out

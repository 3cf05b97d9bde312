"""The dataset behind the DataLoaders: chip pairs -> (input, target) tensors in [-1, 1]."""

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


class ChipPairDataset:
    """Map-style dataset: item ``i`` is ``(input, target)``, two float32 ``TensorImage`` s
    ``(bands, h, w)`` in [-1, 1].

    Inputs are normalised with ``input_norm``; targets with ``target_norm`` (images) or encoded
    with a ``MaskEncoding`` (class labels). Then, in order: ``resize_to`` (bilinear; nearest for
    labels), a crop to ``chip_size`` (random when training, centred otherwise), and for training
    with ``augment`` a random flip / 90-degree rotation; input and target always get the same one.
    ``split_idx`` is 0 for training and 1 for validation, as fastai transforms expect.
    """

    def __init__(self, pairs: Sequence[ChipPair], *, input_norm: BandNorm,
                 target_norm: BandNorm | MaskEncoding, train: bool, augment: bool,
                 resize_to: tuple[int, int] | None = None, chip_size: tuple[int, int] | None = None,
                 extract_bands: Sequence[int] | None = None) -> None:
        self.pairs = list(pairs)
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

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[TensorImage, TensorImage]:
        pair = self.pairs[i]
        x, x_valid, y, y_valid = read_pair(pair, extract_bands=self.extract_bands)
        check_band_coverage(x_valid, pair.input)
        x = self.input_norm.normalize(x, x_valid)
        if self.is_mask:
            y = y[:1]
            self.target_norm.check(y, pair.target)
        else:
            check_band_coverage(y_valid, pair.target)
            y = self.target_norm.normalize(y, y_valid)
        if self.resize_to is not None:
            x = resize_bands(x, self.resize_to)
            y = resize_bands(y, self.resize_to, nearest=self.is_mask)
        if self.chip_size is not None:
            x, y = crop((x, y), self.chip_size, random=self.train)
        if self.train and self.augment:
            x, y = dihedral(x, y)
        if self.is_mask:
            y = self.target_norm.encode(y[0])
        return (TensorImage(torch.from_numpy(np.ascontiguousarray(x))),
                TensorImage(torch.from_numpy(np.ascontiguousarray(y))))


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

"""The window machinery of whole-raster inference: a model's chips over a scene, blended without seams.

The scene is cut into windows of the model's chip size that overlap by ``2 * padding``
(stride ``chip - 2 * padding``), as ArcGIS's "Classify/Translate Pixels" does. Each window's
output is weighted by a 2-D Hann window and the weighted outputs are summed and divided by the
summed weights, so window borders leave no seams; a pixel-wise model gives exactly its per-pixel
result. The raster's edges are reflected, so every pixel gets an output.

The raster is read and written one row of windows at a time: memory depends on the raster's
width and the chip size, not on its height. Any band of window rows can be computed on its own
(:func:`predict_rows`) with the same values as the whole-scene pass; :mod:`toolkit.distributed`
runs such bands on a Dask cluster; :func:`toolkit.inference.predict_raster` writes a whole scene.

Layer: inference core (no fastai): below :mod:`toolkit.inference` and :mod:`toolkit.distributed`,
which both build on it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window
from tqdm.auto import tqdm

from toolkit.raster import OUTPUT_TAG
from toolkit.stats import band_validity

__all__ = ["RowOptions", "Scene", "WindowGrid", "as_translation", "calibration_windows", "check_settings", "hann_window",
           "predict_rows", "reflect_index", "write_in_order"]


def hann_window(height: int, width: int) -> np.ndarray:
    """2-D Hann weights ``(height, width)``, sampled at pixel centres so every weight is > 0."""
    def one(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2
    return np.outer(one(height), one(width)).astype(np.float32)


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map positions outside ``[0, size)`` back inside by reflection about the edge pixels
    (numpy's ``reflect``: -1 -> 1, size -> size - 2), repeating for reaches beyond the raster."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def as_translation(model, convert_to: str | None = None):
    """``model`` (a Pix2Pix, a CycleGAN, a saved model's path) as the one direction inference
    uses; a :class:`toolkit.models.Translation` as it is (then ``convert_to`` must be ``None``)."""
    from toolkit.models.translation import Translation, load_translation

    if isinstance(model, (str, os.PathLike)):
        return load_translation(model, convert_to)
    if not isinstance(model, Translation):
        return model.translation(**({"convert_to": convert_to} if convert_to is not None else {}))
    if convert_to is not None:
        raise ValueError("convert_to picks a direction of a model; this is already one direction.")
    return model


def check_settings(model, padding: int | None, threshold: float | None, batch_size: int = 1) -> int:
    """The padding in pixels (default a quarter of the chip), after checking it, ``threshold``
    and ``batch_size`` against the model; ``ValueError`` saying what is allowed (a value out of
    range would otherwise give a silently wrong raster: no window predicted, all background)."""
    chip_w, chip_h = model.chip_size
    if padding is not None and (isinstance(padding, bool) or not float(padding).is_integer()):
        raise ValueError(f"padding must be a whole number of pixels, got {padding!r}.")
    pad = min(chip_w, chip_h) // 4 if padding is None else int(padding)
    if pad < 0 or 2 * pad >= min(chip_w, chip_h):
        raise ValueError(f"padding must lie in 0..{(min(chip_w, chip_h) - 1) // 2} for chips of "
                         f"{chip_w}x{chip_h} px, got {padding}.")
    if threshold is not None and not model.is_mask:
        raise ValueError("threshold makes a class raster; this model translates images (its target "
                         "is not a class mask).")
    if threshold is not None and not (isinstance(threshold, (int, float, np.number)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in 0..1 (a class score), got {threshold!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1 (windows per forward pass), got {batch_size!r}.")
    return pad


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows of one scene lie: window row ``k`` covers padded rows ``top(k) ..
    top(k) + chip_h`` (raster rows, negative or past the end where reflected), window column
    ``j`` the strip columns ``j * stride_w .. + chip_w`` (strip column ``pad`` = raster column 0)."""

    width: int
    height: int
    chip_w: int
    chip_h: int
    pad: int

    @property
    def stride_w(self) -> int:
        return self.chip_w - 2 * self.pad

    @property
    def stride_h(self) -> int:
        return self.chip_h - 2 * self.pad

    @property
    def nx(self) -> int:
        return max(1, math.ceil((self.width + 2 * self.pad - self.chip_w) / self.stride_w) + 1)

    @property
    def ny(self) -> int:
        return max(1, math.ceil((self.height + 2 * self.pad - self.chip_h) / self.stride_h) + 1)

    @property
    def strip_w(self) -> int:
        """Padded columns of a strip: ``-pad .. strip_w - pad`` of the raster."""
        return (self.nx - 1) * self.stride_w + self.chip_w

    @property
    def reach(self) -> int:
        """How many window rows before ``k`` add to the rows final after window row ``k``."""
        return math.ceil(self.chip_h / self.stride_h) - 1

    def top(self, k: int) -> int:
        return k * self.stride_h - self.pad

    def final_rows(self, k: int) -> tuple[int, int]:
        """Raster rows ``(first, last)`` that are final once window row ``k`` is blended: no
        later window row reaches them (after the last window row, all of its rows are)."""
        top = self.top(k)
        return max(top, 0), min(top + (self.chip_h if k == self.ny - 1 else self.stride_h), self.height)

    def band_rows(self, k0: int, k1: int) -> tuple[int, int]:
        """Raster rows ``(first, last)`` that window rows ``k0 .. k1`` make final."""
        first, last = self.final_rows(k0)[0], self.final_rows(k1 - 1)[1]
        return first, max(first, last)


@dataclass(frozen=True)
class RowOptions:
    """What predict_raster's caller chose beyond the padding: forward-pass batch size,
    test-time augmentation, and the class threshold (``None``: float scores or values)."""

    batch_size: int = 8
    tta: bool = False
    threshold: float | None = None


@dataclass(frozen=True)
class Scene:
    """One input raster as inference sees it: the 1-based bands the model takes, the window
    grid, and the output's rasterio profile (``profile["nodata"]`` is the output nodata)."""

    bands: list[int]
    grid: WindowGrid
    profile: dict

    @classmethod
    def of(cls, src, model, pad: int, threshold: float | None) -> Scene:
        """Check ``src`` (an open raster) against ``model`` (band count: ``ValueError``;
        resolution: a warning) and lay out its windows."""
        bands = _input_bands(src, model)
        _check_resolution(src, model)
        grid = WindowGrid(src.width, src.height, *model.chip_size, pad)
        return cls(bands, grid, _output_profile(src, model, model.n_bands_out, threshold))


def predict_rows(model, src, scene: Scene, k0: int, k1: int, options: RowOptions, *,
                 progress: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """The finished output values of window rows ``k0 .. k1`` of ``src`` (an open raster):
    yields ``(first_row, values)`` blocks ``(bands_out, rows, width)`` in row order, covering
    exactly ``scene.grid.band_rows(k0, k1)``; empty blocks are skipped.

    The blending starts ``grid.reach`` window rows earlier (their rows are not yielded), so a
    band gives bit for bit the values of the whole-scene pass: the same windows in the same
    batches, summed in the same order. The next strip is read in a thread beside the forward
    passes."""
    grid, nodata = scene.grid, scene.profile["nodata"]
    weights = hann_window(grid.chip_h, grid.chip_w)
    acc = np.zeros((model.n_bands_out, grid.chip_h, grid.strip_w), np.float32)  # rows top(k) ..
    wsum = np.zeros((grid.chip_h, grid.strip_w), np.float32)
    start, stride_h = max(k0 - grid.reach, 0), grid.stride_h
    cols = slice(grid.pad, grid.pad + grid.width)
    with ThreadPoolExecutor(max_workers=1) as pool:
        next_strip = pool.submit(_read_strip, model, src, scene, start)
        for k in tqdm(range(start, k1), desc="Predicting", unit="window row", disable=not progress,
                      leave=False):
            x, has_data = next_strip.result()
            if k + 1 < k1:
                next_strip = pool.submit(_read_strip, model, src, scene, k + 1, (x, has_data))
            _blend_row(model, x, has_data, weights, acc, wsum, grid.nx, grid.stride_w, grid.chip_w,
                       options.batch_size, options.tta)
            first, last = grid.final_rows(k)
            if k >= k0 and last > first:
                r0 = first - grid.top(k)
                block = acc[:, r0:r0 + last - first, cols] / wsum[r0:r0 + last - first, cols]
                nodata_mask = ~has_data[r0:r0 + last - first, cols]
                yield first, _finish(model, block, nodata_mask, options.threshold, nodata)
            acc[:, :-stride_h] = acc[:, stride_h:]
            acc[:, -stride_h:] = 0
            wsum[:-stride_h] = wsum[stride_h:]
            wsum[-stride_h:] = 0


def calibration_windows(model, src, scene: Scene, n: int = 32) -> np.ndarray:
    """Up to ``n`` normalised windows ``(n, bands, h, w)`` of ``src`` spread over the scene (window
    rows and columns evenly apart), those mostly holding data: what int8 calibrates on."""
    grid = scene.grid
    side = max(1, math.ceil(math.sqrt(n)))
    rows = sorted({int(k) for k in np.linspace(0, grid.ny - 1, min(side, grid.ny))})
    cols = sorted({int(j) for j in np.linspace(0, grid.nx - 1, min(side, grid.nx))})
    windows = []
    for k in rows:
        x, has_data = _read_strip(model, src, scene, k)
        for j in cols:
            s = j * grid.stride_w
            if has_data[:, s:s + grid.chip_w].mean() >= 0.5:
                windows.append(x[:, :, s:s + grid.chip_w])
    if not windows:
        raise ValueError(f"in_raster {src.name}: no window holds data to calibrate int8 on.")
    return np.stack(windows[:n]).astype(np.float32)


def _read_strip(model, src, scene: Scene, k: int, previous=None):
    """Window row ``k``: normalised input ``(bands, chip_h, strip_w)`` and where it has data.
    The rows it shares with window row ``k - 1`` (``previous``) are not read again."""
    grid = scene.grid
    top = grid.top(k)
    reuse = 0 if previous is None else grid.chip_h - grid.stride_h
    rows = reflect_index(np.arange(top + reuse, top + grid.chip_h), grid.height)
    data, valid = _read_rows(src, scene.bands, rows, grid.pad, grid.strip_w)
    x, has_data = model.input_norm.normalize(data, valid), valid.any(axis=0)
    if reuse:
        x = np.concatenate([previous[0][:, grid.stride_h:], x], axis=1)
        has_data = np.concatenate([previous[1][grid.stride_h:], has_data], axis=0)
    return x, has_data


def write_in_order(dst, blocks: Iterable[tuple[int, np.ndarray]]) -> None:
    """Write ``(first_row, values)`` blocks into ``dst`` (full-width rows); each write
    (compression) runs in a thread beside the work that makes the next block."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        writing = None
        for first, values in blocks:
            if writing is not None:
                writing.result()  # in order, and errors surface here
            writing = pool.submit(dst.write, values, window=Window(0, first, dst.width, values.shape[1]))
        if writing is not None:
            writing.result()


def _input_bands(src, model) -> list[int]:
    """1-based bands of ``src`` that the model takes."""
    extract = model.extract_bands
    raster_bands = model.input_norm.raster_bands  # a class raster (label-to-image) has one
    needed = (max(extract) + 1) if extract else raster_bands
    if (extract and src.count < needed) or (not extract and src.count != needed):
        raise ValueError(f"in_raster {src.name}: has {src.count} band(s); the {model.name} was trained on "
                         f"{raster_bands}" + (f" (bands {extract} of its input)" if extract else "")
                         + ".")
    return [b + 1 for b in extract] if extract else list(range(1, src.count + 1))


def _check_resolution(src, model) -> None:
    trained = model.cell_size
    if not trained or src.crs is None:
        return
    ratio = abs(src.transform.a) / trained[0]
    if not 0.5 <= ratio <= 2.0:
        warnings.warn(f"in_raster {src.name}: {abs(src.transform.a):.4g} units per pixel, the model "
                      f"was trained on {trained[0]:.4g} ({ratio:.2f}x): results may be poor. "
                      "Resample the raster to the training resolution.", stacklevel=4)


def _read_rows(src, bands: list[int], rows: np.ndarray, pad: int, strip_w: int):
    """Raster ``rows`` (reflected indices) as a strip ``(bands, len(rows), strip_w)`` whose
    column ``pad`` is the raster's column 0, edges reflected; and its band validity."""
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    data = src.read(bands, window=Window(0, r0, src.width, r1 - r0))
    if not np.array_equal(rows, np.arange(r0, r1)):  # reflected rows at the top or bottom edge
        data = data[:, rows - r0]
    width = src.width
    strip = np.empty((len(bands), len(rows), strip_w), dtype=data.dtype)
    strip[:, :, pad:pad + width] = data[:, :, :strip_w - pad]
    edges = np.r_[0:pad, pad + width:strip_w]  # only the reflected columns are gathered
    strip[:, :, edges] = data[:, :, reflect_index(edges - pad, width)]
    return strip, band_validity(strip, src.nodata)


def _blend_row(model, x, has_data, weights, acc, wsum, nx, stride_w, chip_w, batch_size,
               tta=False) -> None:
    """Predict the ``nx`` windows of one strip in batches (``model.generate``, with test-time
    augmentation when ``tta``) and add them, Hann-weighted, to ``acc``."""
    starts = [j * stride_w for j in range(nx)]
    todo = [s for s in starts if has_data[:, s:s + chip_w].any()]  # all-nodata windows: skip
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        out = model.generate(np.stack([x[:, :, s:s + chip_w] for s in batch]), tta=tta)
        for s, o in zip(batch, out):
            acc[:, :, s:s + chip_w] += o * weights
    for s in starts:
        wsum[:, s:s + chip_w] += weights


def _output_profile(src, model, n_out: int, threshold) -> dict:
    profile = {"driver": "GTiff", "width": src.width, "height": src.height, "crs": src.crs,
               "transform": src.transform, "tiled": True, "blockxsize": 256, "blockysize": 256,
               # deflate at level 1: as small as the default level here, twice as fast to write
               "compress": "deflate", "zlevel": 1, "BIGTIFF": "IF_SAFER"}
    if threshold is None:
        return profile | {"count": n_out, "dtype": "float32", "nodata": float("nan"), "predictor": 3}
    values = model.target_norm.values
    dtype, nodata = ("uint8", 255) if max(values) < 255 else ("uint16", 65535)
    return profile | {"count": 1, "dtype": dtype, "nodata": nodata, "predictor": 2}


def _describe(dst, model, threshold) -> None:
    """Band names (class names of mask models, the target's bands otherwise) and tags: the
    toolkit's output mark and, for mask models, what :func:`toolkit.vectorize` needs to find the
    footprint-outline band and the model's tuned footprint settings by itself."""
    from toolkit.vector import footprint_tags

    tags = {OUTPUT_TAG: "predict_raster"}
    if model.is_mask:
        classes = model.target_norm.classes
        names = ["class"] if threshold is not None else [str(c.get("Name", c["Value"])) for c in classes]
        tags |= footprint_tags(classes, class_raster=threshold is not None,
                               settings=model.footprint_settings)
    else:
        names = list(model.target_norm.band_names)
    for band, name in enumerate(names[:dst.count], start=1):
        dst.set_band_description(band, name)
    dst.update_tags(**tags)


def _finish(model, block: np.ndarray, nodata_mask: np.ndarray, threshold, nodata) -> np.ndarray:
    """Blended generator output -> the values written: target units, or classes."""
    if threshold is None:
        values = model.to_target_units(block)
        values[:, nodata_mask] = np.nan
        return values
    from toolkit.models.translation import scores_to_classes

    classes = scores_to_classes(model.to_target_units(block), model.target_norm.values, threshold)
    classes[nodata_mask] = nodata
    return classes[np.newaxis].astype(np.uint8 if nodata == 255 else np.uint16)

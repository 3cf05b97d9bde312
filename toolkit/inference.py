"""Whole-raster inference: a model's chips over a scene, blended without seams, into a GeoTIFF.

The scene is cut into windows of the model's chip size that overlap by ``2 * padding``
(stride ``chip - 2 * padding``), as ArcGIS's "Classify/Translate Pixels" does. Each window's
output is weighted by a 2-D Hann window and the weighted outputs are summed and divided by the
summed weights, so window borders leave no seams; a pixel-wise model gives exactly its per-pixel
result. The raster's edges are reflected, so every pixel gets an output.

The raster is read and written one row of windows at a time: memory depends on the raster's
width and the chip size, not on its height.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm.auto import tqdm

from toolkit._fs import atomic_file, check_not_input, check_output_file
from toolkit.raster import OUTPUT_TAG, is_toolkit_raster, open_raster, streaming_env
from toolkit.stats import band_validity

__all__ = ["hann_window", "predict_raster", "reflect_index"]


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


def predict_raster(model, in_raster: str | os.PathLike, out_raster: str | os.PathLike, *,
                   padding: int | None = None, batch_size: int = 8, threshold: float | None = None,
                   overwrite: bool = False, progress: bool = True, tta: bool = False,
                   convert_to: str | None = None) -> Path:
    """Run ``model`` over ``in_raster`` into ``out_raster``.

    Args:
        model: a :class:`toolkit.Pix2Pix` or :class:`toolkit.CycleGAN`, or one direction of a
            model as a :class:`toolkit.models.Translation` (all that is used of it).
        convert_to: CycleGAN: ``"b"`` (A -> B, the default) or ``"a"`` (B -> A).
        padding: overlap on each side of a window, in pixels; default a quarter of the chip.
        batch_size: windows per forward pass (on the GPU when the model is there).
        threshold: mask models only: write a uint8 class raster (class value where its score is
            the highest and at least ``threshold``, else 0) instead of float32 scores.
        overwrite: replace an existing ``out_raster`` that the toolkit wrote (never another
            file, and never an input).
        tta: test-time augmentation: each window's output is the mean of the model's outputs
            for its 8 flips and 90-degree rotations (identity, 3 rotations, and the horizontal
            flip of each), each turned back, then blended as without it. Non-square chips get
            the 4 transforms that keep their shape (identity, 180 degrees, the two flips). A
            forward pass then holds ``8 * batch_size`` (or ``4 *``) window variants: 8 (4)
            times the work and the activation memory; lower ``batch_size`` if memory is short.

    Returns:
        ``out_raster``: a tiled, compressed GeoTIFF with the input's CRS, transform, width and
        height; the target's band count, float32 in target units (nodata NaN), or the class
        raster (nodata 255, or 65535 when 255 is a class). Input nodata comes back as nodata.
    """
    from toolkit.models.base import Translation

    if not isinstance(model, Translation):
        model = model.translation(**({"convert_to": convert_to} if convert_to is not None else {}))
    elif convert_to is not None:
        raise ValueError("convert_to picks a direction of a model; this is already one direction.")
    check_not_input(out_raster, [in_raster, *model.source_files], role="out_raster")
    out_raster = check_output_file(out_raster, overwrite=overwrite, role="out_raster",
                                   owned=is_toolkit_raster, what="a prediction")
    chip_w, chip_h = model.chip_size
    pad = min(chip_w, chip_h) // 4 if padding is None else int(padding)
    if pad < 0 or 2 * pad >= min(chip_w, chip_h):
        raise ValueError(f"padding must lie in 0..{(min(chip_w, chip_h) - 1) // 2} for chips of "
                         f"{chip_w}x{chip_h} px, got {padding}.")
    if threshold is not None and not model.is_mask:
        raise ValueError("threshold makes a class raster; this model translates images (its target "
                         "is not a class mask).")
    stride_w, stride_h = chip_w - 2 * pad, chip_h - 2 * pad

    with streaming_env(), open_raster(in_raster, "in_raster") as src:
        bands = _input_bands(src, model)
        _check_resolution(src, model)
        width, height = src.width, src.height
        nx = max(1, math.ceil((width + 2 * pad - chip_w) / stride_w) + 1)
        ny = max(1, math.ceil((height + 2 * pad - chip_h) / stride_h) + 1)
        strip_w = (nx - 1) * stride_w + chip_w  # padded columns -pad .. strip_w - pad
        weights = hann_window(chip_h, chip_w)
        n_out = model.n_bands_out
        acc = np.zeros((n_out, chip_h, strip_w), np.float32)  # rows y_k .. y_k + chip_h
        wsum = np.zeros((chip_h, strip_w), np.float32)
        profile = _output_profile(src, model, n_out, threshold)

        def read_strip(k: int, previous=None):
            """Window row ``k``: normalised input ``(bands, chip_h, strip_w)`` and where it has
            data. The rows it shares with window row ``k - 1`` (``previous``) are not read again."""
            top = k * stride_h - pad  # padded-space row of this window row
            reuse = 0 if previous is None else chip_h - stride_h
            rows = reflect_index(np.arange(top + reuse, top + chip_h), height)
            data, valid = _read_rows(src, bands, rows, pad, strip_w)
            x, has_data = model.input_norm.normalize(data, valid), valid.any(axis=0)
            if reuse:
                x = np.concatenate([previous[0][:, stride_h:], x], axis=1)
                has_data = np.concatenate([previous[1][stride_h:], has_data], axis=0)
            return x, has_data

        def write_rows(block: np.ndarray, nodata_mask: np.ndarray, first: int) -> None:
            dst.write(_finish(model, block, nodata_mask, threshold, profile["nodata"]),
                      window=Window(0, first, width, block.shape[1]))

        # Reading the next window row and writing (compressing) the last finished rows run in a
        # thread beside the forward passes; each dataset is only ever used by one task at a time.
        with atomic_file(out_raster) as tmp, rasterio.open(tmp, "w", **profile) as dst, \
                ThreadPoolExecutor(max_workers=2) as pool:
            next_strip = pool.submit(read_strip, 0)
            writing = None
            for k in tqdm(range(ny), desc="Predicting", unit="window row", disable=not progress,
                          leave=False):
                x, has_data = next_strip.result()
                if k + 1 < ny:
                    next_strip = pool.submit(read_strip, k + 1, (x, has_data))
                _blend_row(model, x, has_data, weights, acc, wsum, nx, stride_w, chip_w, batch_size,
                           tta)

                # Rows top .. top + stride_h are final: no later window row reaches them (after
                # the last window row, all of its rows are).
                top = k * stride_h - pad
                first, last = max(top, 0), min(top + (chip_h if k == ny - 1 else stride_h), height)
                if writing is not None:
                    writing.result()  # in order, and errors surface here
                    writing = None
                if last > first:
                    r0, cols = first - top, slice(pad, pad + width)
                    block = acc[:, r0:r0 + last - first, cols] / wsum[r0:r0 + last - first, cols]
                    writing = pool.submit(write_rows, block, ~has_data[r0:r0 + last - first, cols], first)
                acc[:, :-stride_h] = acc[:, stride_h:]
                acc[:, -stride_h:] = 0
                wsum[:-stride_h] = wsum[stride_h:]
                wsum[-stride_h:] = 0
            if writing is not None:
                writing.result()
            _describe(dst, model, threshold)
    return out_raster


def _input_bands(src, model) -> list[int]:
    """1-based bands of ``src`` that the model takes."""
    extract = model.extract_bands
    needed = (max(extract) + 1) if extract else model.n_bands_in
    if (extract and src.count < needed) or (not extract and src.count != needed):
        raise ValueError(f"in_raster {src.name}: has {src.count} band(s); the {model.name} was trained on "
                         f"{model.n_bands_in}" + (f" (bands {extract} of its input)" if extract else "")
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
                      "Resample the raster to the training resolution.", stacklevel=3)


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
    scores = model.to_target_units(block)
    best = scores.argmax(axis=0)
    classes = np.asarray(model.target_norm.values)[best]
    classes = np.where(scores.max(axis=0) >= threshold, classes, 0)
    classes[nodata_mask] = nodata
    return classes[np.newaxis].astype(np.uint8 if nodata == 255 else np.uint16)

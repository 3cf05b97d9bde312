"""Whole-raster inference: :func:`predict_raster`, a model over a scene into a GeoTIFF, in this
process or, with a Dask ``client``, spread over a cluster (:mod:`toolkit.distributed`).

The scene is cut into windows of the model's chip size that overlap by ``2 * padding``
(stride ``chip - 2 * padding``), as ArcGIS's "Classify/Translate Pixels" does, and the windows'
outputs are blended without seams (:mod:`toolkit.windows`, which holds the machinery).

Layer: front door of inference (above :mod:`toolkit.windows` and :mod:`toolkit.distributed`).
"""

from __future__ import annotations

import os
from pathlib import Path

import rasterio

from toolkit._fs import atomic_file, check_not_input, check_output_file
from toolkit.config import PredictConfig
from toolkit.distributed import predict_raster_distributed
from toolkit.models.backends import accelerate, check_backend
from toolkit.raster import is_toolkit_raster, open_raster, streaming_env
from toolkit.windows import (RowOptions, Scene, WindowGrid, _describe, as_translation,  # noqa: F401  (public here)
                             calibration_windows, check_settings, hann_window, predict_rows, reflect_index,
                             write_in_order)

_DEFAULTS = PredictConfig  # the keywords' defaults, stated once (toolkit.config)
__all__ = ["RowOptions", "Scene", "WindowGrid", "check_settings", "hann_window", "predict_raster", "predict_rows",
           "reflect_index"]


def predict_raster(model, in_raster: str | os.PathLike, out_raster: str | os.PathLike, *,
                   padding: int | None = _DEFAULTS.padding, batch_size: int = _DEFAULTS.batch_size,
                   threshold: float | None = _DEFAULTS.threshold, overwrite: bool = False, progress: bool = True,
                   tta: bool = _DEFAULTS.tta, convert_to: str | None = _DEFAULTS.convert_to, client=None,
                   band_rows: int | None = None, timeout: float | None = _DEFAULTS.timeout,
                   backend: str = _DEFAULTS.backend, precision: str = _DEFAULTS.precision) -> Path:
    """Run ``model`` over ``in_raster`` into ``out_raster``.

    Args:
        model: a :class:`toolkit.Pix2Pix` or :class:`toolkit.CycleGAN`, one direction of a
            model as a :class:`toolkit.models.Translation` (all that is used of it), or a saved
            model's path (``.dlpk``, ``.emd``, folder; arcgis.learn's too), loaded with
            :func:`toolkit.models.load_translation`: without fastai.
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
        client: a ``dask.distributed.Client``: run bands of window rows on its workers and
            assemble the output here (:func:`toolkit.distributed.predict_raster_distributed`:
            the model must be saved, ``in_raster`` readable by the workers at the same path).
        band_rows, timeout: with ``client`` only: window rows per task, and how long in
            seconds the job may wait while the cluster has no worker (all killed, none started;
            ``None``: no limit) before it fails with ``TimeoutError``, writing nothing.
        backend: where the generator runs (:mod:`toolkit.models.backends`): ``"auto"`` the
            fastest exact path installed (OpenVINO or ONNX Runtime on the CPU, PyTorch on CUDA),
            or ``"openvino"``, ``"onnxruntime"``, ``"torch"``; the same values within 1e-5.
        precision: ``"fp32"``, or ``"int8"`` on the CPU (OpenVINO or ONNX Runtime): the network
            quantized, calibrated on up to 32 windows of ``in_raster`` itself, with a warning
            when its output moves by more than ``backends.INT8_TOLERANCE`` on them (measured
            speed and quality change in benchmarks/README.md). Not with ``client``.

    Returns:
        ``out_raster``: a tiled, compressed GeoTIFF with the input's CRS, transform, width and
        height; the target's band count, float32 in target units (nodata NaN), or the class
        raster (nodata 255, or 65535 when 255 is a class). Input nodata comes back as nodata.
        The same values with or without ``client``.
    """
    model = as_translation(model, convert_to)
    check_not_input(out_raster, [in_raster, *model.source_files], role="out_raster")
    out_raster = check_output_file(out_raster, overwrite=overwrite, role="out_raster",
                                   owned=is_toolkit_raster, what="a prediction")
    pad = check_settings(model, padding, threshold, batch_size)
    options = RowOptions(batch_size=batch_size, tta=tta, threshold=threshold)
    check_backend(backend)
    if client is not None:
        if precision != "fp32":
            raise ValueError("precision='int8' runs in one process (it calibrates on the scene); predict without client.")
  # checked here; resolved on each worker
        return predict_raster_distributed(model, in_raster, out_raster, client=client, pad=pad,
                                          options=options, band_rows=band_rows, timeout=timeout,
                                          progress=progress, overwrite=overwrite, backend=backend)
    with streaming_env(), open_raster(in_raster, "in_raster") as src:
        scene = Scene.of(src, model, pad, threshold)
        calibration = calibration_windows(model, src, scene) if precision == "int8" else None
        model = accelerate(model, backend, precision=precision, calibration=calibration)
        rows = predict_rows(model, src, scene, 0, scene.grid.ny, options, progress=progress)
        with atomic_file(out_raster, overwrite=overwrite, owned=is_toolkit_raster) as tmp, \
                rasterio.open(tmp, "w", **scene.profile) as dst:
            write_in_order(dst, rows)
            _describe(dst, model, threshold)
    return out_raster

"""Many scenes at once: :func:`predict_rasters`, one Dask task per scene (or one after the other
in this process), each written as :func:`toolkit.inference.predict_raster` writes one scene.

Layer: front doors (above :mod:`toolkit.inference` and the Dask parts of
:mod:`toolkit.distributed` it uses).
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit._fs import check_not_input, check_output_file
from toolkit.distributed import DEFAULT_TIMEOUT, ModelRef, _raise_failed, check_timeout, wait_for_progress, \
    worker_translation
from toolkit.inference import predict_raster
from toolkit.models.backends import accelerate
from toolkit.raster import is_toolkit_raster
from toolkit.windows import RowOptions, as_translation, check_settings

__all__ = ["predict_rasters"]


def predict_scene(ref: ModelRef, in_raster: str, out_raster: str, pad: int, options: RowOptions,
                  overwrite: bool) -> str:
    """A worker's task: one whole scene into ``out_raster`` (written by the worker, atomically)."""
    predict_raster(worker_translation(ref), in_raster, out_raster, padding=pad,
                   batch_size=options.batch_size, threshold=options.threshold, tta=options.tta,
                   overwrite=overwrite, progress=False)  # accelerated when the worker loaded it
    return out_raster


def predict_rasters(model, in_rasters, out_folder: str | os.PathLike, *, client=None,
                    convert_to: str | None = None, padding: int | None = None, batch_size: int = 8,
                    threshold: float | None = None, overwrite: bool = False, tta: bool = False,
                    timeout: float | None = DEFAULT_TIMEOUT, retries: int = 2, backend: str = "auto",
                    precision: str = "fp32") -> list[Path]:
    """Predict many scenes at once, one Dask task per scene: ``<out_folder>/<scene stem>.tif``.

    Args:
        model: a saved (or loaded) :class:`toolkit.Pix2Pix` / :class:`toolkit.CycleGAN`, or one
            direction of one; the workers load its ``.emd``/``.dlpk``.
        in_rasters: the scenes, at paths the workers can read; their file stems must differ.
        out_folder: where the outputs go; must be a folder the workers can write (shared).
        client: a ``dask.distributed.Client``; ``None`` predicts the scenes one after the
            other in this process (the same outputs, the same checks).
        convert_to, padding, batch_size, threshold, overwrite, tta, backend, precision: as
            :func:`toolkit.inference.predict_raster`, for every scene (int8 calibrated on each
            scene; not with ``client``).
        timeout: seconds the job may wait while the cluster has no worker (``None``: no
            limit); then ``TimeoutError``.
        retries: re-runs of a scene whose task raised.

    Returns:
        The output paths, in the order of ``in_rasters``. When a scene fails for good, the
        other tasks are cancelled and the error names the scene; outputs already complete stay,
        and a failed scene leaves nothing under its output name.
    """
    translation = as_translation(model, convert_to)
    pad = check_settings(translation, padding, threshold, batch_size)
    options = RowOptions(batch_size=batch_size, tta=tta, threshold=threshold)
    in_rasters = [Path(p) for p in in_rasters]
    outs = _scene_outputs(in_rasters, Path(out_folder), translation, overwrite)
    if client is None:  # here: the model need not be saved
        if precision == "fp32":
            translation = accelerate(translation, backend)  # compiled once for all the scenes
        for in_raster, out in zip(in_rasters, outs):
            predict_raster(translation, in_raster, out, padding=pad, batch_size=batch_size,
                           threshold=threshold, tta=tta, overwrite=overwrite, backend=backend,
                           precision=precision)
        return outs
    if precision != "fp32":
        raise ValueError("precision='int8' calibrates on each scene in this process; predict without client.")
    check_timeout(timeout)
    ref = ModelRef.of(translation, backend)
    futures = {client.submit(predict_scene, ref, str(i), str(o), pad, options, overwrite,
                             retries=retries, pure=False): i for i, o in zip(in_rasters, outs)}
    pending = set(futures)
    try:
        while pending:
            finished = wait_for_progress(client, pending, timeout, f"{len(pending)} scene(s) to {out_folder}")
            try:
                _raise_failed(finished, lambda f: f"in_raster {futures[f]}")
            except Exception as err:
                scene = next(futures[f] for f in finished if f.status != "finished")
                raise RuntimeError(f"in_raster {scene}: prediction failed on the cluster: {err}") from err
            pending -= finished
    finally:
        client.cancel(list(futures))
    return outs


def _scene_outputs(in_rasters: list[Path], out_folder: Path, translation, overwrite: bool) -> list[Path]:
    """``<out_folder>/<stem>.tif`` per scene, checked before any work: distinct, not inputs,
    writable under ``overwrite``."""
    stems = [p.stem for p in in_rasters]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(f"in_rasters: several scenes are named {repeated}; their outputs in "
                         f"{out_folder} would collide: rename them.")
    outs = [out_folder / f"{stem}.tif" for stem in stems]
    for out in outs:
        check_not_input(out, [*in_rasters, *translation.source_files], role="output")
        check_output_file(out, overwrite=overwrite, role="output", owned=is_toolkit_raster,
                          what="a prediction")
    return outs

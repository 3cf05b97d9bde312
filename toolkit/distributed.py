"""Whole-scene inference on a Dask cluster: :func:`predict_raster_distributed` (what
``predict_raster(..., client=client)`` runs), and the Dask parts that
:func:`toolkit.scenes.predict_rasters` (many scenes) shares with it.

How the work is shared:

- **The model travels by path.** Each task carries the path of the model's saved ``.emd`` or
  ``.dlpk`` (``model.emd_path``, set by ``save`` and ``load_model``) with its modification time;
  each worker process loads it once (:func:`worker_translation` caches it by path, time and
  direction) and checks that the file has not changed since the job began. A model that was
  never saved is refused with a ``ValueError`` telling to ``save`` it first: workers run the
  saved weights, so a model trained further after saving must be saved again.
- **Inputs and outputs are shared paths.** Workers open ``in_raster`` at the same path as the
  client: a shared file system (or a GDAL-readable object-store path such as ``/vsis3/...``).
- **One scene, many workers** (:func:`predict_raster_distributed`): the scene is cut into bands
  of window rows; a worker computes a band's finished output values with
  :func:`toolkit.inference.predict_rows` (the same code as the single-process pass, starting a
  few window rows early for the overlaps, so the values are the same) and the client writes
  them, in row order, into one tiled, compressed GeoTIFF. At most ``2 * workers + 1`` bands are
  in flight, so the client holds a bounded number of bands whatever the scene's size.
- **Many scenes** (:func:`toolkit.scenes.predict_rasters`): one task per scene; the worker writes its output
  itself (the output folder must be shared and writable by the workers).
- **Failures.** A task that raises is re-run up to ``retries`` times (Dask's ``retries=``); a
  worker that dies has its tasks re-run elsewhere (Dask's ``allowed-failures``). A task that
  fails for good stops the job at once, whichever band or scene it is (not when its turn to be
  written comes). Outputs are written under a temporary name and moved into place when
  complete, so a job that fails for good leaves nothing under the final name.
- **Bounded waiting.** A cluster whose workers are all gone (killed, never started) cannot make
  progress: when it has had no worker for ``timeout`` seconds (default
  :data:`DEFAULT_TIMEOUT`, ``toolkit predict --timeout``), the job fails with ``TimeoutError``
  and writes nothing. Slow tasks on live workers are waited for.

Layer: front doors (Dask), on the inference core (:mod:`toolkit.windows`); below
:mod:`toolkit.inference`, whose ``predict_raster`` dispatches here.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from toolkit._fs import atomic_file
from toolkit.config import PredictConfig
from toolkit.raster import is_toolkit_raster, open_raster, streaming_env
from toolkit.windows import RowOptions, Scene, WindowGrid, _describe, predict_rows, write_in_order

__all__ = ["DEFAULT_TIMEOUT", "ModelRef", "predict_raster_distributed", "worker_translation"]


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load a model: the saved ``.emd``/``.dlpk`` path, its modification
    time when the job began (nanoseconds) and the direction (``None``, or CycleGAN's ``"a"``/``"b"``)."""

    path: str
    mtime_ns: int
    convert_to: str | None = None
    backend: str = "auto"  # toolkit.models.backends, resolved on the worker

    @classmethod
    def of(cls, translation, backend: str = "auto") -> ModelRef:
        """The saved files of ``translation`` (one direction of a model); ``ValueError`` when
        the model was never saved or loaded."""
        if not translation.source_files:
            raise ValueError(f"the {translation.name} has no saved files: Dask workers load the model "
                             "from its .emd or .dlpk. Save it first (model.save('name')), or load a "
                             "saved one (toolkit.load_model), then predict again.")
        path = Path(translation.source_files[0]).resolve()
        return cls(str(path), path.stat().st_mtime_ns, translation.convert_to, backend)


DEFAULT_TIMEOUT = PredictConfig.timeout
"""Seconds a Dask job waits for a cluster without workers before it fails (a nanny restarts a
killed worker in seconds; an autoscaler starts one in a minute or two)."""
POLL = 1.0  # seconds between looks at the cluster while waiting

_MODELS: dict[ModelRef, object] = {}  # per worker process: one loaded model per ModelRef
_MODELS_LOCK = threading.Lock()

MMAP_THRESHOLD = 32 * 2**20
"""Allocations above this go to ``mmap`` in a worker (glibc's largest threshold)."""
TRIM_THRESHOLD = 64 * 2**20
"""Free heap memory above this is given back to the OS in a worker."""


def tune_worker_malloc() -> bool:
    """Undo, in this process, the allocator setting that makes torch on the CPU 2.3 times slower
    in Dask workers: Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to give
    memory back to the OS), and setting it turns off glibc's adaptive ``mmap`` threshold, so
    every large tensor is a fresh ``mmap`` whose pages fault in again at each forward pass
    (measured: 113 ms against 49 ms for a batch of 8 windows of 256 px at ngf 8; see
    benchmarks/README.md). Here allocations up to 32 MiB stay on the heap and heap memory is
    trimmed above 64 MiB. glibc (Linux) only; ``False`` where it does not apply."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))


def worker_translation(ref: ModelRef):
    """The :class:`toolkit.models.Translation` of ``ref``, loaded once per process and kept;
    ``RuntimeError`` naming the file when it changed since the job began."""
    mtime = Path(ref.path).stat().st_mtime_ns
    if mtime != ref.mtime_ns:
        raise RuntimeError(f"model {ref.path} changed since this prediction began; run it again.")
    with _MODELS_LOCK:
        if ref not in _MODELS:
            from toolkit.models.backends import accelerate
            from toolkit.models.translation import load_translation

            _MODELS.clear()  # one model per worker process at a time
            tune_worker_malloc()
            _MODELS[ref] = accelerate(load_translation(ref.path, ref.convert_to), ref.backend)
        return _MODELS[ref]


def predict_band(ref: ModelRef, in_raster: str, scene: Scene, k0: int, k1: int,
                 options: RowOptions) -> tuple[int, np.ndarray]:
    """A worker's task: window rows ``k0 .. k1`` of ``in_raster`` with the model of ``ref``;
    ``(first_row, values)``, values ``(bands_out, rows, width)`` as the output stores them
    (rows ``scene.grid.band_rows(k0, k1)``, possibly none)."""
    model = worker_translation(ref)
    first, last = scene.grid.band_rows(k0, k1)
    dtype = scene.profile["dtype"]
    with streaming_env(), open_raster(in_raster, "in_raster") as src:
        blocks = [values for _, values in predict_rows(model, src, scene, k0, k1, options)]
    values = np.concatenate(blocks, axis=1) if blocks else np.empty(
        (scene.profile["count"], 0, scene.grid.width), dtype)
    if values.shape[1] != last - first:
        raise RuntimeError(f"in_raster {in_raster}: band {k0}..{k1} gave {values.shape[1]} rows, "
                           f"expected {last - first}.")
    return first, values


def band_starts(grid: WindowGrid, band_rows: int | None, n_workers: int) -> list[tuple[int, int]]:
    """Window-row ranges ``(k0, k1)`` covering ``0 .. grid.ny``: ``band_rows`` window rows each,
    by default about four bands per worker and at most ~1024 raster rows a band."""
    if band_rows is None:
        band_rows = min(-(-grid.ny // (4 * max(n_workers, 1))), max(1, 1024 // grid.stride_h))
    if band_rows < 1:
        raise ValueError(f"band_rows must be at least 1, got {band_rows}.")
    return [(k, min(k + band_rows, grid.ny)) for k in range(0, grid.ny, band_rows)]


def _n_workers(client) -> int:
    """Workers the cluster has now (at least 1)."""
    return len(client.nthreads()) or 1


def wait_for_progress(client, futures, timeout: float | None, what: str) -> set:
    """Wait until at least one of ``futures`` is finished (done, failed or cancelled) and return
    the finished ones; ``TimeoutError`` naming ``what`` when meanwhile the cluster has had no
    worker for ``timeout`` seconds (``None``: wait for workers without limit)."""
    from distributed import wait

    check_timeout(timeout)
    futures = list(futures)
    no_worker_since = None
    while True:
        try:
            wait(futures, timeout=POLL, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        finished = {f for f in futures if f.status != "pending"}
        if finished:
            return finished
        if client.nthreads():
            no_worker_since = None
            continue
        now = time.monotonic()
        no_worker_since = no_worker_since or now
        if timeout is not None and now - no_worker_since >= timeout:
            raise TimeoutError(f"{what}: the Dask cluster ({client.scheduler.address}) has had no worker for "
                               f"{timeout:g} s, so nothing can run; nothing was written. Start workers, or "
                               "raise timeout= (toolkit predict --timeout).")


def check_timeout(timeout) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not (math.isfinite(timeout) and timeout > 0)):
        raise ValueError(f"timeout must be a number of seconds > 0 (or None: no limit), got {timeout!r}.")


def _raise_failed(finished, what) -> None:
    """Re-raise the error of the first failed future among ``finished`` (``what(future)``
    names its part of the job)."""
    for future in finished:
        if future.status == "error":
            error = future.exception()
            if isinstance(error, Exception) and not isinstance(error, (OSError, ValueError, RuntimeError)):
                raise RuntimeError(f"{what(future)}: failed on the cluster: {error!r}") from error
            raise error
        if future.status == "cancelled":
            raise RuntimeError(f"{what(future)}: its task was cancelled on the cluster (scheduler restarted?).")


def predict_raster_distributed(model, in_raster: str | os.PathLike, out_raster: Path, *, client,
                               pad: int, options: RowOptions, band_rows: int | None = None,
                               timeout: float | None = DEFAULT_TIMEOUT, retries: int = 2,
                               progress: bool = True, overwrite: bool = False, backend: str = "auto") -> Path:
    """:func:`toolkit.inference.predict_raster` with ``client`` (its arguments already checked):
    bands of window rows run on the cluster's workers, the client writes them in row order.

    Args:
        model: one direction of a saved model (a :class:`toolkit.models.Translation` whose
            ``source_files`` name its ``.emd``/``.dlpk``).
        pad: padding in pixels; options: batch size, test-time augmentation, threshold.
        band_rows: window rows per task (default: see :func:`band_starts`).
        timeout: seconds the job may wait while the cluster has no worker (``None``: no
            limit); then ``TimeoutError`` and no output.
        retries: re-runs of a band whose task raised.
        overwrite: whether the final move may replace an earlier prediction of the toolkit
            (checked again at that moment: a file another program wrote meanwhile is kept).
        backend: where each worker runs the generator (:mod:`toolkit.models.backends`).

    Returns:
        ``out_raster``, complete; on any failure nothing is left under that name.
    """
    from tqdm.auto import tqdm

    check_timeout(timeout)
    ref = ModelRef.of(model, backend)
    with streaming_env(), open_raster(in_raster, "in_raster") as src:
        scene = Scene.of(src, model, pad, options.threshold)
    bands = band_starts(scene.grid, band_rows, _n_workers(client))
    job = uuid.uuid4().hex[:8]

    def submit(k0: int, k1: int):
        return client.submit(predict_band, ref, str(in_raster), scene, k0, k1, options, retries=retries,
                             pure=False, key=f"predict-band-{job}-{k0}")

    where = {}

    def results():
        """Band results in order, with at most ``2 * workers + 1`` in flight; a band that fails
        stops the job as soon as it fails, whichever band it is."""
        todo, pending = iter(bands), deque()
        limit = 2 * _n_workers(client) + 1
        try:
            for k0, k1 in todo:
                future = submit(k0, k1)
                where[future.key] = k0
                pending.append(future)
                while len(pending) >= limit:
                    yield next_in_order(pending)
            while pending:
                yield next_in_order(pending)
        finally:
            client.cancel(list(pending))

    def next_in_order(pending: deque):
        while pending[0].status == "pending":
            _raise_failed(wait_for_progress(client, pending, timeout, f"in_raster {in_raster}"),
                          lambda f: f"in_raster {in_raster}: window rows from {where[f.key]}")
        _raise_failed([pending[0]], lambda f: f"in_raster {in_raster}: window rows from {where[f.key]}")
        return pending.popleft().result()

    blocks = (block for block in tqdm(results(), total=len(bands), desc="Predicting", unit="band",
                                      disable=not progress, leave=False) if block[1].shape[1])
    with atomic_file(out_raster, overwrite=overwrite, owned=is_toolkit_raster) as tmp, \
            rasterio.open(tmp, "w", **scene.profile) as dst:
        write_in_order(dst, blocks)
        _describe(dst, model, options.threshold)
    return out_raster

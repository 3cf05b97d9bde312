"""Where a generator's forward pass runs at inference: the fastest exact path on this machine.

Part of the fastai-free inference core (beside :mod:`toolkit.models.translation`). A
:class:`~toolkit.models.translation.Translation` that knows its network (``network``,
``device``) can be run by :func:`accelerate` on another backend, with the same numbers within
float rounding (1e-5 here; the tests hold them to 1e-4 of eager PyTorch on real imagery):

- ``"openvino"``: the generator exported to ONNX once and compiled by OpenVINO for the CPU
  (latency mode, one stream, float32). On the 2-core test machine (AVX-512) a paper-sized U-Net
  (ngf 64, 256 px, batch 4) runs 1.6 times faster than PyTorch eager (benchmarks/README.md).
- ``"onnxruntime"``: the same ONNX graph in ONNX Runtime's CPU provider (1.3 times); for
  environments with ONNX Runtime and without OpenVINO (ArcGIS Pro's Python ships ONNX Runtime).
- ``"torch"``: the model's own PyTorch forward pass (eager; mixed precision on CUDA).
- ``"auto"`` (the default everywhere): on a CUDA device ``"torch"``; on the CPU the first of
  ``"openvino"``, ``"onnxruntime"``, ``"torch"`` that is installed, for networks without
  instance (or group, layer) normalisation. Those (CycleGAN's generators, arcgis.learn's
  models, ``Pix2Pix(norm="instance")``) stay in PyTorch: normalising a nearly constant feature
  map divides by a nearly zero spread, and the runtimes' other order of summation then moves
  outputs by percents on real scenes (seen on arcgis.learn's CycleGAN fixture), which a random
  probe batch does not show.

Compiled networks are kept per process, keyed by a hash of the weights, the chip size and the
backend, so each model is exported and compiled once however many scenes it predicts. Each
compiled network is checked once against PyTorch on a probe batch: where it differs by more than
:data:`PROBE_TOLERANCE` of the output's range (a layer the exporter or the runtime treats
otherwise), ``"auto"`` falls back to PyTorch with a warning and a named backend raises. Inputs
of another shape than the compiled chip (``predict`` on an odd-sized image) run in PyTorch.

Layer: inference core.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["BACKENDS", "INT8_TOLERANCE", "PRECISIONS", "accelerate", "available_backends", "check_backend", "choose_backend", "compile_forward", "quantized_forward"]

BACKENDS = ("auto", "openvino", "onnxruntime", "torch")
_MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
_CACHE: OrderedDict[tuple, Callable] = OrderedDict()  # (weights hash, shape, backend, threads) -> forward
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def available_backends() -> list[str]:
    """The concrete backends this Python can run, fastest first on the CPU (OpenVINO and ONNX
    Runtime read the generator as ONNX, so they need the ``onnx`` package too)."""
    if importlib.util.find_spec("onnx") is None:
        return ["torch"]
    found = [name for name, module in _MODULES.items() if importlib.util.find_spec(module) is not None]
    return found + ["torch"]


def check_backend(backend) -> None:
    """``ValueError`` unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")


def choose_backend(backend: str, device: torch.device) -> str:
    """``backend`` checked and resolved: ``"auto"`` is ``"torch"`` on CUDA, else the first of
    :func:`available_backends`; a named one that is not installed is a ``ValueError`` saying
    what to install."""
    check_backend(backend)
    if backend == "auto":
        return "torch" if device.type != "cpu" else available_backends()[0]
    if backend != "torch":
        if device.type != "cpu":
            raise ValueError(f"backend {backend!r} runs on the CPU; this model is on {device}: use "
                             "backend='torch' (or 'auto').")
        if backend not in available_backends():
            raise ValueError(f"backend {backend!r} is not installed: pip install {_MODULES[backend]} onnx.")
    return backend


PROBE_TOLERANCE = 1e-4
"""Largest difference from PyTorch, relative to the output's largest magnitude, that a compiled
float32 network may show on the probe batch."""
PRECISIONS = ("fp32", "int8")
INT8_TOLERANCE = 0.02
"""Largest mean absolute change of the generator's output (in its [-1, 1] units: 1% of the
range) that int8 may make on the calibration windows before :func:`accelerate` warns."""


def accelerate(translation, backend: str = "auto", *, precision: str = "fp32",
               calibration: np.ndarray | None = None):
    """``translation`` with its forward pass on ``backend`` (see the module docstring), and no
    ``network`` any more (its forward is chosen); as it is when it does not know its network
    (already accelerated, or a forward given as a plain function)."""
    network = getattr(translation, "network", None)
    if network is None or (backend == "torch" and precision == "fp32"):
        check_backend(backend)
        if network is None and precision != "fp32":
            raise ValueError(f"precision={precision!r} needs the model's network (a saved or loaded model); this "
                             "one runs a forward function it was given.")
        return translation
    from dataclasses import replace

    width, height = translation.chip_size
    chip = (translation.n_bands_in, height, width)
    if precision == "int8":
        forward = quantized_forward(network, chip, translation.device, backend, calibration, translation.name)
    elif precision == "fp32":
        forward = compile_forward(network, chip, translation.device, backend)
    else:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
    if forward is None:  # PyTorch after all: the model's own forward pass
        return translation
    return replace(translation, forward=forward, network=None)


def compile_forward(net: nn.Module, chip: tuple[int, int, int], device: torch.device,
                    backend: str = "auto") -> Callable[[np.ndarray], np.ndarray] | None:
    """A function ``(n, bands, h, w)`` float32 numpy -> ``(n, bands_out, h, w)`` float32 numpy
    running ``net`` (eval mode, no gradients) on ``backend``; ``chip`` is ``(bands, h, w)``.
    ``None`` where PyTorch is the backend (the model's own forward pass is the one to use)."""
    device = torch.device(device)
    chosen = choose_backend(backend, device)
    if chosen == "torch" or (backend == "auto" and spread_normalised(net)):
        return None
    key = (_weights_hash(net), tuple(chip), chosen, torch.get_num_threads())
    found, compiled = _cached(key)
    if found and compiled is None and backend != "auto":
        raise ValueError(f"{type(net).__name__} does not run on {chosen} as in PyTorch (see the earlier "
                         "warning); use backend='torch'.")
    if not found:
        cpu = _cpu_copy(net)
        try:
            with tempfile.TemporaryDirectory(prefix="toolkit-onnx-") as folder:
                compiled = _runtime(_export_onnx(cpu, chip, Path(folder) / "generator.onnx"), chosen, key[3])
            _probe(compiled, cpu, chip, chosen)
        except Exception as err:
            if backend != "auto":
                raise
            # a network the exporter or runtime treats otherwise: exact in PyTorch, only slower
            warnings.warn(f"{type(net).__name__} does not run on {chosen} as in PyTorch ({err}); it "
                          "runs in PyTorch.", stacklevel=3)
            compiled = None
        _store(key, compiled)
    return None if compiled is None else _chip_sized(compiled, net, chip, device)


def spread_normalised(net: nn.Module) -> bool:
    """Whether ``net`` normalises each chip's feature maps by their own spread (instance, group
    or layer norm), which ``"auto"`` leaves to PyTorch (see the module docstring)."""
    kinds = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)
    return any(isinstance(m, kinds) for m in net.modules())


def _probe(compiled: Callable, cpu: nn.Module, chip: tuple[int, int, int], backend: str) -> None:
    """``ValueError`` when ``compiled`` differs from PyTorch (``cpu``: the network on the CPU) on a
    fixed probe batch by more than :data:`PROBE_TOLERANCE` of the output's largest magnitude."""
    x = np.random.default_rng(0).uniform(-1, 1, (2, *chip)).astype(np.float32)
    with torch.no_grad():
        expected = cpu(torch.from_numpy(x)).numpy()
    difference = float(np.max(np.abs(compiled(x) - expected)))
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    if not difference <= PROBE_TOLERANCE * scale:
        raise ValueError(f"{backend} differs from PyTorch by {difference:.3g} on a probe batch whose outputs "
                         f"reach {scale:.3g}")


def _weights_hash(net: nn.Module) -> str:
    digest = hashlib.sha256(type(net).__name__.encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cached(key: tuple) -> tuple[bool, Callable | None]:
    """``(found, value)`` of the per-process cache of compiled networks."""
    with _LOCK:
        if key not in _CACHE:
            return False, None
        _CACHE.move_to_end(key)
        return True, _CACHE[key]


def _store(key: tuple, value: Callable | None) -> None:
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _cpu_copy(net: nn.Module) -> nn.Module:
    """A float32 copy of ``net`` on the CPU in eval mode (the model's own stays as it is)."""
    import copy

    return copy.deepcopy(net).float().cpu().eval()


def _export_onnx(cpu: nn.Module, chip: tuple[int, int, int], path: Path) -> Path:
    """``cpu`` as ONNX at ``path``: input ``x`` ``(n, *chip)``, output ``y``, any batch size."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own deprecation
        torch.onnx.export(cpu, (torch.zeros((1, *chip), dtype=torch.float32),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    return path


def _runtime(path: Path, backend: str, threads: int) -> Callable:
    """The ONNX graph at ``path`` compiled by ``backend`` (read fully: ``path`` may go afterwards)."""
    return _openvino(path, threads) if backend == "openvino" else _onnxruntime(path, threads)


def _chip_sized(run: Callable, net: nn.Module, chip: tuple[int, int, int], device: torch.device) -> Callable:
    """``run`` for batches of ``chip``-sized inputs, PyTorch (``net``) for any other size."""
    from toolkit.models.translation import run_network

    def forward(x: np.ndarray) -> np.ndarray:
        if tuple(x.shape[1:]) != tuple(chip):
            return run_network(net, x, device)  # another size than the compiled chip
        return run(np.ascontiguousarray(x, dtype=np.float32))

    return forward


def quantized_forward(net: nn.Module, chip: tuple[int, int, int], device: torch.device, backend: str,
                      calibration: np.ndarray | None, name: str = "model") -> Callable[[np.ndarray], np.ndarray]:
    """``net`` in int8 (static quantization: ONNX Runtime inserts quantize/dequantize pairs,
    weights per channel, activations scaled by their range over ``calibration``, a batch of
    normalised windows ``(n, bands, h, w)`` from the data to predict), run by OpenVINO (its
    VNNI int8 kernels) or ONNX Runtime. Warns when the output moves by more than
    :data:`INT8_TOLERANCE` on average over the calibration windows."""
    device = torch.device(device)
    chosen = choose_backend(backend, device)
    if chosen == "torch" or importlib.util.find_spec("onnxruntime") is None:
        raise ValueError("precision='int8' needs OpenVINO or ONNX Runtime on the CPU, and ONNX Runtime to "
                         "quantize (pip install onnxruntime onnx).")
    if calibration is None or len(calibration) == 0:
        raise ValueError("precision='int8' needs calibration windows: normalised chips of the data to predict.")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    key = (_weights_hash(net), tuple(chip), chosen, torch.get_num_threads(), "int8",
           hashlib.sha256(calibration.tobytes()).hexdigest())
    found, run = _cached(key)
    if not found:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Windows(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(calibration[i:i + 1] for i in range(len(calibration)))

            def get_next(self):
                item = next(self.items, None)
                return None if item is None else {"x": item}

        cpu = _cpu_copy(net)
        with tempfile.TemporaryDirectory(prefix="toolkit-int8-") as folder:
            fp32, int8 = _export_onnx(cpu, chip, Path(folder) / "fp32.onnx"), Path(folder) / "int8.onnx"
            with _quiet_root_logger():
                quantize_static(str(fp32), str(int8), Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            run = _runtime(int8, chosen, key[3])
        with torch.no_grad():
            reference = cpu(torch.from_numpy(calibration)).numpy()
        change = float(np.mean(np.abs(run(calibration) - reference)))
        if change > INT8_TOLERANCE:
            warnings.warn(f"the {name} in int8 changes its output by {change:.3f} on average over "
                          f"{len(calibration)} calibration windows (in [-1, 1] units; tolerance "
                          f"{INT8_TOLERANCE}): check the result, or predict in fp32.", stacklevel=3)
        _store(key, run)
    return _chip_sized(run, net, chip, device)


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs advice (pre-processing, batch-norm axes) on the root
    logger; the toolkit reports what matters, the output's change, itself."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _openvino(path: Path, threads: int) -> Callable:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        # never bf16/f16 where not asked: results equal eager's (int8 layers stay int8)
        "INFERENCE_PRECISION_HINT": "f32"})
    local = threading.local()  # an infer request per thread (Dask workers may run several)

    def run(x: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        return np.array(request.infer({0: x})[0], dtype=np.float32)

    return run


def _onnxruntime(path: Path, threads: int) -> Callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0].astype(np.float32, copy=False)

"""toolkit.models.backends: OpenVINO, ONNX Runtime and channels-last PyTorch give eager PyTorch's
predictions (within 1e-4) on the real Rotterdam and Atlanta scenes."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from toolkit import Pix2Pix, export_training_data, predict_raster, prepare_data
from toolkit.models import backends
from toolkit.models.translation import load_translation
from toolkit.raster import clip_raster

CONCRETE = ["openvino", "onnxruntime", "torch"]


@pytest.fixture(scope="module")
def saved(rotterdam_pairs, tmp_path_factory):
    """A Pix2Pix of paper depth for 64 px chips (ngf 16), multispectral -> panchromatic, saved."""
    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("backends")
    model = Pix2Pix(prepare_data(rotterdam_pairs, batch_size=8), ngf=16, ndf=8, working_dir=work / "w")
    model.fit(1, checkpoint=False)
    model.save(work / "model", compute_metrics=False)
    return work / "model" / "model.emd"


def eager(path):
    """The saved model's generator in plain PyTorch (no backend: the reference)."""
    return dataclasses.replace(load_translation(path, device="cpu"), network=None)


def test_the_backends_are_installed():
    assert backends.available_backends() == CONCRETE  # make test installs all three
    assert backends.choose_backend("auto", torch.device("cpu")) == "openvino"
    assert backends.choose_backend("auto", torch.device("cuda")) == "torch"


@pytest.mark.parametrize("backend", CONCRETE)
def test_scene_predictions_equal_eager(saved, rotterdam, backend, tmp_path):
    scene = clip_raster(rotterdam["multispectral_1"], tmp_path / "scene.tif", window=Window(0, 0, 300, 200))
    reference = predict_raster(eager(saved), scene, tmp_path / "eager.tif", progress=False)
    fast = predict_raster(saved, scene, tmp_path / "fast.tif", backend=backend, progress=False, tta=True)
    again = predict_raster(eager(saved), scene, tmp_path / "eager_tta.tif", progress=False, tta=True)
    with rasterio.open(reference) as a, rasterio.open(fast) as b, rasterio.open(again) as c:
        assert (b.crs, b.transform, b.profile["dtype"]) == (a.crs, a.transform, a.profile["dtype"])
        expected, got = c.read(), b.read()
        assert np.isfinite(got).any() and np.nanstd(got) > 0
        scale = np.nanmax(np.abs(expected))
        np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0, equal_nan=True)


def test_a_footprint_model_on_the_atlanta_scene(atlanta, tmp_path):
    """A mask model: scores within 1e-4, and its class raster the same but for pixels whose
    score lies within float error of the threshold."""
    torch.manual_seed(0)
    export_training_data(atlanta["image"], tmp_path / "chips", in_class_data=atlanta["footprints"], tile_size=64,
                         contour_width=2, progress=False)
    model = Pix2Pix(prepare_data(tmp_path / "chips", batch_size=8), ngf=8, ndf=8, working_dir=tmp_path / "w")
    emd = model.save(tmp_path / "model", compute_metrics=False)
    scene = clip_raster(atlanta["image"], tmp_path / "scene.tif", window=Window(100, 100, 256, 192))
    scores = [predict_raster(t, scene, tmp_path / f"{name}.tif", progress=False)
              for name, t in (("eager", eager(emd)), ("auto", emd))]
    with rasterio.open(scores[0]) as a, rasterio.open(scores[1]) as b:
        np.testing.assert_allclose(b.read(), a.read(), atol=1e-4, rtol=0, equal_nan=True)
        close = np.abs(a.read() - 0.5).min(axis=0) < 1e-4
    classes = [predict_raster(t, scene, tmp_path / f"{name}_classes.tif", threshold=0.5, progress=False)
               for name, t in (("eager", eager(emd)), ("auto", emd))]
    with rasterio.open(classes[0]) as a, rasterio.open(classes[1]) as b:
        differ = a.read(1) != b.read(1)
        assert not (differ & ~close).any()


def test_compiled_once_per_model_and_odd_sizes_fall_back(saved):
    translation = load_translation(saved, device="cpu")
    backends._CACHE.clear()
    first = backends.accelerate(translation, "openvino")
    second = backends.accelerate(translation, "openvino")
    assert len(backends._CACHE) == 1 and first.network is None and second.network is None
    x = np.random.default_rng(0).uniform(-1, 1, (2, translation.n_bands_in, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(first.forward(x), translation.forward(x), atol=1e-4)
    odd = np.random.default_rng(1).uniform(-1, 1, (1, translation.n_bands_in, 32, 48)).astype(np.float32)
    np.testing.assert_allclose(first.forward(odd), translation.forward(odd), atol=1e-5)  # PyTorch ran it


def test_unknown_or_missing_backends_are_refused(saved, rotterdam, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        predict_raster(saved, rotterdam["multispectral_1"], tmp_path / "x.tif", backend="tensorrt")
    monkeypatch.setattr(backends, "available_backends", lambda: ["torch"])
    with pytest.raises(ValueError, match="pip install openvino"):
        predict_raster(saved, rotterdam["multispectral_1"], tmp_path / "x.tif", backend="openvino")
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_is_calibrated_on_the_scene_and_stays_close(saved, rotterdam, backend, tmp_path):
    scene = clip_raster(rotterdam["multispectral_1"], tmp_path / "scene.tif", window=Window(0, 0, 300, 200))
    reference = predict_raster(eager(saved), scene, tmp_path / "fp32.tif", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = predict_raster(saved, scene, tmp_path / "int8.tif", backend=backend, precision="int8",
                                   progress=False)
    with rasterio.open(reference) as a, rasterio.open(quantized) as b:
        assert (b.crs, b.transform) == (a.crs, a.transform)
        expected, got = a.read(), b.read()
    spread = np.nanmax(expected) - np.nanmin(expected)
    change = np.nanmean(np.abs(got - expected)) / spread
    warned = any("int8" in str(w.message) for w in caught)
    assert change < 0.05 or warned  # close, or the user is told
    assert 0 < change  # it did run in int8
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95


def test_int8_needs_a_quantizing_backend(saved, rotterdam, tmp_path):
    with pytest.raises(ValueError, match="int8"):
        predict_raster(saved, rotterdam["multispectral_1"], tmp_path / "x.tif", backend="torch", precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        predict_raster(saved, rotterdam["multispectral_1"], tmp_path / "x.tif", precision="fp16")
    assert not (tmp_path / "x.tif").exists()


def test_the_pro_raster_function_runs_the_fast_path(saved):
    """The raster function loads the model on the fastest backend installed (OpenVINO here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ArcGISImageTranslation", saved.parent / "ArcGISImageTranslation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = module.ArcGISImageTranslation()
    function.initialize(model=str(saved), device=-1)
    assert function.translation.network is None  # accelerated
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(function.translation.forward(x), eager(saved).forward(x), atol=1e-4)


def test_instance_normalised_networks_stay_in_pytorch(rotterdam_pairs, tmp_path):
    """Normalising nearly constant feature maps amplifies the runtimes' rounding: "auto" keeps
    such networks (CycleGAN, arcgis.learn's, norm="instance") in PyTorch."""
    model = Pix2Pix(prepare_data(rotterdam_pairs, batch_size=8), ngf=8, ndf=8, norm="instance",
                    working_dir=tmp_path / "w")
    emd = model.save(tmp_path / "model", compute_metrics=False)
    translation = load_translation(emd, device="cpu")
    assert backends.spread_normalised(translation.network)
    assert backends.accelerate(translation) is translation  # its own PyTorch forward
    assert backends.accelerate(translation, "openvino").network is None  # asked for by name: it runs there

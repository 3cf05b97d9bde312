"""toolkit.Pix2PixHD: arcgis.learn's third translation model on the shared model base.

Esri's saved Pix2PixHD (../shared/fixtures/arcgis_learn_2_4_4) predicts as arcgis.learn did; a
CPU-sized Pix2PixHD learns Rotterdam's multispectral -> panchromatic pairs; save, from_model,
.dlpk and the raster function predict alike; the command line trains one; what cannot fit is
refused before anything is allocated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from toolkit import Pix2PixHD, load_model, prepare_data
from toolkit.cli import main
from toolkit.models.pix2pixhd import memory_needed

sys.path.insert(0, str(Path(__file__).parent))
from test_arcgis_learn_models import RASTER_FUNCTION, _raster_function, drive_as_the_fixture  # noqa: E402

TINY = dict(n_gen_filters=8, n_dscr_filters=8, n_downsample_global=2, n_blocks_global=2, n_blocks_local=1)


@pytest.fixture(scope="module")
def esri_hd(arcgis_fixtures, tmp_path_factory) -> Path:
    """arcgis.learn's saved Pix2PixHD as it leaves it: .emd, .pth (rebuilt), raster function."""
    folder = tmp_path_factory.mktemp("arcgis_hd") / "fixture_pix2pixhd"
    subprocess.run([sys.executable, str(arcgis_fixtures / "regenerate.py"), str(folder), "fixture_pix2pixhd"],
                   check=True, capture_output=True)
    shutil.copy(RASTER_FUNCTION, folder)
    with zipfile.ZipFile(folder.with_suffix(".dlpk"), "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, file.name)
    return folder


def test_esris_pix2pixhd_predicts_as_arcgis_learn(esri_hd, arcgis_fixtures):
    reference = np.load(arcgis_fixtures / "forward" / "pix2pixhd_forward.npz")["output"]
    x = np.load(arcgis_fixtures / "forward" / "pix2pix_forward.npz")["input"]
    for path in (esri_hd, esri_hd.with_suffix(".dlpk"), esri_hd / "fixture_pix2pixhd.pth"):
        model = Pix2PixHD.from_model(path, device="cpu")
        assert (model.config["gen_network"], model.config["n_gen_filters"], model.config["n_channel"]) == \
            ("global", 16, 4)
        np.testing.assert_allclose(model.translation().forward(x), reference[:, :1], atol=1e-4, rtol=0)
    model = load_model(esri_hd, device="cpu")
    assert isinstance(model, Pix2PixHD)
    with torch.no_grad():  # the whole arcgis network, every band it gives
        every_band = model.generator.net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(every_band, reference, atol=1e-4, rtol=0)
    assert sum(p.numel() for p in model.generator.parameters()) == 11_411_812  # arcgis.learn's G
    assert sum(p.numel() for p in model.discriminator.parameters()) == 5_539_714  # and its D


def test_esris_pix2pixhd_in_the_raster_function(esri_hd, arcgis_fixtures):
    function = _raster_function(esri_hd)
    function.initialize(model=str(esri_hd / "fixture_pix2pixhd.emd"), device=-1)
    ours = drive_as_the_fixture(function, arcgis_fixtures / "scenes" / "ms1_300x300.tif", padding=64, batch_size=4)
    with rasterio.open(arcgis_fixtures / "rf" / "pix2pixhd_ms1.tif") as src:
        esri = src.read()
    assert ours.shape == esri.shape
    assert np.abs(ours - esri).max() < 1e-3 * (esri.max() - esri.min())


@pytest.fixture(scope="module")
def trained(rotterdam_pairs, tmp_path_factory) -> dict:
    """A CPU-sized Pix2PixHD (local enhancer) on Rotterdam's 4-band -> panchromatic pairs."""
    work = tmp_path_factory.mktemp("hd")
    data = prepare_data(rotterdam_pairs, batch_size=4, seed=0, working_dir=work)
    torch.manual_seed(0)
    model = Pix2PixHD(data, **TINY)
    before = model.compute_metrics()["psnr"]
    model.fit(8, lr=2e-3, checkpoint=False)
    return {"model": model, "before": before, "after": model.compute_metrics()["psnr"], "work": work}


def test_pix2pixhd_learns_real_imagery(trained):
    model = trained["model"]
    # multispectral: L1 instead of VGG, as arcgis.learn
    assert (model.config["l1_loss"], model.config["vgg_loss"], model.config["gen_network"]) == (True, False, "local")
    assert {"gen_loss", "feat_loss", "l1_loss", "d_loss"} <= set(model.history[-1])
    assert trained["after"] >= trained["before"] + 3.0, (trained["before"], trained["after"])
    weights = {k: v.clone() for k, v in model.generator.state_dict().items()}
    assert 0 < model.lr_find(allow_plot=False, num_it=10) < 1  # on the L1 term, as for Pix2Pix
    assert all(torch.equal(v, model.generator.state_dict()[k]) for k, v in weights.items())


def test_saved_loaded_packaged_and_pro_predict_alike(trained, rotterdam_pairs, rotterdam, tmp_path):
    model = trained["model"]
    emd = model.save(tmp_path / "hd")
    saved = json.loads(emd.read_text())
    assert (saved["ModelType"], saved["ModelConfiguration"], saved["Kwargs"]["n_gen_filters"]) == \
        ("Pix2PixHD", "_pix2pix_hd", 8)
    chip = sorted((rotterdam_pairs / "images").glob("*.tif"))[0]
    expected = model.predict(chip)
    for path in (emd, emd.parent, emd.with_suffix(".dlpk")):
        np.testing.assert_allclose(load_model(path, device="cpu").predict(chip), expected, atol=1e-5)
    function = _raster_function(emd.parent)
    function.initialize(model=str(emd), device=-1)
    scene = rotterdam["multispectral_1"]
    config = function.getConfiguration(padding=16, batch_size=1)
    assert (config["tx"], config["ty"]) == (32, 32)  # one chip of 64 px per block: 32 + 2 * 16
    with rasterio.open(scene) as src:
        block = src.read([b + 1 for b in config["extractBands"]], window=((0, 64), (0, 64))).astype(np.float32)
    pixels = function.updatePixels((0, 0), (1, 32, 32), {"pixelType": "f4"}, raster_pixels=block)["output_pixels"]
    direct = model.predict(block)
    np.testing.assert_allclose(pixels[0], direct[0, 16:48, 16:48], rtol=1e-5, atol=1e-3)


def test_toolkit_train_model_pix2pixhd(rotterdam_pairs, tmp_path, capsys):
    argv = ["train", str(rotterdam_pairs), "--model", "pix2pixhd", "--out", str(tmp_path / "hd"), "--epochs", "1",
            "--batch-size", "4", "--n-gen-filters", "8", "--n-dscr-filters", "8", "--n-downsample-global", "2",
            "--n-blocks-global", "1", "--gen-network", "global", "--checkpoint", "none"]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    result = json.loads(capsys.readouterr().out)
    assert isinstance(load_model(result["emd"]), Pix2PixHD)
    assert result["run"]["pix2pixhd"]["gen_network"] == "global"
    assert main(["train", str(rotterdam_pairs), "--out", str(tmp_path / "p"), "--n-dscr", "3"]) == 1
    assert "--n-dscr is an option of --model pix2pixhd, not of pix2pix" in capsys.readouterr().err


def test_what_cannot_fit_is_refused_before_allocating(rotterdam_pairs, tmp_path, monkeypatch):
    data = prepare_data(rotterdam_pairs, batch_size=4, seed=0, working_dir=tmp_path)
    need = memory_needed(dict(n_bands_in=4, n_bands_out=1, chip_size=64, n_gen_filters=64, gen_network="local",
                              n_downsample_global=4, n_blocks_global=9, n_local_enhancers=1, n_blocks_local=3,
                              norm="instance", n_dscr_filters=64, n_layers_dscr=3, n_dscr=2, feat_loss=True), 4)
    assert 700e6 < need["parameters"] < 780e6  # arcgis.learn's defaults: a 1024-filter global generator
    import toolkit.models.pix2pixhd as hd

    monkeypatch.setattr(hd, "available_memory", lambda device: 2**30)  # a machine with 1 GiB free
    allocated = []
    monkeypatch.setattr(hd.Pix2PixHD, "_setup", lambda *a, **k: allocated.append(1))
    with pytest.raises(MemoryError, match=r"needs about \d+\.\d GiB .* more than the 1\.0 GiB free on cpu"):
        Pix2PixHD(data)
    assert allocated == []


def test_the_vgg_loss_needs_local_weights(side_by_side, tmp_path):
    rgb = prepare_data(side_by_side, batch_size=2, seed=0, working_dir=tmp_path)  # RGB -> RGB map renderings
    with pytest.warns(UserWarning, match="vgg_loss needs ImageNet VGG-19 weights"):
        model = Pix2PixHD(rgb, gen_network="global", **TINY)
    assert model.config["vgg_loss"] is False
    import torchvision

    weights = tmp_path / "vgg19.pth"  # a torchvision vgg19 state dict (random here: nothing is downloaded)
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = Pix2PixHD(rgb, gen_network="global", vgg_weights=weights, **TINY)
    assert model.config["vgg_loss"] is True
    model.fit(1, lr=1e-3, checkpoint=False)
    assert np.isfinite(model.history[-1]["vgg_loss"])
    with pytest.raises(FileNotFoundError, match="vgg_weights weights .*missing.pth: no such file"):
        Pix2PixHD(rgb, gen_network="global", vgg_weights=tmp_path / "missing.pth", **TINY)


# --- label-to-image: class rasters (footprints and their outlines) -> imagery ----------------------


@pytest.fixture(scope="module")
def footprint_labels(atlanta, tmp_path_factory) -> Path:
    """A Classified_Tiles export of the Atlanta tile: images/ + labels/ (footprint 1, outline 2),
    128 px chips: what surrounds a building (shadows, yards) takes context."""
    from toolkit import export_training_data

    out = tmp_path_factory.mktemp("l2i") / "chips"
    export_training_data(atlanta["image"], out, in_class_data=atlanta["footprints"], tile_size=128, stride=64,
                         contour_width=2, progress=False)
    return out


def test_label_to_image_learns_imagery_from_footprints(footprint_labels, tmp_path):
    data = prepare_data(footprint_labels, batch_size=4, seed=0, direction="BtoA", working_dir=tmp_path)
    assert (data.dataset_type, data.n_bands_in, data.n_bands_out) == ("Pix2Pix", 2, 1)  # one-hot classes in
    x, _ = data.one_batch()
    assert set(np.unique(x.cpu().numpy())) <= {-1.0, 1.0}
    arcgis_way = prepare_data(footprint_labels, batch_size=4, seed=0, dataset_type="Pix2Pix")
    assert arcgis_way.input_norm == data.input_norm  # arcgis.learn's Pix2Pix on images/ + labels/
    torch.manual_seed(0)
    model = Pix2PixHD(data, gen_network="global", **(TINY | {"n_downsample_global": 3}))
    before = model.compute_metrics()["psnr"]
    model.fit(8, lr=2e-3, checkpoint=False)
    after = model.compute_metrics()["psnr"]
    assert after >= before + 3.0, (before, after)

    emd = model.save(tmp_path / "l2i")
    saved = json.loads(emd.read_text())
    assert (saved["label_nc"], saved["mask_map"], saved["NormalizationStats"]) == (2, [0, 1, 2], None)
    label = sorted((footprint_labels / "labels").glob("*.tif"))[5]
    loaded = load_model(emd.with_suffix(".dlpk"), device="cpu")
    np.testing.assert_allclose(loaded.predict(label), model.predict(label), atol=1e-5)
    out = loaded.predict_raster(label, tmp_path / "synthetic.tif", progress=False)  # a class raster in
    with rasterio.open(label) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.count) == (src.crs, src.transform, 1)
        assert np.isfinite(dst.read()).all()


def test_sharpness_falls_with_blur(atlanta):
    import cv2

    from toolkit.metrics import sharpness

    with rasterio.open(atlanta["image"]) as src:
        image = src.read(window=((0, 256), (0, 256))).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(b, (0, 0), 2.0) for b in image])
    assert sharpness(image) == sharpness(image[0]) > 2 * sharpness(blurred) > 0

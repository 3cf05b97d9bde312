"""Models saved by arcgis.learn 2.4.4 run here (toolkit.models.arcgis_learn): the fixtures in
../shared/fixtures/arcgis_learn_2_4_4 (genuine .emd files, weights rebuilt by its regenerate.py,
reference outputs of arcgis.learn's own code) load as a folder, a .dlpk and a .pth, reproduce
arcgis.learn's generator outputs, and the raster function reproduces Esri's over real scenes."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from toolkit import CycleGAN, Pix2Pix, load_model, prepare_data

RASTER_FUNCTION = Path(__file__).resolve().parents[1] / "toolkit" / "arcgis_pro" / "ArcGISImageTranslation.py"


@pytest.fixture(scope="module")
def saved(arcgis_fixtures, tmp_path_factory) -> dict[str, Path]:
    """Each fixture model as arcgis.learn leaves it: a folder with the .emd, the .pth (rebuilt
    by the fixture's regenerate.py) and the raster function; and packed as a .dlpk."""
    out = tmp_path_factory.mktemp("arcgis_models")
    models = {}
    for name in ("fixture_pix2pix", "fixture_cyclegan"):
        folder = out / name
        subprocess.run([sys.executable, str(arcgis_fixtures / "regenerate.py"), str(folder), name], check=True,
                       capture_output=True)
        shutil.copy(RASTER_FUNCTION, folder)
        with zipfile.ZipFile(out / f"{name}.dlpk", "w") as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, file.name)
        models[name] = folder
    return models


def test_pix2pix_loads_from_folder_dlpk_and_pth_and_reproduces_the_generator(saved, arcgis_fixtures):
    folder = saved["fixture_pix2pix"]
    reference = np.load(arcgis_fixtures / "forward" / "pix2pix_forward.npz")
    outputs = []
    for path in (folder, folder.with_suffix(".dlpk"), folder / "fixture_pix2pix.pth"):
        model = Pix2Pix.from_model(path, device="cpu")
        assert model.config["architecture"] == "arcgis" and model.config["n_channel"] == 4
        assert (model.config["n_bands_in"], model.config["n_bands_out"]) == (4, 1)
        # arcgis.learn's network, 4 -> 4 bands; the toolkit keeps the target's band
        outputs.append(model.translation().forward(reference["input"]))
    for out in outputs:
        assert out.shape == (2, 1, 256, 256)
        np.testing.assert_allclose(out, reference["output"][:, :1], atol=1e-4, rtol=0)
    model = load_model(folder / "fixture_pix2pix.emd", device="cpu")
    full = model.generator.net.eval()  # the whole arcgis network, every output band
    import torch

    with torch.no_grad():
        every_band = full(torch.from_numpy(reference["input"])).numpy()
    np.testing.assert_allclose(every_band, reference["output"], atol=1e-4, rtol=0)
    assert sum(p.numel() for p in full.parameters()) == 54_407_172  # arcgis.learn's G
    assert model.input_norm.scaling == "minmax" and model.input_norm.min == [1.0, 1.0, 1.0, 2.0]
    assert model.metrics["psnr"] == pytest.approx(0.54595)  # the .emd's PSNR, carried over


def test_cyclegan_loads_and_reproduces_both_generators(saved, arcgis_fixtures):
    reference = np.load(arcgis_fixtures / "forward" / "cyclegan_forward.npz")
    for path in (saved["fixture_cyclegan"], saved["fixture_cyclegan"].with_suffix(".dlpk")):
        model = CycleGAN.from_model(path, device="cpu")
        assert (model.config["n_bands_in"], model.config["n_bands_out"]) == (4, 1)
        a_to_b = model.translation("b").forward(reference["A_input"])
        np.testing.assert_allclose(a_to_b, reference["AtoB_output"][:, :1], atol=1e-4, rtol=0)
        # B's one band, as arcgis.learn repeats it to the networks' 4
        b_to_a = model.translation("a").forward(reference["B_input"][:, :1])
        np.testing.assert_allclose(b_to_a, reference["BtoA_output"], atol=1e-4, rtol=0)


def _raster_function(folder: Path):
    """The class Pro instantiates, imported from the file beside the model (as Pro does)."""
    spec = importlib.util.spec_from_file_location(f"rf_{folder.name}", folder / "ArcGISImageTranslation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.ArcGISImageTranslation()


def drive_as_the_fixture(function, scene: Path, **scalars) -> np.ndarray:
    """The fixture's driver of Esri's function (README, "Raster function"): blocks of (tx + 2 p)
    px stepping tx from the top-left corner, 0 past the scene's edges, no mask; each block's
    inner part written, clipped to the scene."""
    config = function.getConfiguration(**scalars)
    p, tx, ty = config["padding"], config["tx"], config["ty"]
    info = function.updateRasterInfo(output_info={"bandCount": 1, "pixelType": "f4"})["output_info"]
    with rasterio.open(scene) as src:
        data = src.read([b + 1 for b in config["extractBands"]]).astype(np.float32)
    _, height, width = data.shape
    padded = np.zeros((data.shape[0], height + ty + 2 * p, width + tx + 2 * p), np.float32)
    padded[:, p:p + height, p:p + width] = data
    out = np.zeros((info["bandCount"], height, width), np.float32)
    for r in range(0, height, ty):
        for c in range(0, width, tx):
            block = padded[:, r:r + ty + 2 * p, c:c + tx + 2 * p].copy()
            pixels = function.updatePixels((c, r), (info["bandCount"], ty, tx), {"pixelType": "f4"},
                                           raster_pixels=block)["output_pixels"]
            out[:, r:r + ty, c:c + tx] = pixels[:, :min(ty, height - r), :min(tx, width - c)]
    return out


@pytest.mark.parametrize("name, scene, reference, direction", [
    ("fixture_pix2pix", "ms1_300x300", "pix2pix_ms1", None),
    ("fixture_cyclegan", "ms1_300x300", "cyclegan_AtoB_ms1", "AtoB"),
    ("fixture_cyclegan", "pan2_512x512", "cyclegan_BtoA_pan2", "BtoA"),
])
def test_raster_function_reproduces_esris_and_predict_raster_keeps_the_grid(saved, arcgis_fixtures, name, scene,
                                                                          reference, direction, tmp_path):
    function = _raster_function(saved[name])
    function.initialize(model=str(saved[name] / f"{name}.emd"), device=-1)
    params = {p["name"]: p for p in function.getParameterInfo()}
    assert params["batch_size"]["value"] == 4 and params["padding"]["value"] == 64
    if direction:
        assert params["direction"]["value"] == "AtoB" and "tile_size" in params  # SupportsVariableTileSize
    scalars = {"padding": 64, "batch_size": 4} | ({"direction": direction} if direction else {})
    ours = drive_as_the_fixture(function, arcgis_fixtures / "scenes" / f"{scene}.tif", **scalars)
    with rasterio.open(arcgis_fixtures / "rf" / f"{reference}.tif") as src:
        esri, profile = src.read(), src.profile
    assert ours.shape == esri.shape
    # float32 arithmetic of another order (README: about 1e-4 of the range); 1e-3 of it here
    tolerance = 1e-3 * (esri.max() - esri.min())
    assert np.abs(ours - esri).max() < tolerance

    # predict_raster: the same grid; its values blend every overlapping chip across the scene
    # (and mirror the scene at its edges) where Esri's blend only within the block Pro passes
    # (0 past the edges), so they differ by as much as the weights let the surroundings count
    model = load_model(saved[name].with_suffix(".dlpk"), device="cpu")
    kwargs = {"convert_to": "b" if direction == "AtoB" else "a"} if direction else {}
    out = model.predict_raster(arcgis_fixtures / "scenes" / f"{scene}.tif", tmp_path / "out.tif", padding=64,
                               progress=False, **kwargs)
    with rasterio.open(out) as src:
        assert (src.crs, src.transform, src.width, src.height, src.count) == \
            (profile["crs"], profile["transform"], profile["width"], profile["height"], profile["count"])
        assert np.isfinite(src.read()).all()


def test_training_starts_from_an_arcgis_model(saved, arcgis_fixtures, rotterdam_pairs, tmp_path):
    """pretrained_path= an arcgis.learn model (here its .pth, as arcgis.learn takes it): the
    model is built in arcgis.learn's layout and starts from its weights."""
    data = prepare_data(rotterdam_pairs, batch_size=4, seed=0, working_dir=tmp_path)
    pth = saved["fixture_pix2pix"] / "fixture_pix2pix.pth"
    model = Pix2Pix(data, pretrained_path=str(pth))
    reference = Pix2Pix.from_model(pth, device="cpu")
    assert model.config["architecture"] == "arcgis"
    x = np.load(arcgis_fixtures / "forward" / "pix2pix_forward.npz")["input"][:1, :, :64, :64]
    np.testing.assert_allclose(model.translation().forward(x), reference.translation().forward(x), atol=1e-6)


def test_what_the_toolkit_cannot_build_is_named(saved, tmp_path):
    import json

    folder = tmp_path / "hd"
    shutil.copytree(saved["fixture_pix2pix"], folder)
    emd = json.loads((folder / "fixture_pix2pix.emd").read_text())
    (folder / "fixture_pix2pix.emd").write_text(json.dumps(emd | {"backbone": "resnet34"}))
    with pytest.raises(ValueError, match=r"fixture_pix2pix.emd: an arcgis.learn model .* resnet34"):
        load_model(folder)
    (folder / "fixture_pix2pix.emd").write_text(json.dumps(emd | {"ModelType": "SuperResolution"}))
    with pytest.raises(ValueError, match="ModelType 'SuperResolution'"):
        load_model(folder)
    (folder / "fixture_pix2pix.emd").unlink()
    with pytest.raises(FileNotFoundError, match="fixture_pix2pix.emd must sit beside them"):
        load_model(folder / "fixture_pix2pix.pth")


def test_the_arcgis_recipe_saves_what_arcgis_learn_saves(arcgis_fixtures, rotterdam_pairs, tmp_path):
    """Pix2Pix(data, recipe="arcgis") trains arcgis.learn's networks and losses and saves its
    .emd keys and .pth tensor names and shapes (4 -> 1 bands, as the fixture); the toolkit
    loads the result back."""
    import json

    import torch

    torch.manual_seed(0)
    data = prepare_data(rotterdam_pairs, batch_size=8, seed=0, working_dir=tmp_path)
    model = Pix2Pix(data, recipe="arcgis")
    model.learn.create_opt()
    assert model.data.input_norm.scaling == "minmax" and model.learn.opt.opt.param_groups[0]["betas"] == (0.5, 0.99)
    model.fit(1, 2e-4, checkpoint=False)
    assert all(np.isfinite(model.history[0][k]) for k in ("gen_loss", "l1_loss", "d_loss"))
    folder = model.save("arcgis_recipe").parent
    saved = torch.load(folder / "arcgis_recipe.pth", weights_only=True)
    fixture = json.loads((arcgis_fixtures / "fixture_pix2pix.state.json").read_text())["keys"]
    assert [(k, list(v.shape)) for k, v in saved.items()] == [(e["key"], e["shape"]) for e in fixture]
    emd = json.loads((folder / "arcgis_recipe.emd").read_text())
    reference = json.loads((arcgis_fixtures / "fixture_pix2pix.emd").read_text())
    assert set(reference) <= set(emd)
    for key in ("Framework", "ModelConfiguration", "ModelType", "n_intput_channel", "n_channel", "ModelFormat",
                "SupportsVariableTileSize", "ImageryType", "IsMultispectral", "backbone", "perceptual_loss"):
        assert emd[key] == reference[key], key
    assert emd["NormalizationStats"]["band_min_values"] == model.input_norm.min
    chip = sorted((rotterdam_pairs / "images").glob("*.tif"))[0]
    np.testing.assert_allclose(load_model(folder, device="cpu").predict(chip), model.predict(chip), atol=1e-5)

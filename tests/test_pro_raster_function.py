"""The Python raster function saved with a model, driven exactly as ArcGIS Pro drives it.

Pro unpacks the ``.dlpk``, reads the ``.emd``, loads the file its ``InferenceFunction`` names by
its path and instantiates the class of the file's name; then ``initialize(model=<.emd>,
device=-1)`` -> ``getParameterInfo()`` -> ``getConfiguration(**scalars)`` ->
``updateRasterInfo(**kwargs)`` -> ``updatePixels`` per block, each block ``(bands, ty + 2 pad,
tx + 2 pad)`` of the extracted bands, padded past the raster's edges with masked pixels.
The assembled output is compared with the toolkit's ``predict`` on the same blocks, and (without
padding) with ``predict_raster``. Tiny models (ngf 8), one epoch on real SpaceNet samples.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from toolkit import CycleGAN, Pix2Pix, export_training_data, load_model, prepare_data
from toolkit.arcgis_pro import INFERENCE_FUNCTION, inference_function_path
from toolkit.raster import clip_raster, write_raster

ROOT = Path(__file__).resolve().parents[1]


# --- models and rasters -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pro")


def _trained(model_class, chips: Path, work: Path, name: str, batch_size: int, **kwargs) -> Path:
    """A tiny model (ngf 8) of ``model_class`` trained 1 epoch on ``chips``: its saved .emd."""
    torch.manual_seed(0)
    model = model_class(prepare_data(chips, batch_size=batch_size, seed=0), ngf=8, ndf=8,
                        working_dir=work / f"work_{name}", **kwargs)
    model.fit(1, checkpoint=False)
    return model.save(work / name, compute_metrics=False)


@pytest.fixture(scope="module")
def footprint_model(atlanta, work) -> Path:
    """Pix2Pix on Atlanta building footprints (class mask), 64 px chips: the saved .emd."""
    chips = work / "footprint_chips"
    export_training_data(atlanta["image"], chips, in_class_data=atlanta["footprints"], tile_size=64,
                         stride=128, progress=False)
    return _trained(Pix2Pix, chips, work, "footprints", 8)


@pytest.fixture(scope="module")
def image_model(rotterdam_pairs, work) -> Path:
    """Pix2Pix Rotterdam multispectral (4 bands) -> panchromatic, 64 px chips."""
    return _trained(Pix2Pix, rotterdam_pairs, work, "ms2pan", 8)


@pytest.fixture(scope="module")
def cyclegan_model(rotterdam_pan_green, work) -> Path:
    """CycleGAN panchromatic (A) <-> green band (B), 64 px chips."""
    return _trained(CycleGAN, rotterdam_pan_green, work, "pan_green", 4, gen_blocks=2)


@pytest.fixture(scope="module")
def atlanta_scene(atlanta, work) -> Path:
    """A 150 x 170 px part of the Atlanta panchromatic scene (uint16): sizes that no tile divides."""
    return clip_raster(atlanta["image"], work / "atlanta_part.tif", window=Window(300, 250, 170, 150))


@pytest.fixture(scope="module")
def rotterdam_ms(rotterdam, work) -> Path:
    """A 120 x 100 px part of the Rotterdam multispectral scene (4 bands)."""
    return clip_raster(rotterdam["multispectral_1"], work / "ms_part.tif", window=Window(20, 40, 100, 120))


@pytest.fixture(scope="module")
def rotterdam_green(rotterdam, work) -> Path:
    """The green band of that part, alone: a raster of CycleGAN's domain B."""
    with rasterio.open(rotterdam["multispectral_1"]) as src:
        window = Window(20, 40, 100, 120)
        green = src.read([2], window=window).astype(np.float32)
        transform, crs = src.window_transform(window), src.crs
    path = work / "green_part.tif"
    write_raster(path, green, transform=transform, crs=crs, nodata=None)
    return path


# --- ArcGIS Pro's side ----------------------------------------------------------------------------


def unpack(emd_path: Path, dest: Path) -> Path:
    """Unpack the model's .dlpk into ``dest`` (as Pro does) and return the .emd there."""
    with zipfile.ZipFile(emd_path.with_suffix(".dlpk")) as archive:
        archive.extractall(dest)
    return dest / emd_path.name


def raster_function_class(emd_path: Path) -> type:
    """The class Pro instantiates: the one named as the file the .emd's InferenceFunction names,
    imported from that file by its path."""
    file = emd_path.parent / json.loads(emd_path.read_text())["InferenceFunction"]
    name = file.stem
    spec = importlib.util.spec_from_file_location(f"pro_{name}_{abs(hash(file))}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and friends look modules up there
    spec.loader.exec_module(module)
    return getattr(module, name)


def pro_blocks(raster: Path, config: dict):
    """Pro's pixel blocks of ``raster`` for ``config``: ``(row, col, pixels, mask)`` per output
    tile of ``ty`` x ``tx``, row-major; each block holds the extracted bands with ``padding``
    pixels on every side; pixels past the raster's edges are 0 and masked (mask 0), as are the
    raster's nodata pixels."""
    p, tx, ty = config["padding"], config["tx"], config["ty"]
    with rasterio.open(raster) as src:
        data = src.read([b + 1 for b in config["extractBands"]])
        nodata = src.nodata
    bands, height, width = data.shape
    rows, cols = math.ceil(height / ty) * ty, math.ceil(width / tx) * tx
    padded = np.zeros((bands, rows + 2 * p, cols + 2 * p), data.dtype)
    mask = np.zeros(padded.shape, np.uint8)
    padded[:, p:p + height, p:p + width] = data
    mask[:, p:p + height, p:p + width] = 1 if nodata is None else data != nodata
    for r in range(0, rows, ty):
        for c in range(0, cols, tx):
            yield r, c, padded[:, r:r + ty + 2 * p, c:c + tx + 2 * p].copy(), \
                mask[:, r:r + ty + 2 * p, c:c + tx + 2 * p].copy()


def run_in_pro(emd_path: Path, raster: Path, **arguments) -> dict:
    """Drive the raster function beside ``emd_path`` as Pro does, over all of ``raster``; the
    tool's ``arguments`` override the parameter defaults. Returns the calls' results and the
    assembled ``output`` / ``output_mask`` cropped to the raster, and the blocks sent."""
    function = raster_function_class(emd_path)()
    function.initialize(model=str(emd_path), device=-1)
    params = function.getParameterInfo()
    scalars = {p["name"]: p.get("value") for p in params if p["dataType"] != "raster"}
    scalars |= {"model": str(emd_path), "device": -1} | arguments
    config = function.getConfiguration(**scalars)
    with rasterio.open(raster) as src:
        raster_info = {"bandCount": src.count, "pixelType": np.dtype(src.dtypes[0]).str[1:],
                       "width": src.width, "height": src.height, "noData": src.nodata,
                       "cellSize": (src.transform.a, -src.transform.e)}
        height, width = src.height, src.width
    kwargs = function.updateRasterInfo(raster_info=dict(raster_info), output_info=dict(raster_info), **scalars)
    info = kwargs["output_info"]
    bands = info["bandCount"]
    rows, cols = math.ceil(height / config["ty"]) * config["ty"], math.ceil(width / config["tx"]) * config["tx"]
    output = np.zeros((bands, rows, cols), np.dtype(info["pixelType"]))
    output_mask = np.zeros((bands, rows, cols), np.uint8)
    blocks = []
    for r, c, pixels, mask in pro_blocks(raster, config):
        props = {"pixelType": info["pixelType"], "width": config["tx"], "height": config["ty"]}
        result = function.updatePixels((c, r), (bands, config["ty"], config["tx"]), props,
                                       raster_pixels=pixels.copy(), raster_mask=mask.copy())
        out = result["output_pixels"]
        assert out.shape == (bands, config["ty"], config["tx"]) and out.dtype == np.dtype(info["pixelType"])
        output[:, r:r + config["ty"], c:c + config["tx"]] = out
        output_mask[:, r:r + config["ty"], c:c + config["tx"]] = result["output_mask"]
        blocks.append((r, c, pixels, mask))
    return {"function": function, "params": params, "scalars": scalars, "config": config, "info": info,
            "output": output[:, :height, :width], "output_mask": output_mask[:, :height, :width],
            "beyond_mask": output_mask, "blocks": blocks, "shape": (height, width)}


def toolkit_on_blocks(run: dict, predict) -> np.ndarray:
    """The toolkit's ``predict`` (a function of a ``(bands, h, w)`` array) on the same blocks, as
    Esri's image-translation functions use a model: each chip of the model's size in a block
    (every chip - 2 padding px; masked pixels as NaN, nodata to the toolkit), the chips blended
    where they overlap with ``torch.hann_window``'s 2-D window, the padding cropped; float32
    target units, assembled and cropped to the raster."""
    config, (height, width) = run["config"], run["shape"]
    p, tx, ty = config["padding"], config["tx"], config["ty"]
    chip_w, chip_h = run["function"].translation.chip_size
    window = np.outer(torch.hann_window(chip_h, dtype=torch.float64).numpy(),
                      torch.hann_window(chip_w, dtype=torch.float64).numpy()) + 1e-12
    first = None
    for r, c, pixels, mask in run["blocks"]:
        x = pixels.astype(np.float64)
        x[:, ~mask.astype(bool).all(axis=0)] = np.nan
        total = weights = 0
        for i in range(0, ty, chip_h - 2 * p):
            for j in range(0, tx, chip_w - 2 * p):
                result = predict(x[:, i:i + chip_h, j:j + chip_w])
                place = np.zeros((result.shape[0], *x.shape[1:]))
                place[:, i:i + chip_h, j:j + chip_w] = result * window
                total = total + place
                weights = weights + np.pad(window, ((i, x.shape[1] - i - chip_h), (j, x.shape[2] - j - chip_w)))
        block = (total / weights)[:, p:p + ty, p:p + tx]
        if first is None:
            first = np.full((block.shape[0], len(range(0, height, ty)) * ty, len(range(0, width, tx)) * tx),
                            np.nan, np.float32)
        first[:, r:r + ty, c:c + tx] = block
    return first[:, :height, :width]


def classes_of(scores: np.ndarray, values: list[int], threshold: float = 0.5) -> np.ndarray:
    """predict_raster's class rule: the highest class score's value where it is >= threshold."""
    best = np.asarray(values)[scores.argmax(axis=0)]
    return np.where(scores.max(axis=0) >= threshold, best, 0)


# --- the saved model ------------------------------------------------------------------------------


def test_save_writes_the_inference_function_into_the_folder_and_package(footprint_model, tmp_path):
    emd = json.loads(footprint_model.read_text())
    assert emd["InferenceFunction"] == INFERENCE_FUNCTION
    saved = footprint_model.parent / INFERENCE_FUNCTION
    assert saved.read_bytes() == inference_function_path().read_bytes()
    with zipfile.ZipFile(footprint_model.with_suffix(".dlpk")) as archive:
        assert archive.read(INFERENCE_FUNCTION) == saved.read_bytes()
        assert {footprint_model.name, emd["ModelFile"]} <= set(archive.namelist())
    # the keys Pro reads
    assert emd["Framework"] == "PyTorch" and emd["ModelType"] == "Pix2Pix"
    assert emd["ModelFile"] == "footprints.pth" and (footprint_model.parent / emd["ModelFile"]).is_file()
    assert (emd["ImageHeight"], emd["ImageWidth"]) == (64, 64) and emd["ExtractBands"] == [0]
    assert "ModelPadding" not in emd and "BatchSize" not in emd  # arguments of the tool instead
    for c in emd["Classes"]:
        assert set(c) == {"Value", "Name", "Color"} and isinstance(c["Value"], int)
        assert len(c["Color"]) == 3 and all(0 <= v <= 255 for v in c["Color"])


def test_save_inference_file_false_leaves_it_out(image_model, tmp_path):
    model = load_model(image_model)
    with pytest.warns(UserWarning, match="ArcGIS Pro cannot run it"):
        emd_path = model.save(tmp_path / "plain", save_inference_file=False)
    assert not (emd_path.parent / INFERENCE_FUNCTION).exists()
    assert "InferenceFunction" not in json.loads(emd_path.read_text())  # it names no missing file
    assert load_model(emd_path).config == model.config
    with zipfile.ZipFile(emd_path.with_suffix(".dlpk")) as archive:
        assert INFERENCE_FUNCTION not in archive.namelist()


def test_the_file_is_installed_with_the_package():
    """It is a module of a package that pyproject's package discovery finds, so every install
    (wheel or editable) carries it."""
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(str(ROOT), include=config["packages"]["find"]["include"])
    assert "toolkit.arcgis_pro" in found
    assert inference_function_path() == ROOT / "toolkit" / "arcgis_pro" / INFERENCE_FUNCTION
    assert inference_function_path().is_file()


# --- driven as Pro drives it -----------------------------------------------------------------------


def test_footprint_model_in_pro_gives_the_class_values_of_predict(footprint_model, atlanta_scene, tmp_path):
    emd_path = unpack(footprint_model, tmp_path / "unpacked")
    run = run_in_pro(emd_path, atlanta_scene)
    params = {p["name"]: p for p in run["params"]}
    assert [p["name"] for p in run["params"][:3]] == ["raster", "model", "device"]
    assert params["padding"]["value"] == 16 and params["batch_size"]["value"] == 4  # Esri's default
    assert params["threshold"]["value"] == 0.5 and "direction" not in params
    config = run["config"]
    assert config == {"extractBands": (0,), "padding": 16, "tx": 64, "ty": 64, "fixedTileSize": 1,
                      "inheritProperties": 4 | 8, "inputMask": True}
    info = run["info"]
    assert info["bandCount"] == 1 and info["pixelType"] == "u1"
    table = json.loads(info["rasterAttributeTable"])
    emd = json.loads(emd_path.read_text())
    assert [(f["attributes"]["Value"], f["attributes"]["Class"],
             [f["attributes"][k] for k in ("Red", "Green", "Blue")]) for f in table["features"]] == \
        [(c["Value"], c["Name"], c["Color"]) for c in emd["Classes"]]

    model = load_model(emd_path)
    values = [c["Value"] for c in emd["Classes"]]
    scores = toolkit_on_blocks(run, model.predict)
    expected = classes_of(np.nan_to_num(scores, nan=-1.0), values)
    # the blend is summed in another order here: only a score within float error of the
    # threshold may fall on the other side of it
    differ = run["output"][0] != expected
    assert differ.mean() < 1e-3 and (np.abs(scores.max(axis=0)[differ] - 0.5) < 1e-5).all()
    assert run["output_mask"].all()  # every pixel of the raster is data
    assert not run["beyond_mask"][:, run["shape"][0]:].any()  # past the edge: nodata
    assert 0 < (run["output"] > 0).mean() < 1  # real footprints and background


def test_footprint_model_without_padding_matches_predict_raster(footprint_model, atlanta, tmp_path):
    """With padding 0 Pro's tiles are the model's chips, as predict_raster's windows on a raster
    whose sides are multiples of the chip: the same class raster."""
    raster = clip_raster(atlanta["image"], tmp_path / "part.tif", window=Window(64, 128, 192, 128))
    run = run_in_pro(unpack(footprint_model, tmp_path / "unpacked"), raster, padding=0, batch_size=4)
    assert (run["config"]["tx"], run["config"]["ty"]) == (128, 128)  # 2 x 2 chips a block
    out = load_model(footprint_model).predict_raster(raster, tmp_path / "classes.tif", padding=0,
                                                     threshold=0.5, progress=False)
    with rasterio.open(out) as src:
        assert np.array_equal(run["output"], src.read())


def test_image_model_in_pro_gives_the_values_of_predict(image_model, rotterdam_ms, tmp_path):
    emd_path = unpack(image_model, tmp_path / "unpacked")
    run = run_in_pro(emd_path, rotterdam_ms, batch_size=2)
    assert run["config"]["extractBands"] == (0, 1, 2, 3)
    assert (run["config"]["tx"], run["config"]["ty"]) == (2 * 32, 32)  # 1 x 2 chips a block
    assert run["info"]["bandCount"] == 1 and run["info"]["pixelType"] == "f4"
    assert "rasterAttributeTable" not in run["info"]

    from toolkit import Pix2Pix as Loader

    expected = toolkit_on_blocks(run, Loader.from_model(emd_path).predict)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(run["output"], expected, rtol=1e-5, atol=1e-3)
    assert run["output_mask"].all() and run["output"].std() > 0


@pytest.mark.parametrize("convert_to", ["b", "a"])
def test_cyclegan_in_pro_runs_the_direction_asked(cyclegan_model, rotterdam, rotterdam_green, work,
                                                  convert_to, tmp_path):
    emd_path = unpack(cyclegan_model, tmp_path / "unpacked")
    if convert_to == "b":  # domain A: the panchromatic scene
        raster = clip_raster(rotterdam["panchromatic_1"], tmp_path / "pan.tif", window=Window(0, 300, 90, 70))
        run = run_in_pro(emd_path, raster)  # the default direction shown to the user
    else:
        raster = rotterdam_green
        run = run_in_pro(emd_path, raster, direction="BtoA")
    params = {p["name"]: p for p in run["params"]}
    assert params["direction"]["value"] == "AtoB" and tuple(params["direction"]["domain"]) == ("AtoB", "BtoA")
    assert params["tile_size"]["value"] == 64  # the toolkit's models take any chip size
    assert run["config"]["extractBands"] == (0,) and run["info"]["pixelType"] == "f4"

    model = load_model(emd_path)
    expected = toolkit_on_blocks(run, lambda x: model.predict(x, convert_to=convert_to))
    # the raster function runs OpenVINO, predict PyTorch: equal within the backends' 1e-4
    np.testing.assert_allclose(run["output"], expected, rtol=1e-4, atol=1e-3)
    other = toolkit_on_blocks(run, lambda x: model.predict(x, convert_to="a" if convert_to == "b" else "b"))
    assert not np.allclose(run["output"], other, rtol=1e-3, atol=1e-2)  # the direction matters


def test_initialize_takes_the_emd_json_text_and_nodata_stays_nodata(image_model, rotterdam_ms, tmp_path):
    """Pro may pass the .emd's JSON text instead of its path: the function finds the weights
    beside itself. Masked input pixels come back masked (output_mask 0)."""
    emd_path = unpack(image_model, tmp_path / "unpacked")
    function = raster_function_class(emd_path)()
    function.initialize(model=emd_path.read_text(), device=-1)
    scalars = {p["name"]: p.get("value") for p in function.getParameterInfo() if p["dataType"] != "raster"}
    config = function.getConfiguration(**scalars | {"batch_size": 1})
    kwargs = function.updateRasterInfo(output_info={"bandCount": 4, "pixelType": "f8"})
    pixel_type = kwargs["output_info"]["pixelType"]
    _, _, pixels, mask = next(pro_blocks(rotterdam_ms, config))
    mask[:, 20:30, 25:40] = 0  # a hole of nodata in the block's middle
    result = function.updatePixels((0, 0), (1, 32, 32), {"pixelType": pixel_type}, raster_pixels=pixels,
                                   raster_mask=mask)
    hole = ~mask[0, 16:48, 16:48].astype(bool)
    assert hole.any() and not result["output_mask"][0][hole].any() and result["output_mask"][0][~hole].all()
    assert (result["output_pixels"][0][hole] == 0).all()


def test_bad_arguments_are_named(footprint_model, tmp_path):
    function = raster_function_class(unpack(footprint_model, tmp_path / "unpacked"))()
    with pytest.raises(ValueError, match="model must be an .emd file or its JSON text"):
        function.initialize(model="not json", device=-1)
    function.initialize(model=str(tmp_path / "unpacked" / footprint_model.name), device=-1)
    with pytest.raises(ValueError, match="padding must lie in 0..31"):
        function.getConfiguration(padding=32)
    with pytest.raises(ValueError, match="threshold must lie in 0..1"):
        function.getConfiguration(threshold=2)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        function.getConfiguration(batch_size=0)


def test_test_time_augmentation_matches_predict_with_tta(image_model, rotterdam_ms, tmp_path):
    emd_path = unpack(image_model, tmp_path / "unpacked")
    function = raster_function_class(emd_path)()
    assert [p["name"] for p in function.getParameterInfo()] == ["raster", "model", "device"]  # no model yet
    function.initialize(model=str(emd_path), device=-1)
    config = function.getConfiguration(padding=8, test_time_augmentation="True", batch_size=1)
    assert (config["padding"], config["tx"], config["ty"]) == (8, 48, 48)
    kwargs = function.updateRasterInfo(output_info={})
    _, _, pixels, mask = next(pro_blocks(rotterdam_ms, config))
    result = function.updatePixels((0, 0), (1, 48, 48), {"pixelType": kwargs["output_info"]["pixelType"]},
                                   raster_pixels=pixels, raster_mask=mask)
    x = pixels.astype(np.float64)
    x[:, ~mask.astype(bool).all(axis=0)] = np.nan
    expected = load_model(emd_path).predict(x, tta=True)[:, 8:56, 8:56]
    np.testing.assert_allclose(result["output_pixels"], expected, rtol=1e-5, atol=1e-3)


NO_FASTAI = """
import importlib.abc, json, sys
import numpy as np

class NoFastai(importlib.abc.MetaPathFinder):  # as in ArcGIS Pro's Python: fastai 1 or none
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("fastai", "fastcore"):
            raise ModuleNotFoundError(f"No module named {name!r} (made unimportable by the test)")

sys.meta_path.insert(0, NoFastai())
emd, raster, out = sys.argv[1:4]
import importlib.util
spec = importlib.util.spec_from_file_location("rf", sys.argv[4])
module = importlib.util.module_from_spec(spec); sys.modules["rf"] = module; spec.loader.exec_module(module)
function = module.ArcGISImageTranslation()
function.initialize(model=emd, device=-1)
scalars = {p["name"]: p.get("value") for p in function.getParameterInfo() if p["dataType"] != "raster"}
config = function.getConfiguration(**scalars)
info = function.updateRasterInfo(output_info={})["output_info"]
p, tx, ty = config["padding"], config["tx"], config["ty"]
import rasterio
with rasterio.open(raster) as src:
    block = src.read([b + 1 for b in config["extractBands"]], window=((0, ty + 2 * p), (0, tx + 2 * p)))
pixels = function.updatePixels((0, 0), (1, ty, tx), {"pixelType": info["pixelType"]}, raster_pixels=block)
import toolkit
classes = toolkit.predict_raster(emd, raster, out, threshold=0.5, progress=False)
footprints = toolkit.vectorize(classes)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("fastai", "fastcore"))
print(json.dumps({"block": list(pixels["output_pixels"].shape), "classes": int((pixels["output_pixels"] > 0).sum()),
                  "polygons": len(footprints), "epsg": footprints.crs.to_epsg(), "fastai_modules": loaded}))
"""


def test_inference_runs_without_fastai(footprint_model, atlanta_scene, tmp_path):
    """ArcGIS Pro's Python holds arcgis.learn's fastai 1 (or no fastai): the raster function,
    predict_raster of a saved model and vectorize run with fastai and fastcore unimportable."""
    import subprocess

    emd_path = unpack(footprint_model, tmp_path / "unpacked")
    script = tmp_path / "no_fastai.py"
    script.write_text(NO_FASTAI)
    result = subprocess.run([sys.executable, str(script), str(emd_path), str(atlanta_scene),
                             str(tmp_path / "classes.tif"), str(emd_path.parent / INFERENCE_FUNCTION)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["fastai_modules"] == []
    assert report["block"] == [1, 64, 64] and report["classes"] > 0
    expected = load_model(footprint_model).predict_raster(atlanta_scene, tmp_path / "with_fastai.tif",
                                                           threshold=0.5, progress=False)
    with rasterio.open(tmp_path / "classes.tif") as a, rasterio.open(expected) as b:
        assert np.array_equal(a.read(), b.read()) and a.crs == b.crs and a.transform == b.transform
    assert report["polygons"] > 0 and report["epsg"] == b.crs.to_epsg()

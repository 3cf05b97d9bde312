"""toolkit.inference.predict_raster on the real Atlanta scene."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from toolkit import Pix2Pix, export_training_data, prepare_data
from toolkit import inference as inference_module
from toolkit.inference import hann_window, reflect_index


class PerPixel(torch.nn.Module):
    """A stand-in generator that works pixel by pixel, so whole-raster output is known exactly."""

    def forward(self, x):
        return torch.tanh(3 * x[:, :1])


@pytest.fixture(scope="module")
def mask_model(atlanta, tmp_path_factory):
    chips = tmp_path_factory.mktemp("inference") / "chips"
    export_training_data(atlanta["image"], chips, in_class_data=atlanta["footprints"], tile_size=64,
                         progress=False)
    model = Pix2Pix(prepare_data(chips, batch_size=8), ngf=8, ndf=8)
    model.fit(1, checkpoint=False)
    return model


def per_pixel(model):
    """A copy of ``model`` whose generator is :class:`PerPixel` (the shared model stays as it is)."""
    clone = copy.copy(model)
    clone.generator = PerPixel()
    return clone


def expected_per_pixel(model, raster):
    with rasterio.open(raster) as src:
        raw, nodata = src.read(), src.nodata
    valid = raw != nodata if nodata is not None else np.ones(raw.shape, bool)
    out = model.to_target_units(np.tanh(3 * model.input_norm.normalize(raw, valid)))
    out[:, ~valid.any(axis=0)] = np.nan
    return out


def crop(atlanta, tmp_path, window: Window, name="crop.tif", fill=None):
    with rasterio.open(atlanta["image"]) as src:
        data = src.read(window=window)
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": src.window_transform(window)}
    if fill is not None:
        data[fill] = 0  # Atlanta's nodata value
    path = tmp_path / name
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_output_has_the_inputs_grid(mask_model, atlanta, tmp_path):
    out = mask_model.predict_raster(atlanta["image"], tmp_path / "scores.tif", progress=False)
    with rasterio.open(atlanta["image"]) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        assert (dst.count, dst.dtypes[0]) == (mask_model.config["n_bands_out"], "float32")
        assert np.isnan(dst.nodata) and dst.profile["tiled"] and dst.compression.value == "DEFLATE"
        scores = dst.read()
    assert np.isfinite(scores).all() and 0 <= scores.min() and scores.max() <= 1


def test_threshold_writes_a_class_raster(mask_model, atlanta, tmp_path):
    out = mask_model.predict_raster(atlanta["image"], tmp_path / "classes.tif", threshold=0.5,
                                    progress=False)
    with rasterio.open(out) as dst:
        assert (dst.count, dst.dtypes[0], dst.nodata) == (1, "uint8", 255)
        assert set(np.unique(dst.read())) <= {0, 1}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mask_model.predict_raster(atlanta["image"], out, progress=False)
    mask_model.predict_raster(atlanta["image"], out, threshold=0.9, overwrite=True, progress=False)


@pytest.mark.parametrize("window, padding", [
    (Window(0, 0, 900, 900), None),  # the whole scene
    (Window(13, 101, 700, 333), 0),  # odd sizes, no overlap
    (Window(200, 300, 50, 41), 10),  # smaller than one chip
    (Window(0, 0, 257, 600), 31),  # widest overlap
])
def test_blending_is_exact_everywhere(mask_model, atlanta, tmp_path, window, padding):
    raster = crop(atlanta, tmp_path, window)
    model = per_pixel(mask_model)
    out = model.predict_raster(raster, tmp_path / "out.tif", padding=padding, batch_size=3, progress=False)
    with rasterio.open(out) as dst:
        got = dst.read()
    np.testing.assert_allclose(got, expected_per_pixel(model, raster), rtol=1e-5, atol=1e-5)


def test_input_nodata_comes_back_as_nodata(mask_model, atlanta, tmp_path):
    hole = (slice(None), slice(100, 180), slice(0, 260))  # a nodata block at the edge
    raster = crop(atlanta, tmp_path, Window(0, 0, 500, 400), fill=hole)
    model = per_pixel(mask_model)
    out = model.predict_raster(raster, tmp_path / "out.tif", progress=False)
    with rasterio.open(out) as dst:
        got = dst.read()
    assert np.isnan(got[hole]).all()
    assert np.isfinite(np.delete(got, np.s_[100:180], axis=1)).all()
    np.testing.assert_allclose(got, expected_per_pixel(model, raster), rtol=1e-5, atol=1e-5)


def test_wrong_band_count_and_resolution(mask_model, rotterdam, atlanta, tmp_path):
    with pytest.raises(ValueError, match="has 4 band.*trained on 1"):
        mask_model.predict_raster(rotterdam["multispectral_1"], tmp_path / "x.tif", progress=False)
    coarse = tmp_path / "coarse.tif"
    with rasterio.open(atlanta["image"]) as src:
        data = src.read(out_shape=(1, 225, 225))
        profile = src.profile | {"width": 225, "height": 225,
                                 "transform": src.transform @ rasterio.Affine.scale(4)}
    with rasterio.open(coarse, "w", **profile) as dst:
        dst.write(data)
    with pytest.warns(UserWarning, match="trained on 0.5"):
        mask_model.predict_raster(coarse, tmp_path / "coarse_out.tif", progress=False)
    assert not list(tmp_path.glob(".x.*"))


@pytest.mark.parametrize("arguments, message", [
    ({"batch_size": -3}, "batch_size must be a whole number >= 1"),   # was: a constant raster, exit 0
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
    ({"batch_size": 2.5}, "batch_size must be a whole number >= 1"),
    ({"threshold": float("nan")}, "threshold must be a number in 0..1"),  # was: all background
    ({"threshold": float("inf")}, "threshold must be a number in 0..1"),
    ({"threshold": -0.1}, "threshold must be a number in 0..1"),
    ({"padding": 3.5}, "padding must be a whole number of pixels"),
])
def test_out_of_range_settings_are_refused_before_any_work(mask_model, atlanta, tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        mask_model.predict_raster(atlanta["image"], tmp_path / "out.tif", progress=False, **arguments)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("theirs_is_toolkit_output, overwrite", [(False, False), (False, True), (True, False)])
def test_a_file_written_meanwhile_at_the_output_name_is_never_replaced(mask_model, atlanta, tmp_path, monkeypatch,
                                                                        theirs_is_toolkit_output, overwrite):
    """The output name was free (or the toolkit's) when the prediction began; another program
    (or a second run) writes that name while it runs. Before, the final os.replace destroyed that
    file and both reported success; now the move refuses, and their file stays byte for byte."""
    out = tmp_path / "out.tif"
    if overwrite:  # an earlier prediction of ours, which overwrite=True may replace
        mask_model.predict_raster(atlanta["image"], out, progress=False)
    theirs = mask_model.predict_raster(atlanta["image"], tmp_path / "theirs.tif", progress=False) \
        if theirs_is_toolkit_output else None
    original = inference_module.write_in_order

    def another_writer_meanwhile(dst, blocks):
        original(dst, blocks)
        out.unlink(missing_ok=True)
        if theirs is not None:
            shutil.copyfile(theirs, out)
        else:
            out.write_bytes(b"someone else's file")

    monkeypatch.setattr(inference_module, "write_in_order", another_writer_meanwhile)
    with pytest.raises(FileExistsError, match="appeared while the toolkit was writing it"):
        mask_model.predict_raster(atlanta["image"], out, progress=False, overwrite=overwrite)
    assert out.read_bytes() == (theirs.read_bytes() if theirs is not None else b"someone else's file")
    assert not list(tmp_path.glob(".out.*"))  # no temporary left


def test_a_failure_leaves_no_output(mask_model, atlanta, tmp_path, monkeypatch):
    calls = []

    def failing(x):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("device lost")
        return np.zeros((len(x), mask_model.config["n_bands_out"], *x.shape[-2:]), np.float32)

    monkeypatch.setattr(mask_model, "_generate", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        mask_model.predict_raster(atlanta["image"], tmp_path / "out.tif", progress=False, backend="torch")
    assert list(tmp_path.iterdir()) == []


def test_hann_window_and_reflection():
    w = hann_window(8, 6)
    assert w.shape == (8, 6) and (w > 0).all() and w[3:5, 2:4].min() == w.max()
    np.testing.assert_array_equal(reflect_index(np.arange(-3, 8), 5), [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1])
    np.testing.assert_array_equal(reflect_index(np.arange(-2, 3), 1), [0, 0, 0, 0, 0])


MEMORY_PROBE = textwrap.dedent("""
    import json, sys, torch
    import toolkit.raster
    from toolkit import Pix2Pix
    # GDAL's block cache is capped (64 MB by default) but fills up to that cap; a small cap here
    # keeps the measurement about predict_raster's own buffers.
    toolkit.raster.STREAMING_GDAL_CACHE_BYTES = 8 * 2**20
    class PerPixel(torch.nn.Module):
        def forward(self, x):
            return torch.tanh(3 * x[:, :1])
    model = Pix2Pix.from_model(sys.argv[1])
    model.generator = PerPixel()
    model.predict_raster(sys.argv[2], sys.argv[3], progress=False)
    with open("/proc/self/status") as f:
        print(json.dumps(next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024))
""")


def test_peak_memory_does_not_grow_with_the_raster(mask_model, atlanta, tmp_path):
    emd = mask_model.save(tmp_path / "model", compute_metrics=False)
    with rasterio.open(atlanta["image"]) as src:
        tile, profile = src.read(), src.profile
    big = tmp_path / "big.tif"  # 5 x 5 Atlanta tiles: 4500 x 4500 px, 25 times the pixels
    with rasterio.open(big, "w", **(profile | {"width": 4500, "height": 4500, "tiled": True,
                                                "blockxsize": 256, "blockysize": 256})) as dst:
        for i in range(5):
            for j in range(5):
                dst.write(tile, window=Window(j * 900, i * 900, 900, 900))
    peaks = {}
    for name, raster in (("small", atlanta["image"]), ("big", big)):
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(emd), str(raster),
                                 str(tmp_path / f"{name}_out.tif")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        peaks[name] = json.loads(result.stdout.strip().splitlines()[-1])
    # Holding the big raster's input and float32 output would take 39 + 77 MB more.
    assert peaks["big"] - peaks["small"] < 25, peaks


def test_compute_metrics_reports_the_pixel_scores(mask_model):
    from toolkit.metrics import pixel_scores
    from toolkit.vector import footprint_mask

    metrics = mask_model.compute_metrics()
    preds, truths = [], []
    for pair in mask_model.data.valid_ds.pairs:
        preds.append(footprint_mask(mask_model.predict(pair.input)))
        with rasterio.open(pair.target) as src:
            truths.append(src.read(1) > 0)
    expected = pixel_scores(np.stack(preds), np.stack(truths))
    # predict() runs chips one by one, compute_metrics() in batches: float rounding may flip a
    # pixel whose score is within 1e-7 of the threshold
    for key in ("iou", "f1", "precision", "recall", "accuracy"):
        assert metrics[key] == pytest.approx(expected[key], abs=2e-3), key


# --- test-time augmentation (tta=True) ---------------------------------------------------------

class SymmetricConv(torch.nn.Module):
    """A stand-in generator that commutes with every flip and 90-degree rotation, yet mixes
    neighbouring pixels: a 3x3 convolution whose kernel has the square's symmetries (corner,
    edge and centre weights; zero padding is symmetric too), then tanh."""

    def __init__(self, bands_in: int, bands_out: int):
        super().__init__()
        seed = torch.Generator().manual_seed(0)
        corner, edge, centre = torch.randn(3, bands_out, bands_in, 1, 1, generator=seed)
        pattern = torch.tensor([[0, 1, 0], [1, 2, 1], [0, 1, 0]])
        self.kernel = torch.where(pattern == 0, corner, torch.where(pattern == 1, edge, centre))

    def forward(self, x):
        return torch.tanh(torch.nn.functional.conv2d(x, self.kernel.to(x.dtype), padding=1))


class Recording(torch.nn.Module):
    """:class:`PerPixel` that records the batch shapes it is given."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return torch.tanh(3 * x[:, :1])


def dihedral_means(model, x: np.ndarray) -> np.ndarray:
    """The mean of the model's outputs for the transforms of one normalised chip ``x``, each
    turned back, written out independently of the toolkit: flips first, then rotations (the
    same group elements as the toolkit's rotations-then-flip). 8 for a square chip; otherwise
    identity, 180 degrees, and the left-right and up-down flips."""
    if x.shape[1] == x.shape[2]:
        pairs = [(lambda a, k=k: np.rot90(a, k, axes=(1, 2)), lambda a, k=k: np.rot90(a, -k, axes=(1, 2)))
                 for k in range(4)]
        pairs += [(lambda a, k=k: np.rot90(a[:, :, ::-1], k, axes=(1, 2)),
                   lambda a, k=k: np.rot90(a, -k, axes=(1, 2))[:, :, ::-1]) for k in range(4)]
    else:
        same = lambda a: a  # noqa: E731
        half = lambda a: a[:, ::-1, ::-1]  # noqa: E731
        lr = lambda a: a[:, :, ::-1]  # noqa: E731
        ud = lambda a: a[:, ::-1, :]  # noqa: E731
        pairs = [(same, same), (half, half), (lr, lr), (ud, ud)]
    outs = [back(model.generate(np.ascontiguousarray(there(x))[np.newaxis])[0]) for there, back in pairs]
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("generator", [lambda m: PerPixel(), lambda m: SymmetricConv(
    m.config["n_bands_in"], m.config["n_bands_out"])], ids=["per_pixel", "symmetric_conv"])
def test_tta_changes_nothing_for_a_symmetric_generator(mask_model, atlanta, tmp_path, generator):
    model = copy.copy(mask_model)
    model.generator = generator(model)
    raster = crop(atlanta, tmp_path, Window(13, 101, 150, 97))
    with rasterio.open(raster) as src:
        data = src.read()
    for chip in (data[:, :64, :64], data[:, :50, :70]):  # 8 transforms, then the 4 of a non-square chip
        plain = model.predict(chip)
        assert np.abs(plain - plain[:, ::-1, ::-1]).max() > 1e-2  # the image itself is not symmetric
        np.testing.assert_allclose(model.predict(chip, tta=True), plain, rtol=0, atol=1e-6)
    outputs = {}
    for tta in (False, True):
        out = model.predict_raster(raster, tmp_path / f"tta_{tta}.tif", padding=8, batch_size=3, tta=tta,
                                   progress=False)
        with rasterio.open(out) as dst:
            outputs[tta] = dst.read()
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=0, atol=1e-6)


def test_tta_is_the_mean_of_the_transformed_back_outputs(mask_model, tmp_path):
    from toolkit.data.chips import read_chip
    from toolkit.stats import band_validity

    chip = mask_model.data.valid_ds.pairs[0].input
    data, nodata = read_chip(chip)
    valid = band_validity(data, nodata)
    assert valid.all()
    x = mask_model.input_norm.normalize(data, valid)
    got = mask_model.predict(chip, tta=True)
    np.testing.assert_allclose(got, mask_model.to_target_units(dihedral_means(mask_model, x)), rtol=0, atol=1e-5)
    # a trained network is not symmetric: the augmentation does change its output
    assert np.abs(got - mask_model.predict(chip)).max() > 1e-3
    # a non-square chip: the 4 transforms that keep its shape
    part = data[:, :40, :64]
    np.testing.assert_allclose(mask_model.predict(part, tta=True),
                               mask_model.to_target_units(dihedral_means(mask_model, x[:, :40, :64])),
                               rtol=0, atol=1e-5)
    # one window, no overlap: predict_raster's output is that of predict
    with rasterio.open(chip) as src:
        assert (src.width, src.height) == (64, 64)
    out = mask_model.predict_raster(chip, tmp_path / "one_window.tif", padding=0, tta=True, progress=False)
    with rasterio.open(out) as dst:
        np.testing.assert_allclose(dst.read(), got, rtol=0, atol=1e-5)


def test_predict_raster_with_tta_keeps_the_grid_and_nodata(mask_model, atlanta, tmp_path):
    hole = (slice(None), slice(100, 180), slice(0, 260))  # a nodata block at the edge
    raster = crop(atlanta, tmp_path, Window(0, 0, 300, 230), fill=hole)
    out = mask_model.predict_raster(raster, tmp_path / "tta.tif", tta=True, batch_size=5, progress=False)
    plain = mask_model.predict_raster(raster, tmp_path / "plain.tif", progress=False)
    with rasterio.open(raster) as src, rasterio.open(out) as dst, rasterio.open(plain) as ref:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height, dst.count) == (src.width, src.height, mask_model.config["n_bands_out"])
        assert dst.dtypes[0] == "float32" and np.isnan(dst.nodata)
        got, without = dst.read(), ref.read()
    assert np.isnan(got[hole]).all()
    rest = np.delete(got, np.s_[100:180], axis=1)
    assert np.isfinite(rest).all() and 0 <= rest.min() and rest.max() <= 1
    assert np.abs(np.nan_to_num(got - without)).max() > 1e-3  # tta did run
    classes = mask_model.predict_raster(raster, tmp_path / "classes.tif", threshold=0.5, tta=True,
                                        progress=False)
    with rasterio.open(classes) as dst:
        assert (dst.count, dst.dtypes[0], dst.nodata) == (1, "uint8", 255)
        assert (dst.read(1)[100:180, :260] == 255).all()


@pytest.mark.parametrize("chip_size, variants", [(64, 8), ([64, 48], 4)])
def test_tta_runs_every_variant_of_a_batch_of_windows_in_one_pass(mask_model, atlanta, tmp_path,
                                                                   chip_size, variants):
    raster = crop(atlanta, tmp_path, Window(0, 0, 200, 130))
    model = copy.copy(mask_model)
    model.config = dict(mask_model.config, chip_size=chip_size)  # [64, 48]: 64 wide, 48 high
    shapes = {}
    for tta in (False, True):
        model.generator = Recording()
        out = model.predict_raster(raster, tmp_path / f"tta_{tta}.tif", batch_size=3, tta=tta,
                                   overwrite=True, progress=False, backend="torch")  # the recorded forward
        shapes[tta] = model.generator.shapes
        with rasterio.open(out) as dst:
            np.testing.assert_allclose(dst.read(), expected_per_pixel(model, raster), rtol=1e-5, atol=1e-5)
    assert {shape[2:] for shape in shapes[False]} == {(48 if variants == 4 else 64, 64)}
    assert shapes[True] == [(variants * n, *rest) for n, *rest in shapes[False]]

"""The ``toolkit`` command: the round trip export -> train -> predict -> vectorize on the real
Atlanta sample, in separate processes as a shell script runs it; errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.windows import Window

from toolkit.cli import main
from toolkit.raster import clip_raster


def toolkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def result(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_round_trip_on_the_atlanta_sample(atlanta, tmp_path):
    chips, model, scene = tmp_path / "chips", tmp_path / "models" / "buildings", atlanta["image"]
    exported = result(toolkit("export", str(scene), str(chips), "--in-class-data", str(atlanta["footprints"]),
                              "--tile-size", "64", "--contour-width", "2", cwd=tmp_path))
    assert exported["metadata_format"] == "Classified_Tiles" and exported["chips"] > 100

    info = result(toolkit("info", str(chips), cwd=tmp_path))
    assert (info["dataset_type"], info["bands_in"], info["bands_out"]) == ("Classified_Tiles", 1, 2)

    trained = result(toolkit("train", str(chips), "--out", str(model), "--epochs", "1", "--ngf", "8",
                             "--ndf", "8", "--batch-size", "16", "--class-balance", "--checkpoint", "all",
                             "--tensorboard", "--lambda-l1", "50", "--norm", "instance", cwd=tmp_path))
    assert Path(trained["dlpk"]).is_file() and "iou" in trained["metrics"]
    work = model.parent / "buildings_work"
    assert list((work / "checkpoints").glob("pix2pix-*_epoch0.pth"))
    assert list((work / "training_log").glob("*/events.out.tfevents.*"))
    assert json.loads((model / "buildings.emd").read_text())["ModelType"] == "Pix2Pix"
    described = result(toolkit("info", trained["dlpk"], cwd=tmp_path))
    assert (described["model_type"], described["epochs_trained"]) == ("Pix2Pix", 1)
    assert (described["config"]["lambda_l1"], described["config"]["norm"]) == (50.0, "instance")

    prediction = tmp_path / "prediction.tif"
    result(toolkit("predict", trained["dlpk"], str(scene), str(prediction), "--padding", "16", cwd=tmp_path))
    with rasterio.open(scene) as src, rasterio.open(prediction) as dst:
        assert (dst.crs, dst.transform, dst.width, dst.height) == (src.crs, src.transform, src.width, src.height)
        assert dst.count == 2 and dst.descriptions[1] == "boundary"

    # the same on a local Dask cluster of two worker processes
    on_cluster = tmp_path / "prediction_dask.tif"
    result(toolkit("predict", trained["dlpk"], str(scene), str(on_cluster), "--padding", "16", "--workers", "2",
                   cwd=tmp_path))
    with rasterio.open(prediction) as one, rasterio.open(on_cluster) as two:
        np.testing.assert_allclose(two.read(), one.read(), rtol=1e-5, atol=1e-6)

    polygons = result(toolkit("vectorize", str(prediction), str(tmp_path / "footprints.gpkg"),
                              "--threshold", "0.3", cwd=tmp_path))
    found = gpd.read_file(polygons["out_gpkg"])
    assert len(found) == polygons["polygons"] and found.crs == gpd.read_file(atlanta["footprints"]).to_crs(
        rasterio.open(scene).crs).crs

    # a second predict does not replace the output unless told, and never an input
    again = toolkit("predict", trained["dlpk"], str(scene), str(prediction), cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.startswith("toolkit: error: ")
    assert "overwrite" in again.stderr and "Traceback" not in again.stderr
    assert toolkit("predict", trained["dlpk"], str(scene), str(scene), "--overwrite", cwd=tmp_path).returncode == 1

    # several scenes into a folder, one <scene name>.tif each, equal to the one-scene prediction
    parts = [clip_raster(scene, tmp_path / f"part{i}.tif", window=Window(300 * i, 0, 300, 300)) for i in (0, 1)]
    folder = tmp_path / "predictions"
    folder.mkdir()
    many = result(toolkit("predict", trained["dlpk"], *map(str, parts), str(folder), "--padding", "16", cwd=tmp_path))
    assert many["out_rasters"] == [str(folder / "part0.tif"), str(folder / "part1.tif")]
    one = result(toolkit("predict", trained["dlpk"], str(parts[1]), str(tmp_path / "one.tif"), "--padding", "16",
                         cwd=tmp_path))
    with rasterio.open(one["out_raster"]) as a, rasterio.open(folder / "part1.tif") as b:
        assert (a.crs, a.transform) == (b.crs, b.transform)
        np.testing.assert_array_equal(a.read(), b.read())


def test_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("toolkit: error: ") and str(tmp_path / "missing") in err and err.count("\n") == 1
    try:
        main(["train", str(tmp_path)])  # --out is required: a usage error
    except SystemExit as exit:
        assert exit.code == 2
    else:
        raise AssertionError("argparse did not exit")
    assert "--out" in capsys.readouterr().err
    try:
        main(["export", "--help"])
    except SystemExit as exit:
        assert exit.code == 0
    usage = capsys.readouterr().out
    assert "--tile-size" in usage and "--contour-width" in usage and "--additional-input-raster" in usage


def test_the_installed_command():
    command = Path(sys.executable).parent / "toolkit"  # [project.scripts], installed by make test
    run = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and all(c in run.stdout for c in ("export", "train", "predict", "vectorize", "info"))


def test_train_checks_its_output_before_the_first_epoch(rotterdam_pairs, tmp_path, capsys, monkeypatch):
    """--out that cannot be saved to (a folder of the user's) fails before training, not after
    all epochs; a bare --out name is a folder in the current directory; --workers below 1 is
    refused (-1 waited forever, 0 ran in-process without a word)."""
    from toolkit.models.base import TranslationModel

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    fits = []
    monkeypatch.setattr(TranslationModel, "fit", lambda self, *a, **k: fits.append(a))
    assert main(["train", str(rotterdam_pairs), "--out", str(theirs), "--epochs", "1", "--ngf", "8",
                 "--ndf", "8"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("toolkit: error: ") and str(theirs) in error and fits == []  # refused before fit
    assert (theirs / "notes.txt").read_text() == "mine"
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(rotterdam_pairs), "--out", "bare", "--epochs", "1", "--ngf", "8", "--ndf", "8",
                 "--checkpoint", "none"]) == 0
    assert (tmp_path / "bare" / "bare.emd").is_file() and not (tmp_path / "bare_work" / "bare").exists()
    capsys.readouterr()
    for workers in ("-1", "0"):  # a usage error now (every numeric option states its range)
        try:
            main(["predict", str(tmp_path / "bare" / "bare.dlpk"), str(tmp_path / "x.tif"), str(tmp_path / "y.tif"),
                  "--workers", workers])
        except SystemExit as exit:
            assert exit.code == 2
        else:
            raise AssertionError("--workers below 1 was accepted")
        assert "--workers: expected an integer from 1" in capsys.readouterr().err

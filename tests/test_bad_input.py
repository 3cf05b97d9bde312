"""Bad input and faults (issue 22): every numeric option checked at the door, errors as one line
with the cause and the file, SIGTERM handled as Ctrl-C, a failed save that leaves the fit
resumable, bounds on a saved model's .emd, repaired polygons, mixed chip types; on the real
Atlanta and Rotterdam samples."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from shapely.geometry import Polygon

from toolkit import Pix2Pix, export_training_data, load_model, prepare_data, vectorize
from toolkit.cli import Number, _parser, main
from toolkit.raster import clip_raster

BAD = ["0", "-1", "nan", "1000000000"]  # zero, negative, not a number, absurd


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_input")


@pytest.fixture(scope="module")
def footprint_model(atlanta, work) -> dict:
    """A tiny untrained footprint model (ngf 8, 64 px chips, contour class) saved once, a
    crop of the Atlanta scene and a prediction of it: what predict and vectorize run on."""
    torch.manual_seed(0)
    export_training_data(atlanta["image"], work / "chips", in_class_data=atlanta["footprints"],
                         tile_size=64, contour_width=2, progress=False)
    model = Pix2Pix(prepare_data(work / "chips", batch_size=8), ngf=8, ndf=8, working_dir=work / "w")
    model.save(work / "model", compute_metrics=False)
    scene = clip_raster(atlanta["image"], work / "scene.tif", window=Window(0, 0, 192, 160))
    prediction = model.predict_raster(scene, work / "prediction.tif", progress=False)
    return {"model": work / "model" / "model.dlpk", "emd": work / "model" / "model.emd", "scene": scene,
            "prediction": prediction, "chips": work / "chips"}


def run(argv: list[str], capsys) -> tuple[int | None, str, str]:
    """``main(argv)``: (exit code, stdout, stderr); argparse's usage errors exit 2."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- every numeric option at the door ------------------------------------------------------------


def numeric_options() -> list[tuple[str, str, object]]:
    """(command, option, type) of every option of every command that takes a number."""
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    return [(name, action.option_strings[-1], action.type) for name, sub in commands.items()
            for action in sub._actions if action.option_strings and action.type is not None]


def test_every_numeric_option_states_its_range():
    """No option takes a bare int or float: each has a range, so 0, -1, NaN or 1e9 where they
    make no sense is a usage error (exit 2) before any work."""
    options = numeric_options()
    assert len(options) > 25
    bare = [(c, o) for c, o, t in options if not isinstance(t, Number)]
    assert bare == []
    for command, option, kind in options:
        for value in ("nan", "inf"):
            with pytest.raises(Exception):
                kind(value)


def test_the_cli_option_walk(footprint_model, rotterdam_pairs, atlanta, tmp_path, capsys):
    """Each numeric option of each command with zero, a negative value, NaN and 10^9: usage error
    (2), a clear one-line error (1), or success with a sound output; never 0 with a wrong file."""
    fm = footprint_model
    base = {
        "export": lambda out: ["export", str(atlanta["image"]), str(out), "--in-class-data",
                               str(atlanta["footprints"]), "--tile-size", "128"],
        "train": lambda out: ["train", str(rotterdam_pairs), "--out", str(out), "--epochs", "1", "--ngf", "8",
                              "--ndf", "8", "--batch-size", "8", "--checkpoint", "none"],
        "predict": lambda out: ["predict", str(fm["model"]), str(fm["scene"]), str(out)],
        "vectorize": lambda out: ["vectorize", str(fm["prediction"]), str(out)],
    }
    outputs = {"export": "chips", "train": "model", "predict": "out.tif", "vectorize": "out.gpkg"}
    accepted = []
    for i, (command, option, kind) in enumerate(numeric_options()):
        if command == "info":
            continue
        for value in BAD:
            out = tmp_path / f"{i}-{value}" / outputs[command]
            argv = base[command](out)
            if option in argv:  # replace the base's value of this option
                at = argv.index(option)
                argv = argv[:at] + argv[at + 2:]
            code, stdout, stderr = run(argv + [option, value], capsys)
            if code == 2:
                assert "expected" in stderr.splitlines()[-1], stderr
                continue
            accepted.append((command, option, value, code))
            if code == 1:
                lines = stderr.strip().splitlines()
                assert lines[-1].startswith("toolkit: error: ") and "Traceback" not in stderr, stderr
                assert not out.exists()
                continue
            assert code == 0, (command, option, value, stderr[-2000:])
            check_output(command, out, json.loads(stdout))
    # what a walk accepts is only what is a sensible request
    assert {(c, o) for c, o, _, code in accepted if code == 0} <= {
        ("export", "--start-index"), ("export", "--buffer-radius"), ("export", "--rotation-angle"),
        ("export", "--contour-width"), ("train", "--seed"), ("train", "--lambda-l1"), ("train", "--gan-weight"),
        ("train", "--gen-blocks"), ("train", "--early-stopping"), ("predict", "--padding"),
        ("predict", "--threshold"), ("predict", "--timeout"), ("vectorize", "--min-area"),
        ("vectorize", "--simplify-tolerance"), ("vectorize", "--threshold"), ("vectorize", "--boundary-threshold"),
        ("vectorize", "--marker-erosion")}, accepted


def check_output(command: str, out: Path, result: dict) -> None:
    """A successful command's output is complete and sound."""
    if command == "export":
        assert result["chips"] > 0 and any((out / "images").iterdir())
    elif command == "train":
        assert Path(result["dlpk"]).is_file()
    elif command == "predict":
        with rasterio.open(out) as dst:
            values = dst.read()
            assert np.isfinite(values).any() and np.nanmax(values) > np.nanmin(values)  # windows were predicted
    else:
        polygons = gpd.read_file(out)
        assert len(polygons) == result["polygons"] and polygons.crs is not None


def test_python_api_refuses_what_the_cli_refuses(footprint_model, rotterdam_pairs, atlanta, tmp_path):
    data = prepare_data(rotterdam_pairs, batch_size=8)
    for kwargs, match in [({"ngf": 0}, "ngf is 0"), ({"ndf": -1}, "ndf is -1"),
                          ({"lambda_l1": math.nan}, "lambda_l1 is nan"), ({"gan_weight": -1.0}, "gan_weight"),
                          ({"ngf": 10**9}, "ngf is 1000000000")]:
        with pytest.raises(ValueError, match=match):
            Pix2Pix(data, working_dir=tmp_path / "w", **kwargs)
    model = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path / "w")
    for kwargs, match in [({"epochs": 0}, "epochs"), ({"epochs": 2.5}, "epochs"),
                          ({"epochs": 1, "early_stopping": -1}, "early_stopping")]:
        with pytest.raises(ValueError, match=match):
            model.fit(**kwargs)
    assert model.history == []
    prediction = footprint_model["prediction"]
    for kwargs, match in [({"threshold": math.nan}, "threshold"), ({"threshold": 1.5}, "0..1"),
                          ({"min_area": -1}, "min_area"), ({"marker_erosion": 1.5}, "marker_erosion")]:
        with pytest.raises(ValueError, match=match):
            vectorize(prediction, **kwargs)
    with pytest.raises(ValueError, match="contour_width"):
        export_training_data(atlanta["image"], tmp_path / "c", in_class_data=atlanta["footprints"], tile_size=64,
                             contour_width=10**6, progress=False)
    assert not (tmp_path / "c").exists()


# --- one-line errors with the cause -------------------------------------------------------------


def test_errors_name_the_cause(footprint_model, tmp_path, capsys):
    fm = footprint_model
    code, _, err = run(["predict", str(fm["model"]), str(fm["scene"]), str(tmp_path / "a.tif"),
                        "--convert-to", "a"], capsys)
    assert code == 1 and "convert_to" in err and "unexpected keyword" not in err
    assert err.count("\n") == 1

    code, out, err = run(["info", str(fm["scene"])], capsys)  # a raster: described, not "no such folder"
    info = json.loads(out)
    with rasterio.open(fm["scene"]) as src:
        assert code == 0 and info["crs"] == src.crs.to_string() and (info["width"], info["height"]) == (192, 160)


def test_a_full_disk_at_a_checkpoint_is_one_line_with_the_file(rotterdam_pairs, tmp_path, capsys, monkeypatch):
    """fastai wraps a callback's error (``Exception occured in `Checkpoint` ...``); the CLI
    prints the real cause, and a write error without a file name gets the file's."""
    import toolkit.models.checkpoint as checkpoint

    def full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    code, out, err = run(["train", str(rotterdam_pairs), "--out", str(tmp_path / "m"), "--epochs", "1",
                          "--ngf", "8", "--ndf", "8"], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 1 and out == ""
    assert line.startswith("toolkit: error: ") and "No space left on device" in line and "Exception occured" not in line
    assert str(tmp_path / "m_work" / "checkpoints") in line  # the file being written


def test_train_prints_only_its_result_on_stdout(rotterdam_pairs, tmp_path, capsys):
    code, out, err = run(["train", str(rotterdam_pairs), "--out", str(tmp_path / "m"), "--epochs", "1",
                          "--ngf", "8", "--ndf", "8", "--checkpoint", "none"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 1
    assert json.loads(out)["epochs_trained"] == 1
    assert "valid_loss" in err  # fastai's epoch table, on stderr


# --- a failed save after a fit ------------------------------------------------------------------


def test_a_failed_save_leaves_the_fit_resumable(rotterdam_pairs, tmp_path, capsys, monkeypatch):
    import toolkit.models.base as base

    write = base.write_model_folder
    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device", str(tmp_path / "m"))
        return write(*args, **kwargs)

    monkeypatch.setattr(base, "write_model_folder", full)
    argv = ["train", str(rotterdam_pairs), "--out", str(tmp_path / "m"), "--epochs", "2", "--ngf", "8", "--ndf", "8"]
    code, _, err = run(argv, capsys)
    assert code == 1 and "No space left on device" in err and "--resume" in err
    trained = []
    monkeypatch.setattr(base.TranslationModel, "_restore_best",
                        lambda self, state, f=base.TranslationModel._restore_best: trained.append(1) or f(self, state))
    code, out, err = run(argv + ["--resume"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["epochs_trained"] == 2 and Path(result["emd"]).is_file()
    assert "nothing to train" in err and "Epoch" not in err and trained == [1]  # the best epoch, restored
    code, _, err = run(argv + ["--resume", "--overwrite"], capsys)  # saved now: nothing left to resume
    assert code == 1 and "no unfinished fit" in err


# --- SIGTERM --------------------------------------------------------------------------------------


def test_sigterm_is_handled_as_ctrl_c(footprint_model, atlanta, tmp_path):
    """What timeout, SLURM and Kubernetes send: exit 143, nothing half-written left."""
    out = tmp_path / "prediction.tif"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "toolkit", "predict", str(footprint_model["model"]),
                                str(atlanta["image"]), str(out), "--tta", "--batch-size", "1"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".prediction.tif.*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "toolkit: terminated" and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- the .emd's bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("edit, match", [
    (lambda emd: emd.update(ImageHeight=100000), "ImageHeight"),
    (lambda emd: emd["Toolkit"]["config"].update(chip_size=100000), "chip_size"),
    (lambda emd: emd["Toolkit"]["config"].update(n_bands_in=100000), "n_bands_in"),
    (lambda emd: emd["Toolkit"]["target_norm"]["classes"][0].update(Value=70000), "Value"),
    (lambda emd: emd["Toolkit"]["target_norm"]["classes"][0].update(Value=-1), "Value"),
    (lambda emd: emd["Toolkit"]["target_norm"]["classes"][1].update(Value=1), "more than one class"),
])
def test_emd_bounds_are_checked_on_load(footprint_model, tmp_path, edit, match):
    folder = tmp_path / "model"
    shutil.copytree(footprint_model["emd"].parent, folder)
    emd = json.loads((folder / "model.emd").read_text())
    edit(emd)
    (folder / "model.emd").write_text(json.dumps(emd))
    with pytest.raises(ValueError, match=match):
        load_model(folder / "model.emd")


# --- repaired polygons, mixed chips, the TensorBoard folder --------------------------------------


def test_export_repairs_a_self_touching_ring(atlanta, tmp_path):
    """An OpenStreetMap-style ring that touches itself at a point (invalid in GEOS)."""
    footprints = gpd.read_file(atlanta["footprints"]).to_crs(rasterio.open(atlanta["image"]).crs)
    x, y = footprints.geometry.iloc[0].centroid.coords[0]
    bow = Polygon([(x - 20, y - 20), (x + 20, y - 20), (x, y), (x + 20, y + 20), (x - 20, y + 20), (x, y)])
    assert not bow.is_valid
    footprints.loc[0, "geometry"] = bow
    footprints.to_file(tmp_path / "osm.gpkg")
    with pytest.warns(UserWarning, match="1 invalid polygon"):
        summary = export_training_data(atlanta["image"], tmp_path / "chips", in_class_data=tmp_path / "osm.gpkg",
                                       tile_size=128, contour_width=2, progress=False)
    assert summary.num_chips > 0


def test_mixed_chip_types_are_named(rotterdam_pairs, tmp_path):
    chips = tmp_path / "chips"
    shutil.copytree(rotterdam_pairs, chips)
    first = sorted((chips / "images").glob("*.tif"))[0]
    with rasterio.open(first) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(first, "w", **(profile | {"dtype": "float32"})) as dst:
        dst.write(data.astype("float32") / 10000)
    with pytest.warns(UserWarning, match=f"data types.*{first.name}"):
        prepare_data(chips, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alike chips: no warning
        prepare_data(rotterdam_pairs, batch_size=4)


def test_an_unwritable_tensorboard_folder_is_refused_before_training(rotterdam_pairs, tmp_path):
    model = Pix2Pix(prepare_data(rotterdam_pairs, batch_size=8), ngf=8, ndf=8, working_dir=tmp_path / "w")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "training_log").write_text("a file where the log folder goes")
    with pytest.raises(PermissionError, match="TensorBoard log folder"):
        model.fit(1, tensorboard=True, checkpoint=False)
    assert model.history == []

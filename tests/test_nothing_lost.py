"""Nothing lost, whatever the user does (issue 10): outputs never destroy inputs, overwrite
replaces only the toolkit's own output, non-finite pixels never poison the numbers, faults and
permissions are caught before any work. Each test names the case of the issue it covers.

Cases 3 and 10 (model packages, .emd schema) are in test_model_files.py, 7 and 12 (resume,
checkpoints) in test_resume.py, kills at random moments in test_faults.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from toolkit import Pix2Pix, export_training_data, prepare_data, vectorize
from toolkit._fs import atomic_file, atomic_folder
from toolkit.raster import clip_raster


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".old"))


@pytest.fixture(scope="module")
def ms2pan(rotterdam, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lost") / "ms2pan"
    export_training_data(rotterdam["multispectral_1"], out, additional_input_raster=rotterdam["panchromatic_1"],
                         tile_size=64, stride=48, progress=False)
    return out


@pytest.fixture(scope="module")
def model(ms2pan, tmp_path_factory) -> Pix2Pix:
    torch.manual_seed(0)
    data = prepare_data(ms2pan, batch_size=8, seed=0)
    model = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path_factory.mktemp("work"))
    model.fit(1, checkpoint=False)
    return model


# --- case 1: an output folder holding an input ---------------------------------------------------


def test_export_refuses_a_folder_holding_its_input_whatever_overwrite_says(atlanta, tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    scene = scenes / "scene.tif"
    shutil.copy(atlanta["image"], scene)
    (scenes / "notes.txt").write_text("field notes")
    for out in (scenes, tmp_path, scene):
        with pytest.raises(ValueError, match=f"the input {scene}"):
            export_training_data(scene, out, tile_size=300, overwrite=True, progress=False)
    footprints = scenes / "footprints.geojson"
    shutil.copy(atlanta["footprints"], footprints)
    with pytest.raises(ValueError, match="footprints.geojson"):
        export_training_data(atlanta["image"], scenes, in_class_data=footprints, tile_size=300,
                             overwrite=True, progress=False)
    alias = tmp_path / "alias"
    alias.symlink_to(scenes)  # the same folder under another name
    with pytest.raises(ValueError, match="the input"):
        export_training_data(alias / "scene.tif", scenes, tile_size=300, overwrite=True, progress=False)
    assert sorted(p.name for p in scenes.iterdir()) == ["footprints.geojson", "notes.txt", "scene.tif"]
    with rasterio.open(scene) as src:
        assert src.read().shape == (1, 900, 900)


# --- case 2: save over a folder of other files ------------------------------------------------------


def test_save_replaces_only_its_own_model_folder(model, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "report.docx").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(folder, compute_metrics=False)
    with pytest.raises(FileExistsError, match="report.docx"):
        model.save(folder, compute_metrics=False, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["report.docx"]

    emd = model.save(tmp_path / "v1", compute_metrics=False)
    assert (emd.parent / ".toolkit-output.json").is_file()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "v1", compute_metrics=False)
    model.save(tmp_path / "v1", compute_metrics=False, overwrite=True)  # its own: replaced
    (emd.parent / "notes.txt").write_text("added by the user")
    with pytest.raises(FileExistsError, match="notes.txt"):
        model.save(tmp_path / "v1", compute_metrics=False, overwrite=True)
    assert (emd.parent / "notes.txt").read_text() == "added by the user"
    assert Pix2Pix.from_model(emd.parent).config == model.config
    assert leftovers(tmp_path) == []


def test_save_and_working_dir_never_write_into_the_training_chips(model):
    chips = model.data.path
    for target in (chips, chips / "images", chips / "images" / "m", chips.parent):
        with pytest.raises(ValueError, match="the input"):
            model.save(target, compute_metrics=False, overwrite=True)
    inside = Pix2Pix(model.data, ngf=8, ndf=8, working_dir=chips / "images2" / "work")
    with pytest.raises(ValueError, match="working_dir .*images2"):
        inside.fit(1)
    assert not (chips / "images2" / "work").exists()


# --- case 4: non-finite pixels -------------------------------------------------------------------------


def _with_non_finite(src_path: str, dst: Path, *, whole_band: int | None = None) -> Path:
    """The real Rotterdam multispectral scene as float32 with +inf, -inf and NaN pixels."""
    with rasterio.open(src_path) as src:
        data, profile = src.read().astype(np.float32), src.profile | {"dtype": "float32"}
    data[0, 10:20, 10:200] = np.inf
    data[1, 50:60, :] = -np.inf
    data[2, ::7, ::5] = np.nan
    if whole_band is not None:
        data[whole_band] = np.inf
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def test_infinite_pixels_are_left_out_of_statistics_and_batches(rotterdam, tmp_path):
    scene = _with_non_finite(rotterdam["multispectral_1"], tmp_path / "ms_inf.tif")
    out = tmp_path / "chips"
    export_training_data(scene, out, additional_input_raster=rotterdam["panchromatic_1"], tile_size=64,
                         progress=False)
    import json

    stats = json.loads((out / "esri_model_definition.emd").read_text())["AllTilesStats"]
    assert all(np.isfinite(b[k]) for b in stats for k in ("Min", "Max", "Mean", "StdDev"))
    data = prepare_data(out, batch_size=4, seed=0)
    x, y = data.one_batch()
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert x.abs().max() <= 1.0

    model = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path / "work")
    prediction = model.predict_raster(scene, tmp_path / "pred.tif", progress=False)
    with rasterio.open(prediction) as src:
        written = src.read(1)
    with rasterio.open(scene) as src:
        no_data = ~np.isfinite(src.read()).any(axis=0)
    assert np.isnan(written[no_data]).all() and np.isfinite(written[~no_data]).all()


def test_a_band_without_finite_values_is_named(rotterdam, tmp_path):
    scene = _with_non_finite(rotterdam["multispectral_1"], tmp_path / "ms_band.tif", whole_band=3)
    with pytest.raises(ValueError, match=r"ms_band.tif: band\(s\) \[4\] hold no finite"):
        export_training_data(scene, tmp_path / "out", tile_size=64, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_chip_band_without_finite_values_names_the_chip(ms2pan, tmp_path):
    chips = tmp_path / "chips"
    shutil.copytree(ms2pan, chips)
    victim = chips / "images" / "000000003.tif"
    with rasterio.open(victim, "r+") as dst:
        band = dst.read(2)
        dst.write(np.full_like(band, np.inf), 2)
    data = prepare_data(chips, batch_size=4, seed=0)
    ds = next(d for d in (data.train_ds, data.valid_ds) if victim in [p.input for p in d.pairs])
    index = [p.input for p in ds.pairs].index(victim)
    with pytest.raises(ValueError, match=r"000000003.tif: band\(s\) \[2\] hold no finite"):
        ds[index]


# --- case 5: fine-tuning keeps one scaling ------------------------------------------------------------


def test_fine_tuning_trains_with_the_models_scaling(model, rotterdam, tmp_path):
    emd = model.save(tmp_path / "base", compute_metrics=False)
    other = tmp_path / "other"
    export_training_data(rotterdam["multispectral_2"], other, additional_input_raster=rotterdam["panchromatic_2"],
                         tile_size=64, stride=48, progress=False)
    data = prepare_data(other, batch_size=4, seed=0)
    assert data.input_norm.to_dict()["low"] != model.input_norm.to_dict()["low"]  # other statistics

    tuned = Pix2Pix.from_model(emd, data=data, working_dir=tmp_path / "work")
    pair = data.valid_ds.pairs[0]
    with rasterio.open(pair.input) as src:
        raw = src.read()
    seen_in_training = data.valid_ds[0][0].numpy()
    seen_in_prediction = tuned.input_norm.normalize(raw)
    np.testing.assert_array_equal(seen_in_training, seen_in_prediction)
    tuned.fit(1, checkpoint=False)
    again = Pix2Pix.from_model(tuned.save(tmp_path / "tuned", compute_metrics=False))
    assert again.input_norm.to_dict() == model.input_norm.to_dict()

    refit = prepare_data(other, batch_size=4, seed=0)
    with pytest.warns(UserWarning, match="statistics of .*other"):
        adopted = Pix2Pix.from_model(emd, data=refit, normalization="data", working_dir=tmp_path / "work")
    np.testing.assert_array_equal(refit.valid_ds[0][0].numpy(), adopted.input_norm.normalize(raw))


# --- case 6: a folder the user cannot write -----------------------------------------------------------


def _unprivileged() -> list[str]:
    """A command prefix that runs without the power to ignore file permissions: as root (CI),
    drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH with setpriv (util-linux); installed if missing."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "util-linux"], check=True, capture_output=True)
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search", "--"]


def test_read_only_chips_fail_before_any_work(ms2pan, tmp_path):
    chips = tmp_path / "share"
    shutil.copytree(ms2pan, chips)
    for path in [chips, *chips.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)  # a read-only share
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from toolkit import Pix2Pix, prepare_data
        chips = Path({str(chips)!r})
        try:
            (chips / "probe").write_text("x")
            raise SystemExit("permissions are not enforced in this subprocess")
        except PermissionError:
            pass
        data = prepare_data(chips, batch_size=8)
        model = Pix2Pix(data, ngf=8, ndf=8)
        for name, call in [("fit", lambda: model.fit(3)), ("lr_find", lambda: model.lr_find(num_it=5, allow_plot=False)),
                           ("save", lambda: model.save("m", compute_metrics=False))]:
            start = time.perf_counter()
            try:
                call()
                raise SystemExit(name + " did not fail")
            except PermissionError as err:
                assert "working_dir=" in str(err) and str(chips / "models") in str(err), err
                assert time.perf_counter() - start < 2.0, name + " worked before failing"
                assert model.history == [], name
                print(name, "refused:", err)
    """)
    result = subprocess.run([*_unprivileged(), sys.executable, "-c", script], capture_output=True,
                            text=True, timeout=300)
    for path in [chips, *chips.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("refused") == 3
    assert not (chips / "models").exists()


# --- cases 8 and 9: permissions, stale temporaries --------------------------------------------------


def test_outputs_get_the_umask_mode_and_the_umask_is_never_touched(model, atlanta, tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        def no_umask(*args):
            raise AssertionError("the toolkit changed the process umask")

        monkeypatch.setattr(os, "umask", no_umask)
        clipped = clip_raster(atlanta["image"], tmp_path / "clip.tif", bounds=None,
                              window=rasterio.windows.Window(0, 0, 64, 64))
        emd = model.save(tmp_path / "m", compute_metrics=False)
        with atomic_file(tmp_path / "plain.txt") as tmp:
            tmp.write_text("x")
        prediction = model.predict(model.data.valid_ds.pairs[0].input, output=tmp_path / "p.tif")
        assert prediction.shape[0] == 1
    finally:
        monkeypatch.undo()
        os.umask(old)
    for path in (clipped, emd, emd.with_suffix(".pth"), tmp_path / "plain.txt", tmp_path / "p.tif"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert stat.S_IMODE(emd.parent.stat().st_mode) == 0o750


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_a_killed_run_are_removed_on_the_next_write(atlanta, tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale_file = tmp_path / f".clip.tif.{dead}-0123abcd.partial.tif"
    stale_dir = tmp_path / f".chips.{dead}-0123abcd.partial"
    running = tmp_path / f".clip.tif.{alive}-89abcdef.partial.tif"  # a writer still at work
    stale_file.write_bytes(b"half")
    running.write_bytes(b"half")
    (stale_dir / "images").mkdir(parents=True)
    clip_raster(atlanta["image"], tmp_path / "clip.tif", window=rasterio.windows.Window(0, 0, 64, 64))
    assert not stale_file.exists() and running.exists()
    export_training_data(atlanta["image"], tmp_path / "chips", tile_size=300, progress=False)
    assert not stale_dir.exists()
    assert leftovers(tmp_path) == [running.name]


def test_an_old_folder_moved_aside_by_a_killed_run_is_put_back(atlanta, tmp_path):
    chips = tmp_path / "chips"
    export_training_data(atlanta["image"], chips, tile_size=300, progress=False)
    before = sorted(p.relative_to(chips) for p in chips.rglob("*"))
    # killed between moving the old export aside and moving the new one in:
    chips.rename(tmp_path / f".chips.{_dead_pid()}-4567cdef.old")
    (tmp_path / f".chips.{_dead_pid()}-0123abcd.partial" / "images").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="overwrite=True"):  # the old export is back
        export_training_data(atlanta["image"], chips, tile_size=450, progress=False)
    assert sorted(p.relative_to(chips) for p in chips.rglob("*")) == before
    assert leftovers(tmp_path) == []
    export_training_data(atlanta["image"], chips, tile_size=450, overwrite=True, progress=False)
    assert leftovers(tmp_path) == []


def test_a_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "out", overwrite=False, kind="test") as staging:
            (staging / "a.txt").write_text("x")
            raise RuntimeError("fault")
    assert list(tmp_path.iterdir()) == []


# --- case 11: predict, vectorize, predict_raster errors ------------------------------------------------


def test_predict_output_follows_the_predict_raster_rule(model, tmp_path):
    chip = model.data.valid_ds.pairs[0].input
    out = tmp_path / "p.tif"
    model.predict(chip, output=out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.predict(chip, output=out)
    model.predict(chip, output=out, overwrite=True)
    with rasterio.open(out) as src:
        assert src.tags()["TOOLKIT_OUTPUT"] == "predict"
    theirs = tmp_path / "theirs.tif"
    shutil.copy(chip, theirs)
    with pytest.raises(FileExistsError, match="not written by the toolkit"):
        model.predict(chip, output=theirs, overwrite=True)
    with pytest.raises(ValueError, match="the input"):
        model.predict(chip, output=chip, overwrite=True)


def test_clear_errors_for_a_non_raster_and_a_folder_as_output(model, rotterdam, tmp_path):
    text = tmp_path / "not_a_raster.tif"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not_a_raster.tif: not a raster"):
        vectorize(text)
    folder = tmp_path / "outputs"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=f"out_raster {folder} is a folder"):
        model.predict_raster(rotterdam["multispectral_1"], folder, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="the input"):
        model.predict_raster(rotterdam["multispectral_1"], rotterdam["multispectral_1"], overwrite=True,
                             progress=False)
    assert list(folder.iterdir()) == []


def test_write_vector_keeps_the_crs_and_replaces_only_its_own_file(atlanta, tmp_path):
    import geopandas as gpd

    from toolkit import write_vector

    footprints = gpd.read_file(atlanta["footprints"]).to_crs(32616)[["geometry"]]
    out = write_vector(footprints, tmp_path / "f.gpkg")
    back = gpd.read_file(out)
    assert back.crs == footprints.crs and len(back) == len(footprints)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_vector(footprints, out)
    write_vector(footprints.iloc[:3], out, overwrite=True)
    assert len(gpd.read_file(out)) == 3
    theirs = tmp_path / "theirs.gpkg"
    footprints.to_file(theirs)  # written by someone else
    with pytest.raises(FileExistsError, match="not written by the toolkit"):
        write_vector(footprints, theirs, overwrite=True)
    assert leftovers(tmp_path) == []

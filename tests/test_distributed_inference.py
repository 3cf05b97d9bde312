"""predict_raster on a 2-worker Dask LocalCluster (127.0.0.1 only, DESIGN section 8) against the
single-process pass, on the real Atlanta and Rotterdam scenes."""

from __future__ import annotations

import inspect
import sys
import time

import cloudpickle
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from toolkit import CycleGAN, Pix2Pix, export_training_data, predict_raster, predict_rasters, prepare_data

distributed = pytest.importorskip("distributed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault helpers run on workers

WAIT = 60  # seconds: the longest any one wait of these tests may take


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(host="127.0.0.1", dashboard_address=None, n_workers=2,
                                       threads_per_worker=1, processes=True)
    client = distributed.Client(cluster, timeout=WAIT)
    client.wait_for_workers(2, timeout=WAIT)
    yield client
    client.close(timeout=WAIT)
    cluster.close(timeout=WAIT)


@pytest.fixture(scope="module")
def saved_model(atlanta, tmp_path_factory):
    """A tiny Pix2Pix (ngf 8, 64 px chips) for Atlanta's footprints, saved untrained: equality
    needs only fixed weights, and an epoch here takes a minute."""
    work = tmp_path_factory.mktemp("distributed")
    export_training_data(atlanta["image"], work / "chips", in_class_data=atlanta["footprints"],
                         tile_size=64, progress=False)
    model = Pix2Pix(prepare_data(work / "chips", batch_size=8), ngf=8, ndf=8, working_dir=work / "work")
    model.save(work / "model", compute_metrics=False)
    return model


def crop(raster, folder, window: Window, name: str, hole=None):
    """``window`` of ``raster`` as its own GeoTIFF; ``hole`` (an index) set to the nodata value 0."""
    with rasterio.open(raster) as src:
        data = src.read(window=window)
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": src.window_transform(window)}
    if hole is not None:
        data[hole] = 0
    path = folder / name
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def scene(atlanta, tmp_path_factory):
    """A 400 x 330 part of Atlanta with a nodata block at its left edge."""
    return crop(atlanta["image"], tmp_path_factory.mktemp("scene"), Window(100, 150, 400, 330),
                "scene.tif", hole=(slice(None), slice(90, 150), slice(0, 120)))


def assert_same_raster(got, expected):
    with rasterio.open(got) as a, rasterio.open(expected) as b:
        profile, expected_profile = dict(a.profile), dict(b.profile)
        nodata, expected_nodata = profile.pop("nodata"), expected_profile.pop("nodata")
        assert profile == expected_profile  # grid, CRS, dtype, tiling, compression
        assert nodata == expected_nodata or np.isnan(nodata) and np.isnan(expected_nodata)
        assert a.tags() == b.tags() and a.descriptions == b.descriptions
        np.testing.assert_allclose(a.read(), b.read(), rtol=1e-5, atol=1e-6, equal_nan=True)


def leftovers(folder, name):
    return [p.name for p in folder.iterdir() if name in p.name]


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_cluster_output_equals_single_process(saved_model, scene, client, tmp_path, threshold):
    single = saved_model.predict_raster(scene, tmp_path / "single.tif", threshold=threshold, progress=False)
    spread = predict_raster(saved_model, scene, tmp_path / "spread.tif", threshold=threshold, client=client,
                            band_rows=2, timeout=WAIT, progress=False)  # 6 bands
    assert_same_raster(spread, single)
    with rasterio.open(spread) as dst:
        assert dst.profile["tiled"] and dst.compression.value == "DEFLATE"
        if threshold is None:
            assert np.isnan(dst.read()[:, 90:150, 0:120]).all()  # the nodata block


@pytest.mark.filterwarnings("ignore:.*results may be poor")  # 0.5 m pan, a 1 m model
def test_cyclegan_b_to_a_through_the_cluster(rotterdam_unpaired, rotterdam, client, tmp_path):
    model = CycleGAN(prepare_data(rotterdam_unpaired, dataset_type="CycleGAN", batch_size=4, seed=0),
                     working_dir=tmp_path, ngf=8, ndf=8, gen_blocks=2)  # untrained: weights suffice
    model.save(tmp_path / "cyclegan", compute_metrics=False)
    pan = crop(rotterdam["panchromatic_2"], tmp_path, Window(0, 300, 150, 140), "pan.tif")
    single = model.predict_raster(pan, tmp_path / "single.tif", convert_to="a", progress=False)
    spread = model.predict_raster(pan, tmp_path / "spread.tif", convert_to="a", client=client,
                                  progress=False)
    assert_same_raster(spread, single)


def test_an_unsaved_model_is_refused(saved_model, scene, client, tmp_path):
    unsaved = saved_model.translation()
    unsaved.source_files = ()
    with pytest.raises(ValueError, match="Save it first"):
        predict_raster(unsaved, scene, tmp_path / "out.tif", client=client, progress=False)
    assert leftovers(tmp_path, "out") == []
    # without a cluster the scenes run here, one after the other: no saved files needed
    (tmp_path / "here").mkdir()
    outs = predict_rasters(unsaved, [scene], tmp_path / "here")
    assert_same_raster(outs[0], saved_model.predict_raster(scene, tmp_path / "single.tif", progress=False))


# --- faults: installed on the workers with Client.run --------------------------------------------


def _install_fault(marker_dir: str, band: int, how: str, path: str | None = None) -> None:
    """On a worker: window row ``band``'s task raises (``how="raise"``: once over the cluster;
    ``"always"``: every time), kills its worker process (``"die"``: once over the cluster), waits
    while the file ``path`` exists (``"hold"``, at most a minute) or writes a file of its own at
    ``path`` (``"write"``: another program taking the output's name). Faults add up."""
    import os
    import time
    from pathlib import Path

    import toolkit.distributed as d

    d._original_predict_rows = getattr(d, "_original_predict_rows", d.predict_rows)
    previous = d.predict_rows

    def faulty(model, src, scene, k0, k1, options, **kwargs):
        if k0 == band:
            try:
                (Path(marker_dir) / f"band-{band}").touch(exist_ok=False)  # the first call only
                first = True
            except FileExistsError:
                first = False
            if how == "hold":
                end = time.monotonic() + 60
                while Path(path).exists() and time.monotonic() < end:
                    time.sleep(0.05)
            elif how == "write":
                Path(path).write_text("theirs")
            elif how == "always" or first:
                if how == "die":
                    os._exit(1)
                raise RuntimeError(f"injected fault in band {band}")
        return previous(model, src, scene, k0, k1, options, **kwargs)

    d.predict_rows = faulty


def _remove_fault() -> None:
    import toolkit.distributed as d

    d.predict_rows = getattr(d, "_original_predict_rows", d.predict_rows)


@pytest.fixture
def fault(client, tmp_path):
    def install(band: int, how: str, path=None) -> None:
        client.run(_install_fault, str(tmp_path), band, how, None if path is None else str(path))
    yield install
    client.run(_remove_fault)


@pytest.mark.parametrize("how", ["raise", "die"])
def test_a_failed_band_is_run_again(saved_model, scene, client, fault, tmp_path, how):
    single = saved_model.predict_raster(scene, tmp_path / "single.tif", progress=False)
    fault(band=4, how=how)
    spread = predict_raster(saved_model, scene, tmp_path / "spread.tif", client=client, band_rows=2,
                            timeout=WAIT, progress=False)
    assert (tmp_path / "band-4").exists()  # the fault did happen
    assert_same_raster(spread, single)
    client.wait_for_workers(2, timeout=WAIT)  # a killed worker is back before the next test


def test_a_band_that_always_fails_leaves_no_output(saved_model, scene, client, fault, tmp_path):
    fault(band=2, how="always")
    with pytest.raises(RuntimeError, match="injected fault in band 2"):
        predict_raster(saved_model, scene, tmp_path / "out.tif", client=client, band_rows=2,
                       timeout=WAIT, progress=False)
    assert leftovers(tmp_path, "out") == []


def test_many_scenes_one_output_each(saved_model, scene, atlanta, client, tmp_path):
    other = crop(atlanta["image"], tmp_path, Window(500, 0, 300, 260), "other.tif")
    outs = predict_rasters(saved_model, [scene, other], tmp_path / "out", client=client, timeout=WAIT)
    assert outs == [tmp_path / "out" / "scene.tif", tmp_path / "out" / "other.tif"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["other.tif", "scene.tif"]
    assert_same_raster(outs[1], saved_model.predict_raster(other, tmp_path / "single.tif", progress=False))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        predict_rasters(saved_model, [scene], tmp_path / "out", client=client, timeout=WAIT)


def test_a_later_band_that_fails_stops_the_job_at_once(saved_model, scene, client, fault, tmp_path):
    """Bands were awaited in order: a failed band 2 went unnoticed while band 0 still ran."""
    hold = tmp_path / "hold"
    hold.touch()
    fault(band=0, how="hold", path=hold)
    fault(band=2, how="always")
    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="injected fault in band 2"):
            predict_raster(saved_model, scene, tmp_path / "out.tif", client=client, band_rows=2,
                           timeout=WAIT, progress=False)
        assert time.monotonic() - start < 30  # band 0 holds for 60 s
    finally:
        hold.unlink()
    assert leftovers(tmp_path, "out") == []


def test_a_cluster_without_workers_fails_within_the_timeout(saved_model, scene, tmp_path):
    """Every worker gone, the scheduler up: the job used to wait an hour per band."""
    with distributed.LocalCluster(host="127.0.0.1", dashboard_address=None, n_workers=0) as empty, distributed.Client(empty, timeout=WAIT) as none:
        for run in (lambda: predict_raster(saved_model, scene, tmp_path / "out.tif", client=none, timeout=3,
                                           progress=False),
                    lambda: predict_rasters(saved_model, [scene], tmp_path / "many", client=none, timeout=3)):
            start = time.monotonic()
            with pytest.raises(TimeoutError, match="no worker for 3 s"):
                run()
            assert time.monotonic() - start < 3 + 10
    assert leftovers(tmp_path, "out") == [] and not list((tmp_path / "many").glob("*"))
    for function in (predict_raster, predict_rasters, Pix2Pix.predict_raster, CycleGAN.predict_raster):
        assert inspect.signature(function).parameters["timeout"].default <= 600  # minutes, not hours


def test_a_file_written_meanwhile_is_kept(saved_model, scene, client, fault, tmp_path):
    """Another program writes the output's name during the job: the final move refuses it."""
    out = tmp_path / "out.tif"
    fault(band=2, how="write", path=out)
    with pytest.raises(FileExistsError, match="appeared"):
        predict_raster(saved_model, scene, out, client=client, band_rows=2, timeout=WAIT, progress=False)
    assert out.read_text() == "theirs"
